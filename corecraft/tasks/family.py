"""Scenario families: a family plants one situation into the world and returns the task that goes with it.

A family is a function ``(planter, instance) -> Instance`` registered with ``@family(...)``. It draws every
choice from ``planter.rng`` (seeded per family and instance), plants fresh entities, and returns the request,
the rubric, the hidden ground truth and the oracle solution. ``Rubric`` numbers criteria and keeps the
helpers short, so a family reads as the situation, the ask, and the checks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corecraft.tasks.model import Axis, Category, Criterion, Difficulty, Oracle, ToolCall
from corecraft.tasks.plant import Planter


@dataclass(frozen=True)
class Instance:
    request: str
    criteria: tuple[Criterion, ...]
    ground_truth: Mapping[str, Any]
    oracle: Oracle


@dataclass(frozen=True)
class Family:
    name: str
    category: Category
    difficulty: Difficulty
    make: Callable[[Planter, int], Instance]
    held_out: bool = False  # whole family only in the eval split
    summary: str = ""


FAMILIES: dict[str, Family] = {}


def family(name: str, category: Category, difficulty: Difficulty, *, held_out: bool = False
           ) -> Callable[[Callable[[Planter, int], Instance]], Callable[[Planter, int], Instance]]:
    def deco(fn: Callable[[Planter, int], Instance]) -> Callable[[Planter, int], Instance]:
        if name in FAMILIES:
            raise ValueError(f"family {name!r} registered twice")
        FAMILIES[name] = Family(name, category, difficulty, fn, held_out, " ".join((fn.__doc__ or "").split()))
        return fn
    return deco


@dataclass
class Rubric:
    """Builds a task's criteria in order (ids c1, c2, ...), and its oracle."""

    criteria: list[Criterion] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)

    def _add(self, kind: str, axis: Axis, text: str, check: str, params: Mapping[str, Any]) -> None:
        self.criteria.append(Criterion(f"c{len(self.criteria) + 1}", kind, axis, text, check, dict(params)))  # type: ignore[arg-type]

    # state
    def row(self, text: str, table: str, where: Sequence[Sequence[Any]], axis: Axis = "completeness") -> None:
        self._add("state", axis, text, "row_exists", {"table": table, "where": [list(w) for w in where]})

    def no_row(self, text: str, table: str, where: Sequence[Sequence[Any]], axis: Axis = "constraint") -> None:
        self._add("state", axis, text, "no_row", {"table": table, "where": [list(w) for w in where]})

    def count(self, text: str, table: str, where: Sequence[Sequence[Any]], op: str, value: int,
              axis: Axis = "constraint") -> None:
        self._add("state", axis, text, "row_count", {"table": table, "where": [list(w) for w in where], "op": op,
                                                      "value": value})

    def column(self, text: str, table: str, where: Sequence[Sequence[Any]], column: str, value: Any,
               axis: Axis = "correctness") -> None:
        self._add("state", axis, text, "column_equals", {"table": table, "where": [list(w) for w in where],
                                                          "column": column, "value": value})

    # response
    def states(self, text: str, vtype: str, value: Any, distractors: Sequence[Any] = (),
               axis: Axis = "correctness") -> None:
        self._add("response", axis, text, "states_value", {"type": vtype, "value": value,
                                                            "distractors": [d for d in distractors if d != value]})

    def states_any(self, text: str, values: Sequence[str], vtype: str = "phrase",
                   axis: Axis = "completeness") -> None:
        self._add("response", axis, text, "states_any", {"type": vtype, "values": list(values)})

    def avoids(self, text: str, vtype: str, values: Sequence[Any], axis: Axis = "constraint") -> None:
        self._add("response", axis, text, "does_not_state", {"type": vtype, "values": list(values)})

    def answer(self, text: str, key: str, value: Any, vtype: str = "text", axis: Axis = "correctness") -> None:
        self._add("response", axis, text, "answer_line", {"key": key, "value": value, "type": vtype})

    def answer_set(self, text: str, key: str, values: Sequence[str], axis: Axis = "correctness") -> None:
        self._add("response", axis, text, "answer_line_set", {"key": key, "values": list(values)})

    # trajectory
    def called(self, text: str, tool: str, args: Mapping[str, Any] | None = None,
               axis: Axis = "completeness") -> None:
        self._add("trajectory", axis, text, "called", {"tool": tool, "args": dict(args or {})})

    def not_called(self, text: str, tool: str, args: Mapping[str, Any] | None = None,
                   axis: Axis = "constraint") -> None:
        self._add("trajectory", axis, text, "not_called", {"tool": tool, "args": dict(args or {})})

    def in_order(self, text: str, steps: Sequence[tuple[str, Mapping[str, Any] | None]],
                 axis: Axis = "constraint") -> None:
        self._add("trajectory", axis, text, "in_order",
                  {"steps": [{"tool": t, "args": dict(a or {})} for t, a in steps]})

    # oracle
    def call(self, tool: str, **arguments: Any) -> None:
        self.calls.append(ToolCall(tool, arguments))

    def done(self, request: str, response: str, **ground_truth: Any) -> Instance:
        return Instance(request, tuple(self.criteria), ground_truth, Oracle(tuple(self.calls), response))
