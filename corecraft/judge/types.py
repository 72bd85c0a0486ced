"""Values the judge reads and writes: the agent's trajectory, one verdict per criterion, the score."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

VerdictSource = Literal["state", "response", "trajectory", "llm"]


@dataclass(frozen=True)
class ToolCallRecord:
    """One tool call the agent made and what came back (``result`` as the tool returned it)."""

    name: str
    arguments: Mapping[str, Any]
    result: Any = None
    is_error: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": dict(self.arguments), "result": self.result,
                "is_error": self.is_error}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ToolCallRecord:
        return cls(name=str(obj["name"]), arguments=dict(obj.get("arguments") or {}),
                   result=obj.get("result"), is_error=bool(obj.get("is_error", False)))


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


@dataclass(frozen=True)
class Verdict:
    criterion_id: str
    satisfied: bool
    evidence: str
    source: VerdictSource

    def to_json(self) -> dict[str, Any]:
        return {"criterion_id": self.criterion_id, "satisfied": self.satisfied, "evidence": self.evidence,
                "source": self.source}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Verdict:
        return cls(criterion_id=str(obj["criterion_id"]), satisfied=bool(obj["satisfied"]),
                   evidence=str(obj.get("evidence", "")), source=obj.get("source", "llm"))


@dataclass(frozen=True)
class Score:
    """reward = fraction of criteria satisfied; passed = every criterion satisfied.

    In the all-LLM mode ``verdicts`` are the LLM's and ``reference`` holds the deterministic verdicts for the
    criteria that have one, so the two can be compared (``agreement``).
    """

    verdicts: tuple[Verdict, ...]
    reference: tuple[Verdict, ...] = field(default=())

    @property
    def reward(self) -> float:
        if not self.verdicts:
            return 0.0
        return sum(v.satisfied for v in self.verdicts) / len(self.verdicts)

    @property
    def passed(self) -> bool:
        return bool(self.verdicts) and all(v.satisfied for v in self.verdicts)

    @property
    def agreement(self) -> float | None:
        """Fraction of reference (deterministic) verdicts the final verdicts agree with; None without any."""
        if not self.reference:
            return None
        by_id = {v.criterion_id: v.satisfied for v in self.verdicts}
        same = [by_id.get(r.criterion_id) == r.satisfied for r in self.reference]
        return sum(same) / len(same)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reward": self.reward, "passed": self.passed,
                               "verdicts": [v.to_json() for v in self.verdicts]}
        if self.reference:
            out["reference"] = [v.to_json() for v in self.reference]
            out["agreement"] = self.agreement
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Score:
        return cls(verdicts=tuple(Verdict.from_json(v) for v in obj.get("verdicts", [])),
                   reference=tuple(Verdict.from_json(v) for v in obj.get("reference", [])))


def result_text(result: Any, limit: int | None = None) -> str:
    """A tool result as text (for prompts and reports)."""
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, sort_keys=True)
    if limit is not None and len(text) > limit:
        return text[:limit] + f"... [{len(text) - limit} more characters]"
    return text


def calls_named(calls: Sequence[ToolCallRecord], name: str) -> list[ToolCallRecord]:
    return [c for c in calls if c.name == name]
