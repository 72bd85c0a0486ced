"""Hermes-style tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, as Qwen uses.

`parse_tool_calls` reads them out of sampled text and never raises: a policy under RL writes broken JSON,
unclosed tags, arguments as a JSON string, calls buried in prose. Whatever is usable becomes a `ToolCall`;
whatever is not becomes a `ToolCallError` whose message can be shown to the model as feedback.

For templates that know nothing about tools (SmolLM2's), `tools_system_prompt` writes the definitions and
the calling convention into the system prompt, so the same parser reads the model's answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from rl_jax.chat.messages import ToolCall

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
RESPONSE_OPEN = "<tool_response>"
RESPONSE_CLOSE = "</tool_response>"

# Bounds that keep adversarial output cheap: no more calls than this per turn, and error snippets short.
MAX_CALLS = 32
_SNIPPET = 160


@dataclass(frozen=True)
class ToolCallError:
    """A `<tool_call>` block that could not be used, with a message fit to show the model."""

    message: str
    raw: str  # the offending block, truncated


class ParsedToolCalls(NamedTuple):
    content: str  # the text outside tool-call blocks, stripped
    calls: tuple[ToolCall, ...]
    errors: tuple[ToolCallError, ...]


def _snippet(text: str) -> str:
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 3] + "..."


def _decode_call(body: str) -> ToolCall | str:
    """A ToolCall from one block's body, or the reason it is not one."""
    start = body.find("{")
    if start < 0:
        return "no JSON object inside <tool_call>"
    try:
        # raw_decode stops at the end of the first object, so trailing junk inside the block is tolerated.
        payload, _ = json.JSONDecoder().raw_decode(body, start)
    except json.JSONDecodeError as error:
        return f"invalid JSON in <tool_call>: {error.msg} at character {error.pos - start}"
    except (ValueError, RecursionError) as error:  # e.g. nesting too deep, an integer too long to convert
        return f"invalid JSON in <tool_call>: {type(error).__name__}"
    if not isinstance(payload, dict):
        return "<tool_call> must hold a JSON object"
    name = payload.get("name")
    if not isinstance(name, str) or not name.strip():
        return 'tool call has no "name" string'
    # Some models write "parameters" (Llama 3 style) instead of "arguments".
    arguments: Any = payload.get("arguments", payload.get("parameters", {}))
    if isinstance(arguments, str):
        # Models imitating the OpenAI wire format send arguments as a JSON-encoded string.
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            return f'arguments of tool call "{_snippet(name.strip())}" are a string that is not valid JSON'
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return f'arguments of tool call "{_snippet(name.strip())}" must be a JSON object'
    call_id = payload.get("id")
    return ToolCall(name.strip(), arguments, call_id if isinstance(call_id, str) else None)


def _parse(text: str, max_calls: int) -> ParsedToolCalls:
    calls: list[ToolCall] = []
    errors: list[ToolCallError] = []
    outside: list[str] = []
    position = 0
    while True:
        start = text.find(CALL_OPEN, position)
        if start < 0:
            outside.append(text[position:])
            break
        outside.append(text[position:start])
        body_start = start + len(CALL_OPEN)
        end = text.find(CALL_CLOSE, body_start)
        # An unclosed block runs to the next opening tag or to the end of the text.
        next_open = text.find(CALL_OPEN, body_start)
        closed = end >= 0 and (next_open < 0 or end < next_open)
        body_end = end if closed else (next_open if next_open >= 0 else len(text))
        body = text[body_start:body_end]
        position = body_end + len(CALL_CLOSE) if closed else body_end
        if len(calls) + len(errors) >= max_calls:
            errors.append(ToolCallError(f"more than {max_calls} tool calls in one turn; the rest were ignored", ""))
            break
        decoded = _decode_call(body)
        if isinstance(decoded, ToolCall):
            calls.append(decoded)
            if not closed:
                errors.append(ToolCallError("<tool_call> was not closed with </tool_call>", _snippet(body)))
        else:
            errors.append(ToolCallError(decoded, _snippet(body)))
    content = "".join(outside).strip()
    return ParsedToolCalls(content, tuple(calls), tuple(errors))


def parse_tool_calls(text: str, *, max_calls: int = MAX_CALLS) -> ParsedToolCalls:
    """Split model output into its prose and its tool calls. Never raises.

    A call whose JSON is repairable only by guessing is reported as an error rather than guessed at: RL
    should reward the format the template teaches, not our leniency. Accepted leniencies are the ones real
    models show: arguments as a JSON string, `parameters` for `arguments`, a missing closing tag.
    """
    try:
        if not isinstance(text, str):
            return ParsedToolCalls("", (), (ToolCallError(f"expected text, got {type(text).__name__}", ""),))
        return _parse(text, max(0, max_calls))
    except Exception as error:  # a parser bug must cost one episode's turn, never the rollout worker
        return ParsedToolCalls(
            text if isinstance(text, str) else "", (), (ToolCallError(f"tool-call parser failed: {error!r}", ""),)
        )


def format_tool_calls(calls: Sequence[ToolCall]) -> str:
    """Calls as the model should write them (one block per call, each on its own lines)."""
    return "".join(f"\n{CALL_OPEN}\n{call.to_json()}\n{CALL_CLOSE}" for call in calls)


def format_assistant_text(content: str, calls: Sequence[ToolCall]) -> str:
    """Assistant text with its calls appended, laid out as Qwen2.5's template renders it."""
    text = content + format_tool_calls(calls)
    return text.removeprefix("\n") if not content else text


def format_tool_response(content: str) -> str:
    return f"{RESPONSE_OPEN}\n{content}\n{RESPONSE_CLOSE}"


def tools_system_prompt(tools: Sequence[Mapping[str, Any]], preamble: str = "") -> str:
    """A system prompt that teaches a template without tool support the Hermes calling convention."""
    definitions = "\n".join(json.dumps(dict(tool), ensure_ascii=False) for tool in tools)
    instructions = (
        "# Tools\n\n"
        "You can call the functions described below to help answer the user.\n"
        f"Their signatures are given as JSON Schema inside {'<tools></tools>'} tags:\n"
        f"<tools>\n{definitions}\n</tools>\n\n"
        f"To call a function, write a JSON object with its name and arguments inside {CALL_OPEN}{CALL_CLOSE} "
        f"tags, one block per call:\n{CALL_OPEN}\n"
        '{"name": <function-name>, "arguments": <arguments-json-object>}\n'
        f"{CALL_CLOSE}\n"
        f"Each result comes back inside {RESPONSE_OPEN}{RESPONSE_CLOSE} tags."
    )
    return f"{preamble}\n\n{instructions}" if preamble else instructions
