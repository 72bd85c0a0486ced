"""Helpers every tool module shares: argument types, pagination, money, the world's clock, ids, audit."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from corecraft.tools.errors import not_found
from corecraft.world.connection import memoized

PAGE_SIZE = 10  # the paper's cap: agents must paginate

# ---- argument types: every string is bounded, every number ranged -------------------------------------
Page = Annotated[int, Field(ge=1, le=10_000, description="Result page, 1-based; 10 results a page.")]
Query = Annotated[
    str,
    Field(min_length=1, max_length=200, description="Free text, matched case-insensitively as a substring."),
]
OrderId = Annotated[str, Field(min_length=1, max_length=64, description="Order id, e.g. 'ORD-200001'.")]
CustomerId = Annotated[str, Field(min_length=1, max_length=64, description="Customer id, e.g. 'CUST-10001'.")]
ProductId = Annotated[str, Field(min_length=1, max_length=64, description="Product id, e.g. 'GPU-0001'.")]
TicketId = Annotated[str, Field(min_length=1, max_length=64, description="Support ticket id, e.g. 'TKT-50001'.")]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]

# Free text (notes, ticket messages) is bounded too, but the bound is checked here rather than advertised as
# ``maxLength`` in the JSON schema: servers that constrain generation with a grammar (llama.cpp and
# llama-cpp-python compile a JSON schema into a GBNF grammar) unroll ``maxLength: N`` into N nested optional
# rules, and N in the thousands crashed llama-cpp-python's server. The trade-off: a grammar no longer stops a
# model at the limit; a longer text is refused with the same error pydantic gives ("String should have at
# most N characters", naming the argument), and the description states the limit.
SCHEMA_MAX_LENGTH = 256  # the longest ``maxLength`` a tool schema advertises (tests/corecraft/tools)


def _at_most(limit: int) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) > limit:
            raise PydanticCustomError("string_too_long", "String should have at most {max_length} characters",
                                      {"max_length": limit})
        return value

    return AfterValidator(check)


LongText = Annotated[str, Field(min_length=1), _at_most(4000)]  # at most 4000 characters; see above
Note = Annotated[str, Field(min_length=1), _at_most(2000)]      # at most 2000 characters; see above
StateCode = Annotated[
    str, Field(min_length=2, max_length=2, description="Two-letter US state code (or DC), e.g. 'CA'.")
]
Quantity = Annotated[int, Field(ge=1, le=1000)]
Usd = Annotated[float, Field(ge=0, le=1_000_000, description="Amount in US dollars.")]


# ---- results ---------------------------------------------------------------------------------------
def usd(cents: int | None) -> float | None:
    return None if cents is None else round(cents / 100, 2)


def cents(amount_usd: float) -> int:
    return round(amount_usd * 100)


def row_dict(row: Mapping[str, Any] | sqlite3.Row) -> dict[str, Any]:
    """A row as a new dict. ``dict(sqlite3.Row)`` reads every key and value through the mapping protocol; zipping
    its keys with its values is about 3x cheaper, and rows become dicts on every tool call."""
    if isinstance(row, sqlite3.Row):
        return dict(zip(row.keys(), row, strict=True))
    return dict(row)


def plain(row: Mapping[str, Any] | sqlite3.Row | None, *, drop: Iterable[str] = ()) -> dict[str, Any]:
    """A row as a dict, every ``*_cents`` column shown as ``*_usd`` dollars (what an agent quotes)."""
    if row is None:
        return {}
    out = row_dict(row)
    for key in drop:
        out.pop(key, None)
    for key in [k for k in out if k.endswith("_cents")]:
        out[key.removesuffix("_cents") + "_usd"] = usd(out.pop(key))
    return out


_TOTAL = "corecraft_total_matches"  # the window column's name; no table has such a column


def paginate(
    conn: sqlite3.Connection,
    select_sql: str,
    where: list[str],
    params: list[Any],
    order_by: str,
    page: int,
    *,
    scans: bool = False,
) -> dict[str, Any]:
    """Run a filtered search one page at a time. ``where``/``params`` are built by the caller from fixed SQL
    fragments and bound values only: no text from the agent ever becomes SQL. Keep ``select_sql`` narrow
    (``SELECT <columns> FROM ...``): anything costly per row is better fetched for the page's rows afterwards.

    Two plans. By default the count and the page are two queries: an indexed filter or none at all lets the
    page query stop after a bounded sort (LIMIT), which scales to 100k+ entity worlds. ``scans=True`` says the
    filter reads every row anyway (free text, ``LIKE '%...%'``): then one scan yields both, the count as a
    window over the matches (``COUNT(*) OVER ()``), which halves the cost of text searches. A page past the
    end has no row to carry the count; only then is it counted apart.
    """
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    limit = [PAGE_SIZE, (page - 1) * PAGE_SIZE]
    total: int | None = None
    if scans:
        if not select_sql.startswith("SELECT "):
            raise ValueError("paginate(scans=True) needs select_sql to start with 'SELECT '")
        rows = conn.execute(
            f"SELECT COUNT(*) OVER () AS {_TOTAL}, {select_sql[7:]}{clause} ORDER BY {order_by} LIMIT ? OFFSET ?",
            [*params, *limit],
        ).fetchall()
        if rows:
            total = rows[0][0]
            names = rows[0].keys()[1:]
            rows = [dict(zip(names, row[1:], strict=True)) for row in rows]
    else:
        rows = conn.execute(f"{select_sql}{clause} ORDER BY {order_by} LIMIT ? OFFSET ?", [*params, *limit]).fetchall()
    if total is None:
        total = conn.execute(f"SELECT COUNT(*) FROM ({select_sql}{clause})", params).fetchone()[0]
    pages = max(1, -(-total // PAGE_SIZE))
    return {
        "rows": rows,
        "page": page,
        "total_results": total,
        "total_pages": pages,
        "has_more": page < pages,
        "next_page": page + 1 if page < pages else None,
    }


def page_result(found: dict[str, Any], results: list[dict[str, Any]], *, key: str = "results") -> dict[str, Any]:
    out = {k: v for k, v in found.items() if k != "rows"}
    out[key] = results
    if found["page"] > found["total_pages"] and found["total_results"]:
        out["note"] = f"page {found['page']} is past the last page ({found['total_pages']})"
    return out


# A bare bound pattern on the right of LIKE (``col LIKE ?``) makes SQLite mark the prepared statement to be
# compiled again whenever that parameter is bound anew, in case a new pattern could use an index prefix; every
# call binds anew, so every text search paid a full re-preparation (about half its time). Written as the
# expression ``(? || '')`` the pattern is still a bound value, evaluated once per statement, and the prepared
# statement is reused. A ``%text%`` pattern can use no index anyway.
LIKE_PARAM = "LIKE (? || '')"
LIKE_TEXT = LIKE_PARAM + " ESCAPE '\\'"  # with the pattern from like()


# The world's trigram index (customers_text) finds a substring of at least this many characters.
TRIGRAM_MIN_CHARS = 3


def trigram_phrase(text: str) -> str | None:
    """``text`` as an FTS5 phrase that a trigram index matches as a substring anywhere in a column (quotes
    doubled: every character is literal, as with like()); None when it is too short for the index, and the
    search must test every row with LIKE. Case folding covers all of Unicode, where LIKE folds ASCII only."""
    if len(text) < TRIGRAM_MIN_CHARS:
        return None
    return '"' + text.replace('"', '""') + '"'


def like(text: str) -> str:
    """A LIKE pattern matching ``text`` as a literal substring (``%``/``_`` escaped): bind it to LIKE_TEXT."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# ---- the world's clock ----------------------------------------------------------------------------
