"""What an episode produced, as every driver records it and the judge reads it: the tool calls, the final answer.

Shared by the OpenAI-API agent (``corecraft eval``), the RL trainer's environment (``corecraft.env``) and the
judge, so none of them imports another for these values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCallRecord:
    """One tool call the agent made and what came back (``result`` as the tool returned it).

    ``refused``: the call never reached a tool (the harness turned it down: an unknown tool, arguments that are
    not a JSON object); ``is_error`` is then true too. Serialized only when true, so records of executed calls
    (and the task files' oracles) keep their form.
    """

    name: str
    arguments: Mapping[str, Any]
    result: Any = None
    is_error: bool = False
    refused: bool = False

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "arguments": dict(self.arguments), "result": self.result,
               "is_error": self.is_error}
        if self.refused:
            out["refused"] = True
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ToolCallRecord:
        return cls(name=str(obj["name"]), arguments=dict(obj.get("arguments") or {}),
                   result=obj.get("result"), is_error=bool(obj.get("is_error", False)),
                   refused=bool(obj.get("refused", False)))


@dataclass(frozen=True)
class Trajectory:
    """What the agent did in one episode: its tool calls in order and its final answer."""

    tool_calls: tuple[ToolCallRecord, ...]
    final_response: str
    turns: int = 0
    stop_reason: str = "final"
    messages: tuple[Mapping[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"tool_calls": [c.to_json() for c in self.tool_calls], "final_response": self.final_response,
                "turns": self.turns, "stop_reason": self.stop_reason, "messages": list(self.messages)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Trajectory:
        return cls(tool_calls=tuple(ToolCallRecord.from_json(c) for c in obj.get("tool_calls", [])),
                   final_response=str(obj.get("final_response", "")), turns=int(obj.get("turns", 0)),
                   stop_reason=str(obj.get("stop_reason", "final")),
                   messages=tuple(obj.get("messages", [])))


def result_text(result: Any, limit: int | None = None) -> str:
    """A tool result as text (for prompts and reports)."""
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, sort_keys=True)
    if limit is not None and len(text) > limit:
        return text[:limit] + f"... [{len(text) - limit} more characters]"
    return text


def calls_named(calls: Sequence[ToolCallRecord], name: str) -> list[ToolCallRecord]:
    return [c for c in calls if c.name == name]
