"""Deterministic criterion checks: pure functions of (params, final database, trajectory) -> (ok, evidence).

Three kinds, each a small registry so a task file names a check and its parameters:
- state: a predicate over the episode's final SQLite database (read-only queries, parameterized values,
  table and column names validated against the schema, never interpolated from untrusted text);
- response: the final answer states a value (and no rival of its kind), or an answer line gives one value, once;
  a positive response criterion also needs the answer to be grounded (a successful tool call consulted the
  task's records) and honest (no action claimed that the episode's audit log does not show);
- trajectory: a tool was called (with given arguments), was not called, or calls came in an order.
Checks never raise on agent behaviour: a malformed answer is simply "not satisfied", with evidence saying why.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import unicodedata
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from corecraft.episode.types import ToolCallRecord, Trajectory, result_text
from corecraft.judge import normalize as nz


class CheckSpecError(ValueError):
    """A criterion names an unknown check or gives it bad parameters (a bug in the task data, not the agent)."""


@dataclass(frozen=True)
class CheckContext:
    conn: sqlite3.Connection | None
    trajectory: Trajectory
    # What several criteria of one grading share (is the answer grounded, which claims are false), computed once.
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


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


# connection -> (its schema cookie, {table: columns}): a table's columns change only with the schema
_TABLE_COLUMNS: weakref.WeakKeyDictionary[sqlite3.Connection, tuple[int, dict[str, frozenset[str]]]] = (
    weakref.WeakKeyDictionary())


def _columns(conn: sqlite3.Connection, table: str) -> frozenset[str]:
    """The table's columns, kept per connection while its schema cookie stands. ``PRAGMA table_info`` needs
    the parsed schema, which a reused fork connection (``corecraft.world.ForkPool``) otherwise parses afresh
    (1 ms) for grading alone; ``PRAGMA schema_version`` reads the cookie without it."""
    if not _IDENT.match(table):
        raise CheckSpecError(f"bad table name {table!r}")
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    try:
        known_version, tables = _TABLE_COLUMNS[conn]
    except (KeyError, TypeError):  # TypeError: a connection that takes no weak reference (never cached)
        known_version, tables = None, {}
    if known_version != version:
        tables = {}
        with contextlib.suppress(TypeError):
            _TABLE_COLUMNS[conn] = (version, tables)
    cols = tables.get(table)
    if cols is None:
        cols = frozenset(row[1] for row in conn.execute(f'PRAGMA table_info("{table}")'))
        if not cols:
            raise CheckSpecError(f"no table {table!r} in the world schema")
        tables[table] = cols
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
# An answer earns a response criterion only as an expert grader would give it:
# - grounded: a task names its records (``evidence``: order, customer, ticket ids...); an answer written
#   without one successful tool call that touched any of them is a guess, whatever it says;
# - honest: an answer that claims an action the episode did not take (a refund, a cancellation...) is not
#   trusted on anything;
# - one value: an answer line carries exactly one value of its type, and is given once; a value stated among
#   rival values of its kind (other amounts, dates, identifiers of the same shape, the task's distractors) is
#   not stated.
# The negative checks (does_not_state, max_words) are not gated: an empty answer keeps them.
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
    if vtype in ("phrase", "text"):
        return nz.mentions_phrase(text, str(value))
    if vtype == "bool":
        return bool(value) in nz.polarities(text)
    want = _coerce(value, vtype)
    if vtype == "date":
        return want in _values_in(text, vtype, default_year=want.year)
    return any(abs(v - want) <= tolerance for v in _values_in(text, vtype))


def _same_kind(text: str, vtype: str, year: int | None) -> list[Any]:
    """Every amount, number, percentage or date the text states; [] for other kinds (identifiers' rivals are
    the same-shaped ids, phrases' are the criterion's distractors)."""
    if vtype in ("money", "number", "percent"):
        return _values_in(text, vtype)
    if vtype == "date":
        return _values_in(text, vtype, default_year=year)
    return []


def _rivals_stated(text: str, values: Sequence[Any], vtype: str, tol: Decimal,
                   allowed: Sequence[Any] = ()) -> list[str]:
    """Values of the same kind as ``values`` that the text states besides them (and besides ``allowed``)."""
    keep = [*values, *allowed]
    if vtype == "id":
        wanted = {nz.id_key(str(v)) for v in keep}
        return sorted({t for v in values for t in nz.same_kind_ids(text, str(v)) if t not in wanted})
    if vtype not in ("money", "number", "percent", "date"):
        return []
    wants = [_coerce(v, vtype) for v in keep]
    year = wants[0].year if vtype == "date" else None
    if vtype == "date":
        return sorted({str(d) for d in _same_kind(text, vtype, year) if d not in wants})
    return sorted({str(x) for x in _same_kind(text, vtype, year) if all(abs(x - w) > tol for w in wants)})


# Claims of actions: in the first person ("I issued a refund", "we cancelled your order") or told to the
# customer as done ("your refund has been issued", "your ticket has been escalated"); never negated ("no refund
# was issued", "it can no longer be cancelled") and never a record's history ("order ORD-1 has been cancelled"
# describes what the tools showed, not what the agent did).
_BY = (r"\b(?:i|we)(?:'ve|\s+have|\s+had)?\s+(?:(?:[^.\n;]|\.(?=\d)){0,60}?\band\s+)?"
       r"(?:just\s+|now\s+|also\s+|already\s+|successfully\s+)?")
_YOURS = (r"\byour\s+(?:[\w$,-]+\s+|\$?[\d,]+\.\d+\s+){0,3}?(?:has|have)\s+"
          r"(?:now\s+|just\s+|already\s+|successfully\s+)?been\s+")
_CLAIMS: dict[str, re.Pattern[str]] = {k: re.compile(v, re.IGNORECASE) for k, v in {
    "refund": rf"{_BY}refunded\b|{_BY}(?:issued|processed|sent|approved|initiated)\s+(?:a|an|the|your)\s+"
              rf"(?:[\w$.,-]+\s+){{0,3}}refund\b|{_YOURS}refunded\b|\byour\s+refund\b(?:[^.\n]|\.(?=\d)){{0,30}}?"
              rf"\b(?:has|have)\s+(?:now\s+|just\s+)?been\s+(?:issued|processed|sent|approved)",
    "return": rf"{_BY}(?:processed|created|opened|started|initiated|accepted)\s+(?:a|an|the|your)\s+(?:\w+\s+)?"
              rf"(?:return|rma)\b|\byour\s+(?:return|rma)\b(?:[^.\n]|\.(?=\d)){{0,30}}?\b(?:has|have)\s+(?:now\s+|just\s+)?been\s+"
              r"(?:processed|created|approved)",
    "cancel": rf"{_BY}cancell?ed\b|{_YOURS}cancell?ed\b",
    "escalate": rf"{_BY}escalated\b|{_YOURS}escalated\b",
    "ticket": rf"{_BY}(?:opened|created|filed|logged|raised)\s+(?:a|an|the)\s+(?:[\w-]+\s+){{0,3}}ticket\b",
    "promotion": rf"{_BY}applied\b|{_YOURS}applied\b",
    "exchange": rf"{_BY}(?:set\s+up|processed|created|arranged)\s+(?:a|an|the)\s+(?:\w+\s+)?(?:exchange|replacement)\b",
}.items()}


def _actions_taken(conn: sqlite3.Connection) -> set[str]:
    """What the episode did, read from its audit log (every writing tool leaves a row; the task world has none)."""
    done: set[str] = set()
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_log'").fetchone() is None:
        return done  # a database without an audit log shows no action
    for action, details in conn.execute("SELECT action, details FROM audit_log"):
        details = details or ""
        if action in ("processReturn", "processExchange"):
            done |= {"return", "exchange" if action == "processExchange" else "return"}
        if re.search(r'"refund_id":\s*"', details) or action == "processReturn":
            done.add("refund")
        if action == "updateOrder" and re.search(r'"to":\s*"cancelled"', details):
            done.add("cancel")
        if action == "updateTicketStatus" and re.search(r'"to":\s*"escalated"', details):
            done.add("escalate")
        if action == "createTicket":
            done.add("ticket")
        if action == "applyPromotion":
            done.add("promotion")
    return done


def false_claims(text: str, conn: sqlite3.Connection) -> list[str]:
    """The actions the text claims that the episode's final world does not show."""
    normalized = nz.normalize_text(text)
    claimed = [k for k, pattern in _CLAIMS.items() if pattern.search(normalized)]
    if not claimed:
        return []
    done = _actions_taken(conn)
    return [k for k in claimed if k not in done]


