"""Information retrieval: find the right record (often behind a search, pagination or a duplicate) and report
exactly what it says."""

from __future__ import annotations

from corecraft.tasks.families.common import (
    Planter,
    Rubric,
    ask,
    dollars,
    fmt_date,
    no_writes,
    read_tool,
    return_window,
    usd,
)
from corecraft.tasks.family import Instance, family


@family("order_total_lookup", "information_retrieval", "easy")
def order_total_lookup(p: Planter, i: int) -> Instance:
    """A customer asks what they paid for an order."""
    c = p.customer(p.rng.choice(["member", "silver", "gold"]))
    items = [(p.product(cat), p.rng.randint(1, 2)) for cat in p.rng.sample(["gpu", "memory", "storage", "psu", "case"],
                                                                             p.rng.randint(1, 3))]
    o = p.order(c, items, days_ago=p.rng.randint(5, 60))
    r = Rubric()
    r.answer("'Total:' line gives the order total (tax and shipping included)", "Total", dollars(o["total_cents"]),
             "money")
    r.states("Gives the amount charged, not the subtotal or the amount before tax", "money",
             dollars(o["total_cents"]), [dollars(o["subtotal_cents"]), dollars(o["subtotal_cents"] + o["tax_cents"]),
                                         dollars(o["subtotal_cents"] + o["shipping_cents"])], axis="constraint")
    no_writes(r)
    r.call("getOrderDetails", order_id=o["order_id"])
    request = ask(f"Hi, this is {c['first_name']} {c['last_name']}. What was the total I was charged for order",
                  f"{o['order_id']}, including tax and shipping? End with 'Total: <amount>'.")
    return r.done(request, f"The total charged for order {o['order_id']} was {usd(o['total_cents'])} "
                           f"(tax and shipping included).\nTotal: {usd(o['total_cents'])}",
                  total_cents=o["total_cents"])


@family("tracking_number_lookup", "information_retrieval", "easy")
def tracking_number_lookup(p: Planter, i: int) -> Instance:
    """Where is my package: tracking number and carrier of an in-transit order."""
    c = p.customer()
    o = p.order(c, [(p.product(p.rng.choice(["gpu", "motherboard", "monitor"])), 1)], days_ago=4, status="shipped")
    s = p.shipment(o, status="in_transit", shipped_days_ago=3, promised_days_ago=-2,
                   events=[(2, "in_transit", "Departed facility")])
    carrier = p.conn.execute("SELECT name FROM carriers WHERE carrier_id = ?", (s["carrier_id"],)).fetchone()[0]
    other_carriers = [x[0] for x in p.conn.execute("SELECT name FROM carriers WHERE carrier_id != ? ORDER BY name",
                                                   (s["carrier_id"],))]
    r = Rubric()
    r.answer("'Tracking:' line gives the tracking number", "Tracking", s["tracking_number"], "id")
    r.states("Names the carrier (and no other)", "phrase", carrier, other_carriers)
    no_writes(r)
    r.call("getShippingStatus", order_id=o["order_id"])
    request = ask(f"My order {o['order_id']} shipped a few days ago but I never got the tracking email.",
                  "Which carrier has it and what is the tracking number? Please end your reply with a line",
                  "'Tracking: <number>'.")
    return r.done(request, f"Your order {o['order_id']} is with {carrier}.\nTracking: {s['tracking_number']}",
                  tracking_number=s["tracking_number"], carrier=carrier)


