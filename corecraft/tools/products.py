"""Catalog tools: find products, read one with its specs and stock, check stock, validate a PC build."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import Field

from corecraft.tools.common import (
    LIKE_PARAM,
    LIKE_TEXT,
    Page,
    ProductId,
    Quantity,
    Query,
    Usd,
    cents,
    dict_rows,
    fetch_one,
    like,
    page_result,
    paginate,
    plain,
    row_dict,
    today,
)
from corecraft.tools.errors import ToolError, not_found
from corecraft.tools.registry import tool
from corecraft.world.compat import Part, build_status, check_build
from corecraft.world.connection import memoized

ProductCategory = Literal[
    "cpu", "gpu", "motherboard", "memory", "storage", "psu", "case", "cooler", "monitor", "peripheral"
]
SpecText = Annotated[str, Field(min_length=1, max_length=40)]

_AVAILABLE = (
    "(SELECT COALESCE(SUM(i.quantity_on_hand - i.quantity_reserved), 0) FROM inventory i "
    "WHERE i.product_id = p.product_id)"
)
_PRODUCT_SUMMARY = (
    "SELECT p.product_id, p.name, p.category, p.subcategory, b.name AS brand, p.price_cents, p.status, "
    f"p.is_returnable, {_AVAILABLE} AS units_available "
    "FROM products p JOIN brands b ON b.brand_id = p.brand_id LEFT JOIN product_specs s ON s.product_id = p.product_id"
)


@tool("searchProducts")
def search_products(
    conn: sqlite3.Connection,
    *,
    query: Annotated[
        Query | None, Field(description="Free text matched against id, name, model number, brand and description.")
    ] = None,
    category: ProductCategory | None = None,
    brand: Annotated[SpecText | None, Field(description="Brand name or id, e.g. 'ASUS' or 'asus'.")] = None,
    min_price_usd: Usd | None = None,
    max_price_usd: Usd | None = None,
    in_stock_only: Annotated[bool, Field(description="Only products with units available to sell.")] = False,
    status: Literal["active", "discontinued", "preorder"] | None = None,
    socket: Annotated[SpecText | None, Field(description="CPU/motherboard socket, e.g. 'AM5'.")] = None,
    memory_type: Literal["DDR4", "DDR5"] | None = None,
    form_factor: Annotated[SpecText | None, Field(description="e.g. 'ATX', 'Mini-ITX', 'SFX', 'Mid Tower'.")] = None,
    page: Page = 1,
) -> dict[str, Any]:
    """Search the catalog by text, category, brand, price range, stock, status and key specs (socket, memory
    type, form factor). Cheapest first. At most 10 a page; pass `page` for more. Use getProductDetails for specs.
    """
    where: list[str] = []
    params: list[Any] = []
    if query is not None:
        pattern = like(query)
        where.append(
            f"(p.product_id {LIKE_TEXT} OR p.name {LIKE_TEXT} OR p.model_number {LIKE_TEXT} "
            f"OR b.name {LIKE_TEXT} OR p.description {LIKE_TEXT})"
        )
        params.extend([pattern] * 5)
    if category is not None:
        where.append("p.category = ?")
        params.append(category)
    if brand is not None:
        where.append("(lower(b.name) = lower(?) OR b.brand_id = lower(?))")
        params.extend([brand, brand])
    if min_price_usd is not None:
        where.append("p.price_cents >= ?")
        params.append(cents(min_price_usd))
    if max_price_usd is not None:
        where.append("p.price_cents <= ?")
        params.append(cents(max_price_usd))
    if min_price_usd is not None and max_price_usd is not None and min_price_usd > max_price_usd:
        raise ToolError("must not exceed max_price_usd", argument="min_price_usd")
    if in_stock_only:
        where.append(f"{_AVAILABLE} > 0")
    if status is not None:
        where.append("p.status = ?")
        params.append(status)
    if socket is not None:
        where.append(f"(lower(s.socket) = lower(?) OR (',' || lower(s.supported_sockets) || ',') {LIKE_PARAM})")
        params.extend([socket, f"%,{socket.lower()},%"])
    if memory_type is not None:
        where.append("s.memory_type = ?")
        params.append(memory_type)
    if form_factor is not None:
        where.append("lower(s.form_factor) = lower(?)")
        params.append(form_factor)
    found = paginate(conn, _PRODUCT_SUMMARY, where, params, "p.price_cents, p.product_id", page,
                     scans=query is not None)
    return page_result(found, [plain(r) for r in found["rows"]], key="products")


def load_product(conn: sqlite3.Connection, product_id: str, argument: str = "product_id") -> sqlite3.Row:
    return fetch_one(conn, "SELECT * FROM products WHERE product_id = ?", (product_id,),
                     argument=argument, kind="product", value=product_id)


def specs_of(conn: sqlite3.Connection, product_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM product_specs WHERE product_id = ?", (product_id,)).fetchone()
    # zipped: a Row looks a name up by scanning its columns, and this row has some fifty
    return {} if row is None else {k: v for k, v in zip(row.keys(), row, strict=True)
                                   if v is not None and k != "product_id"}


def stock_of(conn: sqlite3.Connection, product_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT i.warehouse_id, w.city, w.state, i.quantity_on_hand, i.quantity_reserved, "
        "i.quantity_on_hand - i.quantity_reserved AS available, i.reorder_point, i.restock_eta "
        "FROM inventory i JOIN warehouses w ON w.warehouse_id = i.warehouse_id WHERE i.product_id = ? "
        "ORDER BY i.warehouse_id",
        (product_id,),
    ).fetchall()
    return [row_dict(r) for r in rows]


@tool("getProductDetails")
def get_product_details(conn: sqlite3.Connection, *, product_id: ProductId) -> dict[str, Any]:
    """One product in full: price and MSRP, status, whether it is returnable (0 = final sale), weight, the
    specs compatibility depends on (socket, memory type, form factor, lengths, wattage, connectors...), the
    brand's support contacts, and stock per warehouse.
    """
    product = load_product(conn, product_id)
    brand = conn.execute("SELECT * FROM brands WHERE brand_id = ?", (product["brand_id"],)).fetchone()
    stock = stock_of(conn, product_id)
    return {
        "product": plain(product),
        "specs": specs_of(conn, product_id),
        "brand": dict(brand) if brand else None,
        "stock": stock,
        "units_available": sum(max(0, s["available"]) for s in stock),
    }


@tool("checkInventory")
def check_inventory(
    conn: sqlite3.Connection,
    *,
    product_id: ProductId,
    quantity: Annotated[Quantity, Field(description="Units wanted; the answer says whether stock covers it.")] = 1,
    warehouse_id: Annotated[
        str | None, Field(min_length=1, max_length=16, description="Only this warehouse, e.g. 'WH-RNO'.")
    ] = None,
) -> dict[str, Any]:
    """Stock of a product per warehouse: on hand, reserved for open orders, available, reorder point and the
    next restock date. Says whether `quantity` units can ship now and from where.
    """
    product = load_product(conn, product_id)
    stock = stock_of(conn, product_id)
    if warehouse_id is not None:
        if conn.execute("SELECT 1 FROM warehouses WHERE warehouse_id = ?", (warehouse_id,)).fetchone() is None:
            raise ToolError(f"no warehouse {warehouse_id!r}", argument="warehouse_id")
        stock = [s for s in stock if s["warehouse_id"] == warehouse_id]
    available = sum(max(0, s["available"]) for s in stock)
    can_ship_from = [s["warehouse_id"] for s in stock if s["available"] >= quantity]
    etas = sorted(s["restock_eta"] for s in stock if s["restock_eta"])
    return {
        "product_id": product_id,
        "name": product["name"],
        "status": product["status"],
        "today": today(conn).isoformat(),
        "warehouses": stock,
        "total_available": available,
        "quantity_requested": quantity,
        "in_stock": available >= quantity,
        "single_warehouse_can_ship": can_ship_from,
        "next_restock_eta": etas[0] if etas else None,
    }


def _read_rules(conn: sqlite3.Connection) -> tuple[tuple[Mapping[str, Any], ...], str]:
    """The compatibility rules (read-only rows), and the spec columns some rule compares as a select list.

    Only those columns are read (about a third of them); a rule naming no such column sees NULL, as it would
    in the full row. Column names come from the schema, never from the caller.
    """
    rules = tuple(MappingProxyType(r) for r in dict_rows(conn, "SELECT * FROM compatibility_rules ORDER BY rule_id"))
    spec_columns = [d[0] for d in conn.execute("SELECT * FROM product_specs LIMIT 0").description]
    wanted = {r[side] for r in rules for side in ("left_attribute", "right_attribute")}
    return rules, ", ".join(f's."{c}"' for c in spec_columns if c in wanted)


@tool("validateBuildCompatibility")
def validate_build_compatibility(
    conn: sqlite3.Connection,
    *,
    build_id: Annotated[
        str | None, Field(min_length=1, max_length=32, description="A saved build, e.g. 'BLD-0001'.")
    ] = None,
    product_ids: Annotated[
        list[ProductId] | None,
        Field(min_length=1, max_length=30, description="The parts of a build, if not a saved build."),
    ] = None,
) -> dict[str, Any]:
    """Check a PC build against the compatibility rules: CPU socket vs motherboard, memory type and speed,
    motherboard form factor vs case, GPU length vs case clearance, cooler height vs case, cooler socket
    support, PSU wattage budget and power connectors. Every failing check is named with the parts and values
    involved; errors make the build incompatible, warnings are advice. Give `build_id` or `product_ids`.
    """
    if (build_id is None) == (product_ids is None):
        raise ToolError("give exactly one of build_id or product_ids", argument="build_id")
    if build_id is not None:
        fetch_one(conn, "SELECT 1 FROM builds WHERE build_id = ?", (build_id,),
                  argument="build_id", kind="build", value=build_id)
        items = [(r[0], r[1]) for r in conn.execute(
            "SELECT product_id, quantity FROM build_components WHERE build_id = ? ORDER BY product_id", (build_id,))]
    else:
        counts: dict[str, int] = {}
        for pid in product_ids or []:
            counts[pid] = counts.get(pid, 0) + 1
        items = list(counts.items())
    marks = ",".join("?" * len(items))
    rules, compared = memoized(conn, "compatibility_rules", _read_rules)
    by_id = {r["rule_id"]: r for r in rules}
    found = {r["_pid"]: r for r in dict_rows(
        conn,
        f"SELECT p.product_id AS _pid, p.name AS _name, p.category AS _category{', ' if compared else ''}{compared} "
        f"FROM products p LEFT JOIN product_specs s ON s.product_id = p.product_id WHERE p.product_id IN ({marks})",
        [pid for pid, _ in items])}
    parts: list[Part] = []
    names: dict[str, str] = {}
    for pid, qty in items:
        row = found.get(pid)
        if row is None:
            raise not_found("product_ids", "product", pid)
        names[pid] = row["_name"]
        specs = {k: v for k, v in row.items() if v is not None and k[0] != "_"}
        parts.append(Part(pid, row["_category"], specs, qty))
    # The world labels its saved builds with the same checker, so tool answers and labels agree.
    violations = check_build(parts, rules)
    errors, warnings = [], []
    for v in violations:
        rule = by_id[v.rule_id]
        entry = {"rule_id": v.rule_id, "check": rule["name"], "severity": v.severity, "message": v.message,
                 "detail": v.detail, "left_product_id": v.left_product_id, "right_product_id": v.right_product_id,
                 "kb_article_id": rule["kb_article_id"]}
        (errors if v.severity == "error" else warnings).append(entry)
    present = {p.category for p in parts}
    core = ["cpu", "motherboard", "memory", "psu", "case"]
    return {
        "build_id": build_id,
        "parts": [{"product_id": p.product_id, "name": names[p.product_id], "category": p.category,
                   "quantity": p.quantity} for p in parts],
        "compatible": not errors,
        "status": build_status(violations),
        "errors": errors,
        "warnings": warnings,
        "missing_core_parts": [c for c in core if c not in present],
    }