def _read_today(conn: sqlite3.Connection) -> dt.date:
    return dt.date.fromisoformat(conn.execute("SELECT value FROM meta WHERE key = 'today'").fetchone()[0])


def today(conn: sqlite3.Connection) -> dt.date:
    """The world's current date (meta 'today'); tools never read the wall clock."""
    return memoized(conn, "today", _read_today)


def now_timestamp(conn: sqlite3.Connection) -> str:
    """The timestamp written by agent actions: the world's today, at the support desk's working hour."""
    return f"{today(conn).isoformat()}T15:00:00Z"


def date_of(timestamp: str | None) -> dt.date | None:
    return None if not timestamp else dt.date.fromisoformat(timestamp[:10])


# ---- lookups ------------------------------------------------------------------------------------
def dict_rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Every row of a query as a plain dict, built from plain tuples with the column names read once: for
    many wide rows (a build's specs, the compatibility rules) 4-6% fewer instructions a call than
    ``row_dict`` over ``sqlite3.Row`` objects, which are built only to be copied."""
    cursor = conn.cursor()
    cursor.row_factory = None
    cursor.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def fetch_one(conn: sqlite3.Connection, sql: str, params: Sequence[Any], *, argument: str, kind: str, value: Any):
    row = conn.execute(sql, params).fetchone()
    if row is None:
        raise not_found(argument, kind, value)
    return row


def policy_params(conn: sqlite3.Connection, area: str) -> Mapping[str, Any]:
    """The numbers of the active company policy of ``area``, typed (read-only: shared by later calls)."""
    return memoized(conn, ("policy_params", area), lambda c: MappingProxyType(_read_policy_params(c, area)))


def _read_policy_params(conn: sqlite3.Connection, area: str) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT pp.param_key, pp.param_value, pp.value_type FROM policy_parameters pp "
        "JOIN company_policies cp ON cp.policy_id = pp.policy_id "
        "WHERE cp.policy_area = ? AND cp.status = 'active'",
        (area,),
    ).fetchall()
    out: dict[str, Any] = {}
    for key, value, kind in rows:
        if kind == "int":
            out[key] = int(value)
        elif kind == "float":
            out[key] = float(value)
        elif kind == "bool":
            out[key] = value.strip().lower() in ("1", "true", "yes")
        else:
            out[key] = value
    return out


def active_policy_id(conn: sqlite3.Connection, area: str) -> str | None:
    row = conn.execute(
        "SELECT policy_id FROM company_policies WHERE policy_area = ? AND status = 'active' "
        "ORDER BY version DESC LIMIT 1",
        (area,),
    ).fetchone()
    return None if row is None else row[0]


# ---- writes -------------------------------------------------------------------------------------
def next_id(conn: sqlite3.Connection, table: str, column: str, prefix: str, start: int) -> str:
    """The next id in a ``PREFIX-<n>`` sequence (deterministic within a fork). Table/column are constants."""
    row = conn.execute(
        f"SELECT MAX(CAST(substr({column}, ?) AS INTEGER)) FROM {table} WHERE {column} {LIKE_PARAM}",
        (len(prefix) + 2, f"{prefix}-%"),
    ).fetchone()
    return f"{prefix}-{max(row[0] or 0, start - 1) + 1}"


def audit(
    conn: sqlite3.Connection, action: str, entity_type: str, entity_id: str, details: dict[str, Any]
) -> None:
    conn.execute(
        "INSERT INTO audit_log (occurred_at, actor, action, entity_type, entity_id, details) "
        "VALUES (?, 'agent', ?, ?, ?, ?)",
        (now_timestamp(conn), action, entity_type, entity_id, json.dumps(details, sort_keys=True)),
    )