@family("delivery_estimate", "information_retrieval", "medium")
def delivery_estimate(p: Planter, i: int) -> Instance:
    """An order in transit: is the carrier's estimate later than the promised date? Half the shipments slipped
    after a delay, half are on time or early."""
    c = p.customer(p.rng.choice(["member", "silver", "gold", "platinum"]))
    o = p.order(c, [(p.product("gpu"), 1)], days_ago=8, status="shipped")
    late = i % 2 == 0
    if late:
        promised = p.rng.randint(1, 3)
        estimated = promised - p.rng.randint(2, 5)
        events = [(5, "exception", "Weather delay at hub")]
    else:
        promised = -p.rng.randint(2, 6)
        estimated = promised + p.rng.randint(0, 2)
        events = [(5, "in_transit", "Departed hub")]
    s = p.shipment(o, status="in_transit", shipped_days_ago=7, promised_days_ago=promised,
                   estimated_days_ago=estimated, events=events)
    eta, promised_day = p.day(estimated), p.day(promised)
    r = Rubric()
    r.answer("'ETA:' line gives the carrier's current estimate", "ETA", eta.isoformat(), "date")
    r.answer("'Late:' line says whether the estimate is past the promised date", "Late", late, "bool")
    r.answer("'Promised:' line gives the originally promised date", "Promised", promised_day.isoformat(), "date",
             axis="completeness")
    no_writes(r)
    r.call("getShippingStatus", order_id=o["order_id"])
    request = ask(f"When will order {o['order_id']} arrive? Is it running late compared to what you promised me?",
                  "Answer with three lines at the end: 'ETA: <date>', 'Promised: <date>' and 'Late: yes/no'.")
    story = ("but the carrier now estimates {eta} after a weather delay" if late else
             "and the carrier expects to deliver it on {eta}, on time")
    return r.done(request, f"Order {o['order_id']} was promised for {promised_day.isoformat()}, "
                           f"{story.format(eta=eta.isoformat())}.\nETA: {eta.isoformat()}\n"
                           f"Promised: {promised_day.isoformat()}\nLate: {'yes' if late else 'no'}",
                  eta=eta.isoformat(), promised=promised_day.isoformat(), shipment_id=s["shipment_id"], late=late)


@family("yearly_spend_paginated", "information_retrieval", "hard", demands=("pagination",))
def yearly_spend_paginated(p: Planter, i: int) -> Instance:
    """Total spend over many orders: two result pages, cancelled orders excluded."""
    c = p.customer("silver")
    n = p.rng.randint(12, 18)
    since_days = 200
    total = counted = 0
    cancelled_total = 0
    for k in range(n):
        status = "cancelled" if k % 5 == 2 else "delivered"
        o = p.order(c, [(p.product(p.rng.choice(["memory", "storage", "peripheral", "cooler"])), 1)],
                    days_ago=p.rng.randint(5, since_days - 5), status=status)
        if status == "cancelled":
            cancelled_total += o["total_cents"]
        else:
            total += o["total_cents"]
            counted += 1
    old = p.order(c, [(p.product("case"), 1)], days_ago=since_days + 40)
    since = p.day(since_days)
    r = Rubric()
    r.answer("'Total:' line gives the sum of non-cancelled orders since the date", "Total", dollars(total), "money")
    r.states("Does not report the total including cancelled orders", "money", dollars(total),
             [dollars(total + cancelled_total), dollars(total + old["total_cents"])], axis="constraint")
    r.answer("'Orders:' line counts the non-cancelled orders (all result pages)", "Orders", counted, "number",
             axis="completeness")
    no_writes(r)
    r.call("searchOrders", customer_id=c["customer_id"], placed_after=since.isoformat())
    r.call("searchOrders", customer_id=c["customer_id"], placed_after=since.isoformat(), page=2)
    request = ask(f"I'm customer {c['customer_id']}. For my expense report: how much did I spend on orders placed",
                  f"on or after {since.isoformat()}, and how many orders was that? Leave out cancelled orders. End",
                  "with 'Total: <amount>' and 'Orders: <count>'.")
    return r.done(request, f"Orders placed since {since.isoformat()}, excluding cancelled ones, add up to "
                           f"{usd(total)}.\nTotal: {usd(total)}\nOrders: {counted}", total_cents=total, orders=counted)


@family("gpu_spec_lookup", "information_retrieval", "easy")
def gpu_spec_lookup(p: Planter, i: int) -> Instance:
    """Specs of a GPU named by the customer: find it by name, read its details."""
    names = {}
    for prod in p.products("gpu"):
        names.setdefault(prod.name, []).append(prod)
    unique = [v[0] for v in names.values() if len(v) == 1 and v[0].specs.get("gpu_length_mm")]
    g = p.rng.choice(unique)
    r = Rubric()
    r.answer("'Length:' line gives the card's length in mm", "Length", g.specs["gpu_length_mm"], "number")
    r.answer("'VRAM:' line gives the memory in GB", "VRAM", g.specs["vram_gb"], "number")
    r.answer("'Product:' line gives the product id", "Product", g.product_id, "id", axis="completeness")
    no_writes(r)
    r.call("searchProducts", query=g.name, category="gpu")
    r.call("getProductDetails", product_id=g.product_id)
    request = ask(f"How long is the {g.name}, and how much VRAM does it have? I need to check my case.",
                  "Reply with lines 'Product: <id>', 'Length: <mm>' and 'VRAM: <GB>'.")
    return r.done(request, f"Product: {g.product_id}\nLength: {g.specs['gpu_length_mm']} mm\n"
                           f"VRAM: {g.specs['vram_gb']} GB", product_id=g.product_id)


