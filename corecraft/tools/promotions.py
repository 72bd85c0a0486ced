"""Promotion tools: find promotions and apply a code to an order under its eligibility rules."""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Annotated, Any

from pydantic import Field

from corecraft.tools.common import (
    LIKE_TEXT,
    OrderId,
    Page,
    Query,
    audit,
    date_of,
    like,
    next_id,
    now_timestamp,
    page_result,
    paginate,
    plain,
    today,
    usd,
)
from corecraft.tools.errors import ToolError
from corecraft.tools.orders import captured_cents, load_order, refunded_cents
from corecraft.tools.registry import tool

PromoCode = Annotated[str, Field(min_length=1, max_length=40, description="The code the customer typed, e.g. 'SPRING10'.")]


@tool("searchPromotions")
def search_promotions(
    conn: sqlite3.Connection,
    *,
    query: Annotated[Query | None, Field(description="Text matched against code, name and description.")] = None,
    code: Annotated[PromoCode | None, Field(description="Exact code, case-insensitive.")] = None,
    valid_on: Annotated[
        dt.date | None, Field(description="Only promotions running on this date (e.g. an order's date).")
    ] = None,
    active_only: Annotated[bool, Field(description="Only promotions flagged active.")] = False,
    category: Annotated[str | None, Field(min_length=1, max_length=20, description="Eligible category, e.g. 'gpu'.")] = None,
    page: Page = 1,
) -> dict[str, Any]:
    """Search promotions by text, code, date, active flag or eligible category. Each result shows the
    discount, eligibility rules (minimum order, category, brand, minimum loyalty tier, first order only,
    uses per customer), whether it stacks, and its start and expiry. The active flag can lag behind the
    expiry date: trust the dates. At most 10 a page; pass `page` for more.
    """
    where: list[str] = []
    params: list[Any] = []
    if query is not None:
        pattern = like(query)
        where.append(f"(code {LIKE_TEXT} OR name {LIKE_TEXT} OR description {LIKE_TEXT})")
        params.extend([pattern] * 3)
    if code is not None:
        where.append("upper(code) = upper(?)")
        params.append(code.strip())
    if valid_on is not None:
        where.append("substr(starts_at, 1, 10) <= ? AND substr(expires_at, 1, 10) >= ?")
        params.extend([valid_on.isoformat()] * 2)
    if active_only:
        where.append("is_active = 1")
    if category is not None:
        where.append("(eligible_category = ? OR eligible_category IS NULL)")
        params.append(category.lower())
    found = paginate(conn, "SELECT * FROM promotions", where, params, "starts_at DESC, promotion_id", page,
                     scans=query is not None)
    return page_result(found, [plain(r) for r in found["rows"]], key="promotions")


