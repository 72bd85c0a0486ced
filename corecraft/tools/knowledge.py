"""Knowledge tools: search and read KB articles and company policies, and find a product's warranty terms."""

from __future__ import annotations

import datetime as dt
import sqlite3
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import Field

from corecraft.tools.common import (
    LIKE_TEXT,
    OrderId,
    Page,
    ProductId,
    Query,
    date_of,
    fetch_one,
    like,
    page_result,
    paginate,
    policy_params,
    row_dict,
    today,
)
from corecraft.tools.errors import ToolError
from corecraft.tools.registry import tool
from corecraft.world.connection import memoized
from corecraft.world.warranty import applicable_warranty

_SNIPPET = 240

# Articles and policies are searched as one list: both are what an agent reads before acting. Bodies are
# matched but not carried through the sort: the page's bodies are fetched afterwards, for its snippets.
_KNOWLEDGE = (
    "SELECT doc_id, kind, title, category, status, updated_at, superseded_by, version FROM ("
    "SELECT article_id AS doc_id, 'article' AS kind, title, category, status, tags, updated_at, superseded_by, "
    "NULL AS version, body FROM kb_articles "
    "UNION ALL "
    "SELECT policy_id AS doc_id, 'policy' AS kind, title, policy_area AS category, status, NULL AS tags, "
    "effective_from AS updated_at, NULL AS superseded_by, version, body FROM company_policies)"
)


def _bodies(conn: sqlite3.Connection, doc_ids: list[str]) -> dict[str, str]:
    if not doc_ids:
        return {}
    marks = ",".join("?" * len(doc_ids))
    rows = conn.execute(
        f"SELECT article_id, body FROM kb_articles WHERE article_id IN ({marks}) "
        f"UNION ALL SELECT policy_id, body FROM company_policies WHERE policy_id IN ({marks})",
        [*doc_ids, *doc_ids],
    )
    return dict(rows.fetchall())


