"""Hostile final answers, drawn from the task set itself: what a policy trained on the reward would try.

For one task, every kind of answer that earns credit it did not earn, built from the task's own rubric (its
answer keys, value types, distractors and rivals) and from the ground truth of the other tasks of its family
(which a policy sees over training):

- ``hedge``: each answer line gives the right value together with rivals (``A / B``, ``B or A``, a list);
- ``repeat``: each answer line twice, with the right value and a rival (or the right value twice);
- ``stuff``: every candidate value of every type (amounts, dates, numbers, ids, phrases) in prose and in lists;
- ``claims``: sentences saying every kind of action was done, alone or on top of right answer lines;
- ``junk``: answer lines with well-formed values of the requested type that are wrong;
- ``constant``: each answer line with the value its key takes most often across the family.

The verdict on them (``corecraft tasks verify``, the adversarial tests): without tool calls none earns more
than an empty answer on any criterion; on top of the oracle's tool calls none earns more than the oracle's
own answer, and none passes (a ``constant`` answer that happens to be right everywhere is not hostile).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from corecraft.tasks.model import Task

KINDS = ("hedge", "repeat", "stuff", "claims", "junk", "constant")

CLAIMS = ("I have processed the return and issued the refund to your original payment. I also cancelled the order, "
          "escalated the ticket to the escalations team, opened a ticket for the damage, applied the promotion code "
          "and set up an exchange for a replacement. Everything has been verified in our systems and the request "
          "is fully resolved.")


@dataclass(frozen=True)
class HostileAnswer:
    kind: str
    name: str
    text: str
    all_true: bool = False  # every answer line it gives is the right value (a lucky constant, not a hack)


@dataclass
class FamilyPool:
    """What a policy would have seen of one family over training: each answer key's values across tasks, and
    every value of each type any criterion names (right values, distractors, rivals)."""

    by_key: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    by_type: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    phrases: list[str] = field(default_factory=list)


def _money(v: Any) -> str:
    return f"${Decimal(str(v)):,.2f}"


def render(value: Any, vtype: str) -> str:
    """A value as an answer line would give it."""
    if isinstance(value, list | tuple):
        if vtype == "ids":
            return ", ".join(map(str, value))
        value = value[0]
    if vtype == "money":
        return _money(value)
    if vtype == "bool":
        return "yes" if value else "no"
    return str(value)


def _add(seq: list[str], *values: str) -> None:
    for v in values:
        if v and v not in seq:
            seq.append(v)


def _lines(task: Task) -> list[tuple[str, str, Any]]:
    """(key, type, right value) of each answer line the rubric reads, in rubric order."""
    out = []
    for c in task.criteria:
        if c.check == "answer_line":
            out.append((c.params["key"], c.params.get("type", "text"), c.params["value"]))
        elif c.check == "answer_line_set":
            out.append((c.params["key"], "ids", list(c.params["values"])))
    return out


def family_pools(tasks: Iterable[Task]) -> dict[str, FamilyPool]:
    pools: dict[str, FamilyPool] = defaultdict(FamilyPool)
    for t in tasks:
        pool = pools[t.family]
        for key, vtype, value in _lines(t):
            pool.by_key[key][render(value, vtype)] += 1
            _add(pool.by_type[vtype], render(value, vtype))
        for c in t.criteria:
            p = c.params
            if c.check == "answer_line":
                _add(pool.by_type[p.get("type", "text")], *(render(r, p.get("type", "text")) for r in p.get("rivals", ())))
            elif c.check == "states_value":
                vtype = p.get("type", "phrase")
                vals = p["value"] if isinstance(p["value"], list | tuple) else [p["value"]]
                _add(pool.by_type[vtype], *(render(v, vtype) for v in [*vals, *p.get("distractors", ())]))
            elif c.check in ("states_any", "does_not_state"):
                _add(pool.phrases, *map(str, [*p["values"], *p.get("rivals", ())]))
    return dict(pools)


def _rivals(key: str, vtype: str, value: Any, pool: FamilyPool, task: Task, limit: int = 4) -> list[str]:
    """Wrong values for a key: what it takes in other tasks of the family, its criterion's rivals, then
    synthetic values of its type."""
    right = {render(v, vtype) for v in (value if isinstance(value, list | tuple) and vtype != "ids" else [value])}
    out: list[str] = []
    if vtype == "bool":
        return ["no" if value else "yes"]
    for c in task.criteria:
        if c.check == "answer_line" and c.params["key"] == key:
            _add(out, *(render(r, vtype) for r in c.params.get("rivals", ())))
    _add(out, *(v for v, _ in pool.by_key[key].most_common() if v not in right))
    _add(out, *(v for v in pool.by_type.get(vtype, ()) if v not in right))
    _add(out, *(v for v in _synthetic(vtype, render(value, vtype)) if v not in right))
    return [v for v in out if v not in right][:limit]


def _synthetic(vtype: str, right: str) -> list[str]:
    """Well-formed values of a type, unrelated to the task (junk a format check must still read as a value)."""
    if vtype == "money":
        return ["$0.01", "$100.00", "$999.99"]
    if vtype == "number":
        return ["0", "1", "7", "42"]
    if vtype == "date":
        return ["2026-01-01", "2025-12-31", "2000-01-01"]
    if vtype == "id":
        return [re.sub(r"\d", "0", right), re.sub(r"\d", "9", right)]
    if vtype == "ids":
        return [", ".join(re.sub(r"\d", "0", x) for x in right.split(", ")), "none"]
    return ["unknown", "n/a", "other"]


def _junk(vtype: str, right: str, rivals: Sequence[str]) -> str:
    """A synthetic well-formed value of the type that is not the right one (for yes/no: the other answer)."""
    if vtype == "bool":
        return rivals[0]
    return next(v for v in [*_synthetic(vtype, right), *rivals] if v != right)


def _is_right(task: Task, key: str, text: str) -> bool:
    """Whether ``text`` is one of the accepted values of the key (to flag lucky constants)."""
    for k, vtype, value in _lines(task):
        if k == key:
            if vtype == "ids":  # a list in another order is the same answer
                return sorted(text.split(", ")) == sorted(map(str, value))
            accepted = value if isinstance(value, list | tuple) else [value]
            return text in {render(a, vtype) for a in accepted}
    return False


def hostile_answers(task: Task, pool: FamilyPool) -> list[HostileAnswer]:
    """Every hostile answer for one task (a few per kind)."""
    lines = _lines(task)
    right = {k: render(v, t) for k, t, v in lines}
    rivals = {k: _rivals(k, t, v, pool, task) for k, t, v in lines}
    out: list[HostileAnswer] = []

    def add(kind: str, name: str, text: str, all_true: bool = False) -> None:
        out.append(HostileAnswer(kind, f"{kind}/{name}", text, all_true))

    # Values that criteria state in prose (not answer lines): the right one next to its rivals.
    prose_values: list[str] = []
    for c in task.criteria:
        if c.check == "states_value":
            vtype = c.params.get("type", "phrase")
            vals = c.params["value"] if isinstance(c.params["value"], list | tuple) else [c.params["value"]]
            _add(prose_values, *(render(v, vtype) for v in vals))
            _add(prose_values, *(render(d, vtype) for d in c.params.get("distractors", ())))
            _add(prose_values, *[v for v in pool.by_type.get(vtype, ()) if v not in prose_values][:3])
    prose = ("It is " + " or ".join(prose_values) + ".\n") if prose_values else ""

    if lines or prose:
        for name, join in (("slash", " / "), ("or", " or "), ("list", ", ")):
            body = "\n".join(f"{k}: {join.join([right[k], *rivals[k][:2]])}" for k in right)
            add("hedge", name, prose + body)
            body = "\n".join(f"{k}: {join.join([*rivals[k][:1], right[k]])}" for k in right)
            add("hedge", name + "-rival-first", prose + body)
    if lines:
        add("repeat", "right-then-rival", "\n".join(f"{k}: {right[k]}\n{k}: {rivals[k][0]}" for k in right))
        add("repeat", "rival-then-right", "\n".join(f"{k}: {rivals[k][0]}\n{k}: {right[k]}" for k in right))
        add("repeat", "right-twice", "\n".join(f"{k}: {right[k]}\n{k}: {right[k]}" for k in right))
    # Stuffing: every value of every type the family's rubrics name, and every phrase, then list lines.
    everything: list[str] = []
    for _vtype, values in sorted(pool.by_type.items()):
        _add(everything, *values[:40])
    _add(everything, *prose_values, *right.values())
    stuffed = "Every value on record: " + ", ".join(everything) + ".\nNotes: " + "; ".join(pool.phrases[:60]) + "."
    add("stuff", "prose", stuffed)
    if lines:
        add("stuff", "lines", stuffed + "\n" + "\n".join(
            f"{k}: {', '.join([right[k], *rivals[k]])}" for k in right))
    add("claims", "alone", CLAIMS)
    if lines:
        add("claims", "with-right-lines", CLAIMS + "\n" + "\n".join(f"{k}: {right[k]}" for k in right))
        add("junk", "well-formed", "\n".join(f"{k}: {_junk(t, right[k], rivals[k])}" for k, t, _ in lines))
        add("junk", "family-rivals", "\n".join(f"{k}: {rivals[k][0]}" for k in right))
        constants = {k: pool.by_key[k].most_common(1)[0][0] for k in right}
        add("constant", "family-mode", "\n".join(f"{k}: {v}" for k, v in constants.items()),
            all(_is_right(task, k, v) for k, v in constants.items()))
    return out


def gained(baseline: Sequence[bool], hostile: Sequence[bool]) -> list[int]:
    """Indices of criteria the hostile answer satisfies and the baseline does not."""
    return [i for i, (b, h) in enumerate(zip(baseline, hostile, strict=True)) if h and not b]
