"""Scenario families: a family plants one situation into the world and returns the task that goes with it.

A family is a function ``(planter, instance) -> Instance`` registered with ``@family(...)``. It draws every
choice from ``planter.rng`` (seeded per family and instance), plants fresh entities, and returns the request,
the rubric, the hidden ground truth and the oracle solution. ``Rubric`` numbers criteria and keeps the
helpers short, so a family reads as the situation, the ask, and the checks.

A hard family declares what makes it hard (``demands``: six or more tool calls, reading past the first result
page, reading company policy, reconciling several records of one kind); ``demands_met`` reads them off an
oracle's tool calls, and building a task set refuses a hard task whose oracle does not make them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corecraft.tasks.model import DEMANDS, Axis, Category, Criterion, Demand, Difficulty, Oracle, ToolCall
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
    demands: tuple[Demand, ...] = ()  # what its oracle does that makes it hard (see demands_met)


FAMILIES: dict[str, Family] = {}


def family(name: str, category: Category, difficulty: Difficulty, *, held_out: bool = False,
           demands: Iterable[Demand] = ()
           ) -> Callable[[Callable[[Planter, int], Instance]], Callable[[Planter, int], Instance]]:
    declared = tuple(demands)
    unknown = set(declared) - set(DEMANDS)
    if unknown:
        raise ValueError(f"family {name!r}: unknown demands {sorted(unknown)} (known: {DEMANDS})")
    if difficulty == "hard" and not declared:
        raise ValueError(f"family {name!r} is hard but declares no demand (one or more of {DEMANDS})")

    def deco(fn: Callable[[Planter, int], Instance]) -> Callable[[Planter, int], Instance]:
        if name in FAMILIES:
            raise ValueError(f"family {name!r} registered twice")
        FAMILIES[name] = Family(name, category, difficulty, fn, held_out, " ".join((fn.__doc__ or "").split()),
                                declared)
        return fn
    return deco


# Arguments that name one record of a kind; two different values of one of them in an oracle's reads means
# the task makes the agent consult (and reconcile) several records of that kind.
_RECORD_ARGS = ("order_id", "customer_id", "product_id", "ticket_id", "code", "build_id", "shipment_id")


def demands_met(calls: Sequence[ToolCall]) -> set[Demand]:
    """Which hard-task demands a tool path makes: >= 6 calls; a search read at page >= 2; a company policy read
    (getKnowledgebaseArticle of a 'POL-' document, or searchKnowledgebase restricted to policies); two or more
    records of one kind consulted by reading tools (dry runs count as reads)."""
    from corecraft.tools import TOOLS

    met: set[Demand] = set()
    if len(calls) >= 6:
        met.add("six_plus_calls")
    for c in calls:
        args = c.arguments
        if c.name.startswith("search") and int(args.get("page") or 1) >= 2:
            met.add("pagination")
        if (c.name == "getKnowledgebaseArticle" and str(args.get("article_id", "")).upper().startswith("POL-")) or (
                c.name == "searchKnowledgebase" and args.get("kind") == "policy"):
            met.add("policy")
    records: dict[str, set[str]] = defaultdict(set)
    for c in calls:
        if c.name in TOOLS and TOOLS[c.name].writes and not c.arguments.get("dry_run"):
            continue
        for key in _RECORD_ARGS:
            if c.arguments.get(key) is not None:
                records[key].add(str(c.arguments[key]).upper())
        for pid in c.arguments.get("product_ids") or ():
            records["product_id"].add(str(pid).upper())
    if any(len(ids) >= 2 for ids in records.values()):
        met.add("reconcile")
    return met


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
    def states(self, text: str, vtype: str, value: Any, distractors: Sequence[Any],
               axis: Axis = "correctness", allowed: Sequence[Any] = ()) -> None:
        """The answer states ``value`` and none of ``distractors``: other values of the same kind the agent sees
        on the task's path (the subtotal next to the total, the other package's tracking number). Without
        them an answer listing every value it saw would satisfy the criterion, so they are required. (The check
        also refuses any other amount, date or same-shaped id, except ``allowed`` ones.)"""
        values = value if isinstance(value, list | tuple) else [value]
        kept = list(dict.fromkeys(d for d in distractors if d not in values))
        if not kept:
            raise ValueError(f"criterion {text!r} states a value ({value!r}) but has no distractor that differs "
                             "from it: listing every value seen would satisfy it")
        params: dict[str, Any] = {"type": vtype, "value": value, "distractors": kept}
        if allowed:
            params["allowed"] = list(allowed)
        self._add("response", axis, text, "states_value", params)

    def states_any(self, text: str, values: Sequence[str], vtype: str = "phrase",
                   axis: Axis = "completeness", rivals: Sequence[str] = ()) -> None:
        """One of ``values`` is stated and none of ``rivals`` (the words of the other possible answers)."""
        params: dict[str, Any] = {"type": vtype, "values": list(values)}
        if rivals:
            params["rivals"] = list(rivals)
        self._add("response", axis, text, "states_any", params)

    def avoids(self, text: str, vtype: str, values: Sequence[Any], axis: Axis = "constraint") -> None:
        self._add("response", axis, text, "does_not_state", {"type": vtype, "values": list(values)})

    def answer(self, text: str, key: str, value: Any, vtype: str = "text", axis: Axis = "correctness",
               rivals: Sequence[Any] = ()) -> None:
        """A ``Key: value`` answer line. ``rivals``: the other values the key takes (other tiers, other order
        statuses), which the line must not also give; needed for text values, whose hedges have no shape."""
        values = value if isinstance(value, list | tuple) else [value]
        params: dict[str, Any] = {"key": key, "value": value, "type": vtype}
        kept = list(dict.fromkeys(r for r in rivals if r not in values))
        if kept:
            params["rivals"] = kept
        self._add("response", axis, text, "answer_line", params)

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

    def _answer_shapes(self) -> dict[str, str]:
        """Each answer line the rubric reads, with the shape of its value (for the format criterion)."""
        shapes: dict[str, str] = {}
        for c in self.criteria:
            if c.check == "answer_line":
                shapes.setdefault(c.params["key"], _SHAPE_OF.get(c.params.get("type", "text"), "text"))
            elif c.check == "answer_line_set":
                shapes.setdefault(c.params["key"], "ids")
        return shapes

    def done(self, request: str, response: str, **ground_truth: Any) -> Instance:
        """Finishes the task. A request that prescribes answer lines gets a format criterion for them (each line
        there once, its value well formed), separate from the correctness of the values."""
        shapes = self._answer_shapes()
        for key in shapes:
            # An answer line the request never asks for could not be known to the agent: a family bug.
            if f"'{key.lower()}:" not in request.lower():
                raise ValueError(f"the rubric reads a '{key}:' line that the request does not ask for: {request!r}")
        if shapes and not any(c.check == "answer_format" for c in self.criteria):
            keys = ", ".join(f"'{k}:'" for k in shapes)
            self._add("response", "format", f"Gives the requested answer line{'s' if len(shapes) > 1 else ''} "
                      f"({keys}) once each, in the requested form", "answer_format",
                      {"lines": [{"key": k, "type": t} for k, t in shapes.items()]})
        # An answer earns its criteria only when the agent looked: every positive response criterion names
        # the task's records, and the judge asks that a successful tool call consulted one of them.
        evidence = task_records(self.calls)
        criteria = []
        for c in self.criteria:
            if c.kind == "response" and c.check in GROUNDED_CHECKS:
                if not evidence:
                    raise ValueError(f"criterion {c.text!r} reads the answer, but the oracle's calls name no record "
                                     "to ground it in")
                c = Criterion(c.id, c.kind, c.axis, c.text, c.check, {**c.params, "evidence": evidence})
            criteria.append(c)
        return Instance(request, tuple(criteria), ground_truth, Oracle(tuple(self.calls), response))


# Response checks that an answer must be grounded to earn (the negative ones, "does not state", are not).
GROUNDED_CHECKS = ("states_value", "states_any", "answer_line", "answer_line_set", "answer_format", "nonempty")
# Arguments that name the task's own records (not a policy document, which every task of a family shares).
_EVIDENCE_ARGS = (*_RECORD_ARGS, "email", "phone")


def task_records(calls: Sequence[ToolCall]) -> list[str]:
    """The records the oracle's calls name (order, customer, ticket, product ids, codes...), in call order."""
    found: list[str] = []

    def walk(value: Any, key: str | None) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v, key if key != "product_ids" else "product_id")
        elif key in _EVIDENCE_ARGS and isinstance(value, str) and value and value not in found:
            found.append(value)

    for c in calls:
        walk(c.to_json()["arguments"], None)
    return found


# Value type of an answer-line criterion -> the shape its format criterion asks of the line.
_SHAPE_OF = {"money": "money", "number": "number", "percent": "number", "date": "date", "bool": "bool",
             "id": "id", "text": "text", "phrase": "text"}