def _snippet(body: str, query: str | None) -> str:
    if query:
        at = body.lower().find(query.lower())
        if at > _SNIPPET // 2:
            start = body.rfind(" ", 0, at - _SNIPPET // 3) + 1
            return "…" + body[start:start + _SNIPPET].replace("\n", " ") + "…"
    return body[:_SNIPPET].replace("\n", " ") + ("…" if len(body) > _SNIPPET else "")


@tool("searchKnowledgebase")
def search_knowledgebase(
    conn: sqlite3.Connection,
    *,
    query: Annotated[Query | None, Field(description="Text matched against title, body and tags.")] = None,
    category: Annotated[
        str | None,
        Field(min_length=1, max_length=40, description="Article category ('troubleshooting', 'compatibility', "
              "'policy', 'shipping', 'warranty') or policy area ('returns', 'restocking', "
              "'price_matching', 'damage_claims', 'refunds', 'escalation', ...)."),
    ] = None,
    kind: Annotated[
        Literal["all", "article", "policy"], Field(description="KB articles, company policies, or both.")
    ] = "all",
    include_inactive: Annotated[
        bool, Field(description="Also list archived/draft articles and retired policy versions.")
    ] = False,
    page: Page = 1,
) -> dict[str, Any]:
    """Search the knowledge base and the company policies. Results show id, kind, title, status, last update
    and a snippet; read one in full with getKnowledgebaseArticle. Some articles are stale: when an article
    and the active company policy disagree, the policy wins. At most 10 a page; pass `page` for more.
    """
    where: list[str] = []
    params: list[Any] = []
    if query is not None:
        pattern = like(query)
        where.append(f"(title {LIKE_TEXT} OR body {LIKE_TEXT} OR tags {LIKE_TEXT} OR doc_id {LIKE_TEXT})")
        params.extend([pattern] * 4)
    if category is not None:
        where.append("category = ?")
        params.append(category.lower())
    if kind != "all":
        where.append("kind = ?")
        params.append(kind)
    if not include_inactive:
        where.append("status IN ('published', 'active')")
    found = paginate(conn, _KNOWLEDGE, where, params, "kind DESC, updated_at DESC, doc_id", page,
                     scans=query is not None)
    bodies = _bodies(conn, [r["doc_id"] for r in found["rows"]])
    results = []
    for r in found["rows"]:
        item = {k: r[k] for k in ("doc_id", "kind", "title", "category", "status", "updated_at")}
        if r["kind"] == "policy":
            item["version"] = r["version"]
        elif r["superseded_by"]:
            item["superseded_by"] = r["superseded_by"]
        item["snippet"] = _snippet(bodies[r["doc_id"]], query)
        results.append(item)
    return page_result(found, results)


@tool("getKnowledgebaseArticle")
def get_knowledgebase_article(
    conn: sqlite3.Connection,
    *,
    article_id: Annotated[
        str,
        Field(min_length=1, max_length=64, description="A KB article id ('KB-1001') or policy id ('POL-RETURNS-v3')."),
    ],
) -> dict[str, Any]:
    """Read a KB article or a company policy in full (Markdown body). For a policy, its numeric parameters
    (e.g. the return window in days) are listed too; for an article, its status and any newer article that
    supersedes it.
    """
    article = conn.execute("SELECT * FROM kb_articles WHERE article_id = ?", (article_id,)).fetchone()
    if article is not None:
        return {"kind": "article", "article": dict(article)}
    policy = conn.execute("SELECT * FROM company_policies WHERE policy_id = ?", (article_id,)).fetchone()
    if policy is None:
        raise ToolError(f"no KB article or policy with id {article_id!r}", argument="article_id")
    params = conn.execute(
        "SELECT param_key, param_value, value_type, description FROM policy_parameters WHERE policy_id = ? "
        "ORDER BY param_key",
        (article_id,),
    ).fetchall()
    return {"kind": "policy", "policy": dict(policy), "parameters": [dict(p) for p in params]}


def warranty_for(conn: sqlite3.Connection, brand_id: str | None, category: str | None,
                 on: dt.date) -> dict[str, Any] | None:
    """The policy in force on ``on`` by the world's own rule (most specific, then most recent), so the tool and
    the world's labelled claims agree by construction."""
    # only policies that could apply (brand and category each unset or equal) are read; the rule picks among them
    policies = memoized(conn, ("warranty_policies", brand_id, category), lambda c: tuple(
        MappingProxyType(row_dict(r)) for r in c.execute(
            "SELECT * FROM warranty_policies WHERE (brand_id IS NULL OR brand_id = ?) "
            "AND (category IS NULL OR category = ?) ORDER BY warranty_policy_id",
            (brand_id, category),
        )))
    chosen = applicable_warranty(policies, brand_id, category, on)
    return None if chosen is None else dict(chosen)


@tool("getWarrantyPolicy")
def get_warranty_policy(
    conn: sqlite3.Connection,
    *,
    product_id: Annotated[ProductId | None, Field(description="The product whose coverage to look up.")] = None,
    order_id: Annotated[
        OrderId | None,
        Field(description="With product_id: the order it was bought on, to compute the coverage end date "
              "(including the customer's loyalty extension)."),
    ] = None,
    brand: Annotated[str | None, Field(min_length=1, max_length=40, description="Brand id, e.g. 'asus'.")] = None,
    category: Annotated[str | None, Field(min_length=1, max_length=20, description="e.g. 'gpu'.")] = None,
) -> dict[str, Any]:
    """The warranty terms that apply to a product (or a brand/category): the most specific current policy
    (brand and category, then brand, then category), its coverage months, provider, claim process, accidental
    damage and registration. With an order: coverage from the order date, the loyalty-tier extension (handled
    by CoreCraft after the manufacturer's coverage ends), the end dates, whether it is covered today, and the
    dead-on-arrival window from delivery (inside it, a failure is a return, not a warranty claim).
    """
    if product_id is None and brand is None and category is None:
        raise ToolError("give product_id, or brand and/or category", argument="product_id")
    now = today(conn)
    purchase: dt.date | None = None
    extension = 0
    if product_id is not None:
        product = fetch_one(conn, "SELECT product_id, brand_id, category, name FROM products WHERE product_id = ?",
                            (product_id,), argument="product_id", kind="product", value=product_id)
        brand_id, cat = product["brand_id"], product["category"]
    else:
        brand_id, cat = (brand.lower() if brand else None), (category.lower() if category else None)
        if brand_id and conn.execute("SELECT 1 FROM brands WHERE brand_id = ?", (brand_id,)).fetchone() is None:
            raise ToolError(f"no brand {brand!r}", argument="brand")
    if order_id is not None:
        if product_id is None:
            raise ToolError("order_id needs product_id", argument="order_id")
        order = fetch_one(conn, "SELECT o.placed_at, c.loyalty_tier_id FROM orders o "
                          "JOIN customers c ON c.customer_id = o.customer_id WHERE o.order_id = ?",
                          (order_id,), argument="order_id", kind="order", value=order_id)
        if conn.execute("SELECT 1 FROM order_lines WHERE order_id = ? AND product_id = ?",
                        (order_id, product_id)).fetchone() is None:
            raise ToolError(f"product {product_id} is not on order {order_id}", argument="product_id")
        delivered = date_of(conn.execute("SELECT MAX(delivered_at) FROM shipments WHERE order_id = ?",
                                         (order_id,)).fetchone()[0])
        purchase = date_of(order["placed_at"])  # coverage runs from the order date (warranty policy)
        extension = conn.execute("SELECT extended_warranty_months FROM loyalty_tiers WHERE tier_id = ?",
                                 (order["loyalty_tier_id"],)).fetchone()[0]
    policy = warranty_for(conn, brand_id, cat, purchase or now)
    if policy is None:
        return {"brand_id": brand_id, "category": cat, "policy": None,
                "note": "no warranty policy covers this brand/category"}
    out: dict[str, Any] = {"brand_id": brand_id, "category": cat, "policy": policy}
    if purchase is not None:
        months = policy["coverage_months"] + extension
        end = _add_months(purchase, months)
        out |= {"coverage_starts": purchase.isoformat(), "loyalty_extension_months": extension,
                "total_coverage_months": months, "coverage_ends": end.isoformat(), "covered_today": now <= end,
                "today": now.isoformat(), "delivered_on": delivered.isoformat() if delivered else None}
        doa_days = policy_params(conn, "warranty").get("doa_days")
        if delivered is not None and doa_days is not None:
            doa_end = delivered + dt.timedelta(days=int(doa_days))
            # Dead on arrival is a return (advance replacement by CoreCraft), not a warranty claim.
            out |= {"dead_on_arrival_until": doa_end.isoformat(), "dead_on_arrival_window_open": now <= doa_end}
        if extension:
            out["manufacturer_coverage_ends"] = _add_months(purchase, policy["coverage_months"]).isoformat()
    return out


def _add_months(day: dt.date, months: int) -> dt.date:
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    for d in (day.day, 30, 29, 28):
        try:
            return dt.date(year, month, min(d, day.day))
        except ValueError:
            continue
    raise AssertionError("unreachable")