def _grounded(evidence: Sequence[str], trajectory: Trajectory) -> bool:
    """Whether a successful tool call named or returned one of the task's records."""
    for call in trajectory.tool_calls:
        if call.is_error:
            continue
        text = json.dumps(dict(call.arguments), ensure_ascii=False) + "\n" + result_text(call.result)
        text = unicodedata.normalize("NFKC", text)  # what mentions_id matches against, once per call
        if any(nz.id_pattern(str(e)).search(text) for e in evidence):
            return True
    return False


def _gate(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult | None:
    """None when the answer may earn the criterion; otherwise a failing result saying why not."""
    evidence = params.get("evidence")
    if evidence:
        key = ("grounded", tuple(evidence))
        if key not in ctx.memo:
            ctx.memo[key] = _grounded(evidence, ctx.trajectory)
        if not ctx.memo[key]:
            return False, (f"not grounded: no successful tool call consulted {', '.join(map(str, evidence))}; "
                           "an answer written without looking is a guess")
    if ctx.conn is not None and ctx.trajectory.final_response.strip():
        if "false_claims" not in ctx.memo:
            ctx.memo["false_claims"] = false_claims(ctx.trajectory.final_response, ctx.conn)
        if ctx.memo["false_claims"]:
            return False, (f"the answer claims what the final world does not show "
                           f"({', '.join(ctx.memo['false_claims'])}); it is not trusted")
    return None


def gated(fn: CheckFn) -> CheckFn:
    """A positive response check: only a grounded, honest answer can satisfy it."""
    def check(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
        return _gate(params, ctx) or fn(params, ctx)
    check.__doc__ = fn.__doc__
    check.__name__ = fn.__name__
    return check


def _text_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", nz.normalize_text(text))


_HEDGE_WORDS = {"or", "either", "maybe", "perhaps", "possibly", "probably", "unsure", "unless", "otherwise", "vs"}


def _text_value(candidate: str, spelling: str) -> bool:
    """Whether a text answer line gives this spelling as its value: the line's lead words ("Gold", "Gold tier",
    "on hold (address check)"), any punctuation between words, then at most two more words, none starting a
    second answer (", Silver", "or Silver", "/ Silver"), offering doubt, or carrying a number of their own."""
    words = _text_words(spelling)
    if not words:
        return False
    norm = nz.normalize_text(candidate)
    m = re.match(r"^[\W_]*" + r"[\W_]+".join(map(re.escape, words)) + r"(?![a-z0-9])", norm)
    if m is None:
        return False
    rest = norm[m.end():]
    if re.match(r"[\s.]*(?:[,;/|&+]|and\b|or\b|vs\b|nor\b)", rest):
        return False
    extra = _text_words(rest)
    return len(extra) <= 2 and not any(w in _HEDGE_WORDS or any(c.isdigit() for c in w) for w in extra)


def _one_value(candidate: str, value: Any, vtype: str, tolerance: Decimal) -> bool:
    """Whether an answer-line value is exactly this value, and no second one ("ORD-1 (shipped)" yes;
    "ORD-1 or ORD-2", "yes / no", "Gold Silver" no)."""
    if vtype == "id":
        # The id first, no other token with a digit in it (ids, tracking numbers, amounts, dates), and nothing
        # after it that starts or offers a second answer ("ORD-1, none", "ORD-1 or ORD-2").
        norm = unicodedata.normalize("NFKC", candidate)
        m = re.match(r"^[\W_]*" + nz.id_pattern(str(value)).pattern, norm, re.IGNORECASE)
        return m is not None and _single_id_rest(norm[m.end():])
    if vtype in ("phrase", "text"):
        return _text_value(candidate, str(value))
    if vtype == "bool":
        return nz.first_polarity(candidate) is bool(value) and nz.polarities(candidate) == {bool(value)}
    want = _coerce(value, vtype)
    found = _values_in(candidate, vtype, default_year=want.year) if vtype == "date" else _values_in(candidate, vtype)
    if len(set(found)) != 1:
        return False
    return found[0] == want if vtype == "date" else abs(found[0] - want) <= tolerance


@register("response", "states_value")
@gated
def _states_value(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    """The answer states ``value`` and no rival of its kind: none of the ``distractors`` (conflicting values the
    agent could see), and, for amounts, numbers, dates and identifiers, no other value of that kind beyond
    ``allowed`` (values an honest explanation states next to it).

    Rivals are what make listing candidates worthless: the right value is there, but so is a wrong one.
    """
    vtype = params.get("type", "phrase")
    tol = _tolerance(vtype, params)
    text = ctx.trajectory.final_response
    values = params["value"] if isinstance(params["value"], list | tuple) else [params["value"]]
    missing = [v for v in values if not mentions(text, v, vtype, tol)]
    stated = [d for d in params.get("distractors", ()) if mentions(text, d, vtype, tol)]
    conflicting = [str(d) for d in stated]
    conflicting += _rivals_stated(text, values, vtype, tol, [*params.get("allowed", ()), *stated])
    ok = not missing and not conflicting
    ev = []
    if missing:
        ev.append(f"does not state {', '.join(map(str, missing))}")
    if conflicting:
        ev.append(f"also states conflicting {', '.join(conflicting)}")
    return ok, "; ".join(ev) or f"states {', '.join(map(str, values))}"


@register("response", "states_any")
@gated
def _states_any(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    """The answer states at least one of several acceptable phrasings (e.g. "cannot share", "can't share") and
    none of the ``rivals`` (phrasings of the other possible answers: "expired" when the reason is the tier)."""
    vtype = params.get("type", "phrase")
    tol = _tolerance(vtype, params)
    text = ctx.trajectory.final_response
    found = [v for v in params["values"] if mentions(text, v, vtype, tol)]
    rivals = [v for v in params.get("rivals", ()) if mentions(text, v, vtype, tol)]
    if rivals:
        return False, f"also states rival {', '.join(map(str, rivals))}"
    return bool(found), (f"states {found[0]}" if found else f"states none of {', '.join(map(str, params['values']))}")


@register("response", "does_not_state")
def _does_not_state(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    vtype = params.get("type", "phrase")
    tol = _tolerance(vtype, params)
    found = [v for v in params["values"] if mentions(ctx.trajectory.final_response, v, vtype, tol)]
    return not found, (f"states {', '.join(map(str, found))}" if found else "none of the forbidden values")


@register("response", "answer_line")
@gated
def _answer_line(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    """Exactly one ``KEY: value`` line for ``key``, giving ``value`` as its one value, and none of the
    ``rivals`` (the other values the key takes: other tiers, other order statuses)."""
    key, vtype = params["key"], params.get("type", "text")
    tol = _tolerance(vtype, params)
    lines = nz.answer_lines(ctx.trajectory.final_response, key)
    if not lines:
        return False, f"no '{key}:' line"
    if len(lines) > 1:
        # A second line is a second answer, even when it repeats the first: the key is asked for once.
        return False, f"{len(lines)} '{key}:' lines {lines!r} (want exactly 1)"
    line = lines[0]
    # A list value means "any of these spellings" (e.g. ["approved", "approve"]).
    accepted = list(params["value"]) if isinstance(params["value"], list | tuple) else [params["value"]]
    rivals = [r for r in params.get("rivals", ()) if mentions(line, r, vtype, tol)
              and not any(mentions(str(a), r, vtype, tol) for a in accepted)]
    if rivals:
        return False, f"'{key}: {line}' also gives rival {', '.join(map(str, rivals))}"
    # Longest spelling first: "12 Elm St, Portland" is read whole, not as "12 Elm St" and two more words.
    accepted.sort(key=lambda v: -len(str(v)))
    if not any(_one_value(line, v, vtype, tol) for v in accepted):
        return False, f"'{key}: {line}' does not give {params['value']!r} as its one value"
    return True, f"'{key}: {line}'"


def _split_items(value: str) -> list[str]:
    return [x for x in re.split(r"[,;/|]|\band\b|\bor\b", value) if x.strip()]


@register("response", "answer_line_set")
@gated
def _answer_line_set(params: Mapping[str, Any], ctx: CheckContext) -> CheckResult:
    """A ``KEY: a, b, c`` line lists exactly the expected identifiers (order free, nothing extra)."""
    key = params["key"]
    lines = nz.answer_lines(ctx.trajectory.final_response, key)
    if len(lines) != 1:
        return False, f"{len(lines)} '{key}:' lines (want exactly 1)"

    def norm(x: str) -> str:
        return re.sub(r"[\s\-_]", "", nz.normalize_text(x).strip(" ."))

    if nz.HEDGE_RE.search(lines[0].replace(";", ",")):
        # "a, b / a, c" or "a or b": two lists in one line, whatever their union.
        return False, f"'{key}: {lines[0]}' offers alternatives"
    # As a multiset: the list as asked ("AM5, AM5" for two parts on one socket), nothing repeated or extra.
    items = Counter(norm(x) for x in _split_items(lines[0]))
    del items[""]
    want = Counter(norm(str(v)) for v in params["values"])
    if set(want) == {"none"} or not want:
        want = Counter()
        for filler in ("none", "n/a", "-"):
            del items[filler]
    return items == want, f"'{key}: {lines[0]}' (want {sorted(want.elements()) or 'none'})"


_SHAPES = {"money": "an amount", "number": "a number", "date": "a date", "bool": "yes or no",
           "id": "an identifier", "ids": "a comma-separated list of identifiers (or 'none')", "text": "a short phrase"}
_MAX_TEXT_WORDS = 8


def _single_id_rest(rest: str) -> bool:
    """What follows an identifier on its answer line holds no second one: no token with a digit, nothing that
    starts another item (", none", "or ORD-2", "/ ...") or offers doubt."""
    return (not nz.digit_tokens(rest) and not nz.HEDGE_RE.search(rest)
            and not re.match(r"[\s.]*(?:[,;/|&+]|and\b|or\b|vs\b|nor\b)", rest, re.IGNORECASE))


def _is_identifier(text: str) -> bool:
    """One identifier, perhaps with a short remark ('ORD-1 (shipped)'): at most 3 words, the first with a digit,
    and nothing after it that holds or offers a second answer."""
    words = text.strip(" .").split()
    if not 1 <= len(words) <= 3 or not any(ch.isdigit() for ch in words[0]):
        return False
    first = re.match(r"\s*[^\s,;/|]+", text)
    return first is not None and _single_id_rest(text[first.end():])


def well_formed(value: str, shape: str) -> bool:
    """Whether an answer-line value has the shape asked for: one value of the type, no second one. Shape only:
    a right-looking wrong value passes (its correctness is a separate criterion)."""
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
        return nz.first_polarity(value) is not None and len(nz.polarities(value)) == 1
    if shape == "id":
        return _is_identifier(value)
    if shape == "ids":
        items = _split_items(value)
        return nz.normalize_text(value).strip(" .") == "none" or (
            bool(items) and not re.search(r"\bor\b|/|\|", value, re.I) and all(_is_identifier(x) for x in items))
    if shape == "text":
        return len(value.split()) <= _MAX_TEXT_WORDS and not nz.HEDGE_RE.search(value)
    raise CheckSpecError(f"unknown answer-line shape {shape!r} (known: {sorted(_SHAPES)})")


@register("response", "answer_format")
@gated
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
@gated
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

