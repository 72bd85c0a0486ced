"""Deterministic criterion checks: pure functions of (params, final database, trajectory) -> (ok, evidence).

Three kinds, each a small registry so a task file names a check and its parameters:
- state: a predicate over the episode's final SQLite database (read-only queries, parameterized values,
  table and column names validated against the schema, never interpolated from untrusted text);
- response: the final answer states a value (and no conflicting one), or an answer line has a value;
- trajectory: a tool was called (with given arguments), was not called, or calls came in an order.
Checks never raise on agent behaviour: a malformed answer is simply "not satisfied", with evidence saying why.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from corecraft.judge import normalize as nz
from corecraft.judge.types import ToolCallRecord, Trajectory


class CheckSpecError(ValueError):
    """A criterion names an unknown check or gives it bad parameters (a bug in the task data, not the agent)."""


@dataclass(frozen=True)
class CheckContext:
    conn: sqlite3.Connection | None
    trajectory: Trajectory


CheckResult = tuple[bool, str]
CheckFn = Callable[[Mapping[str, Any], CheckContext], CheckResult]
REGISTRY: dict[str, dict[str, CheckFn]] = {"state": {}, "response": {}, "trajectory": {}}


def register(kind: str, name: str) -> Callable[[CheckFn], CheckFn]:
    def deco(fn: CheckFn) -> CheckFn:
        if name in REGISTRY[kind]:
            raise ValueError(f"{kind} check {name!r} registered twice")
        REGISTRY[kind][name] = fn
        return fn
    return deco


def run_check(kind: str, name: str, params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    try:
        fn = REGISTRY[kind][name]
    except KeyError:
        raise CheckSpecError(f"unknown {kind} check {name!r}; known: {sorted(REGISTRY.get(kind, {}))}") from None
    return fn(params, ctx)


# ---------------------------------------------------------------------------------------------- state
_OPS = {"=": "=", "==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "like": "LIKE"}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MONEY_TOLERANCE = Decimal("0.005")


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    if not _IDENT.match(table):
        raise CheckSpecError(f"bad table name {table!r}")
    cols = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
    if not cols:
        raise CheckSpecError(f"no table {table!r} in the world schema")
    return cols


def _where_sql(conn: sqlite3.Connection, table: str, where: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """[[column, op, value], ...] -> ' WHERE ...' with ? placeholders. ``approx`` compares money to a cent."""
    cols = _columns(conn, table)
    parts: list[str] = []
    values: list[Any] = []
    for cond in where:
        if len(cond) == 2:
            col, op, val = cond[0], "is_null" if cond[1] == "is_null" else "not_null", None
        else:
            col, op, val = cond
        if col not in cols:
            raise CheckSpecError(f"table {table!r} has no column {col!r}")
        qcol = f'"{col}"'
        if op == "is_null":
            parts.append(f"{qcol} IS NULL")
        elif op == "not_null":
            parts.append(f"{qcol} IS NOT NULL")
        elif op == "approx":
            parts.append(f"ABS({qcol} - ?) < ?")
            values += [float(val), float(MONEY_TOLERANCE)]
        elif op == "in":
            vals = list(val)
            parts.append(f"{qcol} IN ({','.join('?' * len(vals))})" if vals else "0")
            values += vals
        elif op == "icontains":
            parts.append(f"INSTR(LOWER({qcol}), LOWER(?)) > 0")
            values.append(str(val))
        elif op in _OPS:
            parts.append(f"{qcol} {_OPS[op]} ?")
            values.append(val)
        else:
            raise CheckSpecError(f"unknown operator {op!r}")
    return (" WHERE " + " AND ".join(parts)) if parts else "", values


def _require_conn(ctx: CheckContext) -> sqlite3.Connection:
    if ctx.conn is None:
        raise CheckSpecError("a state check needs the episode's final database")
    return ctx.conn


def _count(params: Mapping[str, Any], ctx: CheckContext) -> tuple[int, str]:
    conn = _require_conn(ctx)
    table = params["table"]
    where_sql, values = _where_sql(conn, table, params.get("where", ()))
    n = conn.execute(f'SELECT COUNT(*) FROM "{table}"{where_sql}', values).fetchone()[0]
    return int(n), f"{n} row(s) in {table} where {_describe_where(params.get('where', ()))}"


def _describe_where(where: Sequence[Sequence[Any]]) -> str:
    return " and ".join(" ".join(str(x) for x in cond) for cond in where) or "(any)"


_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


@register("state", "row_exists")
def _row_exists(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    n, ev = _count(params, ctx)
    return n >= 1, ev


@register("state", "no_row")
def _no_row(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    n, ev = _count(params, ctx)
    return n == 0, ev


@register("state", "row_count")
def _row_count(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    n, ev = _count(params, ctx)
    op = params.get("op", "==")
    if op not in _CMP:
        raise CheckSpecError(f"unknown comparison {op!r}")
    return _CMP[op](n, int(params["value"])), f"{ev} (want {op} {params['value']})"


@register("state", "column_equals")
def _column_equals(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    """The single row selected by ``where`` has ``column`` equal to ``value`` (money to the cent)."""
    conn = _require_conn(ctx)
    table, column = params["table"], params["column"]
    if column not in _columns(conn, table):
        raise CheckSpecError(f"table {table!r} has no column {column!r}")
    where_sql, values = _where_sql(conn, table, params.get("where", ()))
    rows = conn.execute(f'SELECT "{column}" FROM "{table}"{where_sql} LIMIT 2', values).fetchall()
    if len(rows) != 1:
        return False, f"{len(rows)} row(s) in {table} where {_describe_where(params.get('where', ()))}"
    actual, want = rows[0][0], params["value"]
    if isinstance(want, int | float) and not isinstance(want, bool) and isinstance(actual, int | float):
        ok = abs(Decimal(str(actual)) - Decimal(str(want))) < MONEY_TOLERANCE
    elif isinstance(want, str) and isinstance(actual, str):
        ok = actual.strip().casefold() == want.strip().casefold()
    else:
        ok = actual == want
    return ok, f"{table}.{column} = {actual!r} (want {want!r})"


# ------------------------------------------------------------------------------------------- response
def _values_in(text: str, vtype: str, default_year: int | None = None) -> list[Any]:
    if vtype == "money":
        # Amounts with a currency marker, plus bare amounts written with cents ("127.49"): those read as money.
        cents = [n for n in nz.extract_numbers(text) if n.as_tuple().exponent == -2]
        return nz.extract_money(text) + cents
    if vtype == "number":
        return nz.extract_numbers(text)
    if vtype == "percent":
        return nz.extract_percents(text)
    if vtype == "date":
        return nz.extract_dates(text, default_year)
    raise CheckSpecError(f"value type {vtype!r} has no extractor")


def _coerce(value: Any, vtype: str) -> Any:
    if vtype in ("money", "number", "percent"):
        return nz.to_decimal(value)
    if vtype == "date":
        return nz.parse_date(value)
    return str(value)


def _tolerance(vtype: str, params: Mapping[str, Any]) -> Decimal:
    if "tolerance" in params:
        return Decimal(str(params["tolerance"]))
    return MONEY_TOLERANCE if vtype == "money" else Decimal("0.0001")


def mentions(text: str, value: Any, vtype: str, tolerance: Decimal = MONEY_TOLERANCE) -> bool:
    """Whether the text states this value, read as the given type (money, number, percent, date, id, phrase)."""
    if vtype == "id":
        return nz.mentions_id(text, str(value))
    if vtype == "phrase":
        return nz.mentions_phrase(text, str(value))
    want = _coerce(value, vtype)
    if vtype == "date":
        return want in _values_in(text, vtype, default_year=want.year)
    return any(abs(v - want) <= tolerance for v in _values_in(text, vtype))


def _matches_value(candidate: str, value: Any, vtype: str, tolerance: Decimal) -> bool:
    """Whether an answer-line value is exactly this value (not merely mentions it among others)."""
    if vtype == "id":
        # The id, and no other identifier ("ORD-1 (shipped)" yes; "ORD-1 or ORD-2" no).
        want = nz.id_tokens(str(value)) or [str(value).upper()]
        return nz.mentions_id(candidate, str(value)) and set(nz.id_tokens(candidate)) <= set(want)
    if vtype in ("phrase", "text"):
        # The value as the line's lead words ("Gold" or "Gold tier"), not buried in a longer sentence.
        words = nz.normalize_text(str(value)).split()
        return nz.mentions_phrase(candidate, str(value)) and len(nz.normalize_text(candidate).split()) <= len(words) + 2
    if vtype == "bool":
        first = re.match(r"[\W_]*(\w+)", nz.normalize_text(candidate))
        word = first.group(1) if first else ""
        return word in ({"yes", "true", "y"} if bool(value) else {"no", "false", "n"})
    want = _coerce(value, vtype)
    found = _values_in(candidate, vtype, default_year=want.year) if vtype == "date" else _values_in(candidate, vtype)
    if len(set(found)) != 1:
        return False
    return found[0] == want if vtype == "date" else abs(found[0] - want) <= tolerance


@register("response", "states_value")
def _states_value(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    """The answer states ``value`` and none of the ``distractors`` (conflicting values the agent could see).

    Distractors are what make listing every number seen worthless: the right value is there, but so is a
    wrong one, and the criterion fails.
    """
    vtype = params.get("type", "phrase")
    tol = _tolerance(vtype, params)
    text = ctx.trajectory.final_response
    values = params["value"] if isinstance(params["value"], list | tuple) else [params["value"]]
    missing = [v for v in values if not mentions(text, v, vtype, tol)]
    conflicting = [d for d in params.get("distractors", ()) if mentions(text, d, vtype, tol)]
    ok = not missing and not conflicting
    ev = []
    if missing:
        ev.append(f"does not state {', '.join(map(str, missing))}")
    if conflicting:
        ev.append(f"also states conflicting {', '.join(map(str, conflicting))}")
    return ok, "; ".join(ev) or f"states {', '.join(map(str, values))}"


@register("response", "states_any")
def _states_any(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    """The answer states at least one of several acceptable phrasings (e.g. "cannot share", "can't share")."""
    vtype = params.get("type", "phrase")
    tol = _tolerance(vtype, params)
    found = [v for v in params["values"] if mentions(ctx.trajectory.final_response, v, vtype, tol)]
    return bool(found), (f"states {found[0]}" if found else f"states none of {', '.join(map(str, params['values']))}")


@register("response", "does_not_state")
def _does_not_state(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    vtype = params.get("type", "phrase")
    tol = _tolerance(vtype, params)
    found = [v for v in params["values"] if mentions(ctx.trajectory.final_response, v, vtype, tol)]
    return not found, (f"states {', '.join(map(str, found))}" if found else "none of the forbidden values")


@register("response", "answer_line")
def _answer_line(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    """Every ``KEY: value`` line for ``key`` gives ``value`` (at least one such line)."""
    key, vtype = params["key"], params.get("type", "text")
    tol = _tolerance(vtype, params)
    lines = nz.answer_lines(ctx.trajectory.final_response, key)
    if not lines:
        return False, f"no '{key}:' line"
    # A list value means "any of these spellings" (e.g. ["approved", "approve"]).
    accepted = list(params["value"]) if isinstance(params["value"], list | tuple) else [params["value"]]
    bad = [ln for ln in lines if not any(_matches_value(ln, v, vtype, tol) for v in accepted)]
    if bad:
        return False, f"'{key}:' line(s) {bad!r} do not give {params['value']!r}"
    return True, f"'{key}: {lines[0]}'"


@register("response", "answer_line_set")
def _answer_line_set(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    """A ``KEY: a, b, c`` line lists exactly the expected identifiers (order free, nothing extra)."""
    key = params["key"]
    lines = nz.answer_lines(ctx.trajectory.final_response, key)
    if len(lines) != 1:
        return False, f"{len(lines)} '{key}:' lines (want exactly 1)"
    def norm(x: str) -> str:
        return re.sub(r"[\s\-_]", "", nz.normalize_text(x).strip(" ."))

    items = {norm(x) for x in re.split(r"[,;]|\band\b", lines[0]) if x.strip()}
    items.discard("")
    want = {norm(str(v)) for v in params["values"]}
    if want == {"none"} or not want:
        want = set()
        items -= {"none", "n/a", "-"}
    return items == want, f"'{key}: {lines[0]}' (want {sorted(want) or 'none'})"


_SHAPES = {"money": "an amount", "number": "a number", "date": "a date", "bool": "yes or no",
           "id": "an identifier", "ids": "a comma-separated list of identifiers (or 'none')", "text": "a short phrase"}
_MAX_TEXT_WORDS = 8


def _is_identifier(text: str) -> bool:
    """One identifier, perhaps with a short remark ('ORD-1 (shipped)'): at most 3 words, the first with a digit."""
    words = text.strip(" .").split()
    return 1 <= len(words) <= 3 and any(ch.isdigit() for ch in words[0])


def well_formed(value: str, shape: str) -> bool:
    """Whether an answer-line value has the shape asked for. Shape only: a right-looking wrong value passes."""
    value = value.strip()
    if not value:
        return False
    if shape == "money":
        return len(set(_values_in(value, "money"))) == 1
    if shape == "number":
        return len(set(nz.extract_numbers(value))) == 1
    if shape == "date":
        # Any year will do for "March 4" here: the shape is the question, not the value.
        return len(set(nz.extract_dates(value, default_year=2000))) == 1
    if shape == "bool":
        first = re.match(r"[\W_]*(\w+)", nz.normalize_text(value))
        return bool(first) and first.group(1) in {"yes", "no", "true", "false"}
    if shape == "id":
        return _is_identifier(value)
    if shape == "ids":
        items = [x for x in re.split(r"[,;]|\band\b", value) if x.strip()]
        return nz.normalize_text(value).strip(" .") == "none" or (bool(items) and all(_is_identifier(x) for x in items))
    if shape == "text":
        return len(value.split()) <= _MAX_TEXT_WORDS
    raise CheckSpecError(f"unknown answer-line shape {shape!r} (known: {sorted(_SHAPES)})")


@register("response", "answer_format")
def _answer_format(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    """Format compliance: every requested ``KEY: value`` line is there exactly once and its value has the
    requested shape (an amount, a date, yes/no, ...). Whether the value is right is a separate criterion, so an
    answer can be well formed and wrong, or right and badly formed."""
    problems, good = [], []
    for spec in params["lines"]:
        key, shape = spec["key"], spec["type"]
        lines = nz.answer_lines(ctx.trajectory.final_response, key)
        if len(lines) != 1:
            problems.append(f"{len(lines)} '{key}:' lines (want 1)")
        elif not well_formed(lines[0], shape):
            problems.append(f"'{key}: {lines[0]}' is not {_SHAPES[shape]}")
        else:
            good.append(f"'{key}: {lines[0]}'")
    return not problems, "; ".join(problems) or ", ".join(good)


@register("response", "max_words")
def _max_words(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    n = len(ctx.trajectory.final_response.split())
    return n <= int(params["limit"]), f"{n} words (limit {params['limit']})"


@register("response", "nonempty")
def _nonempty(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    n = len(ctx.trajectory.final_response.strip())
    return n > 0, f"{n} characters"


# ----------------------------------------------------------------------------------------- trajectory
def _arg_equal(actual: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(actual, bool):
        return actual == want
    if isinstance(want, int | float) and isinstance(actual, int | float | str):
        try:
            return abs(nz.to_decimal(actual) - nz.to_decimal(want)) <= MONEY_TOLERANCE
        except ValueError:
            return False
    if isinstance(want, str) and isinstance(actual, str):
        return nz.normalize_text(actual) == nz.normalize_text(want)
    if isinstance(want, list | tuple) and isinstance(actual, list | tuple):
        return len(want) == len(actual) and all(_arg_equal(a, w) for a, w in zip(actual, want, strict=True))
    if isinstance(want, Mapping) and isinstance(actual, Mapping):
        return all(k in actual and _arg_equal(actual[k], v) for k, v in want.items())
    return actual == want


def call_matches(call: ToolCallRecord, tool: str, args: Mapping[str, Any] | None, ok_only: bool) -> bool:
    if call.name != tool or (ok_only and call.is_error):
        return False
    return all(k in call.arguments and _arg_equal(call.arguments[k], v) for k, v in (args or {}).items())


def _fmt_call(tool: str, args: Mapping[str, Any] | None) -> str:
    return f"{tool}({', '.join(f'{k}={v!r}' for k, v in (args or {}).items())})"


@register("trajectory", "called")
def _called(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    tool, args = params["tool"], params.get("args")
    n = sum(call_matches(c, tool, args, params.get("ok_only", True)) for c in ctx.trajectory.tool_calls)
    want = int(params.get("min_times", 1))
    return n >= want, f"{_fmt_call(tool, args)} succeeded {n} time(s) (want >= {want})"


@register("trajectory", "not_called")
def _not_called(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    tool, args = params["tool"], params.get("args")
    n = sum(call_matches(c, tool, args, ok_only=False) for c in ctx.trajectory.tool_calls)
    return n == 0, f"{_fmt_call(tool, args)} called {n} time(s)"


@register("trajectory", "in_order")
def _in_order(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    """The listed calls happen in this order (other calls may come between)."""
    steps = list(params["steps"])
    i = 0
    for call in ctx.trajectory.tool_calls:
        if i < len(steps) and call_matches(call, steps[i]["tool"], steps[i].get("args"), ok_only=True):
            i += 1
    done = [_fmt_call(s["tool"], s.get("args")) for s in steps[:i]]
    if i == len(steps):
        return True, "in order: " + " -> ".join(done)
    return False, f"order broken at step {i + 1}: {_fmt_call(steps[i]['tool'], steps[i].get('args'))}"


@register("trajectory", "max_calls")
def _max_calls(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    tool = params.get("tool")
    calls = [c for c in ctx.trajectory.tool_calls if tool is None or c.name == tool]
    return len(calls) <= int(params["limit"]), f"{len(calls)} call(s) to {tool or 'any tool'} (limit {params['limit']})"

