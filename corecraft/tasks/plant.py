"""Planting a task's situation into the world: new customers, orders, shipments, tickets, builds, promotions.

A family plants fresh entities (never edits the base world's), so tasks built into one task world do not
disturb each other, and every id, date and amount is a function of the seed. Rows follow the world schema's
conventions: money in integer cents, dates 'YYYY-MM-DD', timestamps 'YYYY-MM-DDTHH:MM:SSZ', the world's
"now" from meta. Reference data (products, tiers, carriers, warehouses, policies) is only read.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FIRST = ["Ava", "Liam", "Maya", "Noah", "Zoe", "Ethan", "Priya", "Mateo", "Chloe", "Lucas", "Aisha", "Owen",
         "Hana", "Diego", "Nora", "Felix", "Leah", "Omar", "Iris", "Jonah", "Sofia", "Ravi", "Elena", "Marcus",
         "Tessa", "Kenji", "Lena", "Caleb", "Yara", "Hugo", "Mira", "Theo", "Amara", "Ezra", "Nadia", "Silas"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Castillo", "Nakamura", "Brennan", "Haddad", "Kowalski", "Ferreira",
        "Abernathy", "Delacroix", "Iyer", "Vasquez", "Thornton", "Oyelaran", "Sandoval", "Whitfield", "Kapoor",
        "Marchetti", "Holloway", "Achterberg", "Quintero", "Rasmussen", "Petrov", "Calloway", "Fairbanks",
        "Nakashima", "Ellery", "Baptiste", "Gallagher", "Yilmaz", "Lindgren", "Osei", "Varga", "Tanaka", "Ruiz"]
STREETS = ["Maple Ave", "Cedar St", "Harbor Rd", "Summit Dr", "Willow Ln", "Granite Way", "Orchard Blvd",
           "Lakeview Ct", "Mission St", "Pioneer Rd", "Aspen Pl", "Riverside Dr"]
TAX_RATE = 0.0725  # flat sales tax on planted orders (subtotal - discount)


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    category: str
    brand_id: str
    price_cents: int
    weight_grams: int
    specs: dict[str, Any]


class Planter:
    """Writes one task world's plantings; ids continue after the highest existing ones, per prefix."""

    def __init__(self, conn: sqlite3.Connection, rng: random.Random):
        self.conn = conn
        self.rng = rng
        self.today = dt.date.fromisoformat(conn.execute("SELECT value FROM meta WHERE key='today'").fetchone()[0])
        self._next: dict[tuple[str, str], int] = {}
        self._widths: dict[tuple[str, str], int] = {}
        self._products: dict[str, list[Product]] = {}

    # ---- ids, clocks ------------------------------------------------------------------------------
    def new_id(self, table: str, column: str, prefix: str, start: int, width: int | None = None) -> str:
        key = (table, prefix)
        if key not in self._next:
            best, w = start - 1, width or len(str(start))
            for (value,) in self.conn.execute(f'SELECT "{column}" FROM "{table}" WHERE "{column}" LIKE ?',
                                              (prefix + "-%",)):
                m = re.fullmatch(re.escape(prefix) + r"-(\d+)", value)
                if m:
                    best, w = max(best, int(m.group(1))), len(m.group(1))
            self._next[key], self._widths[key] = best + 1, w
        n = self._next[key]
        self._next[key] = n + 1
        return f"{prefix}-{n:0{self._widths[key]}d}"

    def day(self, days_ago: int) -> dt.date:
        return self.today - dt.timedelta(days=days_ago)

    def ts(self, days_ago: int, hour: int | None = None, minute: int | None = None) -> str:
        h = self.rng.randint(8, 20) if hour is None else hour
        m = self.rng.randint(0, 59) if minute is None else minute
        return f"{self.day(days_ago).isoformat()}T{h:02d}:{m:02d}:00Z"

    # ---- reference data ---------------------------------------------------------------------------
    def products(self, category: str) -> list[Product]:
        if category not in self._products:
            rows = self.conn.execute(
                "SELECT p.product_id, p.name, p.category, p.brand_id, p.price_cents, COALESCE(p.weight_grams, 1000), "
                "s.* FROM products p JOIN product_specs s ON s.product_id = p.product_id "
                "WHERE p.category = ? AND p.status = 'active' ORDER BY p.product_id", (category,)).fetchall()
            self._products[category] = [
                Product(r[0], r[1], r[2], r[3], r[4], r[5], {k: r[k] for k in r.keys()[6:]})
                for r in rows]
            if not self._products[category]:
                raise LookupError(f"the world has no active {category} products")
        return self._products[category]

    def product(self, category: str, where: Any = None) -> Product:
        pool = [p for p in self.products(category) if where is None or where(p)]
        if not pool:
            raise LookupError(f"no {category} product matches")
        return self.rng.choice(pool)

    def tier(self, tier_id: str) -> sqlite3.Row:
        return self.conn.execute("SELECT * FROM loyalty_tiers WHERE tier_id = ?", (tier_id,)).fetchone()

    def policy_param(self, area: str, key: str) -> str:
        row = self.conn.execute(
            "SELECT pp.param_value FROM policy_parameters pp JOIN company_policies cp ON cp.policy_id = pp.policy_id "
            "WHERE cp.policy_area = ? AND cp.status = 'active' AND pp.param_key = ?", (area, key)).fetchone()
        if row is None:
            raise LookupError(f"no active {area} policy parameter {key!r}")
        return row[0]

    def policy_id(self, area: str) -> str:
        """The id of the active company policy for an area (what getKnowledgebaseArticle reads)."""
        row = self.conn.execute("SELECT policy_id FROM company_policies WHERE policy_area = ? AND status = 'active' "
                                "ORDER BY version DESC", (area,)).fetchone()
        if row is None:
            raise LookupError(f"no active {area} policy")
        return str(row[0])

    def service(self, level: str = "standard") -> sqlite3.Row:
        rows = self.conn.execute("SELECT * FROM shipping_services WHERE service_level = ? AND is_active = 1 "
                                 "ORDER BY service_id", (level,)).fetchall()
        return self.rng.choice(rows)

    def warehouse(self) -> sqlite3.Row:
        return self.rng.choice(self.conn.execute("SELECT * FROM warehouses ORDER BY warehouse_id").fetchall())

    def state(self) -> str:
        return self.rng.choice([r[0] for r in self.conn.execute("SELECT state_code FROM shipping_regions "
                                                                 "ORDER BY state_code")])

    # ---- entities --------------------------------------------------------------------------------
    def customer(self, tier: str = "member", *, first: str | None = None, last: str | None = None,
                 email: str | None = None, state: str | None = None, created_days_ago: int = 400,
                 phone: str | None = "auto", spend_cents: int | None = None) -> dict[str, Any]:
        cid = self.new_id("customers", "customer_id", "CUST", 10001)
        first = first or self.rng.choice(FIRST)
        last = last or self.rng.choice(LAST)
        email = email or f"{first.lower()}.{last.lower()}{cid[-4:]}@example.com"
        phone = f"555-{self.rng.randint(200, 999)}-{self.rng.randint(1000, 9999)}" if phone == "auto" else phone
        row = {
            "customer_id": cid, "first_name": first, "last_name": last, "email": email, "phone": phone,
            "company_name": None, "address_line1": f"{self.rng.randint(10, 9999)} {self.rng.choice(STREETS)}",
            "address_line2": None, "city": "Springfield", "state": state or self.state(),
            "postal_code": f"{self.rng.randint(10000, 99999)}", "country": "US", "loyalty_tier_id": tier,
            "loyalty_points": self.rng.randint(0, 5000),
            "lifetime_spend_cents": spend_cents if spend_cents is not None else self.rng.randint(50_000, 900_000),
            "account_status": "active", "marketing_opt_in": 0, "created_at": self.ts(created_days_ago),
            "updated_at": self.ts(min(created_days_ago, 30)), "notes": None,
        }
        self._insert("customers", row)
        return row

    def order(self, customer: dict[str, Any], items: Sequence[tuple[Product, int]], *, days_ago: int,
              status: str = "delivered", service: sqlite3.Row | None = None, promotion_id: str | None = None,
              discount_cents: int = 0, shipping_cents: int | None = None, notes: str | None = None,
              build_id: str | None = None) -> dict[str, Any]:
        oid = self.new_id("orders", "order_id", "ORD", 200001)
        service = service or self.service("standard")
        subtotal = sum(p.price_cents * q for p, q in items)
        shipping = shipping_cents if shipping_cents is not None else (0 if subtotal >= 9900 else 999)
        tax = round((subtotal - discount_cents) * TAX_RATE)
        placed = self.ts(days_ago)
        row = {
            "order_id": oid, "customer_id": customer["customer_id"], "status": status, "sales_channel": "web",
            "placed_at": placed, "updated_at": placed, "currency": "USD", "subtotal_cents": subtotal,
            "discount_cents": discount_cents, "shipping_cents": shipping, "tax_cents": tax,
            "total_cents": subtotal - discount_cents + shipping + tax, "promotion_id": promotion_id,
            "shipping_service_id": service["service_id"], "build_id": build_id, "payment_method": "credit_card",
            "payment_status": "authorized" if status in ("pending", "processing", "on_hold") else "captured",
            "ship_name": f"{customer['first_name']} {customer['last_name']}",
            "ship_address_line1": customer["address_line1"], "ship_address_line2": None,
            "ship_city": customer["city"], "ship_state": customer["state"], "ship_postal_code": customer["postal_code"],
            "ship_country": "US", "notes": notes,
        }
        self._insert("orders", row)
        lines = []
        for n, (p, q) in enumerate(items, 1):
            line = {"order_id": oid, "line_number": n, "product_id": p.product_id, "quantity": q,
                    "unit_price_cents": p.price_cents, "discount_cents": 0, "line_total_cents": p.price_cents * q,
                    "quantity_returned": 0,
                    "serial_number": f"SN{self.rng.randint(10**9, 10**10 - 1)}" if p.category in ("gpu", "cpu",
                                                                                             "motherboard", "psu") else None}
            line["order_line_id"] = self._insert("order_lines", line)
            lines.append(line)
        row["lines"] = lines
        self._insert("order_status_history", {"order_id": oid, "status": "pending", "changed_at": placed,
                                              "source": "oms", "note": "order placed"})
        return row

    def shipment(self, order: dict[str, Any], *, status: str, shipped_days_ago: int | None,
                 promised_days_ago: int, delivered_days_ago: int | None = None, estimated_days_ago: int | None = None,
                 weight_grams: int = 2000, events: Sequence[tuple[int, str, str]] = (),
                 carrier_scan_days_ago: int | None = None) -> dict[str, Any]:
        sid = self.new_id("shipments", "shipment_id", "SHP", 300001)
        service = self.conn.execute("SELECT * FROM shipping_services WHERE service_id = ?",
                                    (order["shipping_service_id"],)).fetchone()
        wh = self.warehouse()
        tracking = f"1Z{self.rng.randint(10**11, 10**12 - 1)}" if shipped_days_ago is not None else None
        row = {
            "shipment_id": sid, "order_id": order["order_id"], "warehouse_id": wh["warehouse_id"],
            "carrier_id": service["carrier_id"], "service_id": service["service_id"], "sla_id": None,
            "tracking_number": tracking, "status": status,
            "shipped_at": self.ts(shipped_days_ago, 15, 0) if shipped_days_ago is not None else None,
            "promised_delivery_date": self.day(promised_days_ago).isoformat(),
            "estimated_delivery_date": self.day(estimated_days_ago if estimated_days_ago is not None
                                                else promised_days_ago).isoformat(),
            "delivered_at": self.ts(delivered_days_ago, 14, 30) if delivered_days_ago is not None else None,
            "weight_grams": weight_grams, "cost_cents": self.rng.randint(900, 4000),
            "updated_at": self.ts(0 if delivered_days_ago is None else delivered_days_ago, 16, 0),
        }
        self._insert("shipments", row)
        scan = carrier_scan_days_ago if carrier_scan_days_ago is not None else shipped_days_ago
        if shipped_days_ago is not None:
            self.event(sid, shipped_days_ago, "label_created", "Shipping label created", hour=10)
            self.event(sid, scan, "picked_up", "Picked up by carrier", hour=17)
        for days_ago, code, desc in events:
            self.event(sid, days_ago, code, desc)
        if delivered_days_ago is not None:
            self.event(sid, delivered_days_ago, "delivered", "Delivered, left at front door", hour=14)
        return row

    def event(self, shipment_id: str, days_ago: int, code: str, description: str, hour: int | None = None) -> None:
        self._insert("shipment_events", {"shipment_id": shipment_id, "occurred_at": self.ts(days_ago, hour),
                                         "event_code": code, "location": "Distribution center",
                                         "description": description})

    def ticket(self, customer: dict[str, Any], *, subject: str, description: str, category: str,
               order_id: str | None = None, product_id: str | None = None, priority: str = "normal",
               status: str = "open", days_ago: int = 1, channel: str = "email") -> str:
        tid = self.new_id("support_tickets", "ticket_id", "TKT", 50001)
        created = self.ts(days_ago)
        self._insert("support_tickets", {
            "ticket_id": tid, "customer_id": customer["customer_id"], "order_id": order_id, "product_id": product_id,
            "subject": subject, "description": description, "category": category, "channel": channel,
            "priority": priority, "status": status, "assigned_to": None, "sla_id": None, "created_at": created,
            "updated_at": created, "first_response_due_at": None, "first_response_at": None,
            "resolution_due_at": None, "resolved_at": None, "satisfaction_score": None, "tags": None})
        self._insert("ticket_messages", {"ticket_id": tid, "author_type": "customer", "author_employee_id": None,
                                         "sent_at": created, "channel": channel, "is_internal_note": 0,
                                         "body": description})
        return tid

    def ticket_message(self, ticket_id: str, body: str, *, days_ago: int, author: str = "customer",
                       internal: bool = False) -> None:
        self._insert("ticket_messages", {"ticket_id": ticket_id, "author_type": author, "author_employee_id": None,
                                         "sent_at": self.ts(days_ago), "channel": "email",
                                         "is_internal_note": int(internal), "body": body})

    def promotion(self, *, code: str, discount_type: str, value: int, starts_days_ago: int, expires_days_ago: int,
                  min_order_cents: int = 0, category: str | None = None, min_tier: str | None = None,
                  max_discount_cents: int | None = None, is_active: int = 1, brand_id: str | None = None) -> str:
        pid = self.new_id("promotions", "promotion_id", "PROMO", 1, width=3)
        what = f"{value}% off" if discount_type == "percent" else (
            f"${value / 100:.2f} off" if discount_type == "fixed" else "free shipping")
        scope = f" {category} products" if category else " your order"
        self._insert("promotions", {
            "promotion_id": pid, "code": code, "name": f"{code} offer", "description": f"{what} on{scope}",
            "discount_type": discount_type, "discount_value": value, "max_discount_cents": max_discount_cents,
            "min_order_cents": min_order_cents, "eligible_category": category, "eligible_brand_id": brand_id,
            "min_loyalty_tier_id": min_tier, "first_order_only": 0, "max_uses_per_customer": None, "stackable": 0,
            "starts_at": self.ts(starts_days_ago, 0, 0), "expires_at": self.day(expires_days_ago).isoformat() + "T23:59:59Z",
            "is_active": is_active, "terms": f"{what} on{scope}. Minimum order ${min_order_cents / 100:.2f}."
                                             + (f" {min_tier.title()} tier and above." if min_tier else "")})
        return pid

    def build(self, customer: dict[str, Any], parts: Sequence[Product], *, name: str, purpose: str = "gaming") -> str:
        bid = self.new_id("builds", "build_id", "BLD", 1, width=4)
        self._insert("builds", {"build_id": bid, "customer_id": customer["customer_id"], "name": name,
                                "purpose": purpose, "status": "saved", "compatibility_status": "unchecked",
                                "created_at": self.ts(10), "updated_at": self.ts(10), "notes": None})
        for p in parts:
            self._insert("build_components", {"build_id": bid, "product_id": p.product_id, "quantity": 1})
        return bid

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        cols = ", ".join(f'"{c}"' for c in row)
        cur = self.conn.execute(f'INSERT INTO "{table}" ({cols}) VALUES ({", ".join("?" * len(row))})',
                                list(row.values()))
        return int(cur.lastrowid or 0)


def usd(cents: int) -> str:
    """Cents as the dollar text used in requests and oracle answers: 1234567 -> '$12,345.67'."""
    return f"${cents / 100:,.2f}"
