"""Hypothesis strategies for hostile tool arguments: wrong types, unknown keys, huge strings, SQL, unicode.

Shared by the in-process fuzz tests and the smaller batch sent over MCP (tests/corecraft/server).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from hypothesis import strategies as st

SQL_FRAGMENTS = (
    "'; DROP TABLE orders; --",
    "ORD-200001' OR '1'='1",
    "1; DELETE FROM customers",
    "%",
    "_",
    "\\",
    "' UNION SELECT * FROM meta --",
    "ORD-200001\x00",
    "Robert'); DROP TABLE refunds;--",
)
UNICODE = ("Zoë Ångström", "顧客", "🙂🔥", "\u202eevil", "ｏｒｄｅｒ", "\ud7ff", "a\u0301", "\n\t")


def id_pool(conn: sqlite3.Connection) -> list[str]:
    """Real ids from the world, so fuzzing also reaches the logic behind a successful lookup."""
    queries = (
        "SELECT order_id FROM orders ORDER BY order_id LIMIT 8",
        "SELECT customer_id FROM customers ORDER BY customer_id LIMIT 8",
        "SELECT product_id FROM products ORDER BY product_id LIMIT 8",
        "SELECT ticket_id FROM support_tickets ORDER BY ticket_id LIMIT 4",
        "SELECT article_id FROM kb_articles ORDER BY article_id LIMIT 4",
        "SELECT policy_id FROM company_policies ORDER BY policy_id LIMIT 2",
        "SELECT code FROM promotions ORDER BY promotion_id LIMIT 4",
        "SELECT build_id FROM builds ORDER BY build_id LIMIT 4",
        "SELECT shipment_id FROM shipments ORDER BY shipment_id LIMIT 2",
        "SELECT tracking_number FROM shipments WHERE tracking_number IS NOT NULL LIMIT 2",
        "SELECT warehouse_id FROM warehouses LIMIT 2",
    )
    out: list[str] = []
    for q in queries:
        out.extend(r[0] for r in conn.execute(q))
    return out


def scalar(ids: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(ids),
        st.sampled_from(SQL_FRAGMENTS),
        st.sampled_from(UNICODE),
        st.text(max_size=40),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        st.sampled_from(["2026-03-01", "2026-02-30", "yesterday", "9999-12-31", "defective", "opened", "CA", "gpu"]),
        st.just("x" * 100_000),
    )


def value(ids: list[str]) -> st.SearchStrategy[Any]:
    leaf = scalar(ids)
    return st.one_of(
        leaf,
        st.lists(leaf, max_size=4),
        st.dictionaries(st.sampled_from(["product_id", "quantity", "condition", "order_line_id", "x"]), leaf,
                        max_size=4),
        st.lists(
            st.fixed_dictionaries(
                {"product_id": st.sampled_from(ids), "condition": st.sampled_from(["opened", "defective", "bad"])},
                optional={"quantity": st.integers(-2, 5), "order_line_id": st.integers(-1, 5000)},
            ),
            min_size=1,
            max_size=3,
        ),
    )


def _variants(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in prop.get("anyOf", [prop]) if v.get("type") != "null"]


def edge_values(prop: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values at and just past the edges the property's schema declares: bounds, lengths, enums, dates."""
    edges: list[Any] = []
    for v in _variants(prop):
        if v.get("format") == "date":
            edges += ["0001-01-01", "9999-12-31", "2026-02-29", "2026-03-16", "2026-3-1", "2026-03-16T10:00:00Z"]
        for bound in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if bound in v:
                edges += [v[bound] - 1, v[bound], v[bound] + 1, v[bound] + 0.5]
        if "maxLength" in v:
            edges += ["a" * v["maxLength"], "é" * v["maxLength"], "a" * (v["maxLength"] + 1)]
        if "minLength" in v:
            edges += ["", " " * max(1, v["minLength"])]
        if "enum" in v:
            edges += [*v["enum"], str(v["enum"][0]).upper(), f" {v['enum'][0]}"]
        if v.get("type") == "array":
            edges += [[], [None], list(range(60))]
    return st.sampled_from(edges) if edges else st.nothing()


def arguments(schema: dict[str, Any], ids: list[str], valid: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Argument objects for one tool: hostile values on real keys, values at each key's declared edges,
    unknown keys, and mutated valid calls."""
    props = schema.get("properties", {})
    keys = sorted(props)
    random_args = st.dictionaries(
        st.one_of(st.sampled_from(keys), st.sampled_from(["sql", "id", "__class__", "orderId"])) if keys
        else st.sampled_from(["sql", "id"]),
        value(ids),
        max_size=5,
    )
    mutated = st.builds(
        lambda base, k, v: {**base, k: v},
        st.just(valid),
        st.sampled_from(keys) if keys else st.just("x"),
        value(ids),
    )
    edges = st.one_of(*[
        st.builds(lambda base, k, v: {**base, k: v}, st.just(valid), st.just(key), edge_values(props[key]))
        for key in keys
    ]) if keys else st.nothing()
    dropped = st.builds(
        lambda base, k: {key: v for key, v in base.items() if key != k},
        st.just(valid),
        st.sampled_from(sorted(valid)) if valid else st.just("x"),
    )
    return st.one_of(random_args, mutated, edges, edges, dropped, st.just(valid),
                     st.sampled_from([None, [], "args", 3]))
