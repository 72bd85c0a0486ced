"""Customer tools: find customers, read a customer's history and loyalty standing, create and update records."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from typing import Annotated, Any, Literal

from pydantic import Field

from corecraft.tools.common import (
    LIKE_PARAM,
    LIKE_TEXT,
    PAGE_SIZE,
    CustomerId,
    Note,
    Page,
    Query,
    ShortText,
    StateCode,
    audit,
    fetch_one,
    like,
    next_id,
    now_timestamp,
    page_result,
    paginate,
    plain,
    row_dict,
    today,
    trigram_phrase,
    usd,
)
from corecraft.tools.errors import ToolError
from corecraft.tools.registry import tool
from corecraft.world.connection import memoized

TierId = Literal["member", "silver", "gold", "platinum"]
AccountStatus = Literal["active", "suspended", "closed"]
Email = Annotated[str, Field(min_length=3, max_length=254, description="Email address.")]
Phone = Annotated[str, Field(min_length=7, max_length=32, description="Phone number.")]
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

_CUSTOMER_SUMMARY = (
    "SELECT customer_id, first_name, last_name, email, phone, company_name, city, state, loyalty_tier_id, "
    "account_status, created_at FROM customers"
)


_ID_LIKE = re.compile(r"(?i)cust-?\d*")
_PHONE_LIKE = re.compile(r"[\d\s().+-]{4,}")


def _free_text(query: str) -> tuple[str, list[Any], bool]:
    """For a free-text query: the condition, its parameters, and whether it reads every row. Judged from the
    query's shape: an id, an email or a phone number is matched in that column alone; anything else in the
    full name, email and company name, through the trigram index when the text is long enough for it, else
    row by row."""
    text = query.strip()
    pattern = like(query)
    if _ID_LIKE.fullmatch(text):
        return f"customer_id {LIKE_TEXT}", [pattern], True
    if "@" in text:
        return f"email {LIKE_TEXT}", [pattern], True
    if _PHONE_LIKE.fullmatch(text):
        return f"phone {LIKE_TEXT}", [pattern], True
    phrase = trigram_phrase(query)
    if phrase is not None:
        index = "customer_id IN (SELECT customer_id FROM customers_text WHERE customers_text MATCH ?)"
        return index, [phrase], False
    # The full name is only built per row when the text could span first and last name (a space, even at
    # either end: 'Ann ' is the start of a full name, not of a first name).
    name = (f"first_name || ' ' || last_name {LIKE_TEXT}" if " " in query
            else f"first_name {LIKE_TEXT} OR last_name {LIKE_TEXT}")
    clause = f"({name} OR email {LIKE_TEXT} OR company_name {LIKE_TEXT})"
    return clause, [pattern] * clause.count(LIKE_TEXT), True


@tool("searchCustomers")
def search_customers(
    conn: sqlite3.Connection,
    *,
    query: Annotated[
        Query | None,
        Field(description="Free text matched against id, full name, email, phone and company name."),
    ] = None,
    email: Annotated[Email | None, Field(description="Exact email, case-insensitive.")] = None,
    phone: Annotated[Phone | None, Field(description="Phone number; punctuation and spaces are ignored.")] = None,
    name: Annotated[ShortText | None, Field(description="Part of the first or last name.")] = None,
    loyalty_tier: TierId | None = None,
    account_status: AccountStatus | None = None,
    state: StateCode | None = None,
    page: Page = 1,
) -> dict[str, Any]:
    """Search customer records. Legacy imports left near-duplicate records (same person, slightly different
    name or email): check every match before concluding. At most 10 a page; pass `page` for more.
    """
    where: list[str] = []
    params: list[Any] = []
    scans = False
    if query is not None:
        clause, values, scans = _free_text(query)
        where.append(clause)
        params.extend(values)
    if email is not None:
        where.append("lower(email) = lower(?)")
        params.append(email.strip())
    if phone is not None:
        digits = re.sub(r"\D", "", phone)
        if len(digits) < 7:
            raise ToolError("needs at least 7 digits", argument="phone")
        where.append(
            "replace(replace(replace(replace(replace(replace(phone,'-',''),' ',''),'(',''),')',''),'.',''),'+','') "
            f"{LIKE_PARAM}"
        )
        params.append(f"%{digits[-10:]}")
    if name is not None:
        pattern = like(name)
        where.append(f"(first_name {LIKE_TEXT} OR last_name {LIKE_TEXT} "
                     f"OR first_name || ' ' || last_name {LIKE_TEXT})")
        params.extend([pattern] * 3)
    if loyalty_tier is not None:
        where.append("loyalty_tier_id = ?")
        params.append(loyalty_tier)
    if account_status is not None:
        where.append("account_status = ?")
        params.append(account_status)
    if state is not None:
        where.append("state = ?")
        params.append(state.upper())
    # Email (compared lower-cased), phone (punctuation stripped), name and text the trigram index cannot serve
    # match no index: every row is read, and the page query had best count the matches on the way (one scan,
    # not two). Through the index, counting apart costs the same for a few matches and less for many.
    scans = scans or any(v is not None for v in (email, phone, name))
    found = paginate(conn, _CUSTOMER_SUMMARY, where, params, "last_name, first_name, customer_id", page, scans=scans)
    return page_result(found, [row_dict(r) for r in found["rows"]], key="customers")


def load_customer(conn: sqlite3.Connection, customer_id: str, argument: str = "customer_id") -> sqlite3.Row:
    return fetch_one(conn, "SELECT * FROM customers WHERE customer_id = ?", (customer_id,),
                     argument=argument, kind="customer", value=customer_id)


def loyalty_tiers(conn: sqlite3.Connection) -> tuple[sqlite3.Row, ...]:
    """Every loyalty tier, lowest rank first."""
    return memoized(conn, "loyalty_tiers",
                    lambda c: tuple(c.execute("SELECT * FROM loyalty_tiers ORDER BY rank").fetchall()))


def load_tier(conn: sqlite3.Connection, tier_id: str) -> sqlite3.Row | None:
    return next((t for t in loyalty_tiers(conn) if t["tier_id"] == tier_id), None)


def trailing_spend_cents(conn: sqlite3.Connection, customer_id: str) -> int:
    """What the customer paid in the 12 months up to the world's today (cancelled orders excluded)."""
    since = (today(conn) - dt.timedelta(days=365)).isoformat()
    return conn.execute(
        "SELECT COALESCE(SUM(total_cents), 0) FROM orders WHERE customer_id = ? AND placed_at >= ? "
        "AND status NOT IN ('cancelled')",
        (customer_id, since),
    ).fetchone()[0]


