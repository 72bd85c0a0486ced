"""Returns and exchanges: the policy-bound actions that move money and stock.

processReturn checks each order line, quantity, the return window (the standard window or the customer's
tier's longer one), final-sale items and condition; computes the refund (what was paid for the items,
order discount and tax pro-rated) and the restocking fee from the active policy; then creates the RMA, its
lines and the refund, restocks sellable items and updates the order, all in one transaction.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from corecraft.tools.common import (
    OrderId,
    ProductId,
    Quantity,
    TicketId,
    audit,
    date_of,
    fetch_one,
    next_id,
    now_timestamp,
    plain,
    policy_params,
    today,
    usd,
)
from corecraft.tools.errors import ToolError
from corecraft.tools.orders import load_order
from corecraft.tools.registry import tool

Condition = Literal["unopened", "opened", "damaged", "defective"]
Reason = Literal[
    "defective", "wrong_item", "not_needed", "damaged_in_transit", "incompatible", "changed_mind", "arrived_late"
]
# Our fault: no restocking fee, final-sale items still come back, shipping is refunded on a full return.
OUR_FAULT = frozenset({"defective", "wrong_item", "damaged_in_transit", "arrived_late"})
SELLABLE = frozenset({"unopened", "opened"})
DEFAULT_WINDOW_DAYS = 30
DEFAULT_RESTOCKING_PERCENT = 15


class ReturnItem(BaseModel):
    """One order line (by product id, or by order_line_id when a product is on two lines) and how many."""

    model_config = ConfigDict(extra="forbid")
    product_id: ProductId | None = None
    order_line_id: Annotated[int | None, Field(ge=1, le=2**53)] = None
    quantity: Quantity = 1
    condition: Condition


@dataclass(frozen=True)
class _Line:
    row: sqlite3.Row
    quantity: int
    condition: str
    paid_cents: int  # merchandise paid for these units, order discount pro-rated
    tax_cents: int
    fee_cents: int


def _policy(conn: sqlite3.Connection) -> tuple[int, int]:
    params = policy_params(conn, "restocking") | policy_params(conn, "returns")
    window = int(params.get("window_days", DEFAULT_WINDOW_DAYS))
    fee = params.get("restocking_fee_percent", DEFAULT_RESTOCKING_PERCENT)
    return window, int(fee)


def _delivered_on(conn: sqlite3.Connection, order: sqlite3.Row) -> dt.date:
    """When the goods arrived: the last delivered shipment, else the logged 'delivered' status, else the order date."""
    delivered = conn.execute("SELECT MAX(delivered_at) FROM shipments WHERE order_id = ?",
                             (order["order_id"],)).fetchone()[0]
    if delivered is None:
        delivered = conn.execute("SELECT MAX(changed_at) FROM order_status_history WHERE order_id = ? "
                                 "AND status = 'delivered'", (order["order_id"],)).fetchone()[0]
    return date_of(delivered) or date_of(order["placed_at"])  # type: ignore[return-value]


def _window(conn: sqlite3.Connection, order: sqlite3.Row, allow_outside_window: bool) -> dict[str, Any]:
    standard, _ = _policy(conn)
    tier = conn.execute("SELECT t.tier_id, t.return_window_days, t.restocking_fee_waived FROM customers c "
                        "JOIN loyalty_tiers t ON t.tier_id = c.loyalty_tier_id WHERE c.customer_id = ?",
                        (order["customer_id"],)).fetchone()
    window = max(standard, tier["return_window_days"])
    delivered = _delivered_on(conn, order)
    elapsed = (today(conn) - delivered).days
    inside = elapsed <= window
    if not inside and not allow_outside_window:
        raise ToolError(
            f"order {order['order_id']} was delivered {delivered} ({elapsed} days ago), outside the {window}-day "
            f"return window for tier {tier['tier_id']}. A policy exception is the agent's decision: pass "
            "allow_outside_window=true to make one.",
            argument="order_id",
        )
    return {"delivered_on": delivered.isoformat(), "days_since_delivery": elapsed, "window_days": window,
            "inside_window": inside, "exception_granted": not inside, "tier_id": tier["tier_id"],
            "tier_waives_restocking_fee": bool(tier["restocking_fee_waived"])}


def _resolve(conn: sqlite3.Connection, order: sqlite3.Row, items: list[ReturnItem], reason: str,
             fee_percent: int, waive_fee: bool) -> list[_Line]:
    lines = conn.execute(
        "SELECT ol.*, p.name AS product_name, p.is_returnable FROM order_lines ol "
        "JOIN products p ON p.product_id = ol.product_id WHERE ol.order_id = ? ORDER BY ol.line_number",
        (order["order_id"],),
    ).fetchall()
    wanted: dict[int, int] = {}
    resolved: list[_Line] = []
    for n, item in enumerate(items):
        arg = f"items[{n}]"
        if (item.product_id is None) == (item.order_line_id is None):
            raise ToolError("give product_id or order_line_id", argument=arg)
        if item.order_line_id is not None:
            matches = [ln for ln in lines if ln["order_line_id"] == item.order_line_id]
            what = f"order line {item.order_line_id}"
        else:
            matches = [ln for ln in lines if ln["product_id"] == item.product_id]
            what = f"product {item.product_id}"
        if not matches:
            raise ToolError(f"{what} is not on order {order['order_id']}", argument=arg)
        if len(matches) > 1:
            ids = ", ".join(str(m["order_line_id"]) for m in matches)
            raise ToolError(f"{what} is on several lines ({ids}): give order_line_id", argument=arg)
        line = matches[0]
        wanted[line["order_line_id"]] = wanted.get(line["order_line_id"], 0) + item.quantity
        left = line["quantity"] - line["quantity_returned"]
        if wanted[line["order_line_id"]] > left:
            raise ToolError(f"only {left} of {line['quantity']} x {line['product_id']} can still be returned "
                            f"({line['quantity_returned']} already returned)", argument=arg)
        if not line["is_returnable"] and reason not in OUR_FAULT and item.condition not in ("defective", "damaged"):
            raise ToolError(f"{line['product_id']} is final sale: it can come back only if defective, damaged "
                            "or wrong", argument=arg)
        paid = line["line_total_cents"] * item.quantity // line["quantity"]
        subtotal = order["subtotal_cents"] or 1
        discount = order["discount_cents"] * paid // subtotal
        tax = order["tax_cents"] * paid // subtotal
        paid -= discount
        charge_fee = reason not in OUR_FAULT and item.condition != "unopened" and not waive_fee
        fee = paid * fee_percent // 100 if charge_fee else 0
        resolved.append(_Line(line, item.quantity, item.condition, paid, tax, fee))
    return resolved


def _restock_warehouse(conn: sqlite3.Connection, order_id: str, product_id: str) -> str:
    row = conn.execute("SELECT warehouse_id FROM shipments WHERE order_id = ? ORDER BY shipment_id LIMIT 1",
                       (order_id,)).fetchone()
    if row is None:
        row = conn.execute("SELECT warehouse_id FROM inventory WHERE product_id = ? ORDER BY warehouse_id LIMIT 1",
                           (product_id,)).fetchone()
    return row[0]


def _receive(conn: sqlite3.Connection, order_id: str, lines: list[_Line], return_id: str, ts: str) -> list[dict]:
    """Record the return lines, mark them returned, and put sellable units back on the shelf."""
    moves = []
    for ln in lines:
        conn.execute("INSERT INTO return_lines (return_id, order_line_id, quantity, item_condition) "
                     "VALUES (?, ?, ?, ?)", (return_id, ln.row["order_line_id"], ln.quantity, ln.condition))
        conn.execute("UPDATE order_lines SET quantity_returned = quantity_returned + ? WHERE order_line_id = ?",
                     (ln.quantity, ln.row["order_line_id"]))
        if ln.condition in SELLABLE:
            wh = _restock_warehouse(conn, order_id, ln.row["product_id"])
            updated = conn.execute(
                "UPDATE inventory SET quantity_on_hand = quantity_on_hand + ?, updated_at = ? "
                "WHERE warehouse_id = ? AND product_id = ?", (ln.quantity, ts, wh, ln.row["product_id"])).rowcount
            if not updated:
                conn.execute("INSERT INTO inventory (warehouse_id, product_id, quantity_on_hand, quantity_reserved, "
                             "reorder_point, updated_at) VALUES (?, ?, ?, 0, 0, ?)",
                             (wh, ln.row["product_id"], ln.quantity, ts))
            moves.append({"product_id": ln.row["product_id"], "quantity": ln.quantity, "restocked_at": wh})
        else:
            moves.append({"product_id": ln.row["product_id"], "quantity": ln.quantity,
                          "restocked_at": None, "disposition": "quarantined for vendor RMA"})
    return moves


def _refunded_so_far(conn: sqlite3.Connection, order_id: str) -> int:
    return conn.execute("SELECT COALESCE(SUM(amount_cents), 0) FROM refunds WHERE order_id = ? "
                        "AND status != 'failed'", (order_id,)).fetchone()[0]


def _settle_order(conn: sqlite3.Connection, order: sqlite3.Row, ts: str, note: str) -> str:
    left = conn.execute("SELECT COALESCE(SUM(quantity - quantity_returned), 0) FROM order_lines WHERE order_id = ?",
                        (order["order_id"],)).fetchone()[0]
    status = "returned" if left == 0 else "partially_returned"
    refunded = _refunded_so_far(conn, order["order_id"])
    payment = order["payment_status"]
    if refunded > 0:
        payment = "refunded" if refunded >= order["total_cents"] else "partially_refunded"
    conn.execute("UPDATE orders SET status = ?, payment_status = ?, updated_at = ? WHERE order_id = ?",
                 (status, payment, ts, order["order_id"]))
    conn.execute("INSERT INTO order_status_history (order_id, status, changed_at, source, note) "
                 "VALUES (?, ?, ?, 'agent', ?)", (order["order_id"], status, ts, note))
    return status


def _check_returnable_order(conn: sqlite3.Connection, order_id: str, ticket_id: str | None) -> sqlite3.Row:
    order = load_order(conn, order_id)
    if order["status"] not in ("delivered", "partially_returned"):
        raise ToolError(f"order {order_id} is {order['status']}: only delivered orders can be returned or exchanged"
                        + (" (cancel it with updateOrder instead)" if order["status"] in
                           ("pending", "processing", "on_hold") else ""), argument="order_id")
    if ticket_id is not None:
        ticket = fetch_one(conn, "SELECT customer_id FROM support_tickets WHERE ticket_id = ?", (ticket_id,),
                           argument="ticket_id", kind="ticket", value=ticket_id)
        if ticket["customer_id"] != order["customer_id"]:
            raise ToolError(f"ticket {ticket_id} belongs to another customer", argument="ticket_id")
    return order


@tool("processReturn", writes=True)
def process_return(
    conn: sqlite3.Connection,
    *,
    order_id: OrderId,
    items: Annotated[list[ReturnItem], Field(min_length=1, max_length=50, description="What comes back.")],
    reason: Reason,
    refund_method: Literal["original_payment", "store_credit", "gift_card"] = "original_payment",
    waive_restocking_fee: Annotated[
        bool, Field(description="Waive the restocking fee as a policy exception (the agent's call).")
    ] = False,
    allow_outside_window: Annotated[
        bool, Field(description="Accept a return past the return window as a policy exception (the agent's call).")
    ] = False,
    ticket_id: Annotated[TicketId | None, Field(description="The support ticket this return belongs to.")] = None,
    note: Annotated[str | None, Field(min_length=1, max_length=2000)] = None,
) -> dict[str, Any]:
    """Return items from a delivered order and refund them. Checks that each item is on the order with enough
    quantity left to return, the return window (the policy's standard window, or the customer's loyalty-tier
    window when longer), final-sale items, and the condition. Refund = what was paid for the items (order
    discount and tax pro-rated), minus the restocking fee from the active policy on opened items returned for
    a reason that is not our fault (waived for tiers that waive it). Shipping is refunded when everything comes
    back for a reason that is our fault. Creates the RMA and the refund, restocks sellable items, and updates
    the order. Refunds can never exceed what the order paid.
    """
    order = _check_returnable_order(conn, order_id, ticket_id)
    window = _window(conn, order, allow_outside_window)
    _, fee_percent = _policy(conn)
    waived = waive_restocking_fee or window["tier_waives_restocking_fee"]
    lines = _resolve(conn, order, items, reason, fee_percent, waived)
    merchandise = sum(ln.paid_cents for ln in lines)
    tax = sum(ln.tax_cents for ln in lines)
    fee = sum(ln.fee_cents for ln in lines)
    returned_all = all(
        sum(ln.quantity for ln in lines if ln.row["order_line_id"] == row["order_line_id"])
        == row["quantity"] - row["quantity_returned"]
        for row in conn.execute("SELECT order_line_id, quantity, quantity_returned FROM order_lines "
                                "WHERE order_id = ? AND quantity > quantity_returned", (order_id,)).fetchall()
    )
    shipping = order["shipping_cents"] if returned_all and reason in OUR_FAULT else 0
    refund = merchandise + tax + shipping - fee
    already = _refunded_so_far(conn, order_id)
    if already + refund > order["total_cents"]:
        raise ToolError(f"refunding ${usd(refund):.2f} would bring refunds on {order_id} to "
                        f"${usd(already + refund):.2f}, more than the ${usd(order['total_cents']):.2f} paid",
                        argument="items")
    ts = now_timestamp(conn)
    return_id = next_id(conn, "returns", "return_id", "RMA", 40001)
    return_type = "store_credit" if refund_method == "store_credit" else "refund"
    conn.execute(
        "INSERT INTO returns (return_id, order_id, customer_id, ticket_id, return_type, reason, status, requested_at, "
        "received_at, restocking_fee_cents, refund_amount_cents, notes) VALUES (?, ?, ?, ?, ?, ?, 'refunded', ?, ?, ?, ?, ?)",
        (return_id, order_id, order["customer_id"], ticket_id, return_type, reason, ts, ts, fee, refund, note),
    )
    moves = _receive(conn, order_id, lines, return_id, ts)
    refund_id = None
    if refund > 0:
        refund_id = next_id(conn, "refunds", "refund_id", "RF", 60001)
        conn.execute(
            "INSERT INTO refunds (refund_id, order_id, return_id, ticket_id, amount_cents, method, reason, status, "
            "created_at, issued_at) VALUES (?, ?, ?, ?, ?, ?, 'return', 'issued', ?, ?)",
            (refund_id, order_id, return_id, ticket_id, refund, refund_method, ts, ts),
        )
    status = _settle_order(conn, order, ts, f"{return_id}: {reason}")
    audit(conn, "processReturn", "returns", return_id,
          {"order_id": order_id, "refund_id": refund_id, "refund_cents": refund, "restocking_fee_cents": fee,
           "exception_granted": window["exception_granted"], "fee_waived_by_agent": waive_restocking_fee})
    return {
        "return_id": return_id,
        "refund_id": refund_id,
        "order_status": status,
        "refund_usd": usd(refund),
        "breakdown": {"merchandise_usd": usd(merchandise), "tax_usd": usd(tax), "shipping_usd": usd(shipping),
                      "restocking_fee_usd": usd(fee), "restocking_fee_percent": fee_percent if fee else 0},
        "refund_method": refund_method,
        "return_window": window,
        "lines": [{"order_line_id": ln.row["order_line_id"], "product_id": ln.row["product_id"],
                   "quantity": ln.quantity, "condition": ln.condition, "refund_usd":
                   usd(ln.paid_cents + ln.tax_cents - ln.fee_cents), "restocking_fee_usd": usd(ln.fee_cents)}
                  for ln in lines],
        "inventory": moves,
    }


@tool("processExchange", writes=True)
def process_exchange(
    conn: sqlite3.Connection,
    *,
    order_id: OrderId,
    product_id: Annotated[ProductId, Field(description="The product coming back.")],
    new_product_id: Annotated[ProductId, Field(description="The product sent instead (the same one for a swap).")],
    condition: Condition,
    reason: Reason,
    quantity: Quantity = 1,
    order_line_id: Annotated[
        int | None, Field(ge=1, le=2**53, description="Needed only when the product is on several lines.")
    ] = None,
    allow_outside_window: Annotated[
        bool, Field(description="Accept an exchange past the return window as a policy exception.")
    ] = False,
    ticket_id: TicketId | None = None,
    note: Annotated[str | None, Field(min_length=1, max_length=2000)] = None,
) -> dict[str, Any]:
    """Exchange items from a delivered order for another product (or the same one). The returned side is
    checked like a return (on the order, quantity, window, final sale); the replacement must be sellable and in
    stock in one warehouse. No restocking fee on exchanges. Creates the RMA and a replacement order at today's
    price with what was paid credited: if the replacement costs more, the customer owes the difference (the new
    order awaits payment); if less, the difference is refunded.
    """
    order = _check_returnable_order(conn, order_id, ticket_id)
    window = _window(conn, order, allow_outside_window)
    item = ReturnItem(product_id=None if order_line_id else product_id, order_line_id=order_line_id,
                      quantity=quantity, condition=condition)
    [line] = _resolve(conn, order, [item], reason, 0, True)
    if line.row["product_id"] != product_id:
        raise ToolError(f"order line {order_line_id} holds {line.row['product_id']}, not {product_id}",
                        argument="order_line_id")
    new = fetch_one(conn, "SELECT * FROM products WHERE product_id = ?", (new_product_id,),
                    argument="new_product_id", kind="product", value=new_product_id)
    if new["status"] != "active":
        raise ToolError(f"{new_product_id} is {new['status']} and cannot be shipped now", argument="new_product_id")
    stock = conn.execute(
        "SELECT warehouse_id, quantity_on_hand - quantity_reserved AS available FROM inventory WHERE product_id = ? "
        "AND quantity_on_hand - quantity_reserved >= ? ORDER BY available DESC, warehouse_id LIMIT 1",
        (new_product_id, quantity),
    ).fetchone()
    if stock is None:
        eta = conn.execute("SELECT MIN(restock_eta) FROM inventory WHERE product_id = ?", (new_product_id,)).fetchone()[0]
        raise ToolError(f"no warehouse has {quantity} x {new_product_id} available"
                        + (f"; next restock {eta}" if eta else ""), argument="new_product_id")
    ts = now_timestamp(conn)
    credit = line.paid_cents + line.tax_cents
    new_cost = new["price_cents"] * quantity
    difference = new_cost - credit  # > 0: customer owes; < 0: we refund
    return_id = next_id(conn, "returns", "return_id", "RMA", 40001)
    new_order_id = next_id(conn, "orders", "order_id", "ORD", 200001)
    conn.execute(
        "INSERT INTO orders (order_id, customer_id, status, sales_channel, placed_at, updated_at, currency, "
        "subtotal_cents, discount_cents, shipping_cents, tax_cents, total_cents, shipping_service_id, payment_method, "
        "payment_status, ship_name, ship_address_line1, ship_address_line2, ship_city, ship_state, ship_postal_code, "
        "ship_country, notes) VALUES (?, ?, 'processing', 'phone', ?, ?, 'USD', ?, ?, 0, 0, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?, ?, ?, ?)",
        (new_order_id, order["customer_id"], ts, ts, new_cost, min(credit, new_cost), max(0, difference),
         order["shipping_service_id"], order["payment_method"], "authorized" if difference > 0 else "captured",
         order["ship_name"], order["ship_address_line1"], order["ship_address_line2"], order["ship_city"],
         order["ship_state"], order["ship_postal_code"], order["ship_country"], f"exchange for {return_id}"),
    )
    conn.execute(
        "INSERT INTO order_lines (order_id, line_number, product_id, quantity, unit_price_cents, discount_cents, "
        "line_total_cents) VALUES (?, 1, ?, ?, ?, 0, ?)",
        (new_order_id, new_product_id, quantity, new["price_cents"], new_cost),
    )
    conn.execute("INSERT INTO order_status_history (order_id, status, changed_at, source, note) "
                 "VALUES (?, 'processing', ?, 'agent', ?)", (new_order_id, ts, f"exchange for {return_id}"))
    conn.execute("UPDATE inventory SET quantity_reserved = quantity_reserved + ?, updated_at = ? "
                 "WHERE warehouse_id = ? AND product_id = ?", (quantity, ts, stock["warehouse_id"], new_product_id))
    conn.execute(
        "INSERT INTO returns (return_id, order_id, customer_id, ticket_id, return_type, reason, status, requested_at, "
        "received_at, restocking_fee_cents, refund_amount_cents, exchange_order_id, notes) "
        "VALUES (?, ?, ?, ?, 'exchange', ?, 'exchanged', ?, ?, 0, ?, ?, ?)",
        (return_id, order_id, order["customer_id"], ticket_id, reason, ts, ts, max(0, -difference), new_order_id, note),
    )
    moves = _receive(conn, order_id, [line], return_id, ts)
    refund_id = None
    if difference < 0:
        refund_id = next_id(conn, "refunds", "refund_id", "RF", 60001)
        conn.execute(
            "INSERT INTO refunds (refund_id, order_id, return_id, ticket_id, amount_cents, method, reason, status, "
            "created_at, issued_at) VALUES (?, ?, ?, ?, ?, 'original_payment', 'return', 'issued', ?, ?)",
            (refund_id, order_id, return_id, ticket_id, -difference, ts, ts),
        )
    status = _settle_order(conn, order, ts, f"{return_id}: exchanged for {new_order_id}")
    audit(conn, "processExchange", "returns", return_id,
          {"order_id": order_id, "exchange_order_id": new_order_id, "difference_cents": difference,
           "exception_granted": window["exception_granted"]})
    return {
        "return_id": return_id,
        "exchange_order_id": new_order_id,
        "order_status": status,
        "returned": {"product_id": product_id, "quantity": quantity, "condition": condition,
                     "credit_usd": usd(credit)},
        "replacement": {"product_id": new_product_id, "name": new["name"], "quantity": quantity,
                        "price_usd": usd(new_cost), "ships_from": stock["warehouse_id"]},
        "customer_owes_usd": usd(max(0, difference)),
        "refund_usd": usd(max(0, -difference)),
        "refund_id": refund_id,
        "return_window": window,
        "inventory": moves,
        "new_order": plain(load_order(conn, new_order_id)),
    }