@family("warehouse_availability", "information_retrieval", "medium")
def warehouse_availability(p: Planter, i: int) -> Instance:
    """Units available (on hand minus reserved) of a product at one named warehouse."""
    rows = p.conn.execute(
        "SELECT i.product_id, i.warehouse_id, w.city, i.quantity_on_hand, i.quantity_reserved, p.name "
        "FROM inventory i JOIN warehouses w ON w.warehouse_id = i.warehouse_id JOIN products p "
        "ON p.product_id = i.product_id WHERE i.quantity_reserved > 0 AND i.quantity_on_hand > i.quantity_reserved "
        "AND p.status = 'active' ORDER BY i.product_id, i.warehouse_id").fetchall()
    row = p.rng.choice(rows)
    available = row["quantity_on_hand"] - row["quantity_reserved"]
    r = Rubric()
    r.answer("'Available:' line gives on-hand minus reserved units at that warehouse", "Available", available, "number")
    r.states("Does not give the raw on-hand count as the answer", "number", available, [row["quantity_on_hand"]],
             axis="constraint")
    no_writes(r)
    r.call("checkInventory", product_id=row["product_id"], warehouse_id=row["warehouse_id"])
    request = ask(f"How many units of {row['name']} ({row['product_id']}) can we still promise to customers from",
                  f"the {row['city']} warehouse, counting only stock not already reserved for open orders?",
                  "End with 'Available: <units>'.")
    return r.done(request, f"{row['product_id']} at {row['warehouse_id']}: {available} units free to promise.\n"
                           f"Available: {available}", available=available)


def _other_tiers(p: Planter, tier: str) -> list[str]:
    """The other loyalty tiers' ids and names: a 'Tier:' line that also gives one of them hedges."""
    return [x for row in p.conn.execute("SELECT tier_id, name FROM loyalty_tiers WHERE tier_id != ? ORDER BY rank",
                                        (tier,)) for x in row]


@family("return_window_by_tier", "information_retrieval", "medium")
def return_window_by_tier(p: Planter, i: int) -> Instance:
    """Which return window applies: the longer of the policy's standard window and the customer's tier's."""
    tier = p.rng.choice(["member", "silver", "gold", "platinum"])
    c = p.customer(tier)
    t = p.tier(tier)
    window = return_window(p, tier)
    waived = bool(t["restocking_fee_waived"])
    r = Rubric()
    r.answer("'Return window:' line gives the window that applies, in days", "Return window", window, "number")
    r.answer("'Restocking fee waived:' line is right for the tier", "Restocking fee waived", waived, "bool")
    r.answer("'Tier:' line names the customer's loyalty tier", "Tier", [t["tier_id"], t["name"]], "text",
             axis="completeness", rivals=_other_tiers(p, tier))
    no_writes(r)
    r.call("getLoyaltyTier", customer_id=c["customer_id"])
    request = ask(f"I'm {c['first_name']} {c['last_name']} ({c['customer_id']}). How many days do I have to return",
                  "something, and do I have to pay the restocking fee on opened items? Finish with lines",
                  "'Tier: <loyalty tier>', 'Return window: <days>' and 'Restocking fee waived: yes/no'.")
    return r.done(request, f"As a {t['name']} member your return window is {window} days.\nTier: {t['name']}\n"
                           f"Return window: {window}\nRestocking fee waived: {'yes' if waived else 'no'}",
                  window=window, waived=waived)


