"""Values the judge writes: one verdict per criterion, and the score. (What it reads, the agent's trajectory,
is an episode type: ``corecraft.episode.types``.)"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

VerdictSource = Literal["state", "response", "trajectory", "llm"]


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
