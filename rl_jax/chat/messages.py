"""Chat messages and tool calls as typed, immutable values, and their plain-dict form for templates.

The dict form is the OpenAI / Hugging Face one chat templates are written against:
`{"role": "assistant", "content": "...", "tool_calls": [{"type": "function", "function": {"name": ...,
"arguments": {...}}}]}` and `{"role": "tool", "content": "...", "tool_call_id": ...}`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for: a tool name and a JSON object of arguments (treated as read-only)."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        call: dict[str, Any] = {
            "type": "function",
            "function": {"name": self.name, "arguments": copy.deepcopy(dict(self.arguments))},
        }
        if self.id is not None:
            call["id"] = self.id
        return call

    def to_json(self) -> str:
        """The Hermes-style JSON body, laid out as Qwen's template renders it."""
        return f'{{"name": {json.dumps(self.name, ensure_ascii=False)}, "arguments": ' + json.dumps(
            dict(self.arguments), ensure_ascii=False
        ) + "}"


@dataclass(frozen=True)
class Message:
    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # on a tool result: which call it answers
    name: str | None = None  # on a tool result: the tool's name

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown message role {self.role!r}; expected one of {ROLES}")
        if not isinstance(self.content, str):
            raise TypeError(f"message content must be a string, got {type(self.content).__name__}")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")

    def to_dict(self) -> dict[str, Any]:
        """The dict a chat template reads; absent fields are left out (templates test `is defined`)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


def system(content: str) -> Message:
    return Message("system", content)


def user(content: str) -> Message:
    return Message("user", content)


def assistant(content: str = "", tool_calls: Sequence[ToolCall] = ()) -> Message:
    return Message("assistant", content, tuple(tool_calls))


def tool_result(content: str, *, tool_call_id: str | None = None, name: str | None = None) -> Message:
    return Message("tool", content, tool_call_id=tool_call_id, name=name)


def function_tool(name: str, description: str, parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A tool definition in the OpenAI/HF form templates expect; `parameters` is a JSON Schema object.

    An MCP tool maps as `function_tool(tool.name, tool.description, tool.inputSchema)`.
    """
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": copy.deepcopy(dict(parameters)) if parameters else {"type": "object", "properties": {}},
        },
    }


def as_message(message: Message | Mapping[str, Any]) -> Message:
    """Accept OpenAI-style dicts too; arguments given as a JSON string (as OpenAI sends them) are decoded."""
    if isinstance(message, Message):
        return message
    calls = []
    for raw in message.get("tool_calls") or ():
        function = raw.get("function", raw)
        arguments = function.get("arguments") or {}
        if isinstance(arguments, str):
            arguments = json.loads(arguments) if arguments.strip() else {}
        if not isinstance(arguments, Mapping):
            raise ValueError(f"tool call arguments must be a JSON object, got {arguments!r}")
        calls.append(ToolCall(function["name"], dict(arguments), raw.get("id")))
    content = message.get("content") or ""
    if isinstance(content, list):
        # OpenAI content parts: keep the text ones, in order.
        content = "".join(part.get("text", "") for part in content if part.get("type", "text") == "text")
    return Message(
        role=message["role"],
        content=content,
        tool_calls=tuple(calls),
        tool_call_id=message.get("tool_call_id"),
        name=message.get("name"),
    )
