"""A small client for any OpenAI-compatible chat-completions endpoint, over aiohttp.

Used by the LLM judge and by the evaluation agent loop. It bounds concurrency (a semaphore shared by every
request of one client), applies a per-request timeout, and retries with exponential backoff and jitter on
what is worth retrying (timeouts, connection errors, HTTP 429 and 5xx, and bodies that are not JSON). Other
4xx answers are the caller's mistake and fail at once with the server's message. An error answer saying the
prompt is past the model's context window raises ``ContextOverflow`` at once (retrying cannot help), whatever
its status: servers spell it differently (see ``is_context_overflow``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp


class ChatError(RuntimeError):
    """The endpoint could not give a usable answer (after retries, or a non-retryable error)."""


class ContextOverflow(ChatError):
    """The endpoint refused the request because the prompt (plus the answer's room) exceeds the model's context."""


# How OpenAI-compatible servers say that a prompt does not fit: OpenAI and llama-cpp-python's server
# ("context_length_exceeded", "This model's maximum context length is N tokens"), vLLM ("maximum context
# length", "longer than the maximum model length"), llama.cpp's server ("exceed_context_size_error", "the request
# exceeds the available context size"), and "Requested tokens (N) exceed context window of M" (llama-cpp-python).
_CONTEXT_OVERFLOW = re.compile(
    r"context_length_exceeded|exceed_context_size|maximum context length|maximum model length"
    r"|exceeds? (?:the )?(?:available )?context (?:size|window|length)|context window of \d+", re.IGNORECASE)


def is_context_overflow(body: str) -> bool:
    """Whether an error answer's body says the prompt does not fit the model's context."""
    return bool(_CONTEXT_OVERFLOW.search(body))


@dataclass(frozen=True)
class ChatConfig:
    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    concurrency: int = 8
    temperature: float | None = None
    max_tokens: int | None = None

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ChatError(f"environment variable {self.api_key_env} is not set (it should hold the API key)")
        return key

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"


class _Retryable(Exception):
    pass


class ChatClient:
    """Async chat client; use as ``async with ChatClient(cfg) as client: await client.complete(msgs)``."""

    def __init__(self, config: ChatConfig, session: aiohttp.ClientSession | None = None):
        self.config = config
        self._session = session
        self._owns_session = session is None
        self._semaphore = asyncio.Semaphore(max(1, config.concurrency))
        key = config.api_key()
        self._headers = {"Content-Type": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self.requests = 0
        self.retries = 0

    async def __aenter__(self) -> ChatClient:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def complete(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] | None = None,
                       response_format: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """One chat completion; returns the first choice's ``message`` dict (plus ``usage`` if given)."""
        body: dict[str, Any] = {"model": self.config.model, "messages": list(messages)}
        if tools:
            body["tools"] = list(tools)
        if response_format is not None:
            body["response_format"] = dict(response_format)
        if self.config.temperature is not None:
            body["temperature"] = self.config.temperature
        if self.config.max_tokens is not None:
            body["max_tokens"] = self.config.max_tokens
        body.update(extra)
        data = await self._post(body)
        try:
            message = dict(data["choices"][0]["message"])
        except (KeyError, IndexError, TypeError):
            raise ChatError(f"response has no choices[0].message: {json.dumps(data)[:300]}") from None
        if "usage" in data:
            message["_usage"] = data["usage"]
        return message

    async def _post(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if self._session is None:
            raise ChatError("ChatClient used outside 'async with'")
        cfg = self.config
        last: str = ""
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                self.retries += 1
                delay = min(cfg.max_backoff_s, cfg.backoff_s * 2 ** (attempt - 1))
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
            try:
                async with self._semaphore:
                    self.requests += 1
                    return await self._post_once(body)
            except _Retryable as exc:
                last = str(exc)
        raise ChatError(f"{cfg.url}: giving up after {cfg.max_retries + 1} attempts: {last}")

    async def _post_once(self, body: Mapping[str, Any]) -> dict[str, Any]:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        try:
            async with self._session.post(self.config.url, json=body, headers=self._headers,
                                          timeout=timeout) as resp:
                text = await resp.text()
                if resp.status >= 400 and is_context_overflow(text):
                    raise ContextOverflow(f"{self.config.url}: HTTP {resp.status}: prompt exceeds the model's "
                                          f"context: {text[:300]}")
                if resp.status == 429 or resp.status >= 500:
                    raise _Retryable(f"HTTP {resp.status}: {text[:200]}")
                if resp.status >= 400:
                    raise ChatError(f"{self.config.url}: HTTP {resp.status}: {text[:500]}")
        except TimeoutError:
            raise _Retryable(f"no answer within {self.config.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise _Retryable(f"body is not JSON: {text[:200]!r}") from None
        if not isinstance(data, dict):
            raise _Retryable(f"body is not a JSON object: {text[:200]!r}")
        return data
