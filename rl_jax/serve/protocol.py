"""The OpenAI chat-completions wire format: a request body checked into a ``ChatRequest``, and reply bodies.

Pure functions of JSON values: no model, no engine, no I/O. A body that cannot be served raises ``ApiError``
with the HTTP status and OpenAI's error shape (``{"error": {"message", "type", "param", "code"}}``), so a
client sees at once which field is wrong and why. Fields we do not implement and that would change the answer
(penalties, logit bias, a forced tool choice) are refused rather than silently ignored; fields that only
describe the client (``user``, ``parallel_tool_calls``, ``metadata``) are accepted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rl_jax.chat.messages import Message, as_message

MAX_CHOICES = 16
MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
    """An answer other than success: HTTP ``status`` and OpenAI's error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _bad(message: str, param: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class ChatRequest:
    """One validated chat-completions request."""

    model: str
    messages: tuple[Message, ...]
    tools: tuple[Mapping[str, Any], ...] = ()
    use_tools: bool = True  # tool_choice "none": the tools are neither shown to the model nor parsed
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage counts
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int | None = None  # None: the server's default, within the context
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"'{name}' must be a number; got {json.dumps(value)[:80]}", name, "invalid_type")
    if not low <= value <= high:
        raise _bad(f"'{name}' must be between {low:g} and {high:g}; got {value}", name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer; got {json.dumps(value)[:80]}", name, "invalid_type")
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise _bad(f"'{name}' must be {bound}; got {value}", name)
    return value


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"'{name}' must be true or false; got {json.dumps(value)[:80]}", name, "invalid_type")
    return value


def _messages(raw: Any) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise _bad("'messages' must be a non-empty array of messages", "messages")
    out = []
    for i, message in enumerate(raw):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{param} must be an object with 'role' and 'content'", param, "invalid_type")
        role = message.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            message = {**message, "role": "system"}
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(f"{param}.content must be a string or an array of content parts", f"{param}.content")
        if isinstance(content, list) and any(not isinstance(p, dict) or p.get("type", "text") != "text"
                                             for p in content):
            raise _bad(f"{param}.content: only text parts are supported", f"{param}.content")
        try:
            out.append(as_message(message))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise _bad(f"{param} is not a valid message: {detail}", param) from None
    if out[-1].role == "assistant":
        raise _bad("the last message must not be the assistant's: the model answers it", "messages")
    return tuple(out)


def _tools(raw: Any) -> tuple[Mapping[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad("'tools' must be an array of function tools", "tools", "invalid_type")
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise _bad(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", f"tools[{i}]")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise _bad(f"tools[{i}].function.name must be a non-empty string", f"tools[{i}].function.name")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise _bad(f"tools[{i}].function.parameters must be a JSON Schema object",
                       f"tools[{i}].function.parameters")
    return tuple({"type": "function", **tool} for tool in raw)


def _use_tools(raw: Any) -> bool:
    if raw is None or raw == "auto":
        return True
    if raw == "none":
        return False
    raise _bad(f"tool_choice {json.dumps(raw)[:80]} is not supported: this server cannot force a tool call "
               "(use 'auto' or 'none')", "tool_choice", "unsupported_value")


def _stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("'stop' must be a non-empty string or an array of them", "stop", "invalid_type")
    if len(stops) > MAX_STOP_STRINGS:
        raise _bad(f"'stop' takes at most {MAX_STOP_STRINGS} strings; got {len(stops)}", "stop")
    return tuple(stops)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise _bad(f"'{name}' is not supported by this server (only 0)", name, "unsupported_parameter")
    if body.get("logit_bias"):
        raise _bad("'logit_bias' is not supported by this server", "logit_bias", "unsupported_parameter")
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict)
                                        or response_format.get("type") != "text"):
        raise _bad("only response_format {'type': 'text'} is supported (no constrained decoding)",
                   "response_format", "unsupported_parameter")


def parse_chat_request(body: Any) -> ChatRequest:
    """A request body (decoded JSON) checked field by field; ``ApiError`` (400) names the first bad one."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' must name a model (see GET /v1/models)", "model", "missing_required_parameter")
    _refuse_unsupported(body)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise _bad("'stream_options' must be an object", "stream_options", "invalid_type")
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    logprobs = _flag(body, "logprobs")
    top_logprobs = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS) or 0
    if top_logprobs and not logprobs:
        raise _bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    return ChatRequest(
        model=model,
        messages=_messages(body.get("messages")),
        tools=_tools(body.get("tools")),
        use_tools=_use_tools(body.get("tool_choice")),
        stream=_flag(body, "stream"),
        include_usage=bool(stream_options.get("include_usage", False)),
        n=_integer(body, "n", 1, MAX_CHOICES) or 1,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),  # 0: only the likeliest token, i.e. greedy
        top_k=_integer(body, "top_k", 0) or 0,
        max_tokens=max_tokens,
        stop=_stop(body.get("stop")),
        seed=seed,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


# ---- replies ---------------------------------------------------------------------------------------------


def token_logprob_entries(texts: Sequence[str], logprobs: Sequence[float]) -> list[dict[str, Any]]:
    """``choices[i].logprobs.content``: each sampled token's text, bytes and log-prob. Alternatives
    (``top_logprobs``) are not computed by the engine: the list is left empty."""
    return [{"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8")), "top_logprobs": []}
            for text, logprob in zip(texts, logprobs, strict=True)]


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}
