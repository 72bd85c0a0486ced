"""Returns and exchanges: the policy-bound actions that move money and stock.

Every number comes from the active company policy rows (``policy_parameters`` of the 'returns' and
'restocking' policies) and the loyalty tiers table, never from constants here: change the policy row and the
tools follow. processReturn checks each order line, quantity, the return window (from the delivery date; the
tier's longer window for Gold/Platinum), the defective window, final-sale items and condition; computes the
refund (the paid price of the lines after discounts, minus the restocking fee, plus original shipping when
the return is our or the carrier's error) and the fee (percent, conditions, exempt reasons, cap, waived
tiers); then creates the RMA, its lines and the refund, books sellable units into the returns warehouse and
updates the order, all in one transaction.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from corecraft.tools.common import (
    Note,
    OrderId,
    ProductId,
    Quantity,
    TicketId,
    active_policy_id,
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
from corecraft.tools.orders import captured_cents, load_order, refunded_cents
from corecraft.tools.registry import tool

Condition = Literal["unopened", "opened", "damaged", "defective"]
Reason = Literal[
    "defective", "wrong_item", "not_needed", "damaged_in_transit", "incompatible", "changed_mind", "arrived_late"
]
SELLABLE = frozenset({"unopened", "opened"})
# A final-sale item comes back only when it arrived defective, damaged, or was the wrong item.
FINAL_SALE_EXCEPTIONS = frozenset({"defective", "damaged_in_transit", "wrong_item"})


@dataclass(frozen=True)
class ReturnPolicy:
    """The numbers of the active returns and restocking policies (defaults only where a row is absent)."""

    window_days: int
    tier_window_days: dict[str, int]
    defective_window_days: int
    fee_percent: int
    fee_conditions: frozenset[str]
    exempt_reasons: frozenset[str]
    max_fee_cents: int | None
    waived_tiers: frozenset[str]
    policy_ids: tuple[str, ...]


def _split(value: Any) -> frozenset[str]:
    return frozenset(v.strip() for v in str(value).split(",") if v.strip())


def return_policy(conn: sqlite3.Connection) -> ReturnPolicy:
    returns = policy_params(conn, "returns")
    restock = policy_params(conn, "restocking")
    window = int(returns.get("window_days", 30))
    tiers = {k.removesuffix("_window_days"): int(v) for k, v in returns.items()
             if k.endswith("_window_days") and k not in ("window_days", "defective_window_days")}
    ids = tuple(x for x in (active_policy_id(conn, "returns"), active_policy_id(conn, "restocking")) if x)
    return ReturnPolicy(
        window_days=window,
        tier_window_days=tiers,
        defective_window_days=int(returns.get("defective_window_days", window)),
        fee_percent=int(restock.get("fee_percent", 15)),
        fee_conditions=_split(restock.get("applies_to_conditions", "opened")),
        exempt_reasons=_split(restock.get("exempt_reasons", "defective,wrong_item,damaged_in_transit,arrived_late")),
        max_fee_cents=restock.get("max_fee_cents"),
        waived_tiers=_split(restock.get("waived_for_tiers", "")),
        policy_ids=ids,
    )


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
    paid_cents: int  # what the customer paid for these units, order-level discount pro-rated
    fee_cents: int  # before the per-return cap


def _delivered_on(conn: sqlite3.Connection, order: sqlite3.Row) -> dt.date:
    """The delivery date the window runs from: the shipment record, else the carrier's 'delivered' scan (as the
    policy says), else the logged 'delivered' status, else the order date."""
    oid = order["order_id"]
    for sql in (
        "SELECT MAX(delivered_at) FROM shipments WHERE order_id = ?",
        "SELECT MAX(e.occurred_at) FROM shipment_events e JOIN shipments s ON s.shipment_id = e.shipment_id "
        "WHERE s.order_id = ? AND e.event_code = 'delivered'",
        "SELECT MAX(changed_at) FROM order_status_history WHERE order_id = ? AND status = 'delivered'",
    ):
        found = conn.execute(sql, (oid,)).fetchone()[0]
        if found:
            return date_of(found)  # type: ignore[return-value]
    return date_of(order["placed_at"])  # type: ignore[return-value]


def _window(conn: sqlite3.Connection, order: sqlite3.Row, policy: ReturnPolicy, reason: str,
            allow_outside_window: bool) -> dict[str, Any]:
    tier = conn.execute("SELECT t.tier_id, t.return_window_days, t.restocking_fee_waived FROM customers c "
                        "JOIN loyalty_tiers t ON t.tier_id = c.loyalty_tier_id WHERE c.customer_id = ?",
                        (order["customer_id"],)).fetchone()
    window = max(policy.tier_window_days.get(tier["tier_id"], policy.window_days), tier["return_window_days"])
    delivered = _delivered_on(conn, order)
    elapsed = (today(conn) - delivered).days
    problem = None
    if elapsed > window:
        problem = (f"order {order['order_id']} was delivered {delivered}, {elapsed} days ago: outside the {window}-day "
                   f"return window for tier {tier['tier_id']}")
    elif reason == "defective" and elapsed > policy.defective_window_days:
        problem = (f"a defective item reported {elapsed} days after delivery is past the {policy.defective_window_days}-"
                   "day defective-return window: it goes through a warranty claim instead")
    if problem and not allow_outside_window:
        raise ToolError(f"{problem}. Only the escalations team may approve an exception "
                        "(then pass allow_outside_window=true).", argument="order_id")
    return {"delivered_on": delivered.isoformat(), "days_since_delivery": elapsed, "window_days": window,
            "inside_window": problem is None, "exception_granted": problem is not None, "tier_id": tier["tier_id"],
            "tier_waives_restocking_fee": bool(tier["restocking_fee_waived"]) or tier["tier_id"] in policy.waived_tiers}


def _resolve(conn: sqlite3.Connection, order: sqlite3.Row, items: list[ReturnItem], reason: str,
             policy: ReturnPolicy, waive_fee: bool) -> list[_Line]:
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
        if item.condition == "damaged" and reason not in FINAL_SALE_EXCEPTIONS:
            raise ToolError(f"{line['product_id']}: an item damaged by the customer cannot be returned (returns "
                            "policy); if it arrived damaged, the reason is damaged_in_transit", argument=arg)
        if not line["is_returnable"] and reason not in FINAL_SALE_EXCEPTIONS:
            raise ToolError(f"{line['product_id']} is final sale: it can come back only if it arrived defective, "
                            "damaged or was the wrong item", argument=arg)
        paid = line["line_total_cents"] * item.quantity // line["quantity"]
        paid -= order["discount_cents"] * paid // (order["subtotal_cents"] or 1)
        charge_fee = (item.condition in policy.fee_conditions and reason not in policy.exempt_reasons
                      and not waive_fee)
        fee = paid * policy.fee_percent // 100 if charge_fee else 0
        resolved.append(_Line(line, item.quantity, item.condition, paid, fee))
    return resolved


def _capped_fee(lines: list[_Line], policy: ReturnPolicy) -> int:
    fee = sum(ln.fee_cents for ln in lines)
    return fee if policy.max_fee_cents is None else min(fee, int(policy.max_fee_cents))


def _shipping_refund(conn: sqlite3.Connection, order: sqlite3.Row, reason: str, policy: ReturnPolicy) -> int:
    """Original shipping comes back once, when the return is our or the carrier's error."""
    if reason not in policy.exempt_reasons or not order["shipping_cents"]:
        return 0
    already = conn.execute(
        "SELECT COUNT(*) FROM audit_log WHERE entity_type = 'returns' AND action IN ('processReturn', "
        "'processExchange') AND json_extract(details, '$.order_id') = ? "
        "AND json_extract(details, '$.shipping_refund_cents') > 0",
        (order["order_id"],),
    ).fetchone()[0]
    return 0 if already else order["shipping_cents"]


