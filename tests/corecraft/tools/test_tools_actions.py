"""Business logic of the action tools on the real generated world: policy numbers, hard limits, state changes."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from corecraft.tools import call_tool
from corecraft.tools.common import like, paginate, today
from corecraft.tools.orders import _ORDER_SUMMARY


def ok(conn, name, args):
    result = call_tool(conn, name, args)
    assert not result.is_error, result.text
    return result.data


def refused(conn, name, args, *fragments):
    before = conn.serialize()
    result = call_tool(conn, name, args)
    assert result.is_error, result.text
    for fragment in fragments:
        assert fragment in result.text, result.text
    assert conn.serialize() == before, "a refused call changed the database"
    return result.text


def delivered_line(conn, *, tiers=("member", "silver"), min_days=0, max_days=25, returnable=1):
    """A single-unit-or-more line of a delivered order, delivered between min_days and max_days ago."""
    now = today(conn)
    rows = conn.execute(
        "SELECT o.order_id, o.customer_id, ol.order_line_id, ol.product_id, ol.quantity, ol.line_total_cents, "
        "o.subtotal_cents, o.discount_cents, o.shipping_cents, o.total_cents, MAX(s.delivered_at) AS delivered "
        "FROM orders o JOIN customers c ON c.customer_id = o.customer_id "
        "JOIN order_lines ol ON ol.order_id = o.order_id JOIN products p ON p.product_id = ol.product_id "
        "JOIN shipments s ON s.order_id = o.order_id WHERE o.status = 'delivered' AND ol.quantity_returned = 0 "
        f"AND p.is_returnable = ? AND c.loyalty_tier_id IN ({','.join('?' * len(tiers))}) "
        "AND (SELECT COUNT(*) FROM order_lines x WHERE x.order_id = o.order_id AND x.product_id = ol.product_id) = 1 "
        "AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.order_id = o.order_id) "
        "GROUP BY ol.order_line_id HAVING delivered IS NOT NULL ORDER BY ol.order_line_id",
        (returnable, *tiers),
    ).fetchall()
    for row in rows:
        age = (now - dt.date.fromisoformat(row["delivered"][:10])).days
        if min_days <= age <= max_days:
            return row
    pytest.skip(f"no delivered {tiers} line aged {min_days}-{max_days} days in this world")


def policy(conn, area, key):
    return conn.execute("SELECT pp.param_value FROM policy_parameters pp JOIN company_policies cp "
                        "ON cp.policy_id = pp.policy_id WHERE cp.policy_area = ? AND cp.status = 'active' "
                        "AND pp.param_key = ?", (area, key)).fetchone()[0]


def paid_for(line, qty=1):
    paid = line["line_total_cents"] * qty // line["quantity"]
    return paid - line["discount_cents"] * paid // line["subtotal_cents"]


# ---- processReturn ----------------------------------------------------------------------------------
def test_return_refunds_the_paid_price_minus_the_policy_restocking_fee(conn):
    line = delivered_line(conn)
    stock_before = conn.execute("SELECT COALESCE(SUM(quantity_on_hand), 0) FROM inventory WHERE product_id = ? AND "
                                "warehouse_id = 'WH-ATL'", (line["product_id"],)).fetchone()[0]
    data = ok(conn, "processReturn", {"order_id": line["order_id"], "reason": "changed_mind",
                                      "items": [{"product_id": line["product_id"], "condition": "opened"}]})
    paid = paid_for(line)
    fee = min(paid * int(policy(conn, "restocking", "fee_percent")) // 100,
              int(policy(conn, "restocking", "max_fee_cents")))
    assert data["breakdown"]["restocking_fee_usd"] == fee / 100
    assert data["refund_usd"] == (paid - fee) / 100
    rma = conn.execute("SELECT * FROM returns WHERE return_id = ?", (data["return_id"],)).fetchone()
    assert (rma["restocking_fee_cents"], rma["refund_amount_cents"], rma["order_id"]) == (fee, paid - fee,
                                                                                           line["order_id"])
    refund = conn.execute("SELECT * FROM refunds WHERE refund_id = ?", (data["refund_id"],)).fetchone()
    assert refund["amount_cents"] == paid - fee and refund["return_id"] == data["return_id"]
    returned = conn.execute("SELECT quantity_returned FROM order_lines WHERE order_line_id = ?",
                            (line["order_line_id"],)).fetchone()[0]
    assert returned == 1
    stock_after = conn.execute("SELECT quantity_on_hand FROM inventory WHERE product_id = ? AND "
                               "warehouse_id = 'WH-ATL'", (line["product_id"],)).fetchone()[0]
    assert stock_after == stock_before + 1
    assert conn.execute("SELECT status FROM orders WHERE order_id = ?", (line["order_id"],)).fetchone()[0] in (
        "returned", "partially_returned")


def test_restocking_fee_follows_the_active_policy_row(conn):
    conn.execute("UPDATE policy_parameters SET param_value = '20' WHERE param_key = 'fee_percent' AND policy_id = "
                 "(SELECT policy_id FROM company_policies WHERE policy_area = 'restocking' AND status = 'active')")
    conn.execute("UPDATE policy_parameters SET param_value = '1000000' WHERE param_key = 'max_fee_cents'")
    line = delivered_line(conn)
    data = ok(conn, "processReturn", {"order_id": line["order_id"], "reason": "not_needed",
                                      "items": [{"product_id": line["product_id"], "condition": "opened"}]})
    assert data["breakdown"]["restocking_fee_usd"] == (paid_for(line) * 20 // 100) / 100


def test_unopened_and_defective_returns_pay_no_restocking_fee(conn):
    line = delivered_line(conn)
    data = ok(conn, "processReturn", {"order_id": line["order_id"], "reason": "changed_mind",
                                      "items": [{"product_id": line["product_id"], "condition": "unopened"}]})
    assert data["breakdown"]["restocking_fee_usd"] == 0


def test_our_error_refunds_original_shipping_once(conn):
    line = delivered_line(conn)
    data = ok(conn, "processReturn", {"order_id": line["order_id"], "reason": "wrong_item",
                                      "items": [{"product_id": line["product_id"], "condition": "unopened"}]})
    assert data["breakdown"]["shipping_refund_usd"] == line["shipping_cents"] / 100
    assert data["refund_usd"] == (paid_for(line) + line["shipping_cents"]) / 100


def test_gold_members_get_45_days_and_no_restocking_fee(conn):
    gold_window = int(policy(conn, "returns", "gold_window_days"))
    line = delivered_line(conn, tiers=("gold",), min_days=int(policy(conn, "returns", "window_days")) + 1,
                          max_days=gold_window)
    data = ok(conn, "processReturn", {"order_id": line["order_id"], "reason": "changed_mind",
                                      "items": [{"product_id": line["product_id"], "condition": "opened"}]})
    assert data["return_window"]["window_days"] == gold_window
    assert data["breakdown"]["restocking_fee_usd"] == 0


def test_return_outside_window_refused_unless_escalations_approve(conn):
    line = delivered_line(conn, min_days=31, max_days=400)
    args = {"order_id": line["order_id"], "reason": "changed_mind",
            "items": [{"product_id": line["product_id"], "condition": "unopened"}]}
    refused(conn, "processReturn", args, "order_id:", "outside the 30-day return window", "escalations")
    data = ok(conn, "processReturn", {**args, "allow_outside_window": True})
    assert data["return_window"]["exception_granted"] is True


def test_item_not_on_the_order_is_refused(conn):
    line = delivered_line(conn)
    other = conn.execute("SELECT product_id FROM products WHERE product_id NOT IN "
                         "(SELECT product_id FROM order_lines WHERE order_id = ?) LIMIT 1", (line["order_id"],)).fetchone()[0]
    refused(conn, "processReturn", {"order_id": line["order_id"], "reason": "defective",
                                    "items": [{"product_id": other, "condition": "defective"}]},
            "items[0]:", f"product {other} is not on order {line['order_id']}")


def test_returning_more_than_was_bought_is_refused(conn):
    line = delivered_line(conn)
    refused(conn, "processReturn", {"order_id": line["order_id"], "reason": "defective",
                                    "items": [{"product_id": line["product_id"], "quantity": line["quantity"] + 1,
                                               "condition": "defective"}]},
            "items[0]:", f"only {line['quantity']} of {line['quantity']}")


def test_refunds_never_exceed_what_the_order_paid(conn):
    line = delivered_line(conn)
    conn.execute("INSERT INTO refunds (refund_id, order_id, amount_cents, method, reason, status, created_at) "
                 "VALUES ('RF-99999', ?, ?, 'original_payment', 'goodwill', 'issued', '2026-03-01')",
                 (line["order_id"], line["total_cents"] - 1))
    refused(conn, "processReturn", {"order_id": line["order_id"], "reason": "defective",
                                    "items": [{"product_id": line["product_id"], "condition": "defective"}]},
            "more than the", "paid")


def test_a_failing_multi_item_return_changes_nothing(conn):
    line = delivered_line(conn)
    refused(conn, "processReturn", {"order_id": line["order_id"], "reason": "defective",
                                    "items": [{"product_id": line["product_id"], "condition": "defective"},
                                              {"product_id": "NOPE-0000", "condition": "defective"}]},
            "items[1]:")


def test_final_sale_items_come_back_only_when_defective(conn):
    line = delivered_line(conn)
    conn.execute("UPDATE products SET is_returnable = 0 WHERE product_id = ?", (line["product_id"],))
    args = {"order_id": line["order_id"], "items": [{"product_id": line["product_id"], "condition": "opened"}]}
    refused(conn, "processReturn", {**args, "reason": "changed_mind"}, "final sale")
    ok(conn, "processReturn", {**args, "reason": "defective"})


def test_an_undelivered_order_cannot_be_returned(conn):
    order = conn.execute("SELECT order_id FROM orders WHERE status = 'processing' LIMIT 1").fetchone()[0]
    refused(conn, "processReturn", {"order_id": order, "reason": "changed_mind",
                                    "items": [{"order_line_id": 1, "condition": "unopened"}]},
            "only delivered orders", "updateOrder")


# ---- processExchange --------------------------------------------------------------------------------
def test_exchange_for_the_same_product_reserves_stock_and_opens_a_replacement_order(conn):
    line = delivered_line(conn)
    conn.execute("UPDATE inventory SET quantity_on_hand = quantity_reserved + 5 WHERE product_id = ? "
                 "AND warehouse_id = 'WH-RNO'", (line["product_id"],))
    data = ok(conn, "processExchange", {"order_id": line["order_id"], "product_id": line["product_id"],
                                        "condition": "defective", "reason": "defective"})
    new_order = conn.execute("SELECT * FROM orders WHERE order_id = ?", (data["exchange_order_id"],)).fetchone()
    assert new_order["status"] == "processing"
    rma = conn.execute("SELECT * FROM returns WHERE return_id = ?", (data["return_id"],)).fetchone()
    assert rma["return_type"] == "exchange" and rma["exchange_order_id"] == data["exchange_order_id"]
    assert data["replacement"]["product_id"] == line["product_id"]
    price = conn.execute("SELECT price_cents FROM products WHERE product_id = ?", (line["product_id"],)).fetchone()[0]
    difference = price - paid_for(line)
    assert data["customer_owes_usd"] == max(0, difference) / 100
    assert data["refund_usd"] == max(0, -difference) / 100


def test_exchange_for_an_out_of_stock_product_is_refused(conn):
    line = delivered_line(conn)
    conn.execute("UPDATE inventory SET quantity_on_hand = quantity_reserved, restock_eta = '2026-04-01' "
                 "WHERE product_id = ?", (line["product_id"],))
    refused(conn, "processExchange", {"order_id": line["order_id"], "product_id": line["product_id"],
                                      "condition": "defective", "reason": "defective"},
            "new_product_id:", "no warehouse has 1", "2026-04-01")


# ---- applyPromotion ---------------------------------------------------------------------------------
def open_order(conn, tier="member"):
    return conn.execute(
        "SELECT o.* FROM orders o JOIN customers c ON c.customer_id = o.customer_id WHERE o.status IN "
        "('pending', 'processing') AND o.promotion_id IS NULL AND c.loyalty_tier_id = ? ORDER BY o.order_id LIMIT 1",
        (tier,),
    ).fetchone()


def promotion(conn, code, **terms):
    """Make promotion ``code`` a plain running 10%-off code (no minimum, category, brand, tier, use limit),
    then apply ``terms``: the tests state every rule they rely on instead of trusting the generated data."""
    base = {"discount_type": "percent", "discount_value": 10, "max_discount_cents": None, "min_order_cents": 0,
            "eligible_category": None, "eligible_brand_id": None, "min_loyalty_tier_id": None,
            "first_order_only": 0, "max_uses_per_customer": None, "stackable": 0, "is_active": 1,
            "starts_at": "2026-01-01T00:00:00Z", "expires_at": "2026-12-31T00:00:00Z"} | terms
    sets = ", ".join(f"{k} = ?" for k in base)
    updated = conn.execute(f"UPDATE promotions SET {sets} WHERE code = ?", [*base.values(), code]).rowcount
    if not updated:
        conn.execute("INSERT INTO promotions (promotion_id, code, name, description, terms, discount_type, "
                     "discount_value, starts_at, expires_at, is_active) VALUES (?, ?, ?, 'test', 'test', "
                     "'percent', 10, '2026-01-01', '2026-12-31', 1)", (f"PROMO-T-{code}", code, code))
        conn.execute(f"UPDATE promotions SET {sets} WHERE code = ?", [*base.values(), code])
    return code


def test_expired_promotion_is_refused_naming_the_expiry(conn):
    order = open_order(conn)
    code = promotion(conn, "TESTEXPIRED", expires_at="2026-03-15T00:00:00Z")  # today is 2026-03-16
    refused(conn, "applyPromotion", {"order_id": order["order_id"], "code": code.lower()}, "code:",
            "expired 2026-03-15")


def test_promotion_discount_and_refund_of_a_paid_order(conn):
    order = open_order(conn)
    code = promotion(conn, "TESTTEN", max_discount_cents=2500)
    data = ok(conn, "applyPromotion", {"order_id": order["order_id"], "code": code, "dry_run": True})
    assert data["eligible"], data["reasons"]
    assert conn.execute("SELECT total_cents FROM orders WHERE order_id = ?",
                        (order["order_id"],)).fetchone()[0] == order["total_cents"]  # dry run changed nothing
    applied = ok(conn, "applyPromotion", {"order_id": order["order_id"], "code": code})
    assert applied["discount_usd"] == min(order["subtotal_cents"] * 10 // 100, 2500) / 100
    after = conn.execute("SELECT * FROM orders WHERE order_id = ?", (order["order_id"],)).fetchone()
    assert after["total_cents"] == order["total_cents"] - round(applied["discount_usd"] * 100)
    assert (applied["refund_id"] is not None) == (order["payment_status"] == "captured")


def test_second_code_is_refused_unless_one_is_stackable(conn):
    order = open_order(conn)
    first, plain_code = promotion(conn, "TESTFIRST"), promotion(conn, "TESTPLAIN")
    stacking, third = promotion(conn, "TESTSTACK", stackable=1), promotion(conn, "TESTTHIRD", stackable=1)
    ok(conn, "applyPromotion", {"order_id": order["order_id"], "code": first})
    refused(conn, "applyPromotion", {"order_id": order["order_id"], "code": plain_code}, "neither code is stackable")
    ok(conn, "applyPromotion", {"order_id": order["order_id"], "code": stacking})  # stackable: joins one other
    refused(conn, "applyPromotion", {"order_id": order["order_id"], "code": third}, "two codes")


def test_codes_cannot_be_applied_once_shipped_or_below_the_tier_or_minimum(conn):
    shipped = conn.execute("SELECT order_id FROM orders WHERE status = 'shipped' LIMIT 1").fetchone()[0]
    refused(conn, "applyPromotion", {"order_id": shipped, "code": promotion(conn, "TESTANY")}, "pending or processing")
    order = open_order(conn)
    refused(conn, "applyPromotion", {"order_id": order["order_id"],
                                     "code": promotion(conn, "TESTPLAT", min_loyalty_tier_id="platinum")},
            "below the required platinum")
    refused(conn, "applyPromotion", {"order_id": order["order_id"],
                                     "code": promotion(conn, "TESTMIN", min_order_cents=order["subtotal_cents"] + 1)},
            "below the minimum")



# ---- one money model: refunds never exceed what the payment captured ----------------------------------
def paid_promoted_order(conn):
    """A captured processing order with a 10% code applied: (order before, discount cents, captured cents).

    applyPromotion lowers total_cents and refunds the discount at once; the customer's card was charged the
    total from before the code, and that is the ceiling every later refund counts against.
    """
    order = conn.execute(
        "SELECT o.* FROM orders o JOIN customers c ON c.customer_id = o.customer_id WHERE o.status = 'processing' "
        "AND o.payment_status = 'captured' AND o.promotion_id IS NULL AND c.loyalty_tier_id = 'member' "
        "AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.order_id = o.order_id) ORDER BY o.order_id LIMIT 1"
    ).fetchone()
    applied = ok(conn, "applyPromotion", {"order_id": order["order_id"], "code": promotion(conn, "TESTPAID")})
    discount = round(applied["discount_usd"] * 100)
    assert discount > 0 and applied["refund_id"] is not None
    return order, discount, order["total_cents"]


def refunds_on(conn, order_id):
    return conn.execute("SELECT COALESCE(SUM(amount_cents), 0) FROM refunds WHERE order_id = ? "
                        "AND status != 'failed'", (order_id,)).fetchone()[0]


def test_cancelling_a_promoted_paid_order_refunds_exactly_what_was_captured(conn):
    order, discount, captured = paid_promoted_order(conn)
    data = ok(conn, "updateOrder", {"order_id": order["order_id"], "status": "cancelled"})
    cancellation = conn.execute("SELECT amount_cents FROM refunds WHERE refund_id = ?",
                                (data["refund_id"],)).fetchone()[0]
    assert cancellation == captured - discount  # the rest of the payment, not the rest minus the discount again
    assert refunds_on(conn, order["order_id"]) == captured
    assert data["order"]["payment_status"] == "refunded"


def test_order_refunds_after_a_promotion_reach_the_captured_amount_and_no_further(conn):
    order, discount, captured = paid_promoted_order(conn)
    oid = order["order_id"]
    left = captured - discount  # = the order's new total: what the customer is still out of pocket
    refused(conn, "updateOrder", {"order_id": oid, "refund_usd": (left + 1) / 100, "refund_reason": "goodwill"},
            "refund_usd:", f"more than the ${captured / 100:.2f} paid")
    data = ok(conn, "updateOrder", {"order_id": oid, "refund_usd": left / 100, "refund_reason": "goodwill"})
    assert refunds_on(conn, oid) == captured
    assert data["order"]["payment_status"] == "refunded"
    refused(conn, "updateOrder", {"order_id": oid, "refund_usd": 0.01, "refund_reason": "goodwill"},
            "refund_usd:", "payment is refunded")


def test_returning_a_promoted_paid_order_refunds_the_discounted_price_within_the_capture(conn):
    order, discount, captured = paid_promoted_order(conn)
    oid = order["order_id"]
    # Deliver it (as the warehouse and carrier would), so it can come back.
    conn.execute("UPDATE orders SET status = 'delivered' WHERE order_id = ?", (oid,))
    conn.execute("INSERT INTO order_status_history (order_id, status, changed_at, source) "
                 "VALUES (?, 'delivered', ?, 'carrier_sync')", (oid, f"{today(conn)}T09:00:00Z"))
    conn.commit()
    lines = conn.execute("SELECT product_id, quantity, line_total_cents FROM order_lines WHERE order_id = ?",
                         (oid,)).fetchall()
    data = ok(conn, "processReturn", {"order_id": oid, "reason": "defective", "items": [
        {"order_line_id": ln, "quantity": q, "condition": "defective"}
        for ln, q in conn.execute("SELECT order_line_id, quantity FROM order_lines WHERE order_id = ?", (oid,))]})
    after = conn.execute("SELECT * FROM orders WHERE order_id = ?", (oid,)).fetchone()
    # Each line comes back at its price less its share of every discount, the code's included.
    expected = sum(ln["line_total_cents"] - after["discount_cents"] * ln["line_total_cents"] // after["subtotal_cents"]
                   for ln in lines) + after["shipping_cents"]
    assert round(data["refund_usd"] * 100) == expected
    assert refunds_on(conn, oid) == discount + expected <= captured
    assert after["status"] == "returned"


def test_a_promotion_on_an_order_already_refunded_in_full_is_refused(conn):
    order = conn.execute(
        "SELECT o.* FROM orders o JOIN customers c ON c.customer_id = o.customer_id WHERE o.status = 'processing' "
        "AND o.payment_status = 'captured' AND o.promotion_id IS NULL AND c.loyalty_tier_id = 'member' "
        "AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.order_id = o.order_id) ORDER BY o.order_id LIMIT 1"
    ).fetchone()
    ok(conn, "updateOrder", {"order_id": order["order_id"], "refund_usd": order["total_cents"] / 100,
                             "refund_reason": "goodwill"})
    conn.commit()
    refused(conn, "applyPromotion", {"order_id": order["order_id"], "code": promotion(conn, "TESTLATE")},
            "code:", "more than the")


# ---- calculateShipping ------------------------------------------------------------------------------
def test_shipping_price_is_the_zone_base_plus_each_started_kilogram(conn):
    data = ok(conn, "calculateShipping", {"destination_state": "NY", "weight_grams": 2500,
                                          "service_level": "standard", "carrier": "ups"})
    [quote] = data["quotes"]
    zone = data["zone"]
    base, per_kg = conn.execute("SELECT base_cents, per_kg_cents FROM shipping_rates WHERE service_id = 'UPS-GROUND' "
                                "AND zone = ?", (zone,)).fetchone()
    origin = conn.execute("SELECT region, name FROM warehouses WHERE warehouse_id = ?",
                          (data["origin_warehouse_id"],)).fetchone()
    ny_region = conn.execute("SELECT region FROM shipping_regions WHERE state_code = 'NY'").fetchone()[0]
    # Ships from the fulfilment centre in the destination's region (overflow stock last): zone 1.
    assert data["billable_kg"] == 3 and origin["region"] == ny_region and zone == 1
    assert "Overflow" not in origin["name"]
    assert quote["price_usd"] == (base + 3 * per_kg) / 100
    assert quote["customer_pays_usd"] == quote["price_usd"]  # no goods value: below the free threshold


def test_shipping_over_30kg_goes_by_freight_only(conn):
    data = ok(conn, "calculateShipping", {"destination_state": "CA", "weight_grams": 45_000})
    assert {q["service_level"] for q in data["quotes"]} == {"freight"}
    assert any("freight" in e["reason"] for e in data["excluded"])


def test_gold_members_ship_standard_free_and_platinum_expedited_too(conn):
    product = conn.execute("SELECT product_id FROM products WHERE category = 'gpu' LIMIT 1").fetchone()[0]
    for tier, free_levels in (("gold", {"standard"}), ("platinum", {"standard", "expedited"})):
        customer = conn.execute("SELECT customer_id FROM customers WHERE loyalty_tier_id = ? LIMIT 1",
                                (tier,)).fetchone()[0]
        data = ok(conn, "calculateShipping", {"destination_state": "TX", "customer_id": customer,
                                              "items": [{"product_id": product}]})
        free = {q["service_level"] for q in data["quotes"] if q["loyalty_free_shipping"]}
        assert free == free_levels


# ---- validateBuildCompatibility ---------------------------------------------------------------------
def pick(conn, sql, params=()):
    row = conn.execute(sql, params).fetchone()
    assert row is not None, sql
    return row[0]


def test_build_checker_names_each_failing_reason(conn):
    spec = "SELECT p.product_id FROM products p JOIN product_specs s ON s.product_id = p.product_id WHERE "
    cpu = pick(conn, spec + "p.category = 'cpu' AND s.socket = 'AM5' ORDER BY p.product_id")
    board = pick(conn, spec + "p.category = 'motherboard' AND s.socket = 'LGA1700' AND s.form_factor = 'ATX' "
                 "AND s.memory_type = 'DDR5' ORDER BY p.product_id")
    memory = pick(conn, spec + "p.category = 'memory' AND s.memory_type = 'DDR4' ORDER BY p.product_id")
    case = pick(conn, spec + "p.category = 'case' AND s.form_factor = 'Small Form Factor' "
                "AND (',' || s.supported_form_factors || ',') NOT LIKE '%,ATX,%' ORDER BY s.max_gpu_length_mm")
    gpu = pick(conn, spec + "p.category = 'gpu' ORDER BY s.gpu_length_mm DESC, s.tdp_watts DESC")
    cooler = pick(conn, spec + "p.category = 'cooler' AND s.cooler_type = 'air' ORDER BY s.cooler_height_mm DESC")
    psu = pick(conn, spec + "p.category = 'psu' ORDER BY s.wattage")
    data = ok(conn, "validateBuildCompatibility", {"product_ids": [cpu, board, memory, case, gpu, cooler, psu]})
    failed = {(e["rule_id"]) for e in data["errors"]}
    assert data["compatible"] is False and data["status"] == "incompatible"
    # socket, memory type, form factor, GPU clearance, cooler height, PSU budget: each named by its own rule
    for left, right in (("cpu.socket", "motherboard.socket"), ("memory.memory_type", "motherboard.memory_type"),
                        ("motherboard.form_factor", "case.supported_form_factors"),
                        ("gpu.gpu_length_mm", "case.max_gpu_length_mm"),
                        ("cooler.cooler_height_mm", "case.max_cooler_height_mm"), ("*.tdp_watts", "psu.wattage")):
        rule = conn.execute("SELECT rule_id, name FROM compatibility_rules WHERE left_category || '.' || "
                            "left_attribute = ? AND right_category || '.' || right_attribute = ?",
                            (left, right)).fetchone()
        assert rule is not None and rule["rule_id"] in failed, (left, right, failed)
    for error in data["errors"]:
        assert error["message"] and error["detail"]


def test_build_checker_agrees_with_the_worlds_saved_build_labels(conn):
    builds = conn.execute("SELECT build_id, compatibility_status FROM builds WHERE compatibility_status != "
                          "'unchecked'").fetchall()
    stale = 0
    for build_id, label in builds:
        status = ok(conn, "validateBuildCompatibility", {"build_id": build_id})["status"]
        if label == "compatible" and status != label:
            stale += 1  # the world plants stale 'compatible' labels (checked before a part was swapped)
        else:
            assert status == label, build_id
    assert len(builds) > 20 and stale < len(builds) // 4


# ---- orders, tickets, searches ----------------------------------------------------------------------
def test_cancelling_a_paid_order_refunds_it_and_a_shipped_one_cannot_change(conn):
    order = conn.execute("SELECT * FROM orders WHERE status = 'processing' AND payment_status = 'captured' "
                         "LIMIT 1").fetchone()
    data = ok(conn, "updateOrder", {"order_id": order["order_id"], "status": "cancelled"})
    refund = conn.execute("SELECT amount_cents, reason FROM refunds WHERE refund_id = ?",
                          (data["refund_id"],)).fetchone()
    assert tuple(refund) == (order["total_cents"], "cancellation")
    shipped = conn.execute("SELECT order_id FROM orders WHERE status = 'shipped' LIMIT 1").fetchone()[0]
    refused(conn, "updateOrder", {"order_id": shipped, "ship_city": "Austin"}, "can no longer be changed")


def test_closed_ticket_cannot_be_reopened(conn):
    ticket = conn.execute("SELECT ticket_id FROM support_tickets WHERE status = 'closed' LIMIT 1").fetchone()[0]
    refused(conn, "updateTicketStatus", {"ticket_id": ticket, "status": "open"}, "closed", "new ticket")


def test_new_ticket_gets_the_tiers_sla_deadlines(conn):
    customer = conn.execute("SELECT customer_id FROM customers WHERE loyalty_tier_id = 'platinum' LIMIT 1").fetchone()[0]
    data = ok(conn, "createTicket", {"customer_id": customer, "subject": "GPU artifacts", "priority": "high",
                                     "description": "Artifacts in every game since yesterday.",
                                     "category": "technical"})
    sla = conn.execute("SELECT sla_id, first_response_minutes FROM slas WHERE sla_type = 'support' AND "
                       "priority = 'high' AND loyalty_tier_id IS NOT NULL").fetchone()
    assert data["sla"]["sla_id"] == sla["sla_id"]  # the tier-specific row, which covers higher tiers too
    due = dt.datetime.fromisoformat(f"{today(conn)}T15:00:00") + dt.timedelta(minutes=sla["first_response_minutes"])
    assert data["ticket"]["first_response_due_at"] == due.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_search_pages_hold_at_most_ten_and_next_page_reaches_every_result(conn):
    seen: list[str] = []
    page = 1
    while page is not None:
        data = ok(conn, "searchOrders", {"status": "delivered", "page": page})
        assert len(data["orders"]) <= 10
        seen += [o["order_id"] for o in data["orders"]]
        page = data["next_page"]
    total = conn.execute("SELECT COUNT(*) FROM orders WHERE status = 'delivered'").fetchone()[0]
    assert len(seen) == len(set(seen)) == total
    assert data["total_pages"] == math.ceil(total / 10)


@pytest.mark.parametrize("text", ["smith", "a", "ORD-2000", "zzz-no-such-text"])
@pytest.mark.parametrize("page", [1, 2, 7, 500])
def test_one_scan_and_two_query_pagination_give_the_same_page(conn, text, page):
    """Text searches count their matches in the page query (one scan); the result must equal the two-query plan,
    also for a page past the end (no row to carry the count)."""
    where = ["(o.order_id LIKE ? ESCAPE '\\' OR o.ship_name LIKE ? ESCAPE '\\' OR c.email LIKE ? ESCAPE '\\')"]
    params = [like(text)] * 3
    order = "o.placed_at DESC, o.order_id DESC"
    one = paginate(conn, _ORDER_SUMMARY, where, params, order, page, scans=True)
    two = paginate(conn, _ORDER_SUMMARY, where, params, order, page, scans=False)
    assert [dict(r) for r in one["rows"]] == [dict(r) for r in two["rows"]]
    assert {k: v for k, v in one.items() if k != "rows"} == {k: v for k, v in two.items() if k != "rows"}
    expected = conn.execute(f"SELECT COUNT(*) FROM ({_ORDER_SUMMARY} WHERE {where[0]})", params).fetchone()[0]
    assert one["total_results"] == expected
    assert len(one["rows"]) == max(0, min(10, expected - (page - 1) * 10))


def test_customer_search_finds_near_duplicate_records(conn):
    dupes = conn.execute("SELECT lower(last_name), COUNT(*) FROM customers GROUP BY lower(first_name), "
                         "lower(last_name) HAVING COUNT(*) > 1 LIMIT 1").fetchone()
    assert dupes is not None
    data = ok(conn, "searchCustomers", {"name": dupes[0]})
    assert data["total_results"] >= dupes[1]


def test_warranty_lookup_agrees_with_the_worlds_labelled_claims(conn):
    claims = conn.execute("SELECT DISTINCT order_id, product_id, warranty_policy_id FROM warranty_claims "
                          "WHERE warranty_policy_id IS NOT NULL").fetchall()
    assert claims
    for order_id, product_id, policy_id in claims:
        data = ok(conn, "getWarrantyPolicy", {"product_id": product_id, "order_id": order_id})
        assert data["policy"]["warranty_policy_id"] == policy_id, (order_id, product_id)


def test_customer_history_shows_each_tickets_thread_with_replies_and_internal_notes(conn):
    customer = conn.execute("SELECT customer_id FROM customers WHERE account_status = 'active' LIMIT 1").fetchone()[0]
    ticket = ok(conn, "createTicket", {"customer_id": customer, "subject": "Fan noise", "category": "technical",
                                       "description": "The cooler fan rattles at idle."})["ticket"]["ticket_id"]
    ok(conn, "updateTicketStatus", {"ticket_id": ticket, "status": "pending_customer",
                                    "note": "Could you send a short video?"})
    ok(conn, "updateTicketStatus", {"ticket_id": ticket, "status": "escalated", "internal": True,
                                    "note": "Likely a bad bearing; RMA candidate."})
    history = ok(conn, "getCustomerHistory", {"customer_id": customer})
    [item] = [t for t in history["tickets"]["items"] if t["ticket_id"] == ticket]
    assert [(m["body"], m["is_internal_note"]) for m in item["messages"]] == [
        ("The cooler fan rattles at idle.", 0),
        ("Could you send a short video?", 0),
        ("Likely a bad bearing; RMA candidate.", 1),
    ]


def test_order_level_refunds_are_issued_up_to_what_was_paid(conn):
    order = conn.execute("SELECT * FROM orders o WHERE status = 'delivered' AND payment_status = 'captured' AND "
                         "NOT EXISTS (SELECT 1 FROM refunds r WHERE r.order_id = o.order_id) LIMIT 1").fetchone()
    data = ok(conn, "updateOrder", {"order_id": order["order_id"], "refund_usd": 12.5, "refund_reason": "goodwill"})
    refund = conn.execute("SELECT amount_cents, reason, status FROM refunds WHERE refund_id = ?",
                          (data["refund_id"],)).fetchone()
    assert tuple(refund) == (1250, "goodwill", "issued")
    assert data["order"]["payment_status"] == "partially_refunded"
    too_much = order["total_cents"] / 100
    refused(conn, "updateOrder", {"order_id": order["order_id"], "refund_usd": too_much,
                                  "refund_reason": "price_match"}, "refund_usd:", "more than the")
    refused(conn, "updateOrder", {"order_id": order["order_id"], "refund_usd": 5}, "refund_reason:")


def test_customer_free_text_finds_by_id_email_phone_and_full_name(conn):
    row = conn.execute("SELECT customer_id, email, phone, first_name, last_name FROM customers "
                       "WHERE phone IS NOT NULL ORDER BY customer_id LIMIT 1").fetchone()
    for text in (row["customer_id"], row["email"].upper(), row["phone"], f"{row['first_name']} {row['last_name']}",
                 row["email"].split("@")[0][1:]):
        found = ok(conn, "searchCustomers", {"query": text})["customers"]
        assert row["customer_id"] in [c["customer_id"] for c in found], text


def test_items_the_customer_damaged_cannot_be_returned(conn):
    line = delivered_line(conn)
    args = {"order_id": line["order_id"], "items": [{"product_id": line["product_id"], "condition": "damaged"}]}
    refused(conn, "processReturn", {**args, "reason": "changed_mind"}, "damaged by the customer")
    ok(conn, "processReturn", {**args, "reason": "damaged_in_transit"})
