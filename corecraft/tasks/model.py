"""The task data model: a request, a rubric of atomic criteria, hidden ground truth and an oracle solution.

Everything here is a frozen value that round-trips through JSON, so a task set is plain versioned data
(one JSON object per line) and a task can be shipped to a worker process or a judge unchanged.
The agent only ever sees ``Task.request``; the rubric, ground truth and oracle stay on the grading side.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Category = Literal["information_retrieval", "communication", "reasoning", "workflow"]
Difficulty = Literal["easy", "medium", "hard"]
Axis = Literal["completeness", "correctness", "constraint", "format"]
CriterionKind = Literal["state", "response", "trajectory", "llm"]
Split = Literal["train", "eval"]
Demand = Literal["six_plus_calls", "pagination", "policy", "reconcile"]

CATEGORIES: tuple[Category, ...] = ("information_retrieval", "communication", "reasoning", "workflow")
DIFFICULTIES: tuple[Difficulty, ...] = ("easy", "medium", "hard")
AXES: tuple[Axis, ...] = ("completeness", "correctness", "constraint", "format")
KINDS: tuple[CriterionKind, ...] = ("state", "response", "trajectory", "llm")
SPLITS: tuple[Split, ...] = ("train", "eval")
# What makes a task hard (the brief): a long tool path, reading past the first result page, reading company
# policy, or reconciling several records of one kind. Hard families declare which of these their oracle makes.
DEMANDS: tuple[Demand, ...] = ("six_plus_calls", "pagination", "policy", "reconcile")
MIN_CRITERIA, MAX_CRITERIA = 3, 12


class TaskFormatError(ValueError):
    """A task or criterion record does not match the schema."""


def _freeze(value: Any) -> Any:
    """Deep-copies JSON-like params into tuples/dicts so a criterion cannot be mutated through them."""
    if isinstance(value, Mapping):
        return {str(k): _freeze(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Criterion:
    """One atomic, checkable assertion about the episode.

    ``check`` names a registered check of the given ``kind`` (see ``corecraft.judge.checks``) and ``params``
    are its arguments; ``text`` is the human-readable assertion that an LLM judge sees.
    """

    id: str
    kind: CriterionKind
    axis: Axis
    text: str
    check: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TaskFormatError(f"criterion {self.id!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.axis not in AXES:
            raise TaskFormatError(f"criterion {self.id!r}: axis {self.axis!r} is not one of {AXES}")
        if not self.text.strip():
            raise TaskFormatError(f"criterion {self.id!r}: empty text")
        object.__setattr__(self, "params", _freeze(self.params))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "axis": self.axis, "text": self.text,
                "check": self.check, "params": _thaw(self.params)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Criterion:
        try:
            return cls(id=str(obj["id"]), kind=obj["kind"], axis=obj["axis"], text=str(obj["text"]),
                       check=str(obj["check"]), params=dict(obj.get("params", {})))
        except KeyError as exc:
            raise TaskFormatError(f"criterion record missing field {exc}") from None


@dataclass(frozen=True)
class ToolCall:
    """A tool call as the agent made it (or the oracle would)."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arguments", _freeze(self.arguments))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": _thaw(self.arguments)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ToolCall:
        return cls(name=str(obj["name"]), arguments=dict(obj.get("arguments", {})))


@dataclass(frozen=True)
class Oracle:
    """A reference solution: the tool calls, in order, then the final response. Scores 100% by construction."""

    tool_calls: tuple[ToolCall, ...]
    response: str

    def to_json(self) -> dict[str, Any]:
        return {"tool_calls": [c.to_json() for c in self.tool_calls], "response": self.response}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Oracle:
        return cls(tool_calls=tuple(ToolCall.from_json(c) for c in obj.get("tool_calls", [])),
                   response=str(obj.get("response", "")))


@dataclass(frozen=True)
class Task:
    """One task: what the agent is asked, and everything needed to grade it."""

    id: str
    family: str
    category: Category
    difficulty: Difficulty
    split: Split
    request: str
    criteria: tuple[Criterion, ...]
    ground_truth: Mapping[str, Any]
    oracle: Oracle
    instance: int = 0

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise TaskFormatError(f"task {self.id!r}: category {self.category!r} is not one of {CATEGORIES}")
        if self.difficulty not in DIFFICULTIES:
            raise TaskFormatError(f"task {self.id!r}: difficulty {self.difficulty!r} not in {DIFFICULTIES}")
        if self.split not in SPLITS:
            raise TaskFormatError(f"task {self.id!r}: split {self.split!r} is not one of {SPLITS}")
        if not MIN_CRITERIA <= len(self.criteria) <= MAX_CRITERIA:
            raise TaskFormatError(f"task {self.id!r}: {len(self.criteria)} criteria (want {MIN_CRITERIA}-{MAX_CRITERIA})")
        ids = [c.id for c in self.criteria]
        if len(set(ids)) != len(ids):
            raise TaskFormatError(f"task {self.id!r}: duplicate criterion ids {ids}")
        object.__setattr__(self, "criteria", tuple(self.criteria))
        object.__setattr__(self, "ground_truth", _freeze(self.ground_truth))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "family": self.family, "category": self.category, "difficulty": self.difficulty,
            "split": self.split, "instance": self.instance, "request": self.request,
            "criteria": [c.to_json() for c in self.criteria], "ground_truth": _thaw(self.ground_truth),
            "oracle": self.oracle.to_json(),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Task:
        try:
            return cls(
                id=str(obj["id"]), family=str(obj["family"]), category=obj["category"],
                difficulty=obj["difficulty"], split=obj["split"], request=str(obj["request"]),
                criteria=tuple(Criterion.from_json(c) for c in obj["criteria"]),
                ground_truth=dict(obj.get("ground_truth", {})),
                oracle=Oracle.from_json(obj.get("oracle", {})), instance=int(obj.get("instance", 0)),
            )
        except KeyError as exc:
            raise TaskFormatError(f"task record missing field {exc}") from None


def dump_tasks(tasks: Iterable[Task], path: str | Path) -> int:
    """Writes tasks as JSON Lines (sorted keys, so rebuilding from the same seed gives identical bytes)."""
    n = 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for task in tasks:
            fh.write(json.dumps(task.to_json(), sort_keys=True, ensure_ascii=False) + "\n")
            n += 1
    return n


def iter_tasks(path: str | Path) -> Iterator[Task]:
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield Task.from_json(json.loads(line))
            except (json.JSONDecodeError, TaskFormatError) as exc:
                raise TaskFormatError(f"{path}:{lineno}: {exc}") from None


def load_tasks(path: str | Path) -> list[Task]:
    return list(iter_tasks(path))