def _restock_warehouse(conn: sqlite3.Connection, order_id: str) -> str:
    """Returns go to the returns warehouse (per the shipping policy), else back where the order shipped from."""
    row = conn.execute("SELECT warehouse_id FROM warehouses WHERE name LIKE '%Return%' ORDER BY warehouse_id "
                       "LIMIT 1").fetchone()
    if row is None:
        row = conn.execute("SELECT warehouse_id FROM shipments WHERE order_id = ? ORDER BY shipment_id LIMIT 1",
                           (order_id,)).fetchone()
    if row is None:
        row = conn.execute("SELECT warehouse_id FROM warehouses ORDER BY warehouse_id LIMIT 1").fetchone()
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
            wh = _restock_warehouse(conn, order_id)
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


def _settle_order(conn: sqlite3.Connection, order: sqlite3.Row, ts: str, note: str) -> str:
    left = conn.execute("SELECT COALESCE(SUM(quantity - quantity_returned), 0) FROM order_lines WHERE order_id = ?",
                        (order["order_id"],)).fetchone()[0]
    status = "returned" if left == 0 else "partially_returned"
    refunded = refunded_cents(conn, order["order_id"])
    payment = order["payment_status"]
    if refunded > 0:
        payment = "refunded" if refunded >= captured_cents(conn, order) else "partially_refunded"
    conn.execute("UPDATE orders SET status = ?, payment_status = ?, updated_at = ? WHERE order_id = ?",
                 (status, payment, ts, order["order_id"]))
    conn.execute("INSERT INTO order_status_history (order_id, status, changed_at, source, note) "
                 "VALUES (?, ?, ?, 'agent', ?)", (order["order_id"], status, ts, note))
    return status


