"""A real OpenAI-compatible chat endpoint for tests: ``POST /v1/chat/completions`` on 127.0.0.1, answered by
the test's aiohttp handler, served from its own thread and event loop (the code under test runs its own
``asyncio.run``).

    with ChatEndpoint(model.handle) as endpoint:
        run_cli(["eval", "--base-url", endpoint.url, ...])
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ChatEndpoint:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.url = ""
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _run(self, coro: Awaitable[object]) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def __enter__(self) -> ChatEndpoint:
        self.thread.start()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handler)
        self.runner = web.AppRunner(app)
        self._run(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self._run(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        self._run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def completion(message: dict[str, Any], usage: dict[str, int] | None = None) -> dict[str, Any]:
    """A chat-completion response body with one choice holding ``message`` (and ``usage`` when given)."""
    body: dict[str, Any] = {"id": "r", "object": "chat.completion", "model": "scripted",
                            "choices": [{"index": 0, "message": message,
                                         "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}]}
    if usage is not None:
        body["usage"] = usage
    return body


# What llama-cpp-python's OpenAI-compatible server answers (HTTP 400) for a prompt past the model's context.
LLAMA_CPP_CONTEXT_ERROR = {"error": {
    "message": "This model's maximum context length is 8192 tokens. However, you requested 9120 tokens "
               "(9120 in the messages, 0 in the completion). Please reduce the length of the messages or completion.",
    "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
