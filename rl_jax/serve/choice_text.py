"""One choice's sampled tokens turned into what the client sees: text deltas, stop strings, tool calls.

Tokens arrive in chunks; ``ChoiceText.add`` returns the text that is now safe to send. Text is held back while
it may still change: an incomplete UTF-8 character (the tokenizer decodes it as U+FFFD until its last byte
arrives), the start of a stop string, and, when the request has tools, everything from ``<tool_call>`` on
(calls are sent whole, once the turn is over and they are parsed). A stop string ends the choice: the text is
cut before it and ``stopped`` is set, so the caller stops consuming the engine's stream (which frees the
slot). The trailing stop token (``<|im_end|>``) is never text.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rl_jax.chat.messages import Message, ToolCall
from rl_jax.chat.tokenizer import ChatTokenizer
from rl_jax.chat.tool_calls import CALL_OPEN, parse_tool_calls

_INCOMPLETE = "\ufffd"


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


@dataclass(frozen=True)
class FinalChoice:
    """The whole answer: the assistant message (OpenAI dict), and why it ended."""

    message: dict[str, Any]
    finish_reason: str  # stop | length | tool_calls
    typed: Message  # the same message, as the chat template renders it on the next turn


class ChoiceText:
    def __init__(self, tokenizer: ChatTokenizer, *, stop_strings: Sequence[str] = (), parse_tools: bool = False):
        self._tokenizer = tokenizer
        self._stops = tuple(stop_strings)
        self._parse_tools = parse_tools
        self._ids: list[int] = []
        self._text = ""
        self._sent = 0  # characters of _text already returned by add
        self.stopped = False  # a stop string (or the stop token) ended the choice
        self.stop_token_seen = False

    @property
    def token_count(self) -> int:
        return len(self._ids)

    def token_texts(self, tokens: Sequence[int]) -> list[str]:
        return [self._tokenizer.decode([t]) for t in tokens]

    def add(self, tokens: Sequence[int]) -> str:
        """Take the next sampled tokens; the text now safe to send (may be empty)."""
        if self.stopped:
            return ""
        self._ids.extend(int(t) for t in tokens)
        ids = self._ids
        if ids and ids[-1] in self._tokenizer.stop_token_ids:
            ids, self.stop_token_seen, self.stopped = ids[:-1], True, True
        text = self._tokenizer.decode(ids)
        cut = min((i for s in self._stops if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            text, self.stopped = text[:cut], True
        self._text = text
        return self._take(final=self.stopped)

    def _take(self, *, final: bool) -> str:
        safe = len(self._text)
        if not final:
            safe -= len(self._text) - len(self._text.rstrip(_INCOMPLETE))
            safe = min([safe, *(len(self._text) - _partial_suffix(self._text, s) for s in self._stops)])
        if self._parse_tools:
            opened = self._text.find(CALL_OPEN)
            if opened >= 0:
                safe = min(safe, opened)
            elif not final:
                safe = min(safe, len(self._text) - _partial_suffix(self._text, CALL_OPEN))
        if safe <= self._sent:
            return ""
        delta, self._sent = self._text[self._sent : safe], safe
        return delta

    def rest(self) -> str:
        """At the end of the turn: whatever text was held back and is content (not a tool call)."""
        return self._take(final=True)

    def final(self, *, length_cut: bool) -> FinalChoice:
        """The finished answer; ``length_cut``: the engine ended the turn on its token budget or the context."""
        text = self._text
        finish = "stop" if self.stopped or not length_cut else "length"
        if self._parse_tools:
            parsed = parse_tool_calls(text)
            if parsed.calls:
                # broken blocks beside good ones: the client sees the text as written, and the good calls
                content = text if parsed.errors else parsed.content
                calls = tuple(ToolCall(c.name, c.arguments, f"call_{uuid.uuid4().hex[:24]}") for c in parsed.calls)
                message = {"role": "assistant", "content": content or None,
                           "tool_calls": [tool_call_body(c) for c in calls]}
                return FinalChoice(message, "tool_calls", Message("assistant", content, calls))
        return FinalChoice({"role": "assistant", "content": text}, finish, Message("assistant", text))


def tool_call_body(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """A tool call in OpenAI's reply form (arguments as a JSON string); ``index`` for a streamed delta."""
    body: dict[str, Any] = {"id": call.id, "type": "function",
                            "function": {"name": call.name,
                                         "arguments": json.dumps(dict(call.arguments), ensure_ascii=False)}}
    return body if index is None else {"index": index, **body}