def _check_returnable_order(conn: sqlite3.Connection, order_id: str, ticket_id: str | None) -> sqlite3.Row:
    order = load_order(conn, order_id)
    if order["status"] not in ("delivered", "partially_returned"):
        hint = " (cancel it with updateOrder instead)" if order["status"] in ("pending", "processing", "on_hold") else ""
        raise ToolError(f"order {order_id} is {order['status']}: only delivered orders can be returned or "
                        f"exchanged{hint}", argument="order_id")
    if ticket_id is not None:
        ticket = fetch_one(conn, "SELECT customer_id FROM support_tickets WHERE ticket_id = ?", (ticket_id,),
                           argument="ticket_id", kind="ticket", value=ticket_id)
        if ticket["customer_id"] != order["customer_id"]:
            raise ToolError(f"ticket {ticket_id} belongs to another customer", argument="ticket_id")
    return order


def _insert_refund(conn: sqlite3.Connection, order_id: str, return_id: str, ticket_id: str | None, amount: int,
                   method: str, ts: str) -> str:
    refund_id = next_id(conn, "refunds", "refund_id", "RF", 60001)
    # Issued once the warehouse receives the item (refund policy): pending until then.
    conn.execute(
        "INSERT INTO refunds (refund_id, order_id, return_id, ticket_id, amount_cents, method, reason, status, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, 'return', 'pending', ?)",
        (refund_id, order_id, return_id, ticket_id, amount, method, ts),
    )
    return refund_id