@tool("getCustomerHistory")
def get_customer_history(conn: sqlite3.Connection, *, customer_id: CustomerId, page: Page = 1) -> dict[str, Any]:
    """A customer's profile with their orders, support tickets (each with its full message thread: customer
    messages, agent replies, internal notes), returns, warranty claims and saved builds.

    Orders and tickets come 10 a page, newest first (`page` pages both); returns, claims and builds are all
    listed. Incomplete records (no phone, no address) are shown as they are.
    """
    customer = load_customer(conn, customer_id)
    offset = (page - 1) * PAGE_SIZE

    def paged(sql: str, count_sql: str) -> dict[str, Any]:
        total = conn.execute(count_sql, (customer_id,)).fetchone()[0]
        rows = conn.execute(sql + " LIMIT ? OFFSET ?", (customer_id, PAGE_SIZE, offset)).fetchall()
        return {"total": total, "has_more": offset + PAGE_SIZE < total, "items": [plain(r) for r in rows]}

    orders = paged(
        "SELECT order_id, status, placed_at, total_cents, payment_status, promotion_id FROM orders "
        "WHERE customer_id = ? ORDER BY placed_at DESC, order_id DESC",
        "SELECT COUNT(*) FROM orders WHERE customer_id = ?",
    )
    tickets = paged(
        "SELECT ticket_id, subject, category, status, priority, channel, order_id, created_at, resolved_at "
        "FROM support_tickets WHERE customer_id = ? ORDER BY created_at DESC, ticket_id DESC",
        "SELECT COUNT(*) FROM support_tickets WHERE customer_id = ?",
    )
    ticket_ids = [t["ticket_id"] for t in tickets["items"]]
    if ticket_ids:
        threads: dict[str, list[dict[str, Any]]] = {tid: [] for tid in ticket_ids}
        for m in conn.execute(
            "SELECT ticket_id, author_type, author_employee_id, sent_at, channel, is_internal_note, body "
            f"FROM ticket_messages WHERE ticket_id IN ({','.join('?' * len(ticket_ids))}) "
            "ORDER BY ticket_id, sent_at, message_id",
            ticket_ids,
        ):
            message = row_dict(m)
            threads[message.pop("ticket_id")].append(message)
        for item in tickets["items"]:
            item["messages"] = threads[item["ticket_id"]]
    returns = conn.execute(
        "SELECT return_id, order_id, return_type, reason, status, requested_at, refund_amount_cents "
        "FROM returns WHERE customer_id = ? ORDER BY requested_at DESC",
        (customer_id,),
    ).fetchall()
    claims = conn.execute(
        "SELECT claim_id, order_id, product_id, status, filed_at, resolution FROM warranty_claims "
        "WHERE customer_id = ? ORDER BY filed_at DESC",
        (customer_id,),
    ).fetchall()
    builds = conn.execute(
        "SELECT build_id, name, purpose, status, compatibility_status, updated_at FROM builds "
        "WHERE customer_id = ? ORDER BY updated_at DESC",
        (customer_id,),
    ).fetchall()
    tier = load_tier(conn, customer["loyalty_tier_id"])
    return {
        "customer": plain(customer),
        "loyalty_tier": {"tier_id": tier["tier_id"], "name": tier["name"]},
        "page": page,
        "orders": orders,
        "tickets": tickets,
        "returns": [plain(r) for r in returns],
        "warranty_claims": [row_dict(r) for r in claims],
        "builds": [row_dict(r) for r in builds],
    }


