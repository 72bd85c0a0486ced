"""Order tools: find orders, read one in full, track its shipments, change it."""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Annotated, Any, Literal

from pydantic import Field

from corecraft.tools.common import (
    LIKE_TEXT,
    CustomerId,
    Note,
    OrderId,
    Page,
    ProductId,
    Query,
    ShortText,
    StateCode,
    TicketId,
    Usd,
    audit,
    cents,
    date_of,
    fetch_one,
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
from corecraft.tools.registry import tool

OrderStatus = Literal[
    "pending", "processing", "on_hold", "shipped", "delivered", "cancelled", "returned", "partially_returned"
]

_ORDER_SUMMARY = (
    "SELECT o.order_id, o.customer_id, c.first_name || ' ' || c.last_name AS customer_name, o.status, "
    "o.placed_at, o.total_cents, o.payment_status, o.sales_channel "
    "FROM orders o JOIN customers c ON c.customer_id = o.customer_id"
)


def _with_line_counts(conn: sqlite3.Connection, rows: list[sqlite3.Row]) -> list[dict[str, Any]]:
    """Order summaries with their line counts, counted for the page's orders only."""
    ids = [r["order_id"] for r in rows]
    counts = dict(conn.execute(
        f"SELECT order_id, COUNT(*) FROM order_lines WHERE order_id IN ({','.join('?' * len(ids))}) "
        "GROUP BY order_id", ids).fetchall()) if ids else {}
    return [plain(r) | {"line_count": counts.get(r["order_id"], 0)} for r in rows]


@tool("searchOrders")
def search_orders(
    conn: sqlite3.Connection,
    *,
    customer_id: CustomerId | None = None,
    status: OrderStatus | None = None,
    placed_after: Annotated[dt.date | None, Field(description="Only orders placed on or after this date.")] = None,
    placed_before: Annotated[dt.date | None, Field(description="Only orders placed on or before this date.")] = None,
    product_id: Annotated[ProductId | None, Field(description="Only orders containing this product.")] = None,
    query: Annotated[
        Query | None,
        Field(description="Free text matched against the order id, the customer's name and email, and the ship-to name."),
    ] = None,
    page: Page = 1,
) -> dict[str, Any]:
    """Search orders by customer, status, date range, product or free text; newest first.

    Returns at most 10 orders a page with `total_results` and `next_page`: call again with `page` to see more.
    Each result is a summary; use getOrderDetails for lines, shipments, returns and refunds.
    """
    where: list[str] = []
    params: list[Any] = []
    if customer_id is not None:
        where.append("o.customer_id = ?")
        params.append(customer_id)
    if status is not None:
        where.append("o.status = ?")
        params.append(status)
    if placed_after is not None:
        where.append("o.placed_at >= ?")
        params.append(placed_after.isoformat())
    if placed_before is not None:
        where.append("o.placed_at <= ?")  # timestamps are 'YYYY-MM-DDTHH:MM:SSZ': compare as text, index-friendly
        params.append(f"{placed_before.isoformat()}T23:59:59Z")
    if placed_after and placed_before and placed_after > placed_before:
        raise ToolError("must not be later than placed_before", argument="placed_after")
    if product_id is not None:
        where.append("EXISTS (SELECT 1 FROM order_lines ol WHERE ol.order_id = o.order_id AND ol.product_id = ?)")
        params.append(product_id)
    if query is not None:
        pattern = like(query)
        where.append(
            f"(o.order_id {LIKE_TEXT} OR c.first_name || ' ' || c.last_name {LIKE_TEXT} "
            f"OR c.email {LIKE_TEXT} OR o.ship_name {LIKE_TEXT})"
        )
        params.extend([pattern] * 4)
    found = paginate(conn, _ORDER_SUMMARY, where, params, "o.placed_at DESC, o.order_id DESC", page,
                     scans=query is not None)
    return page_result(found, _with_line_counts(conn, found["rows"]), key="orders")


def load_order(conn: sqlite3.Connection, order_id: str, argument: str = "order_id") -> sqlite3.Row:
    return fetch_one(
        conn, "SELECT * FROM orders WHERE order_id = ?", (order_id,), argument=argument, kind="order", value=order_id
    )


# The money model, one place for every tool that refunds. applyPromotion on a paid order lowers total_cents
# (what the order costs now) and refunds the discount, so total_cents alone understates what the payment
# captured: captured = total_cents + the promotion refunds. Every refund, the promotion's included, counts
# against the captured amount, and their sum never exceeds it.
def captured_cents(conn: sqlite3.Connection, order: sqlite3.Row) -> int:
    """What the customer's payment took for ``order``: its total plus discounts refunded after payment."""
    promoted = conn.execute(
        "SELECT COALESCE(SUM(amount_cents), 0) FROM refunds WHERE order_id = ? AND reason = 'promotion' "
        "AND status != 'failed'",
        (order["order_id"],),
    ).fetchone()[0]
    return int(order["total_cents"]) + int(promoted)


def refunded_cents(conn: sqlite3.Connection, order_id: str) -> int:
    """Every refund on the order that has not failed (pending ones are committed money too)."""
    return int(conn.execute("SELECT COALESCE(SUM(amount_cents), 0) FROM refunds WHERE order_id = ? "
                            "AND status != 'failed'", (order_id,)).fetchone()[0])


def order_lines(conn: sqlite3.Connection, order_id: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT ol.*, p.name AS product_name, p.category, p.brand_id, p.is_returnable "
        "FROM order_lines ol JOIN products p ON p.product_id = ol.product_id "
        "WHERE ol.order_id = ? ORDER BY ol.line_number",
        (order_id,),
    ).fetchall()


@tool("getOrderDetails")
def get_order_details(conn: sqlite3.Connection, *, order_id: OrderId) -> dict[str, Any]:
    """Everything about one order: totals, payment, ship-to address, lines (with quantities already returned),
    the promotion applied, shipments, the status history as each system logged it, returns and refunds.

    Systems can disagree (e.g. the warehouse's shipped date vs the carrier's first scan): both are shown.
    """
    order = load_order(conn, order_id)
    customer = conn.execute(
        "SELECT customer_id, first_name, last_name, email, loyalty_tier_id FROM customers WHERE customer_id = ?",
        (order["customer_id"],),
    ).fetchone()
    promotion = None
    if order["promotion_id"] is not None:
        promotion = plain(
            conn.execute(
                "SELECT promotion_id, code, name, discount_type, discount_value, stackable FROM promotions "
                "WHERE promotion_id = ?",
                (order["promotion_id"],),
            ).fetchone()
        )
    shipments = conn.execute(
        "SELECT shipment_id, carrier_id, service_id, tracking_number, status, shipped_at, "
        "promised_delivery_date, estimated_delivery_date, delivered_at FROM shipments WHERE order_id = ? "
        "ORDER BY shipment_id",
        (order_id,),
    ).fetchall()
    history = conn.execute(
        "SELECT status, changed_at, source, note FROM order_status_history WHERE order_id = ? "
        "ORDER BY changed_at, history_id",
        (order_id,),
    ).fetchall()
    returns = conn.execute(
        "SELECT return_id, return_type, reason, status, requested_at, restocking_fee_cents, refund_amount_cents, "
        "exchange_order_id FROM returns WHERE order_id = ? ORDER BY return_id",
        (order_id,),
    ).fetchall()
    refunds = conn.execute(
        "SELECT refund_id, return_id, amount_cents, method, reason, status, created_at FROM refunds "
        "WHERE order_id = ? ORDER BY refund_id",
        (order_id,),
    ).fetchall()
    lines = [
        plain(r, drop=("order_id",)) | {"quantity_returnable": r["quantity"] - r["quantity_returned"]}
        for r in order_lines(conn, order_id)
    ]
    return {
        "order": plain(order),
        "customer": dict(customer) if customer else None,
        "lines": lines,
        "promotion": promotion,
        "shipments": [dict(s) for s in shipments],
        "status_history": [dict(h) for h in history],
        "returns": [plain(r) for r in returns],
        "refunds": [plain(r) for r in refunds],
        "refunded_total_usd": usd(sum(r["amount_cents"] for r in refunds if r["status"] != "failed")),
    }


@tool("getShippingStatus")
def get_shipping_status(
    conn: sqlite3.Connection,
    *,
    order_id: Annotated[OrderId | None, Field(description="Track every shipment of this order.")] = None,
    tracking_number: Annotated[
        str | None, Field(min_length=1, max_length=64, description="A carrier tracking number.")
    ] = None,
    shipment_id: Annotated[
        str | None, Field(min_length=1, max_length=64, description="A shipment id, e.g. 'SHP-300001'.")
    ] = None,
) -> dict[str, Any]:
    """Tracking for an order's shipments (or one shipment by tracking number or shipment id): carrier and
    service, every carrier scan in time order, the promised delivery date (the SLA deadline), the carrier's
    estimate, and whether the delivery is late as of today. Give exactly one of the three arguments.
    """
    given = [a for a in (order_id, tracking_number, shipment_id) if a is not None]
    if len(given) != 1:
        raise ToolError("give exactly one of order_id, tracking_number, shipment_id", argument="order_id")
    base = (
        "SELECT s.*, c.name AS carrier_name, c.tracking_url_template, c.claims_window_days, "
        "sv.name AS service_name, sv.service_level FROM shipments s "
        "JOIN carriers c ON c.carrier_id = s.carrier_id JOIN shipping_services sv ON sv.service_id = s.service_id "
    )
    if order_id is not None:
        load_order(conn, order_id)
        rows = conn.execute(base + "WHERE s.order_id = ? ORDER BY s.shipment_id", (order_id,)).fetchall()
    elif tracking_number is not None:
        rows = conn.execute(base + "WHERE s.tracking_number = ?", (tracking_number,)).fetchall()
        if not rows:
            raise ToolError(f"no shipment with tracking number {tracking_number!r}", argument="tracking_number")
    else:
        rows = conn.execute(base + "WHERE s.shipment_id = ?", (shipment_id,)).fetchall()
        if not rows:
            raise ToolError(f"no shipment with id {shipment_id!r}", argument="shipment_id")
    now = today(conn)
    shipments = []
    for s in rows:
        events = conn.execute(
            "SELECT occurred_at, event_code, location, description FROM shipment_events WHERE shipment_id = ? "
            "ORDER BY occurred_at, event_id",
            (s["shipment_id"],),
        ).fetchall()
        promised = date_of(s["promised_delivery_date"])
        delivered = date_of(s["delivered_at"])
        if promised is None:
            late = None
        elif delivered is not None:
            late = delivered > promised
        else:
            late = now > promised and s["status"] not in ("returned_to_sender",)
        info = plain(s, drop=("tracking_url_template", "cost_cents"))
        info["tracking_url"] = (
            s["tracking_url_template"].replace("{tracking_number}", s["tracking_number"])
            if s["tracking_number"]
            else None
        )
        info["is_late"] = late
        info["days_late"] = (
            ((delivered or now) - promised).days if late and promised is not None else 0
        )
        info["carrier_claim_deadline"] = (
            (delivered + dt.timedelta(days=s["claims_window_days"])).isoformat() if delivered else None
        )
        info["events"] = [dict(e) for e in events]
        shipments.append(info)
    order_ref = order_id if order_id is not None else (rows[0]["order_id"] if rows else None)
    return {"order_id": order_ref, "today": now.isoformat(), "shipments": shipments}


_ADDRESS_FIELDS = ("ship_name", "ship_address_line1", "ship_address_line2", "ship_city", "ship_state",
                   "ship_postal_code")
_LOCKED_FOR_CHANGES = ("shipped", "delivered", "cancelled", "returned", "partially_returned")


@tool("updateOrder", writes=True)
def update_order(
    conn: sqlite3.Connection,
    *,
    order_id: OrderId,
    status: Annotated[
        Literal["cancelled", "on_hold", "processing"] | None,
        Field(description="'cancelled' cancels the order (refunds a captured payment, releases stock); "
                          "'on_hold' pauses fulfilment; 'processing' releases a hold."),
    ] = None,
    ship_name: ShortText | None = None,
    ship_address_line1: ShortText | None = None,
    ship_address_line2: ShortText | None = None,
    ship_city: ShortText | None = None,
    ship_state: StateCode | None = None,
    ship_postal_code: Annotated[str | None, Field(min_length=3, max_length=12)] = None,
    shipping_service_id: Annotated[
        str | None, Field(min_length=1, max_length=32, description="Change the shipping service, e.g. 'UPS-2DAY'.")
    ] = None,
    note: Annotated[Note | None, Field(description="A note kept on the order (at most 2000 characters).")] = None,
    refund_usd: Annotated[
        Usd | None,
        Field(gt=0, description="Refund this amount on the order now, without a return (e.g. a late-delivery "
              "shipping refund, a price match, a goodwill credit): needs refund_reason. How much an agent may "
              "grant is set by the refunds policy."),
    ] = None,
    refund_reason: Literal["shipping_delay", "price_match", "goodwill", "damage_claim"] | None = None,
    ticket_id: Annotated[TicketId | None, Field(description="The ticket a refund belongs to.")] = None,
) -> dict[str, Any]:
    """Change an order: before it ships, cancel it, hold or release it, or change the ship-to address or the
    shipping service; at any time, add a note or refund part of what was paid without a return (a late
    delivery's shipping charge, a price match, a goodwill credit, a damage claim). Refunds can never exceed
    what the order paid, counting earlier refunds. Shipped, delivered, cancelled or returned orders cannot
    otherwise change (use processReturn or processExchange after delivery). Give at least one change.
    """
    order = load_order(conn, order_id)
    address = {k: v for k, v in {
        "ship_name": ship_name, "ship_address_line1": ship_address_line1, "ship_address_line2": ship_address_line2,
        "ship_city": ship_city, "ship_state": ship_state, "ship_postal_code": ship_postal_code,
    }.items() if v is not None}
    if status is None and not address and shipping_service_id is None and note is None and refund_usd is None:
        raise ToolError("give at least one change (status, an address field, shipping_service_id, note or "
                        "refund_usd)", argument="order_id")
    if (refund_usd is None) != (refund_reason is None):
        raise ToolError("refund_usd and refund_reason go together", argument="refund_reason")
    current = order["status"]
    structural = status is not None or address or shipping_service_id is not None
    if structural and current in _LOCKED_FOR_CHANGES:
        raise ToolError(f"order {order_id} is {current} and can no longer be changed", argument="order_id")
    ts = now_timestamp(conn)
    changes: dict[str, Any] = {}
    refund_id = None
    if "ship_state" in address:
        address["ship_state"] = address["ship_state"].upper()
        if conn.execute("SELECT 1 FROM shipping_regions WHERE state_code = ?", (address["ship_state"],)).fetchone() is None:
            raise ToolError(f"{ship_state!r} is not a state we ship to", argument="ship_state")
    if address:
        sets = ", ".join(f"{k} = ?" for k in address if k in _ADDRESS_FIELDS)
        conn.execute(f"UPDATE orders SET {sets}, updated_at = ? WHERE order_id = ?",
                     [*address.values(), ts, order_id])
        changes["address"] = address
    if shipping_service_id is not None:
        service = conn.execute(
            "SELECT service_id, is_active FROM shipping_services WHERE service_id = ?", (shipping_service_id,)
        ).fetchone()
        if service is None:
            raise ToolError(f"no shipping service {shipping_service_id!r}", argument="shipping_service_id")
        if not service["is_active"]:
            raise ToolError(f"shipping service {shipping_service_id} is no longer offered",
                            argument="shipping_service_id")
        conn.execute("UPDATE orders SET shipping_service_id = ?, updated_at = ? WHERE order_id = ?",
                     (shipping_service_id, ts, order_id))
        changes["shipping_service_id"] = shipping_service_id
    if status is not None and status != current:
        if status == "processing" and current != "on_hold":
            raise ToolError(f"only an order on hold can be released to processing (this one is {current})",
                            argument="status")
        if status == "cancelled":
            refund_id = _cancel(conn, order, ts)
        conn.execute("UPDATE orders SET status = ?, updated_at = ? WHERE order_id = ?", (status, ts, order_id))
        conn.execute(
            "INSERT INTO order_status_history (order_id, status, changed_at, source, note) VALUES (?, ?, ?, 'agent', ?)",
            (order_id, status, ts, note),
        )
        changes["status"] = {"from": current, "to": status}
    if refund_usd is not None and refund_reason is not None:
        partial = _partial_refund(conn, order, cents(refund_usd), refund_reason, ticket_id, ts)
        changes["refund"] = {"refund_id": partial, "amount_usd": refund_usd, "reason": refund_reason}
        refund_id = refund_id or partial
    if note is not None:
        existing = order["notes"]
        conn.execute("UPDATE orders SET notes = ?, updated_at = ? WHERE order_id = ?",
                     (f"{existing}\n{note}" if existing else note, ts, order_id))
        changes["note"] = note
    audit(conn, "updateOrder", "orders", order_id, changes | ({"refund_id": refund_id} if refund_id else {}))
    updated = load_order(conn, order_id)
    return {"order": plain(updated), "changes": changes, "refund_id": refund_id}


def _partial_refund(conn: sqlite3.Connection, order: sqlite3.Row, amount: int, reason: str, ticket_id: str | None,
                    ts: str) -> str:
    """Refund part of a captured payment now; the order's refunds never exceed what it paid."""
    if order["payment_status"] not in ("captured", "partially_refunded"):
        raise ToolError(f"order {order['order_id']} has no captured payment to refund (payment is "
                        f"{order['payment_status']})", argument="refund_usd")
    if ticket_id is not None:
        ticket = fetch_one(conn, "SELECT customer_id FROM support_tickets WHERE ticket_id = ?", (ticket_id,),
                           argument="ticket_id", kind="ticket", value=ticket_id)
        if ticket["customer_id"] != order["customer_id"]:
            raise ToolError(f"ticket {ticket_id} belongs to another customer", argument="ticket_id")
    refunded = refunded_cents(conn, order["order_id"])
    captured = captured_cents(conn, order)
    if refunded + amount > captured:
        raise ToolError(f"${usd(amount):.2f} would bring refunds on {order['order_id']} to "
                        f"${usd(refunded + amount):.2f}, more than the ${usd(captured):.2f} paid",
                        argument="refund_usd")
    refund_id = next_id(conn, "refunds", "refund_id", "RF", 60001)
    method = "store_credit" if order["payment_method"] == "gift_card" else "original_payment"
    conn.execute(
        "INSERT INTO refunds (refund_id, order_id, ticket_id, amount_cents, method, reason, status, created_at, "
        "issued_at) VALUES (?, ?, ?, ?, ?, ?, 'issued', ?, ?)",
        (refund_id, order["order_id"], ticket_id, amount, method, reason, ts, ts),
    )
    payment = "refunded" if refunded + amount >= captured else "partially_refunded"
    conn.execute("UPDATE orders SET payment_status = ?, updated_at = ? WHERE order_id = ?",
                 (payment, ts, order["order_id"]))
    return refund_id


def _cancel(conn: sqlite3.Connection, order: sqlite3.Row, ts: str) -> str | None:
    """Release reserved stock and refund whatever was captured. Returns the refund id, if any."""
    for line in conn.execute("SELECT product_id, quantity FROM order_lines WHERE order_id = ?", (order["order_id"],)):
        conn.execute(
            "UPDATE inventory SET quantity_reserved = MAX(0, quantity_reserved - ?), updated_at = ? "
            "WHERE product_id = ? AND warehouse_id = (SELECT warehouse_id FROM inventory WHERE product_id = ? "
            "ORDER BY quantity_reserved DESC, warehouse_id LIMIT 1)",
            (line["quantity"], ts, line["product_id"], line["product_id"]),
        )
    if order["payment_status"] not in ("captured", "partially_refunded"):
        new_payment = "voided"
        refund_id = None
    else:
        amount = captured_cents(conn, order) - refunded_cents(conn, order["order_id"])
        refund_id = None
        if amount > 0:
            refund_id = next_id(conn, "refunds", "refund_id", "RF", 60001)
            conn.execute(
                "INSERT INTO refunds (refund_id, order_id, amount_cents, method, reason, status, created_at, issued_at) "
                "VALUES (?, ?, ?, 'original_payment', 'cancellation', 'issued', ?, ?)",
                (refund_id, order["order_id"], amount, ts, ts),
            )
        new_payment = "refunded"
    conn.execute("UPDATE orders SET payment_status = ? WHERE order_id = ?", (new_payment, order["order_id"]))
    return refund_id