def _eligibility(conn: sqlite3.Connection, promo: sqlite3.Row, order: sqlite3.Row) -> tuple[list[str], int]:
    """The reasons the promotion cannot apply to the order (empty if it can) and the eligible subtotal."""
    reasons: list[str] = []
    now = today(conn)
    # Judged at the time it is applied (promotions policy); the is_active flag can lag, the dates cannot.
    if now < date_of(promo["starts_at"]):
        reasons.append(f"the promotion starts {promo['starts_at'][:10]}, after today {now}")
    if now > date_of(promo["expires_at"]):
        reasons.append(f"the promotion expired {promo['expires_at'][:10]} (today is {now})")
    elif not promo["is_active"]:
        reasons.append("the promotion has been switched off")
    if order["status"] not in ("pending", "processing"):
        reasons.append(f"the order is {order['status']}: codes apply only to pending or processing orders")
    lines = conn.execute(
        "SELECT ol.line_total_cents, p.category, p.brand_id FROM order_lines ol "
        "JOIN products p ON p.product_id = ol.product_id WHERE ol.order_id = ?",
        (order["order_id"],),
    ).fetchall()
    eligible = [
        ln for ln in lines
        if (promo["eligible_category"] is None or ln["category"] == promo["eligible_category"])
        and (promo["eligible_brand_id"] is None or ln["brand_id"] == promo["eligible_brand_id"])
    ]
    if not eligible:
        what = " ".join(x for x in (promo["eligible_brand_id"], promo["eligible_category"]) if x)
        reasons.append(f"no item on the order is eligible (the promotion covers {what} only)")
    eligible_subtotal = sum(ln["line_total_cents"] for ln in eligible)
    if eligible and eligible_subtotal < promo["min_order_cents"]:
        reasons.append(f"the eligible items total ${usd(eligible_subtotal):.2f}, below the minimum "
                       f"${usd(promo['min_order_cents']):.2f}")
    customer = conn.execute(
        "SELECT c.customer_id, t.rank, t.tier_id FROM customers c JOIN loyalty_tiers t "
        "ON t.tier_id = c.loyalty_tier_id WHERE c.customer_id = ?",
        (order["customer_id"],),
    ).fetchone()
    if promo["min_loyalty_tier_id"] is not None:
        needed = conn.execute("SELECT rank FROM loyalty_tiers WHERE tier_id = ?",
                              (promo["min_loyalty_tier_id"],)).fetchone()[0]
        if customer["rank"] < needed:
            reasons.append(f"the customer's tier {customer['tier_id']} is below the required "
                           f"{promo['min_loyalty_tier_id']}")
    if promo["first_order_only"]:
        earlier = conn.execute(
            "SELECT COUNT(*) FROM orders WHERE customer_id = ? AND placed_at < ? AND status != 'cancelled'",
            (order["customer_id"], order["placed_at"]),
        ).fetchone()[0]
        if earlier:
            reasons.append("the promotion is for a first order only and the customer has earlier orders")
    if promo["max_uses_per_customer"] is not None:
        uses = conn.execute(
            "SELECT COUNT(*) FROM orders WHERE customer_id = ? AND promotion_id = ? AND order_id != ? "
            "AND status != 'cancelled'",
            (order["customer_id"], promo["promotion_id"], order["order_id"]),
        ).fetchone()[0]
        if uses >= promo["max_uses_per_customer"]:
            reasons.append(f"the customer already used it {uses} time(s) (limit {promo['max_uses_per_customer']})")
    applied = codes_on_order(conn, order)
    if promo["promotion_id"] in applied:
        reasons.append("the promotion is already applied to this order")
    elif applied:
        # One code per order, unless a code is stackable: then it may join one other code.
        others = [conn.execute("SELECT code, stackable FROM promotions WHERE promotion_id = ?", (pid,)).fetchone()
                  for pid in applied]
        if len(applied) >= 2:
            reasons.append("the order already carries two codes, the most that can stack")
        elif not (promo["stackable"] or others[0]["stackable"]):
            reasons.append(f"the order already has code {others[0]['code']} and neither code is stackable")
    return reasons, eligible_subtotal


def codes_on_order(conn: sqlite3.Connection, order: sqlite3.Row) -> list[str]:
    """Promotion ids applied to an order: its promotion_id plus any code stacked on it by applyPromotion."""
    stacked = [r[0] for r in conn.execute(
        "SELECT json_extract(details, '$.promotion_id') FROM audit_log WHERE action = 'applyPromotion' "
        "AND entity_id = ? AND json_extract(details, '$.stacked') = 1", (order["order_id"],))]
    return ([order["promotion_id"]] if order["promotion_id"] else []) + stacked


def _discount_cents(promo: sqlite3.Row, order: sqlite3.Row, eligible_subtotal: int) -> int:
    if promo["discount_type"] == "percent":
        amount = eligible_subtotal * promo["discount_value"] // 100
        if promo["max_discount_cents"] is not None:
            amount = min(amount, promo["max_discount_cents"])
        return amount
    if promo["discount_type"] == "fixed":
        return min(promo["discount_value"], eligible_subtotal)
    return order["shipping_cents"]


