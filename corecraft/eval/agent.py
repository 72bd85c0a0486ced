"""The agent loop: one user turn, then model <-> tools until the model answers without calling a tool.

The model is any OpenAI-compatible chat endpoint with tool calling; the tools are reached through a real MCP
client (``corecraft.eval.episode``). Model mistakes (unknown tools, arguments that are not JSON, tool errors)
become tool messages the model reads, never crashes; endpoint failures (after the client's retries) raise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from corecraft.episode.chat import ChatClient
from corecraft.episode.definition import EpisodeSpec, agent_tools, clip_result, opening_messages
from corecraft.episode.types import ToolCallRecord, Trajectory


class ToolSession(Protocol):
    """Tools of one episode, as the agent reaches them."""

    async def list_tools(self) -> list[dict[str, Any]]:
        """The tools as MCP lists them: ``{"name", "description", "inputSchema"}`` each."""
        ...

    async def call(self, name: str, arguments: Mapping[str, Any]) -> tuple[str, Any, bool]:
        """(text the model reads, structured result, is_error)."""
        ...


def _parse_arguments(raw: Any) -> tuple[dict[str, Any] | None, str]:
    if isinstance(raw, Mapping):
        return dict(raw), ""
    if raw in (None, ""):
        return {}, ""
    try:
        value = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        return None, f"arguments are not valid JSON ({exc})"
    if not isinstance(value, dict):
        return None, "arguments must be a JSON object"
    return value, ""


async def run_agent(chat: ChatClient, tools: ToolSession, request: str, *, policy: str = "",
                    spec: EpisodeSpec | None = None) -> Trajectory:
    """One episode as ``spec`` defines it (``policy``: the company policy text, used by the ``full`` form)."""
    spec = spec or EpisodeSpec()
    messages: list[dict[str, Any]] = list(opening_messages(spec, request, policy))
    specs = agent_tools(spec, await tools.list_tools())
    known = {s["function"]["name"] for s in specs}
    records: list[ToolCallRecord] = []
    final, stop, turns = "", "max_steps", 0
    for _ in range(spec.max_turns):
        reply = await chat.complete(messages, tools=specs)
        turns += 1
        reply.pop("_usage", None)
        calls: Sequence[Mapping[str, Any]] = reply.get("tool_calls") or []
        content = reply.get("content") or ""
        assistant: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            assistant["tool_calls"] = [dict(c) for c in calls]
        messages.append(assistant)
        if not calls:
            final, stop = content, "final"
            break
        for i, call in enumerate(calls):
            fn = call.get("function") or {}
            name = str(fn.get("name", ""))
            call_id = str(call.get("id") or f"call_{turns}_{i}")
            args, problem = _parse_arguments(fn.get("arguments"))
            if name not in known:
                text, data, is_error = f"Error: unknown tool {name!r}", None, True
            elif args is None:
                text, data, is_error = f"Error: {problem}", None, True
            else:
                text, data, is_error = await tools.call(name, args)
            records.append(ToolCallRecord(name, args if args is not None else {"_raw": fn.get("arguments")},
                                          data if data is not None else text, is_error))
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": clip_result(text, spec.tool_result_chars)})
        final = content
    return Trajectory(tuple(records), final, turns=turns, stop_reason=stop, messages=tuple(messages))
