"""Orders in time order: lines, member pricing and promotions, shipments with carrier events, status history
from each system (which do not always agree)."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections import defaultdict

from corecraft.world.calendar import add_business_days
from corecraft.world.generator import Generator, Row, ts


def orders(g: Generator) -> None:
    """Orders in time order with lines, pricing, shipments, carrier events and per-system status history."""
    rng = g.rng("orders")
    cat_weights = {
        "gpu": 14,
        "cpu": 10,
        "memory": 12,
        "storage": 16,
        "motherboard": 8,
        "psu": 7,
        "case": 6,
        "cooler": 8,
        "monitor": 7,
        "peripheral": 12,
    }
    cats = list(cat_weights)
    weights = list(cat_weights.values())
    sellable = {c: [p for p in g.by_category[c] if g.products[p]["status"] != "preorder"] for c in cats}
    warehouses = [w for w in g.t["warehouses"] if w["warehouse_id"] != "WH-ATL"]
    g.orders_: list[Row] = []
    g.lines_by_order: dict[str, list[Row]] = {}
    g.shipments_by_order: dict[str, list[Row]] = defaultdict(list)
    customers = [c for c in g.customers_ if c["account_status"] != "closed"]
    # Repeat buyers: a skewed choice so some customers have long histories.
    cust_weights = [rng.paretovariate(1.5) for _ in customers]
    cust_cum = list(itertools.accumulate(cust_weights))
    customer_by_id = {c["customer_id"]: c for c in g.customers_}
    buildable = [
        b for b in g.builds_ if b["customer_id"] and b["compatibility_status"] in ("compatible", "warnings")
    ]
    services = [s for s in g.services.values() if s["is_active"] and s["service_level"] != "freight"]
    svc_weights = [
        6 if s["service_level"] == "standard" else 2 if s["service_level"] == "expedited" else 1
        for s in services
    ]
    line_id = 1
    history_id = 1
    event_id = 1
    # Plan (moment, customer, build) first, then create orders in time order so ids ascend with time.
    plans: list[tuple[dt.datetime, Row, Row | None]] = []
    for _ in range(g.count("orders")):
        build = None
        if buildable and rng.random() < 0.07:
            build = rng.choice(buildable)
            customer = customer_by_id[build["customer_id"]]
            earliest = max(customer["created_at"], build["created_at"])
        else:
            customer = rng.choices(customers, cum_weights=cust_cum)[0]
            earliest = customer["created_at"]
        age = (g.now - dt.datetime.fromisoformat(earliest.replace("Z", ""))).total_seconds() / 86400
        placed = g.past(rng, min(g.history_days, age), 0.02, recent_bias=1.6)
        plans.append((placed, customer, build))
    plans.sort(key=lambda plan: plan[0])
    promo_uses: dict[str, dict[str, int]] = defaultdict(dict)
    oms_lag = g.rng("oms_lag")  # own stream: this noise does not reshuffle the rest of the orders
    recent_cutoff = ts(g.now - dt.timedelta(days=14))
    for placed, customer, build in plans:
        order_id = g.ids.take("ORD", 200001)
        if build is not None:
            items = dict(g.build_parts[build["build_id"]])
            build["status"] = "ordered"
        else:
            items = {}
            for _ in range(rng.choices([1, 2, 3, 4, 5], [40, 28, 16, 10, 6])[0]):
                c = rng.choices(cats, weights)[0]
                pid = rng.choice(sellable[c])
                items[pid] = items.get(pid, 0) + (
                    1 if c not in ("storage", "peripheral") or rng.random() < 0.8 else 2
                )
        lines: list[Row] = []
        for number, (pid, qty) in enumerate(items.items(), start=1):
            product = g.products[pid]
            drift = rng.uniform(0.94, 1.06) if (g.now - placed).days > 60 else 1.0
            unit = (
                int(round(product["price_cents"] * drift, -2) - 1) if drift != 1.0 else product["price_cents"]
            )
            serial = None
            if (
                product["category"] in ("cpu", "gpu", "motherboard", "psu", "monitor", "storage")
                and rng.random() > g.noise["missing_serial_rate"]
            ):
                serial = f"{product['brand_id'][:3].upper()}{rng.randrange(16**10):010X}"
            lines.append(
                {
                    "order_line_id": line_id,
                    "order_id": order_id,
                    "line_number": number,
                    "product_id": pid,
                    "quantity": qty,
                    "unit_price_cents": unit,
                    "discount_cents": 0,
                    "line_total_cents": unit * qty,
                    "quantity_returned": 0,
                    "serial_number": serial,
                }
            )
            line_id += 1
        subtotal = sum(line["line_total_cents"] for line in lines)
        # Loyalty member pricing first, then at most one promotion on what remains.
        member_pct = g.tiers[customer["loyalty_tier_id"]]["discount_percent"]
        member_discount = 0
        for line in lines:
            cut = line["line_total_cents"] * member_pct // 100
            line["discount_cents"] += cut
            line["line_total_cents"] -= cut
            member_discount += cut
        uses = promo_uses[customer["customer_id"]]
        promo, promo_discount = _apply_promotion(g, rng, customer, placed, lines, uses)
        uses["__orders__"] = uses.get("__orders__", 0) + 1
        discount = member_discount + promo_discount
        service = rng.choices(services, svc_weights)[0]
        dest = customer["state"] if customer["state"] else rng.choice(g.data.people["cities"])[1]
        dest_region = g.state_region[dest]
        warehouse = next((w for w in warehouses if w["region"] == dest_region), warehouses[0])
        weight = sum(g.products[line["product_id"]]["weight_grams"] * line["quantity"] for line in lines)
        shipping = g.shipping_quote(service["service_id"], warehouse["region"], dest, weight)
        tier = g.tiers[customer["loyalty_tier_id"]]
        free_at = tier["free_shipping_threshold_cents"]
        if service["service_level"] == "standard" and free_at is not None and subtotal - discount >= free_at:
            shipping = 0
        if promo and promo["discount_type"] == "free_shipping" and service["service_level"] == "standard":
            shipping = 0
        tax = round((subtotal - discount) * (0 if dest in ("OR", "DE", "MT", "NH") else 0.0725))
        age_days = (g.now - placed).total_seconds() / 86400
        status = _order_status(g, rng, age_days)
        payment_method = rng.choices(["credit_card", "paypal", "financing", "gift_card"], [70, 20, 7, 3])[0]
        order = {
            "order_id": order_id,
            "customer_id": customer["customer_id"],
            "status": status,
            "sales_channel": rng.choices(["web", "phone", "marketplace", "in_store_pickup"], [80, 8, 9, 3])[
                0
            ],
            "placed_at": ts(placed),
            "updated_at": ts(placed),
            "currency": "USD",
            "subtotal_cents": subtotal,
            "discount_cents": discount,
            "shipping_cents": shipping,
            "tax_cents": tax,
            "total_cents": subtotal - discount + shipping + tax,
            "promotion_id": promo["promotion_id"] if promo else None,
            "shipping_service_id": service["service_id"],
            "build_id": build["build_id"] if build else None,
            "payment_method": payment_method,
            "payment_status": "authorized"
            if status in ("pending", "on_hold")
            else "voided"
            if status == "cancelled"
            else "captured",
            "ship_name": f"{customer['first_name']} {customer['last_name']}",
            "ship_address_line1": customer["address_line1"] or f"{rng.randint(1, 999)} Main St",
            "ship_address_line2": customer["address_line2"],
            "ship_city": customer["city"] or "Springfield",
            "ship_state": dest,
            "ship_postal_code": customer["postal_code"] or "00000",
            "ship_country": "US",
            "notes": "Customer requested signature on delivery." if rng.random() < 0.04 else None,
        }
        history = [
            ("pending", placed, "oms", None),
            ("processing", placed + dt.timedelta(minutes=rng.randint(2, 90)), "oms", None),
        ]
        if status == "cancelled":
            history.append(
                (
                    "cancelled",
                    placed + dt.timedelta(hours=rng.randint(1, 30)),
                    rng.choice(["oms", "agent"]),
                    "Cancelled at customer request before shipment.",
                )
            )
        elif status == "on_hold":
            history.append(
                (
                    "on_hold",
                    placed + dt.timedelta(minutes=rng.randint(30, 300)),
                    "payment",
                    "Payment review: address verification mismatch.",
                )
            )
        elif status != "pending" and status != "processing":
            shipment, events, extra_history = _shipment(
                g, rng, order, warehouse, service, placed, weight, status
            )
            for ev in events:
                ev["event_id"] = event_id
                event_id += 1
            g.t["shipments"].append(shipment)
            g.t["shipment_events"].extend(events)
            g.shipments_by_order[order_id].append(shipment)
            order["status"] = {"delivered": "delivered"}.get(shipment["status"], "shipped")
            recent = shipment["delivered_at"] is not None and shipment["delivered_at"] >= recent_cutoff
            if recent and oms_lag.random() < g.noise["oms_delivery_lag_rate"]:
                # The carrier-sync job has not caught up: tracking says delivered, the order says shipped.
                order["status"] = "shipped"
                extra_history = [h for h in extra_history if h[2] != "carrier_sync"]
            history.extend(extra_history)
        if status == "pending":
            history = history[:1]
        last = max(h[1] for h in history)
        order["updated_at"] = ts(min(last, g.now))
        for st, when, source, note in history:
            g.t["order_status_history"].append(
                {
                    "history_id": history_id,
                    "order_id": order_id,
                    "status": st,
                    "changed_at": ts(min(when, g.now)),
                    "source": source,
                    "note": note,
                }
            )
            history_id += 1
        g.orders_.append(order)
        g.lines_by_order[order_id] = lines
        g.t["order_lines"].extend(lines)
    g.t["orders"] = g.orders_
    g.next_history_id = history_id


def _order_status(g: Generator, rng: random.Random, age_days: float) -> str:
    if age_days < 0.2:
        return rng.choice(["pending", "processing"])
    if age_days < 1.5:
        return rng.choices(["processing", "on_hold", "cancelled", "shipped"], [60, 6, 4, 30])[0]
    if rng.random() < 0.04:
        return "cancelled"
    if age_days < 8:
        return rng.choices(["shipped", "delivered", "on_hold"], [50, 48, 2])[0]
    return "delivered"


def _apply_promotion(
    g: Generator,
    rng: random.Random,
    customer: Row,
    placed: dt.datetime,
    lines: list[Row],
    uses: dict[str, int],
) -> tuple[Row | None, int]:
    """Pick a promotion valid for this order per the Promotions policy, spread its discount over lines."""
    if rng.random() > 0.22:
        return None, 0
    moment = ts(placed)
    rank = g.tiers[customer["loyalty_tier_id"]]["rank"]
    first_order = uses.get("__orders__", 0) == 0
    for promo in rng.sample(g.promos, len(g.promos)):
        if not (promo["starts_at"] <= moment <= promo["expires_at"]):
            continue
        if promo["min_loyalty_tier_id"] and g.tiers[promo["min_loyalty_tier_id"]]["rank"] > rank:
            continue
        if promo["first_order_only"] and not first_order:
            continue
        if (
            promo["max_uses_per_customer"]
            and uses.get(promo["promotion_id"], 0) >= promo["max_uses_per_customer"]
        ):
            continue
        eligible = [
            line
            for line in lines
            if (promo["eligible_category"] in (None, g.products[line["product_id"]]["category"]))
            and (promo["eligible_brand_id"] in (None, g.products[line["product_id"]]["brand_id"]))
        ]
        base = sum(line["line_total_cents"] for line in eligible)
        if not eligible or base < promo["min_order_cents"]:
            continue
        if promo["discount_type"] == "percent":
            discount = base * promo["discount_value"] // 100
            if promo["max_discount_cents"]:
                discount = min(discount, promo["max_discount_cents"])
        elif promo["discount_type"] == "fixed":
            discount = min(promo["discount_value"], base)
        else:
            discount = 0
        # Spread the discount over eligible lines in proportion to their totals; remainder on the largest.
        remaining = discount
        for line in eligible:
            share = line["line_total_cents"] * discount // base
            line["discount_cents"] += share
            line["line_total_cents"] -= share
            remaining -= share
        largest = max(eligible, key=lambda r: r["line_total_cents"])
        largest["discount_cents"] += remaining
        largest["line_total_cents"] -= remaining
        uses[promo["promotion_id"]] = uses.get(promo["promotion_id"], 0) + 1
        return promo, discount
    return None, 0


def _shipment(
    g: Generator,
    rng: random.Random,
    order: Row,
    warehouse: Row,
    service: Row,
    placed: dt.datetime,
    weight: int,
    status: str,
) -> tuple[Row, list[Row], list[tuple[str, dt.datetime, str, str | None]]]:
    carrier = service["carrier_id"]
    sla = next(
        s
        for s in g.t["slas"]
        if s["sla_type"] == "delivery" and s["service_level"] == service["service_level"]
    )
    # Warehouse marks the order shipped when the label prints; the carrier's pickup scan comes later.
    label_at = placed + dt.timedelta(hours=rng.uniform(2, 30))
    if label_at >= g.now:
        label_at = placed + (g.now - placed) * 0.5
    pickup_at = label_at + dt.timedelta(hours=rng.uniform(1, 10))
    shipped_at_wms = label_at + dt.timedelta(minutes=rng.randint(5, 60))
    conflicting = rng.random() < g.noise["conflicting_ship_time_rate"]
    if conflicting:
        # The WMS batch job stamped a different day than the carrier's pickup scan.
        shipped_at_wms = pickup_at + dt.timedelta(hours=rng.choice([-30, -26, 22, 28]))
    promised = add_business_days(pickup_at.date(), sla["delivery_business_days"])
    transit_days = rng.randint(service["min_transit_days"], service["max_transit_days"])
    late = rng.random() < 0.12
    if late:
        transit_days += rng.randint(1, 4)
    deliver_date = add_business_days(pickup_at.date(), transit_days)
    delivered_at = dt.datetime.combine(deliver_date, dt.time(rng.randint(15, 23), rng.randint(0, 59)))
    exception = rng.random() < 0.05
    lost = rng.random() < 0.01
    loc_from = f"{warehouse['city']}, {warehouse['state']}"
    loc_to = f"{order['ship_city']}, {order['ship_state']}"
    hub = rng.choice(
        ["Louisville, KY", "Memphis, TN", "Indianapolis, IN", "Ontario, CA", "Dallas, TX", "Chicago, IL"]
    )
    timeline: list[tuple[dt.datetime, str, str, str]] = [
        (label_at, "label_created", loc_from, "Shipping label created; carrier awaiting item."),
        (pickup_at, "picked_up", loc_from, "Picked up by carrier."),
        (
            pickup_at + dt.timedelta(hours=rng.uniform(3, 8)),
            "in_transit",
            loc_from,
            "Departed origin facility.",
        ),
        (
            pickup_at + (delivered_at - pickup_at) * 0.5,
            "arrived_at_facility",
            hub,
            "Arrived at sort facility.",
        ),
    ]
    if exception:
        kind = rng.choice(["damaged", "exception", "delivery_attempted"])
        at = pickup_at + (delivered_at - pickup_at) * 0.7
        desc = {
            "damaged": "Package damaged in transit; carrier inspecting contents.",
            "exception": "Delivery exception: weather delay in the region.",
            "delivery_attempted": "Delivery attempted; no one available to sign.",
        }[kind]
        timeline.append((at, kind, hub if kind != "delivery_attempted" else loc_to, desc))
        delivered_at += dt.timedelta(days=rng.randint(1, 3))
    timeline.append(
        (
            dt.datetime.combine(delivered_at.date(), dt.time(8, rng.randint(0, 59))) + dt.timedelta(hours=5),
            "out_for_delivery",
            loc_to,
            "Out for delivery.",
        )
    )
    timeline.append(
        (
            delivered_at,
            "delivered",
            loc_to,
            rng.choice(
                [
                    "Delivered, front door.",
                    "Delivered, left with front desk.",
                    "Delivered, signed by resident.",
                    "Delivered to parcel locker.",
                ]
            ),
        )
    )
    if lost:
        timeline = [e for e in timeline if e[1] not in ("out_for_delivery", "delivered")]
    events = [
        {
            "event_id": 0,
            "shipment_id": "",
            "occurred_at": ts(at),
            "event_code": code,
            "location": loc,
            "description": desc,
        }
        for at, code, loc, desc in sorted(timeline)
        if at <= g.now
    ]
    seen_codes = {e["event_code"] for e in events}
    if lost:
        shipment_status = "lost" if (g.now - pickup_at).days > 10 else "in_transit"
    elif "delivered" in seen_codes:
        shipment_status = "delivered"
    elif "out_for_delivery" in seen_codes:
        shipment_status = "out_for_delivery"
    elif seen_codes & {"damaged", "exception"}:
        shipment_status = "exception"
    elif "picked_up" in seen_codes:
        shipment_status = "in_transit"
    else:
        shipment_status = "label_created"
    shipment_id = g.ids.take("SHP", 300001)
    for e in events:
        e["shipment_id"] = shipment_id
    delivered_ts = ts(delivered_at) if shipment_status == "delivered" else None
    if delivered_ts and rng.random() < 0.03:
        delivered_ts = None  # carrier webhook never landed: tracking shows delivered, shipment row doesn't
    tracking = g.carrier_prefix[carrier] + "".join(
        str(rng.randrange(10)) for _ in range(16 if carrier != "ONTRAC" else 14)
    )
    shipment = {
        "shipment_id": shipment_id,
        "order_id": order["order_id"],
        "warehouse_id": warehouse["warehouse_id"],
        "carrier_id": carrier,
        "service_id": service["service_id"],
        "sla_id": sla["sla_id"],
        "tracking_number": tracking,
        "status": shipment_status,
        "shipped_at": ts(min(shipped_at_wms, g.now)),
        "promised_delivery_date": promised.isoformat(),
        "estimated_delivery_date": delivered_at.date().isoformat() if shipment_status != "lost" else None,
        "delivered_at": delivered_ts,
        "weight_grams": weight,
        "cost_cents": g.shipping_quote(
            service["service_id"], warehouse["region"], order["ship_state"], weight
        ),
        "updated_at": events[-1]["occurred_at"] if events else ts(label_at),
    }
    history: list[tuple[str, dt.datetime, str, str | None]] = [
        ("shipped", shipped_at_wms, "warehouse", f"Label {tracking}")
    ]
    if shipment_status == "delivered":
        # The carrier sync reports delivery with its own clock (sometimes hours off).
        drift = (
            dt.timedelta(hours=rng.choice([0, 0, 0, 3, -5, 8]))
            if conflicting
            else dt.timedelta(minutes=rng.randint(1, 40))
        )
        history.append(("delivered", delivered_at + drift, "carrier_sync", None))
    return shipment, events, history
