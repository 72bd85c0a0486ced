"""One valid, succeeding call per tool, with arguments drawn from the given world.

Used by the tests (every tool over every transport), the benchmark (a read-tool mix) and as a worked
example of each tool's arguments. Write calls are chosen so that each succeeds on a fresh fork.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from corecraft.tools.common import today

READ_TOOLS = (
    "searchOrders", "searchProducts", "searchCustomers", "searchKnowledgebase", "searchPromotions",
    "getOrderDetails", "getProductDetails", "getCustomerHistory", "getKnowledgebaseArticle", "getWarrantyPolicy",
    "getShippingStatus", "getLoyaltyTier", "calculateShipping", "checkInventory", "validateBuildCompatibility",
)


def _one(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(sql, params).fetchone()
    if row is None:
        raise LookupError(f"the world has no row for: {sql}")
    return row


def returnable_lines(conn: sqlite3.Connection, n: int = 2) -> list[sqlite3.Row]:
    """Returnable lines of ``n`` different delivered orders inside the standard 30-day window (newest first)."""
    since = today(conn).toordinal() - 25
    rows = conn.execute(
        "SELECT o.order_id, o.customer_id, ol.order_line_id, ol.product_id, MAX(s.delivered_at) AS delivered "
        "FROM orders o JOIN order_lines ol ON ol.order_id = o.order_id JOIN products p ON p.product_id = ol.product_id "
        "JOIN shipments s ON s.order_id = o.order_id "
        "WHERE o.status = 'delivered' AND o.payment_status = 'captured' AND p.is_returnable = 1 "
        "AND ol.quantity_returned = 0 AND (SELECT COUNT(*) FROM order_lines x WHERE x.order_id = o.order_id "
        "AND x.product_id = ol.product_id) = 1 "
        "GROUP BY ol.order_line_id HAVING delivered IS NOT NULL ORDER BY delivered DESC, ol.order_line_id",
    ).fetchall()
    chosen: dict[str, sqlite3.Row] = {}
    for row in rows:
        if _ordinal(row["delivered"]) >= since and row["order_id"] not in chosen:
            chosen[row["order_id"]] = row
            if len(chosen) == n:
                return list(chosen.values())
    raise LookupError(f"the world has fewer than {n} delivered orders inside the return window")


def _ordinal(timestamp: str) -> int:
    import datetime as dt

    return dt.date.fromisoformat(timestamp[:10]).toordinal()


def in_stock_product(conn: sqlite3.Connection, category: str | None = None) -> str:
    return _one(
        conn,
        "SELECT p.product_id FROM products p JOIN inventory i ON i.product_id = p.product_id "
        "WHERE p.status = 'active' AND i.quantity_on_hand - i.quantity_reserved >= 2 "
        + ("AND p.category = ? " if category else "")
        + "ORDER BY p.product_id LIMIT 1",
        (category,) if category else (),
    )[0]


def example_calls(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Arguments for one succeeding call of each of the 23 tools on a fresh fork of this world."""
    order = _one(conn, "SELECT o.order_id, o.customer_id FROM orders o WHERE EXISTS "
                 "(SELECT 1 FROM shipments s WHERE s.order_id = o.order_id) ORDER BY o.order_id LIMIT 1")
    customer = _one(conn, "SELECT customer_id, last_name, email, state FROM customers WHERE account_status = 'active' "
                    "ORDER BY customer_id LIMIT 1")
    product = _one(conn, "SELECT product_id, category, name FROM products ORDER BY product_id LIMIT 1")
    article = _one(conn, "SELECT article_id FROM kb_articles ORDER BY article_id LIMIT 1")[0]
    promo = _one(conn, "SELECT code FROM promotions ORDER BY promotion_id LIMIT 1")[0]
    ticket = _one(conn, "SELECT ticket_id FROM support_tickets WHERE status NOT IN ('closed') ORDER BY ticket_id "
                  "LIMIT 1")[0]
    build = _one(conn, "SELECT build_id FROM builds ORDER BY build_id LIMIT 1")[0]
    open_order = _one(conn, "SELECT order_id FROM orders WHERE status IN ('pending', 'processing') "
                      "ORDER BY order_id LIMIT 1")[0]
    line, swap = returnable_lines(conn, 2)
    swap_to = in_stock_product(conn, _one(conn, "SELECT category FROM products WHERE product_id = ?",
                                          (swap["product_id"],))[0])
    promo_order = _one(conn, "SELECT order_id FROM orders WHERE status NOT IN ('cancelled', 'returned') "
                       "ORDER BY order_id LIMIT 1")[0]
    return {
        "searchOrders": {"customer_id": order["customer_id"]},
        "searchProducts": {"category": product["category"], "in_stock_only": False},
        "searchCustomers": {"query": customer["last_name"]},
        "searchKnowledgebase": {"query": "return"},
        "searchPromotions": {"code": promo},
        "getOrderDetails": {"order_id": order["order_id"]},
        "getProductDetails": {"product_id": product["product_id"]},
        "getCustomerHistory": {"customer_id": order["customer_id"]},
        "getKnowledgebaseArticle": {"article_id": article},
        "getWarrantyPolicy": {"product_id": product["product_id"]},
        "getShippingStatus": {"order_id": order["order_id"]},
        "getLoyaltyTier": {"customer_id": customer["customer_id"]},
        "createTicket": {"customer_id": customer["customer_id"], "subject": "Where is my order?",
                         "description": "The customer asks for an update on their order.", "category": "order_status"},
        "updateTicketStatus": {"ticket_id": ticket, "status": "pending_customer",
                               "note": "Asked the customer for photos of the damage."},
        "updateOrder": {"order_id": open_order, "note": "Customer called to confirm the delivery address."},
        "createCustomer": {"first_name": "Dana", "last_name": "Okafor", "email": "dana.okafor@example.com",
                           "state": "TX"},
        "updateCustomer": {"customer_id": customer["customer_id"], "phone": "512-555-0142"},
        "processReturn": {"order_id": line["order_id"], "reason": "defective",
                          "items": [{"product_id": line["product_id"], "quantity": 1, "condition": "defective"}]},
        "processExchange": {"order_id": swap["order_id"], "product_id": swap["product_id"], "new_product_id": swap_to,
                            "condition": "defective", "reason": "defective"},
        "applyPromotion": {"order_id": promo_order, "code": promo, "dry_run": True},
        "calculateShipping": {"destination_state": customer["state"] or "CA",
                              "items": [{"product_id": product["product_id"], "quantity": 1}]},
        "checkInventory": {"product_id": product["product_id"], "quantity": 1},
        "validateBuildCompatibility": {"build_id": build},
    }
