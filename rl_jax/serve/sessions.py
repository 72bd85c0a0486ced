"""Which engine session a chat request continues, so the engine can reuse the conversation's cached keys.

OpenAI's API is stateless: each turn resends the whole conversation. After answering, the server remembers
the conversation as it will come back (the request's messages plus the answer) under a fingerprint; a later
request whose messages up to its last assistant message have that fingerprint continues the same session.
A fingerprint is claimed once: two clients that resend the same conversation (identical greedy answers) get
a session each, never one session with two requests in flight. Sessions nobody continued are ended (the
engine may free their cache) once ``capacity`` newer ones are remembered.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rl_jax.chat.messages import Message


def fingerprint(model: str, tools: Sequence[Mapping[str, Any]], messages: Sequence[Message]) -> str:
    """A digest of the conversation as the template sees it; tool-call ids (client-chosen) are left out."""
    def plain(message: Message) -> dict[str, Any]:
        out = message.to_dict()
        for call in out.get("tool_calls", ()):
            call.pop("id", None)
        out.pop("tool_call_id", None)
        return out

    blob = json.dumps([model, list(tools), [plain(m) for m in messages]], sort_keys=True, ensure_ascii=False,
                      default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class SessionBook:
    def __init__(self, end_session: Callable[[str], None], *, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {capacity}")
        self._end_session = end_session
        self._capacity = capacity
        self._waiting: OrderedDict[str, str] = OrderedDict()  # fingerprint -> session, oldest first

    def __len__(self) -> int:
        return len(self._waiting)

    def claim(self, model: str, tools: Sequence[Mapping[str, Any]], messages: Sequence[Message]) -> str:
        """The session of the conversation these messages continue, or a new one."""
        last_answer = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
        if last_answer is not None:
            session = self._waiting.pop(fingerprint(model, tools, messages[: last_answer + 1]), None)
            if session is not None:
                return session
        return uuid.uuid4().hex

    def remember(self, model: str, tools: Sequence[Mapping[str, Any]], messages: Sequence[Message],
                 session: str) -> None:
        """``messages`` (ending with the answer just given) may come back: they continue ``session``."""
        key = fingerprint(model, tools, messages)
        previous = self._waiting.pop(key, None)
        if previous is not None and previous != session:
            self._end_session(previous)
        self._waiting[key] = session
        while len(self._waiting) > self._capacity:
            _, evicted = self._waiting.popitem(last=False)
            self._end_session(evicted)
