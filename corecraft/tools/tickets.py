"""Support-ticket tools: open a ticket (with its SLA deadlines) and move it through its statuses."""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Annotated, Any, Literal

from pydantic import Field

from corecraft.tools.common import (
    CustomerId,
    LongText,
    OrderId,
    ProductId,
    TicketId,
    audit,
    fetch_one,
    next_id,
    now_timestamp,
)
from corecraft.tools.customers import load_customer
from corecraft.tools.errors import ToolError
from corecraft.tools.orders import load_order
from corecraft.tools.registry import tool

TicketCategory = Literal[
    "order_status", "return", "warranty", "compatibility", "shipping_damage", "billing", "technical", "account",
    "price_match", "promotion",
]
Priority = Literal["low", "normal", "high", "urgent"]
Channel = Literal["email", "chat", "phone", "web_form", "social"]
TicketStatus = Literal["new", "open", "pending_customer", "escalated", "resolved", "closed"]


def _iso(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def support_sla(conn: sqlite3.Connection, priority: str, tier_id: str) -> sqlite3.Row | None:
    """The support SLA for a priority: a tier-specific row applies to that tier and the tiers above it and wins
    over the general row."""
    return conn.execute(
        "SELECT s.* FROM slas s LEFT JOIN loyalty_tiers t ON t.tier_id = s.loyalty_tier_id "
        "WHERE s.sla_type = 'support' AND s.priority = ? AND (s.loyalty_tier_id IS NULL OR "
        "t.rank <= (SELECT rank FROM loyalty_tiers WHERE tier_id = ?)) "
        "ORDER BY s.loyalty_tier_id IS NULL, t.rank DESC, s.sla_id LIMIT 1",
        (priority, tier_id),
    ).fetchone()


@tool("createTicket", writes=True)
def create_ticket(
    conn: sqlite3.Connection,
    *,
    customer_id: CustomerId,
    subject: Annotated[str, Field(min_length=1, max_length=200)],
    description: Annotated[LongText, Field(description="What the customer needs, in full; the first message (at most 4000 characters).")],
    category: TicketCategory,
    priority: Priority = "normal",
    channel: Channel = "chat",
    order_id: Annotated[OrderId | None, Field(description="The order the ticket is about, if any.")] = None,
    product_id: Annotated[ProductId | None, Field(description="The product the ticket is about, if any.")] = None,
) -> dict[str, Any]:
    """Open a support ticket for a customer. The SLA for its priority (a faster one for some loyalty tiers)
    sets the first-response and resolution deadlines, which are returned. The order, if given, must be the
    customer's own.
    """
    customer = load_customer(conn, customer_id)
    if order_id is not None:
        order = load_order(conn, order_id)
        if order["customer_id"] != customer_id:
            raise ToolError(f"order {order_id} belongs to another customer", argument="order_id")
    if product_id is not None:
        fetch_one(conn, "SELECT 1 FROM products WHERE product_id = ?", (product_id,),
                  argument="product_id", kind="product", value=product_id)
    ts = now_timestamp(conn)
    now = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")
    sla = support_sla(conn, priority, customer["loyalty_tier_id"])
    first_due = resolution_due = None
    if sla is not None:
        first_due = _iso(now + dt.timedelta(minutes=sla["first_response_minutes"] or 0))
        resolution_due = _iso(now + dt.timedelta(hours=sla["resolution_hours"] or 0))
    ticket_id = next_id(conn, "support_tickets", "ticket_id", "TKT", 50001)
    conn.execute(
        "INSERT INTO support_tickets (ticket_id, customer_id, order_id, product_id, subject, description, category, "
        "channel, priority, status, sla_id, created_at, updated_at, first_response_due_at, resolution_due_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?)",
        (ticket_id, customer_id, order_id, product_id, subject, description, category, channel, priority,
         sla["sla_id"] if sla else None, ts, ts, first_due, resolution_due),
    )
    conn.execute(
        "INSERT INTO ticket_messages (ticket_id, author_type, sent_at, channel, is_internal_note, body) "
        "VALUES (?, 'agent', ?, ?, 0, ?)",
        (ticket_id, ts, channel, description),
    )
    audit(conn, "createTicket", "support_tickets", ticket_id, {"customer_id": customer_id, "priority": priority})
    ticket = conn.execute("SELECT * FROM support_tickets WHERE ticket_id = ?", (ticket_id,)).fetchone()
    return {"ticket": dict(ticket), "sla": dict(sla) if sla else None}


@tool("updateTicketStatus", writes=True)
def update_ticket_status(
    conn: sqlite3.Connection,
    *,
    ticket_id: TicketId,
    status: TicketStatus,
    note: Annotated[
        LongText | None,
        Field(description="A message added to the ticket thread (a reply, or an internal note; at most 4000 "
                          "characters)."),
    ] = None,
    internal: Annotated[
        bool, Field(description="True: the note is internal (staff only); False: it is a reply to the customer.")
    ] = False,
    priority: Annotated[Priority | None, Field(description="Change the priority too.")] = None,
) -> dict[str, Any]:
    """Move a ticket to a new status, optionally with a reply or internal note and a new priority.
    'escalated' assigns the ticket to the escalations team; 'resolved' and 'closed' record the resolution
    time. A closed ticket cannot be reopened: open a new ticket instead.
    """
    ticket = fetch_one(conn, "SELECT * FROM support_tickets WHERE ticket_id = ?", (ticket_id,),
                       argument="ticket_id", kind="ticket", value=ticket_id)
    if ticket["status"] == "closed":
        raise ToolError(f"ticket {ticket_id} is closed and cannot change; open a new ticket", argument="ticket_id")
    ts = now_timestamp(conn)
    updates: dict[str, Any] = {"status": status, "updated_at": ts}
    if priority is not None:
        updates["priority"] = priority
    if status in ("resolved", "closed") and ticket["resolved_at"] is None:
        updates["resolved_at"] = ts
    if status == "escalated":
        lead = conn.execute(
            "SELECT employee_id FROM employees WHERE team = 'escalations' AND is_active = 1 "
            "ORDER BY role = 'lead' DESC, employee_id LIMIT 1"
        ).fetchone()
        if lead is not None:
            updates["assigned_to"] = lead[0]
    if note is not None:
        conn.execute(
            "INSERT INTO ticket_messages (ticket_id, author_type, sent_at, channel, is_internal_note, body) "
            "VALUES (?, 'agent', ?, ?, ?, ?)",
            (ticket_id, ts, ticket["channel"], int(internal), note),
        )
        if not internal and ticket["first_response_at"] is None:
            updates["first_response_at"] = ts
    sets = ", ".join(f"{k} = ?" for k in updates)
    conn.execute(f"UPDATE support_tickets SET {sets} WHERE ticket_id = ?", [*updates.values(), ticket_id])
    audit(conn, "updateTicketStatus", "support_tickets", ticket_id,
          {"from": ticket["status"], "to": status, "note": note is not None})
    updated = conn.execute("SELECT * FROM support_tickets WHERE ticket_id = ?", (ticket_id,)).fetchone()
    return {"ticket": dict(updated), "previous_status": ticket["status"]}