@tool("processReturn", writes=True)
def process_return(
    conn: sqlite3.Connection,
    *,
    order_id: OrderId,
    items: Annotated[list[ReturnItem], Field(min_length=1, max_length=50, description="What comes back.")],
    reason: Reason,
    refund_method: Annotated[
        Literal["original_payment", "store_credit"],
        Field(description="The customer's choice; orders paid by gift card are always refunded as store credit."),
    ] = "original_payment",
    waive_restocking_fee: Annotated[
        bool, Field(description="Waive the restocking fee where policy allows the agent to (e.g. our staff or "
                    "validator confirmed compatibility in writing before purchase).")
    ] = False,
    allow_outside_window: Annotated[
        bool, Field(description="Accept a return past the return window: only with the escalations team's "
                    "approval.")
    ] = False,
    ticket_id: Annotated[TicketId | None, Field(description="The support ticket this return belongs to.")] = None,
    note: Annotated[Note | None, Field(description="At most 2000 characters.")] = None,
) -> dict[str, Any]:
    """Create an RMA for items of a delivered order and the refund that goes with it, following the active
    returns and restocking policies. Checks each item is on the order with enough quantity left, the return
    window from the delivery date (longer for Gold/Platinum), the defective-return window, final-sale items.
    Refund = the paid price of the returned lines (after discounts) minus the restocking fee (on opened,
    non-defective items unless the reason is our or the carrier's error or the tier waives it; capped per
    return), plus the original shipping when the return is our or the carrier's error. The refund is pending
    until the warehouse receives the item; sellable units are booked into the returns warehouse. Refunds can
    never exceed what the order paid. Every number used is returned in `breakdown`.
    """
    order = _check_returnable_order(conn, order_id, ticket_id)
    policy = return_policy(conn)
    window = _window(conn, order, policy, reason, allow_outside_window)
    waived = waive_restocking_fee or window["tier_waives_restocking_fee"]
    lines = _resolve(conn, order, items, reason, policy, waived)
    merchandise = sum(ln.paid_cents for ln in lines)
    fee = _capped_fee(lines, policy)
    shipping = _shipping_refund(conn, order, reason, policy)
    refund = merchandise - fee + shipping
    already = refunded_cents(conn, order_id)
    captured = captured_cents(conn, order)
    if already + refund > captured:
        raise ToolError(f"refunding ${usd(refund):.2f} would bring refunds on {order_id} to "
                        f"${usd(already + refund):.2f}, more than the ${usd(captured):.2f} paid",
                        argument="items")
    method = "store_credit" if order["payment_method"] == "gift_card" else refund_method
    ts = now_timestamp(conn)
    return_id = next_id(conn, "returns", "return_id", "RMA", 40001)
    conn.execute(
        "INSERT INTO returns (return_id, order_id, customer_id, ticket_id, return_type, reason, status, requested_at, "
        "restocking_fee_cents, refund_amount_cents, notes) VALUES (?, ?, ?, ?, ?, ?, 'approved', ?, ?, ?, ?)",
        (return_id, order_id, order["customer_id"], ticket_id,
         "store_credit" if method == "store_credit" else "refund", reason, ts, fee, refund, note),
    )
    moves = _receive(conn, order_id, lines, return_id, ts)
    refund_id = _insert_refund(conn, order_id, return_id, ticket_id, refund, method, ts) if refund > 0 else None
    status = _settle_order(conn, order, ts, f"{return_id}: {reason}")
    audit(conn, "processReturn", "returns", return_id,
          {"order_id": order_id, "refund_id": refund_id, "refund_cents": refund, "restocking_fee_cents": fee,
           "shipping_refund_cents": shipping, "exception_granted": window["exception_granted"],
           "fee_waived_by_agent": waive_restocking_fee})
    return {
        "return_id": return_id,
        "refund_id": refund_id,
        "rma_status": "approved",
        "refund_status": "pending" if refund_id else None,
        "order_status": status,
        "refund_usd": usd(refund),
        "refund_method": method,
        "breakdown": {"paid_for_items_usd": usd(merchandise), "restocking_fee_usd": usd(fee),
                      "restocking_fee_percent": policy.fee_percent if fee else 0,
                      "restocking_fee_cap_usd": usd(policy.max_fee_cents),
                      "shipping_refund_usd": usd(shipping), "policy_ids": list(policy.policy_ids)},
        "return_window": window,
        "lines": [{"order_line_id": ln.row["order_line_id"], "product_id": ln.row["product_id"],
                   "quantity": ln.quantity, "condition": ln.condition, "paid_usd": usd(ln.paid_cents),
                   "restocking_fee_usd": usd(ln.fee_cents)} for ln in lines],
        "inventory": moves,
    }