@family("promo_terms_lookup", "information_retrieval", "easy")
def promo_terms_lookup(p: Planter, i: int) -> Instance:
    """The minimum order and expiry date of a promotion code."""
    code = f"SAVE{p.rng.randint(10, 99)}{chr(65 + i % 26)}{i:03d}"
    minimum = p.rng.choice([5000, 10000, 15000, 25000, 50000])
    expires = -p.rng.randint(5, 40)
    p.promotion(code=code, discount_type="percent", value=p.rng.choice([5, 10, 15]), starts_days_ago=20,
                expires_days_ago=expires, min_order_cents=minimum)
    r = Rubric()
    r.answer("'Minimum order:' line gives the minimum", "Minimum order", dollars(minimum), "money")
    r.answer("'Expires:' line gives the expiry date", "Expires", p.day(expires).isoformat(), "date")
    no_writes(r)
    r.call("searchPromotions", code=code)
    request = ask(f"What is the minimum order for promo code {code}, and until when is it valid?",
                  "Answer with lines 'Minimum order: <amount>' and 'Expires: <date>'.")
    return r.done(request, f"Minimum order: {usd(minimum)}\nExpires: {p.day(expires).isoformat()}",
                  code=code, minimum_cents=minimum)


@family("split_shipment_lost", "information_retrieval", "medium")
def split_shipment_lost(p: Planter, i: int) -> Instance:
    """An order split across two shipments, one delivered and one lost: which one is missing."""
    c = p.customer(p.rng.choice(["silver", "gold"]))
    a, b = p.product("gpu"), p.product("monitor")
    o = p.order(c, [(a, 1), (b, 1)], days_ago=15, status="shipped")
    s1 = p.shipment(o, status="delivered", shipped_days_ago=13, promised_days_ago=9, delivered_days_ago=9)
    s2 = p.shipment(o, status="lost", shipped_days_ago=13, promised_days_ago=9,
                    events=[(11, "in_transit", "Departed facility"), (4, "exception", "Package cannot be located")])
    r = Rubric()
    r.answer("'Missing shipment:' line names the lost shipment", "Missing shipment", s2["shipment_id"], "id")
    r.states("Gives the lost package's tracking number, not the delivered one's", "id", s2["tracking_number"],
             [s1["tracking_number"]])
    # Not "missing": the request and the answer line already say that.
    r.states_any("Says the package is lost", ["lost", "cannot be located", "can't be located", "could not be located"])
    no_writes(r)
    r.call("getShippingStatus", order_id=o["order_id"])
    request = ask(f"Only part of order {o['order_id']} arrived. Which package is missing, and what is its tracking",
                  "number? End with 'Missing shipment: <shipment id>'.")
    return r.done(request, f"Shipment {s2['shipment_id']} (tracking {s2['tracking_number']}) is lost; the other "
                           f"package was delivered.\nMissing shipment: {s2['shipment_id']}",
                  lost=s2["shipment_id"], delivered=s1["shipment_id"])


@family("duplicate_account_history", "information_retrieval", "hard", held_out=True, demands=("reconcile",))
def duplicate_account_history(p: Planter, i: int) -> Instance:
    """A duplicate customer record hides part of the order history: count orders across both records."""
    first, last = p.rng.choice(["Priya", "Marcus", "Elena", "Kenji"]), p.rng.choice(["Okafor", "Lindqvist", "Varga"])
    phone = f"555-{p.rng.randint(200, 999)}-{p.rng.randint(1000, 9999)}"
    new = p.customer("silver", first=first, last=last, phone=phone, created_days_ago=90)
    old = p.customer("member", first=first, last=last, phone=phone, created_days_ago=900,
                     email=f"{first[0].lower()}{last.lower()}{i}@oldmail.example")
    ids = []
    for k in range(p.rng.randint(1, 2)):
        ids.append(p.order(new, [(p.product("storage"), 1)], days_ago=10 + k * 7)["order_id"])
    for k in range(p.rng.randint(2, 4)):
        ids.append(p.order(old, [(p.product("memory"), 1)], days_ago=300 + k * 40)["order_id"])
    r = Rubric()
    r.answer("'Total orders:' line counts orders on both records", "Total orders", len(ids), "number")
    r.answer_set("'Orders:' line lists exactly the orders of both records", "Orders", ids)
    r.answer("'Other account:' line names the second (older) customer record", "Other account", old["customer_id"],
             "id", axis="completeness")
    no_writes(r)
    r.call("searchCustomers", phone=phone)
    r.call("searchOrders", customer_id=new["customer_id"])
    r.call("searchOrders", customer_id=old["customer_id"])
    request = ask(f"Hi, I'm {first} {last}, account {new['customer_id']}, phone {phone}. My account only shows",
                  "my latest purchases, but I've bought from you for years. How many orders have I placed with you",
                  "in total? End with 'Other account: <customer id>', 'Total orders: <n>' and",
                  "'Orders: <comma-separated order ids>'.")
    return r.done(request, f"You also have an older record, {old['customer_id']}, with the same name and phone.\n"
                           f"Other account: {old['customer_id']}\nTotal orders: {len(ids)}\nOrders: {', '.join(ids)}",
                  orders=ids,
                  duplicate=old["customer_id"])