@tool("getLoyaltyTier")
def get_loyalty_tier(
    conn: sqlite3.Connection,
    *,
    customer_id: Annotated[CustomerId | None, Field(description="Whose standing to show.")] = None,
    tier_id: Annotated[TierId | None, Field(description="Show this tier's benefits.")] = None,
) -> dict[str, Any]:
    """Loyalty tiers and their benefits (discount, free-shipping threshold, return window, restocking-fee
    waiver, extended warranty, priority support, price match). With `customer_id`: the customer's tier,
    points, trailing-12-month spend and what the next tier needs. With neither argument: every tier.
    """
    if customer_id is not None and tier_id is not None:
        raise ToolError("give customer_id or tier_id, not both", argument="tier_id")
    tiers = loyalty_tiers(conn)
    if customer_id is None:
        chosen = [t for t in tiers if tier_id is None or t["tier_id"] == tier_id]
        return {"tiers": [plain(t) for t in chosen]}
    customer = load_customer(conn, customer_id)
    tier = next(t for t in tiers if t["tier_id"] == customer["loyalty_tier_id"])
    higher = [t for t in tiers if t["rank"] > tier["rank"]]
    spend = trailing_spend_cents(conn, customer_id)
    next_tier = None
    if higher:
        nt = higher[0]
        next_tier = {
            "tier_id": nt["tier_id"],
            "min_annual_spend_usd": usd(nt["min_annual_spend_cents"]),
            "spend_needed_usd": usd(max(0, nt["min_annual_spend_cents"] - spend)),
        }
    return {
        "customer_id": customer_id,
        "tier": plain(tier),
        "loyalty_points": customer["loyalty_points"],
        "lifetime_spend_usd": usd(customer["lifetime_spend_cents"]),
        "trailing_12_month_spend_usd": usd(spend),
        "next_tier": next_tier,
    }


def _check_state(conn: sqlite3.Connection, state: str | None) -> str | None:
    if state is None:
        return None
    code = state.upper()
    if conn.execute("SELECT 1 FROM shipping_regions WHERE state_code = ?", (code,)).fetchone() is None:
        raise ToolError(f"{state!r} is not a US state code we serve", argument="state")
    return code


def _check_email(email: str) -> str:
    email = email.strip()
    if not _EMAIL.fullmatch(email):
        raise ToolError(f"{email[:60]!r} is not a valid email address", argument="email")
    return email


