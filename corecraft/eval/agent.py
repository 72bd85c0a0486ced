"""The agent loop: one user turn, then model <-> tools until the model answers without calling a tool.

The model is any OpenAI-compatible chat endpoint with tool calling; the tools are reached through a real MCP
client (``corecraft.eval.episode``). Model mistakes (unknown tools, arguments that are not a JSON object, tool
errors) become tool messages the model reads, never crashes. A prompt past the model's context window ends the
episode (stop reason ``context``), which is then graded like any other: the run counts, as a failure unless
it had already done the work. Other endpoint failures (after the client's retries) raise ``ChatError``.

Tool calls are counted three ways: *made* (every call the model emitted), *refused* (stopped by the harness
before reaching a tool: an unknown tool, or arguments that are not a JSON object; ``ToolCallRecord.refused``)
and *executed* (made and not refused; the tool may still have answered with an error).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from corecraft.episode.chat import ChatClient, ContextOverflow
from corecraft.episode.definition import EpisodeSpec, agent_tools, clip_result, opening_messages
from corecraft.episode.types import ToolCallRecord, Trajectory

ToolChoice = Literal["auto", "required", "none"]
TOOL_CHOICES: tuple[ToolChoice, ...] = ("auto", "required", "none")


class ToolSession(Protocol):
    """Tools of one episode, as the agent reaches them."""

    async def list_tools(self) -> list[dict[str, Any]]:
        """The tools as MCP lists them: ``{"name", "description", "inputSchema"}`` each."""
        ...

    async def call(self, name: str, arguments: Mapping[str, Any]) -> tuple[str, Any, bool]:
        """(text the model reads, structured result, is_error)."""
        ...


def parse_arguments(raw: Any) -> tuple[dict[str, Any] | None, str]:
    """A tool call's arguments as a dict, or (None, what is wrong with them).

    Lenient where it costs nothing: control characters (raw newlines, tabs) inside JSON strings are accepted
    (``strict=False``), as grammar-constrained servers emit them in free-text arguments; a mapping is taken as
    is; no arguments at all mean ``{}``. Anything else that is not one JSON object is refused, with the parser's
    message for the model to correct.
    """
    if isinstance(raw, Mapping):
        return dict(raw), ""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}, ""
    if not isinstance(raw, str):
        return None, f"arguments must be a JSON object (a string holding one), not {type(raw).__name__}"
    try:
        value = json.loads(raw, strict=False)
    except json.JSONDecodeError as exc:
        return None, (f"the arguments are not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                      "send one JSON object, e.g. {\"order_id\": \"...\"}")
    if not isinstance(value, dict):
        return None, f"the arguments must be one JSON object, not a JSON {type(value).__name__}"
    return value, ""


@dataclass(frozen=True)
class AgentRun:
    """One episode and what the endpoint said about it: per-turn token ``usage`` as the server reported it
    (empty dicts where it reported none), and why the episode stopped when that needs saying (the server's
    context error)."""

    trajectory: Trajectory
    usage: tuple[Mapping[str, Any], ...] = ()
    stop_detail: str = ""

    @property
    def prompt_tokens(self) -> int | None:
        """The opening prompt's tokens as the server counted them (its first answer's ``prompt_tokens``)."""
        first = self.usage[0] if self.usage else {}
        value = first.get("prompt_tokens")
        return int(value) if isinstance(value, int | float) else None

    @property
    def max_prompt_tokens(self) -> int | None:
        values = [u.get("prompt_tokens") for u in self.usage]
        counted = [int(v) for v in values if isinstance(v, int | float)]
        return max(counted) if counted else None

    @property
    def completion_tokens(self) -> int | None:
        values = [u.get("completion_tokens") for u in self.usage]
        counted = [int(v) for v in values if isinstance(v, int | float)]
        return sum(counted) if counted else None


async def run_agent(chat: ChatClient, tools: ToolSession, request: str, *, policy: str = "",
                    spec: EpisodeSpec | None = None, tool_choice: ToolChoice | None = None) -> Trajectory:
    """One episode as ``spec`` defines it (``policy``: the company policy text, used by the ``full`` form)."""
    run = await run_agent_detailed(chat, tools, request, policy=policy, spec=spec, tool_choice=tool_choice)
    return run.trajectory


async def run_agent_detailed(chat: ChatClient, tools: ToolSession, request: str, *, policy: str = "",
                             spec: EpisodeSpec | None = None, tool_choice: ToolChoice | None = None) -> AgentRun:
    """``run_agent``, with the endpoint's token counts and the stop detail.

    ``tool_choice`` is sent with every request that lists tools (None: not sent). ``required`` makes the
    model call a tool on every turn, so such an episode ends when the model answers in text anyway or at
    ``spec.max_turns``; ``none`` lists the tools but forbids calling them (a baseline).
    """
    spec = spec or EpisodeSpec()
    if tool_choice is not None and tool_choice not in TOOL_CHOICES:
        raise ValueError(f"tool_choice must be one of {TOOL_CHOICES}; got {tool_choice!r}")
    messages: list[dict[str, Any]] = list(opening_messages(spec, request, policy))
    specs = agent_tools(spec, await tools.list_tools())
    known = {s["function"]["name"] for s in specs}
    extra: dict[str, Any] = {"tool_choice": tool_choice} if tool_choice is not None and specs else {}
    records: list[ToolCallRecord] = []
    usage: list[Mapping[str, Any]] = []
    final, stop, detail, turns = "", "max_steps", "", 0
    for _ in range(spec.max_turns):
        try:
            reply = await chat.complete(messages, tools=specs, **extra)
        except ContextOverflow as exc:
            stop, detail = "context", str(exc)
            break
        turns += 1
        got = reply.pop("_usage", None)
        usage.append(dict(got) if isinstance(got, Mapping) else {})
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
            args, problem = parse_arguments(fn.get("arguments"))
            refused = True
            if name not in known:
                text, data, is_error = f"Error: unknown tool {name!r}; the tools are: {', '.join(sorted(known))}", \
                    None, True
            elif args is None:
                text, data, is_error = f"Error: {name}: {problem}", None, True
            else:
                refused = False
                text, data, is_error = await tools.call(name, args)
            records.append(ToolCallRecord(name, args if args is not None else {"_raw": fn.get("arguments")},
                                          data if data is not None else text, is_error, refused=refused))
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": clip_result(text, spec.tool_result_chars)})
        final = content
    trajectory = Trajectory(tuple(records), final, turns=turns, stop_reason=stop, messages=tuple(messages))
    return AgentRun(trajectory, tuple(usage), detail)