@family("warranty_coverage_end", "information_retrieval", "medium")
def warranty_coverage_end(p: Planter, i: int) -> Instance:
    """How long a purchased part is covered, including the loyalty tier's extension; half the parts are still
    covered, half were bought long enough ago that coverage has ended."""
    tier = p.rng.choice(["member", "gold", "platinum"])
    c = p.customer(tier)
    covered = i % 2 == 0
    extension = int(p.tier(tier)["extended_warranty_months"] or 0)
    for _ in range(40):
        prod = p.product(p.rng.choice(["gpu", "psu", "motherboard", "storage"]))
        terms = read_tool(p, "getWarrantyPolicy", product_id=prod.product_id).get("policy")
        if not terms:
            continue
        months = int(terms["coverage_months"]) + extension
        days_ago = (p.rng.randint(60, max(61, months * 30 - 30)) if covered
                    else months * 31 + p.rng.randint(15, 300))
        o = p.order(c, [(prod, 1)], days_ago=days_ago)
        info = read_tool(p, "getWarrantyPolicy", product_id=prod.product_id, order_id=o["order_id"])
        if info.get("coverage_ends") is not None and bool(info["covered_today"]) == covered:
            break
    else:
        raise LookupError("no part whose coverage is in the state wanted")
    r = Rubric()
    r.answer("'Coverage ends:' line gives the end date", "Coverage ends", info["coverage_ends"], "date")
    r.answer("'Covered today:' line is right", "Covered today", bool(info["covered_today"]), "bool")
    r.answer("'Total months:' line includes the loyalty extension", "Total months", info["total_coverage_months"],
             "number", axis="completeness")
    no_writes(r)
    r.call("getWarrantyPolicy", product_id=prod.product_id, order_id=o["order_id"])
    request = ask(f"I bought a {prod.name} on order {o['order_id']}. Until when is it under warranty, counting",
                  "any extension I get from my loyalty tier, and is it still covered today? Reply with lines",
                  "'Total months: <n>', 'Coverage ends: <date>' and 'Covered today: yes/no'.")
    return r.done(request, f"Total months: {info['total_coverage_months']}\nCoverage ends: {info['coverage_ends']}\n"
                           f"Covered today: {'yes' if info['covered_today'] else 'no'}",
                  coverage_ends=info["coverage_ends"], placed=fmt_date(o["placed_at"]))


@family("latest_order_by_email", "information_retrieval", "medium")
def latest_order_by_email(p: Planter, i: int) -> Instance:
    """Only an email to go on: find the customer, their most recent order, and where it is."""
    c = p.customer(p.rng.choice(["member", "silver", "gold"]))
    for k in range(p.rng.randint(2, 4)):
        p.order(c, [(p.product(p.rng.choice(["memory", "storage", "peripheral"])), 1)], days_ago=40 + 25 * k)
    o = p.order(c, [(p.product(p.rng.choice(["gpu", "monitor", "case"])), 1)], days_ago=4, status="shipped")
    s = p.shipment(o, status="in_transit", shipped_days_ago=3, promised_days_ago=-p.rng.randint(1, 4))
    r = Rubric()
    r.answer("'Order:' line names the most recent order", "Order", o["order_id"], "id")
    r.answer("'Expected:' line gives its promised delivery date", "Expected", s["promised_delivery_date"], "date")
    r.answer("'Tracking:' line gives its tracking number", "Tracking", s["tracking_number"], "id",
             axis="completeness")
    no_writes(r)
    r.call("searchCustomers", email=c["email"])
    r.call("searchOrders", customer_id=c["customer_id"])
    r.call("getShippingStatus", order_id=o["order_id"])
    request = ask(f"Hi, it's {c['email']}. Where is my latest order and when should it arrive? End with lines",
                  "'Order: <order id>', 'Expected: <date>' and 'Tracking: <number>'.")
    return r.done(request, f"Your latest order is on its way.\nOrder: {o['order_id']}\n"
                           f"Expected: {s['promised_delivery_date']}\nTracking: {s['tracking_number']}",
                  order_id=o["order_id"])