@tool("applyPromotion", writes=True)
def apply_promotion(
    conn: sqlite3.Connection,
    *,
    order_id: OrderId,
    code: PromoCode,
    dry_run: Annotated[
        bool, Field(description="Only check eligibility and compute the discount; change nothing.")
    ] = False,
) -> dict[str, Any]:
    """Apply a promotion code to a pending or processing order (not once shipped), as the promotions policy
    says: judged today, by the dates (started, not expired; the active flag can lag), the minimum on the
    eligible items, eligible category/brand, minimum loyalty tier, first order only, uses per customer, and
    stacking (one code per order unless a code is stackable). Every failing rule is named. When the order was
    already paid, the discount is refunded to the original payment. `dry_run` only checks and computes.
    """
    promo = conn.execute("SELECT * FROM promotions WHERE upper(code) = upper(?)", (code.strip(),)).fetchone()
    if promo is None:
        raise ToolError(f"no promotion with code {code!r}", argument="code")
    order = load_order(conn, order_id)
    reasons, eligible_subtotal = _eligibility(conn, promo, order)
    discount = 0 if reasons else _discount_cents(promo, order, eligible_subtotal)
    summary = {"order_id": order_id, "code": promo["code"], "promotion_id": promo["promotion_id"],
               "eligible": not reasons, "reasons": reasons, "discount_usd": usd(discount),
               "evaluated_on": today(conn).isoformat()}
    if dry_run:
        return summary | {"applied": False}
    if reasons:
        raise ToolError(f"{promo['code']} cannot be applied to {order_id}: " + "; ".join(reasons), argument="code")
    if discount <= 0:
        raise ToolError(f"{promo['code']} gives no discount on {order_id}", argument="code")
    paid = order["payment_status"] in ("captured", "partially_refunded", "refunded")
    if paid:
        # On a paid order the discount is money back: it counts against the payment like any refund.
        captured, refunded = captured_cents(conn, order), refunded_cents(conn, order_id)
        if refunded + discount > captured:
            raise ToolError(f"{promo['code']} would refund ${usd(discount):.2f} on {order_id}, bringing refunds to "
                            f"${usd(refunded + discount):.2f}, more than the ${usd(captured):.2f} paid",
                            argument="code")
    ts = now_timestamp(conn)
    shipping = order["shipping_cents"] - discount if promo["discount_type"] == "free_shipping" else order["shipping_cents"]
    extra_discount = 0 if promo["discount_type"] == "free_shipping" else discount
    stacked = order["promotion_id"] is not None
    conn.execute(
        "UPDATE orders SET discount_cents = discount_cents + ?, shipping_cents = ?, total_cents = total_cents - ?, "
        "promotion_id = COALESCE(promotion_id, ?), updated_at = ? WHERE order_id = ?",
        (extra_discount, shipping, discount, promo["promotion_id"], ts, order_id),
    )
    refund_id = None
    if paid:
        # Recorded with reason 'promotion': captured_cents adds these back to the lowered total.
        refund_id = next_id(conn, "refunds", "refund_id", "RF", 60001)
        conn.execute(
            "INSERT INTO refunds (refund_id, order_id, amount_cents, method, reason, status, created_at, issued_at) "
            "VALUES (?, ?, ?, 'original_payment', 'promotion', 'issued', ?, ?)",
            (refund_id, order_id, discount, ts, ts),
        )
        payment = "refunded" if refunded + discount >= captured else "partially_refunded"
        conn.execute("UPDATE orders SET payment_status = ? WHERE order_id = ?", (payment, order_id))
    conn.execute(
        "INSERT INTO order_status_history (order_id, status, changed_at, source, note) VALUES (?, ?, ?, 'agent', ?)",
        (order_id, order["status"], ts, f"promotion {promo['code']} applied: -${usd(discount):.2f}"),
    )
    audit(conn, "applyPromotion", "orders", order_id,
          {"promotion_id": promo["promotion_id"], "discount_cents": discount, "refund_id": refund_id,
           "stacked": int(stacked)})
    return summary | {"applied": True, "refund_id": refund_id,
                      "new_total_usd": usd(order["total_cents"] - discount)}