@tool("createCustomer", writes=True)
def create_customer(
    conn: sqlite3.Connection,
    *,
    first_name: ShortText,
    last_name: ShortText,
    email: Email,
    phone: Phone | None = None,
    company_name: ShortText | None = None,
    address_line1: ShortText | None = None,
    address_line2: ShortText | None = None,
    city: ShortText | None = None,
    state: StateCode | None = None,
    postal_code: Annotated[str | None, Field(min_length=3, max_length=12)] = None,
    marketing_opt_in: bool = False,
) -> dict[str, Any]:
    """Create a customer record (tier 'member'). Search first: if records with the same email already exist
    they are returned in `possible_duplicates` and the new record is still created.
    """
    email = _check_email(email)
    code = _check_state(conn, state)
    dupes = conn.execute(
        "SELECT customer_id, first_name, last_name, email FROM customers WHERE lower(email) = lower(?)", (email,)
    ).fetchall()
    customer_id = next_id(conn, "customers", "customer_id", "CUST", 10001)
    ts = now_timestamp(conn)
    conn.execute(
        "INSERT INTO customers (customer_id, first_name, last_name, email, phone, company_name, address_line1, "
        "address_line2, city, state, postal_code, country, loyalty_tier_id, loyalty_points, lifetime_spend_cents, "
        "account_status, marketing_opt_in, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'US', 'member', 0, 0, 'active', ?, ?, ?)",
        (customer_id, first_name.strip(), last_name.strip(), email, phone, company_name, address_line1,
         address_line2, city, code, postal_code, int(marketing_opt_in), ts, ts),
    )
    audit(conn, "createCustomer", "customers", customer_id, {"email": email})
    return {"customer": plain(load_customer(conn, customer_id)), "possible_duplicates": [dict(d) for d in dupes]}


@tool("updateCustomer", writes=True)
def update_customer(
    conn: sqlite3.Connection,
    *,
    customer_id: CustomerId,
    first_name: ShortText | None = None,
    last_name: ShortText | None = None,
    email: Email | None = None,
    phone: Phone | None = None,
    company_name: ShortText | None = None,
    address_line1: ShortText | None = None,
    address_line2: ShortText | None = None,
    city: ShortText | None = None,
    state: StateCode | None = None,
    postal_code: Annotated[str | None, Field(min_length=3, max_length=12)] = None,
    loyalty_tier: Annotated[
        TierId | None, Field(description="Change the tier (policy decides when an agent may do this).")
    ] = None,
    loyalty_points_delta: Annotated[
        int | None, Field(ge=-1_000_000, le=1_000_000, description="Add (or, negative, remove) loyalty points.")
    ] = None,
    account_status: AccountStatus | None = None,
    marketing_opt_in: bool | None = None,
    note: Annotated[Note | None, Field(description="Appended to the notes (at most 2000 characters).")] = None,
) -> dict[str, Any]:
    """Update a customer record: contact details, address, loyalty tier or points, account status, marketing
    consent, or a note. Only the fields given change. Closed accounts cannot be changed except to reopen them.
    """
    customer = load_customer(conn, customer_id)
    fields: dict[str, Any] = {
        "first_name": first_name, "last_name": last_name, "phone": phone, "company_name": company_name,
        "address_line1": address_line1, "address_line2": address_line2, "city": city, "postal_code": postal_code,
        "loyalty_tier_id": loyalty_tier, "account_status": account_status,
    }
    if email is not None:
        fields["email"] = _check_email(email)
    if state is not None:
        fields["state"] = _check_state(conn, state)
    if marketing_opt_in is not None:
        fields["marketing_opt_in"] = int(marketing_opt_in)
    changes = {k: v for k, v in fields.items() if v is not None}
    if not changes and loyalty_points_delta is None and note is None:
        raise ToolError("give at least one field to change", argument="customer_id")
    if customer["account_status"] == "closed" and changes.get("account_status") != "active":
        raise ToolError(f"account {customer_id} is closed; reopen it (account_status='active') first",
                        argument="customer_id")
    ts = now_timestamp(conn)
    if loyalty_points_delta is not None:
        points = customer["loyalty_points"] + loyalty_points_delta
        if points < 0:
            raise ToolError(f"would leave {points} points; the customer has {customer['loyalty_points']}",
                            argument="loyalty_points_delta")
        changes["loyalty_points"] = points
    if note is not None:
        changes["notes"] = f"{customer['notes']}\n{note}" if customer["notes"] else note
    sets = ", ".join(f"{k} = ?" for k in changes)
    conn.execute(f"UPDATE customers SET {sets}, updated_at = ? WHERE customer_id = ?",
                 [*changes.values(), ts, customer_id])
    audit(conn, "updateCustomer", "customers", customer_id, changes)
    return {"customer": plain(load_customer(conn, customer_id)), "changed": sorted(changes)}