@tool("processExchange", writes=True)
def process_exchange(
    conn: sqlite3.Connection,
    *,
    order_id: OrderId,
    product_id: Annotated[ProductId, Field(description="The product coming back.")],
    condition: Condition,
    reason: Reason,
    new_product_id: Annotated[
        ProductId | None,
        Field(description="The replacement; leave out for the same product. A different product is processed "
              "as a return plus a new order."),
    ] = None,
    quantity: Quantity = 1,
    order_line_id: Annotated[
        int | None, Field(ge=1, le=2**53, description="Needed only when the product is on several lines.")
    ] = None,
    waive_restocking_fee: Annotated[
        bool, Field(description="Waive the restocking fee where policy allows the agent to.")
    ] = False,
    allow_outside_window: Annotated[
        bool, Field(description="Accept an exchange past the return window: only with the escalations team's "
                    "approval.")
    ] = False,
    ticket_id: TicketId | None = None,
    note: Annotated[Note | None, Field(description="At most 2000 characters.")] = None,
) -> dict[str, Any]:
    """Exchange items of a delivered order: an RMA for what comes back plus a replacement order. The returned
    side is checked like a return (on the order, quantity, window, final sale, restocking fee on opened
    non-defective items). The replacement must be active and in stock in one warehouse (its units are
    reserved). The replacement order is priced at today's price with the credit for the returned items
    applied: if it costs more, the customer owes the difference (the new order awaits payment); if less, the
    difference is refunded.
    """
    order = _check_returnable_order(conn, order_id, ticket_id)
    policy = return_policy(conn)
    window = _window(conn, order, policy, reason, allow_outside_window)
    waived = waive_restocking_fee or window["tier_waives_restocking_fee"]
    item = ReturnItem(product_id=None if order_line_id else product_id, order_line_id=order_line_id,
                      quantity=quantity, condition=condition)
    [line] = _resolve(conn, order, [item], reason, policy, waived)
    if line.row["product_id"] != product_id:
        raise ToolError(f"order line {order_line_id} holds {line.row['product_id']}, not {product_id}",
                        argument="order_line_id")
    new_product_id = new_product_id or product_id
    new = fetch_one(conn, "SELECT * FROM products WHERE product_id = ?", (new_product_id,),
                    argument="new_product_id", kind="product", value=new_product_id)
    if new["status"] != "active":
        raise ToolError(f"{new_product_id} is {new['status']} and cannot be shipped now", argument="new_product_id")
    stock = conn.execute(
        "SELECT i.warehouse_id, i.quantity_on_hand - i.quantity_reserved AS available FROM inventory i "
        "JOIN warehouses w ON w.warehouse_id = i.warehouse_id WHERE i.product_id = ? "
        "AND i.quantity_on_hand - i.quantity_reserved >= ? ORDER BY w.name LIKE '%Overflow%', available DESC, "
        "i.warehouse_id LIMIT 1",
        (new_product_id, quantity),
    ).fetchone()
    if stock is None:
        eta = conn.execute("SELECT MIN(restock_eta) FROM inventory WHERE product_id = ?", (new_product_id,)).fetchone()[0]
        raise ToolError(f"no warehouse has {quantity} x {new_product_id} available"
                        + (f"; next restock {eta}" if eta else ""), argument="new_product_id")
    fee = _capped_fee([line], policy)
    ts = now_timestamp(conn)
    credit = line.paid_cents - fee
    new_cost = new["price_cents"] * quantity
    difference = new_cost - credit  # > 0: the customer owes it; < 0: we refund it
    already = refunded_cents(conn, order_id)
    captured = captured_cents(conn, order)
    if difference < 0 and already - difference > captured:
        raise ToolError(f"the exchange would bring refunds on {order_id} above the "
                        f"${usd(captured):.2f} paid", argument="new_product_id")
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
        "restocking_fee_cents, refund_amount_cents, exchange_order_id, notes) "
        "VALUES (?, ?, ?, ?, 'exchange', ?, 'approved', ?, ?, ?, ?, ?)",
        (return_id, order_id, order["customer_id"], ticket_id, reason, ts, fee, max(0, -difference), new_order_id,
         note),
    )
    moves = _receive(conn, order_id, [line], return_id, ts)
    refund_id = (_insert_refund(conn, order_id, return_id, ticket_id, -difference,
                                "store_credit" if order["payment_method"] == "gift_card" else "original_payment", ts)
                 if difference < 0 else None)
    status = _settle_order(conn, order, ts, f"{return_id}: exchanged for {new_order_id}")
    audit(conn, "processExchange", "returns", return_id,
          {"order_id": order_id, "exchange_order_id": new_order_id, "difference_cents": difference,
           "restocking_fee_cents": fee, "exception_granted": window["exception_granted"]})
    return {
        "return_id": return_id,
        "exchange_order_id": new_order_id,
        "order_status": status,
        "returned": {"product_id": product_id, "quantity": quantity, "condition": condition,
                     "paid_usd": usd(line.paid_cents), "restocking_fee_usd": usd(fee), "credit_usd": usd(credit)},
        "replacement": {"product_id": new_product_id, "name": new["name"], "quantity": quantity,
                        "price_usd": usd(new_cost), "ships_from": stock["warehouse_id"]},
        "customer_owes_usd": usd(max(0, difference)),
        "refund_usd": usd(max(0, -difference)),
        "refund_id": refund_id,
        "return_window": window,
        "inventory": moves,
        "new_order": plain(load_order(conn, new_order_id)),
    }
