"""Multi-step workflows: change the world the way the request and the policy require, and nothing else."""

from __future__ import annotations

from corecraft.tasks.families.common import Planter, Rubric, ask, dollars, read_policy, return_window, usd
from corecraft.tasks.family import Instance, family
from corecraft.tasks.plant import STREETS


def _restocking_percent(p: Planter) -> int:
    return int(float(p.policy_param("restocking", "fee_percent")))


def _fee_cap(p: Planter) -> int:
    return int(p.policy_param("restocking", "max_fee_cents"))


@family("change_shipping_address", "workflow", "easy")
def change_shipping_address(p: Planter, i: int) -> Instance:
    """Change the ship-to address of an order that has not shipped."""
    c = p.customer()
    o = p.order(c, [(p.product("case"), 1)], days_ago=1, status="processing")
    line1 = f"{p.rng.randint(100, 9999)} {p.rng.choice(STREETS)}"
    city, state, zip_ = p.rng.choice([("Portland", "OR", "97205"), ("Austin", "TX", "78701"),
                                      ("Denver", "CO", "80202"), ("Raleigh", "NC", "27601")])
    where = [["order_id", "=", o["order_id"]]]
    r = Rubric()
    r.column("The order ships to the new street address", "orders", where, "ship_address_line1", line1)
    r.column("The order ships to the new city", "orders", where, "ship_city", city)
    r.column("The order ships to the new postal code", "orders", where, "ship_postal_code", zip_)
    r.column("The order was not cancelled or held", "orders", where, "status", "processing", axis="constraint")
    # The street alone, or the whole address in the usual spellings.
    r.answer("'Ships to:' line confirms the new street address", "Ships to",
             [line1, f"{line1}, {city}", f"{line1}, {city}, {state}", f"{line1}, {city}, {state} {zip_}",
              f"{line1}, {city} {state} {zip_}"], "text", axis="completeness", rivals=[c["address_line1"]])
    r.call("updateOrder", order_id=o["order_id"], ship_address_line1=line1, ship_city=city, ship_state=state,
           ship_postal_code=zip_)
    request = ask(f"Please send order {o['order_id']} to my new address instead: {line1}, {city}, {state} {zip_}.",
                  "I moved last week. End with 'Ships to: <street address>'.")
    return r.done(request, f"Done: order {o['order_id']} will now ship to your new address.\n"
                           f"Ships to: {line1}, {city}, {state} {zip_}",
                  address=[line1, city, state, zip_])


@family("cancel_unshipped_order", "workflow", "easy")
def cancel_unshipped_order(p: Planter, i: int) -> Instance:
    """Cancel the one of a customer's two processing orders that holds the product they name."""
    c = p.customer()
    prod = p.product(p.rng.choice(["cpu", "memory"]))
    o = p.order(c, [(prod, 1)], days_ago=1, status="processing")
    other = p.order(c, [(p.product("storage"), 1)], days_ago=2, status="processing")
    orders = [o, other]
    p.rng.shuffle(orders)
    r = Rubric()
    r.column("The order with that product is cancelled", "orders", [["order_id", "=", o["order_id"]]], "status",
             "cancelled")
    r.column("The customer's other open order is untouched", "orders", [["order_id", "=", other["order_id"]]],
             "status", "processing", axis="constraint")
    r.answer("'Cancelled order:' line names the order that was cancelled", "Cancelled order", o["order_id"], "id")
    r.call("searchOrders", customer_id=c["customer_id"])
    for x in orders:
        r.call("getOrderDetails", order_id=x["order_id"])
    r.call("updateOrder", order_id=o["order_id"], status="cancelled", note="Customer asked to cancel")
    request = ask(f"I'm customer {c['customer_id']}. I ordered the wrong thing: please cancel my order with the",
                  f"{prod.name} in it (only that one). End with 'Cancelled order: <order id>'.")
    return r.done(request, f"Order {o['order_id']} (the {prod.name}) has been cancelled; nothing was charged.\n"
                           f"Cancelled order: {o['order_id']}", order_id=o["order_id"], other=other["order_id"])


@family("refuse_cancel_shipped", "workflow", "medium")
def refuse_cancel_shipped(p: Planter, i: int) -> Instance:
    """A customer wants an order cancelled: if it already shipped it cannot be (explain the return); if it is
    still processing, cancel it (half the instances each)."""
    c = p.customer()
    shipped = i % 2 == 0
    o = p.order(c, [(p.product("monitor"), 1)], days_ago=3 if shipped else 1,
                status="shipped" if shipped else "processing")
    if shipped:
        p.shipment(o, status="in_transit", shipped_days_ago=2, promised_days_ago=-3)
    where = [["order_id", "=", o["order_id"]]]
    r = Rubric()
    if shipped:
        r.column("The order is still shipped (not cancelled)", "orders", where, "status", "shipped",
                 axis="constraint")
        r.no_row("No refund was issued", "refunds", where)
        r.states_any("Explains that it can be returned once delivered", ["return", "returned", "returning"])
        answer = (f"Order {o['order_id']} has already shipped, so it can no longer be cancelled. Once it is "
                  "delivered you can return it within the return window.\nCancelled: no")
    else:
        r.column("The order is cancelled", "orders", where, "status", "cancelled")
        r.no_row("No return was opened for it", "returns", where, axis="constraint")
        answer = f"Order {o['order_id']} had not shipped yet, so I cancelled it.\nCancelled: yes"
    r.answer("'Cancelled:' line is right", "Cancelled", not shipped, "bool")
    r.call("getOrderDetails", order_id=o["order_id"])
    if not shipped:
        r.call("updateOrder", order_id=o["order_id"], status="cancelled", note="Customer asked to cancel")
    request = ask(f"Cancel order {o['order_id']} right now please, I found it cheaper elsewhere.",
                  "End with 'Cancelled: yes/no'.")
    return r.done(request, answer, order_id=o["order_id"], shipped=shipped)


@family("upgrade_shipping_service", "workflow", "easy")
def upgrade_shipping_service(p: Planter, i: int) -> Instance:
    """Switch an unshipped order to a faster shipping service named by the customer."""
    c = p.customer("gold")
    o = p.order(c, [(p.product("gpu"), 1)], days_ago=1, status="processing")
    fast = p.service(p.rng.choice(["expedited", "overnight"]))
    r = Rubric()
    r.column("The order uses the requested shipping service", "orders", [["order_id", "=", o["order_id"]]],
             "shipping_service_id", fast["service_id"])
    r.column("The order is still processing", "orders", [["order_id", "=", o["order_id"]]], "status", "processing",
             axis="constraint")
    others = [x for row in p.conn.execute("SELECT service_id, name FROM shipping_services WHERE service_id != ? "
                                          "ORDER BY service_id", (fast["service_id"],)) for x in row]
    r.answer("'Service:' line names the order's shipping service now", "Service", [fast["service_id"], fast["name"]],
             "text", axis="completeness", rivals=others)
    r.call("updateOrder", order_id=o["order_id"], shipping_service_id=fast["service_id"])
    request = ask(f"Can you switch order {o['order_id']} to {fast['name']} ({fast['service_id']})? I need it sooner.",
                  "End with 'Service: <shipping service>'.")
    return r.done(request, f"Order {o['order_id']} now ships with {fast['name']}.\nService: {fast['service_id']}",
                  service_id=fast["service_id"])


@family("open_damage_ticket", "workflow", "medium")
def open_damage_ticket(p: Planter, i: int) -> Instance:
    """Open a shipping-damage ticket linked to the right order and product."""
    c = p.customer(p.rng.choice(["member", "silver", "gold"]))
    prod = p.product(p.rng.choice(["monitor", "case", "gpu"]))
    o = p.order(c, [(prod, 1), (p.product("peripheral"), 1)], days_ago=6)
    p.shipment(o, status="delivered", shipped_days_ago=5, promised_days_ago=2, delivered_days_ago=2)
    where = [["customer_id", "=", c["customer_id"]], ["order_id", "=", o["order_id"]],
             ["category", "=", "shipping_damage"]]
    r = Rubric()
    r.row("A shipping-damage ticket exists for this customer and order", "support_tickets", where)
    r.row("The ticket names the damaged product", "support_tickets", [*where, ["product_id", "=", prod.product_id]],
          axis="correctness")
    r.row("The ticket has high priority", "support_tickets", [*where, ["priority", "=", "high"]], axis="constraint")
    r.count("Only one ticket was opened", "support_tickets", [["customer_id", "=", c["customer_id"]]], "==", 1)
    r.states_any("Confirms the ticket to the requester", ["ticket"])
    r.answer("'Product:' line gives the damaged product's id", "Product", prod.product_id, "id")
    r.call("getOrderDetails", order_id=o["order_id"])
    r.call("createTicket", customer_id=c["customer_id"], subject=f"{prod.name} arrived damaged",
           description=f"Customer reports {prod.name} from order {o['order_id']} arrived with a cracked frame.",
           category="shipping_damage", priority="high", order_id=o["order_id"], product_id=prod.product_id)
    request = ask(f"Customer {c['first_name']} {c['last_name']} ({c['customer_id']}) says the {prod.name} from order",
                  f"{o['order_id']} arrived with a cracked frame. Open a high-priority shipping-damage ticket for it,",
                  "linked to the order and the product. End with 'Product: <product id>'.")
    return r.done(request, "I opened a high-priority shipping-damage ticket for the damaged item.\n"
                           f"Product: {prod.product_id}",
                  product_id=prod.product_id)


@family("apply_valid_promotion", "workflow", "medium")
def apply_valid_promotion(p: Planter, i: int) -> Instance:
    """Apply a promotion the order qualifies for; the discount follows the promotion's terms (cap included)."""
    c = p.customer("silver")
    gpu = p.product("gpu", lambda x: x.price_cents > 20000)
    o = p.order(c, [(gpu, 1), (p.product("peripheral"), 1)], days_ago=1, status="processing")
    pct = p.rng.choice([5, 10, 15])
    cap = p.rng.choice([None, 2500, 5000])
    code = f"GPU{pct}X{i:03d}"
    pid = p.promotion(code=code, discount_type="percent", value=pct, starts_days_ago=10, expires_days_ago=-10,
                      category="gpu", max_discount_cents=cap)
    discount = gpu.price_cents * pct // 100
    if cap is not None:
        discount = min(discount, cap)
    where = [["order_id", "=", o["order_id"]]]
    r = Rubric()
    r.column("The promotion is on the order", "orders", where, "promotion_id", pid)
    r.column("The discount is the promotion's percentage of the GPU only, capped", "orders", where, "discount_cents",
             discount)
    r.answer("'Saving:' line gives the discount (the GPU's share only, capped)", "Saving", dollars(discount), "money")
    r.call("applyPromotion", order_id=o["order_id"], code=code)
    request = ask(f"I forgot to enter code {code} on order {o['order_id']}. Can you add it? How much do I save?",
                  "End with 'Saving: <amount>'.")
    return r.done(request, f"Code {code} is now on order {o['order_id']}.\nSaving: {usd(discount)}",
                  discount_cents=discount, promotion_id=pid)


@family("return_opened_item", "workflow", "medium")
def return_opened_item(p: Planter, i: int) -> Instance:
    """Return an opened item inside the window for a change of mind: restocking fee applies (unless tier waives)."""
    tier = p.rng.choice(["member", "silver"])
    c = p.customer(tier)
    pct = _restocking_percent(p)
    # Below the policy's fee cap, so the fee is simply the percentage.
    prod = p.product(p.rng.choice(["monitor", "peripheral", "cooler", "case"]),
                     lambda x: x.price_cents * pct // 100 < _fee_cap(p))
    o = p.order(c, [(prod, 1)], days_ago=12)
    p.shipment(o, status="delivered", shipped_days_ago=11, promised_days_ago=8, delivered_days_ago=8)
    if p.tier(tier)["restocking_fee_waived"]:
        pct = 0
    fee = prod.price_cents * pct // 100
    refund = prod.price_cents - fee  # the refund policy: the paid price of the lines minus the fee
    where = [["order_id", "=", o["order_id"]]]
    r = Rubric()
    r.row("An RMA exists for the order", "returns", where)
    r.row("The restocking fee follows the policy", "returns", [*where, ["restocking_fee_cents", "=", fee]],
          axis="constraint")
    r.row("The refund is the paid price minus the fee", "refunds", [*where, ["amount_cents", "=", refund]],
          axis="correctness")
    r.count("Exactly one refund was issued", "refunds", where, "==", 1)
    r.states("Tells the customer the refund amount", "money", dollars(refund),
             [dollars(prod.price_cents), dollars(o["total_cents"])])
    r.call("processReturn", order_id=o["order_id"], reason="changed_mind",
           items=[{"product_id": prod.product_id, "quantity": 1, "condition": "opened"}])
    request = ask(f"I opened the {prod.name} from order {o['order_id']} but I don't need it after all. Please",
                  "process the return to my original payment and tell me how much I get back.")
    return r.done(request, f"Your return is processed: {usd(refund)} goes back to your original payment "
                           f"({pct}% restocking fee on the opened item).", refund_cents=refund, fee_cents=fee)


@family("damaged_in_transit_past_window", "workflow", "hard", demands=("six_plus_calls", "policy"))
def damaged_in_transit_past_window(p: Planter, i: int) -> Instance:
    """A GPU that arrived damaged, first reported just past a gold/platinum customer's return window: front-line
    agents may not make the exception; escalate with an internal note, tell the customer, refund nothing."""
    tier = p.rng.choice(["gold", "platinum"])
    c = p.customer(tier)
    gpu = p.product("gpu")
    window = return_window(p, tier)
    delivered = window + p.rng.randint(1, 4)
    o = p.order(c, [(gpu, 1)], days_ago=delivered + 4)
    p.shipment(o, status="delivered", shipped_days_ago=delivered + 3, promised_days_ago=delivered,
               delivered_days_ago=delivered, events=[(delivered, "damaged", "Carton crushed; damage noted at delivery")])
    ticket = p.ticket(c, subject="GPU arrived damaged", order_id=o["order_id"], product_id=gpu.product_id,
                      category="shipping_damage", days_ago=0,
                      description=f"The {gpu.name} from order {o['order_id']} has a bent bracket and a cracked "
                                  "shroud. I only opened the box now. I want a full refund.")
    delivered_on = p.day(delivered).isoformat()
    where = [["order_id", "=", o["order_id"]]]
    r = Rubric()
    r.no_row("No return was created (out of window: not a front-line decision)", "returns", where)
    r.no_row("No refund was issued", "refunds", where)
    r.column("The ticket is escalated", "support_tickets", [["ticket_id", "=", ticket]], "status", "escalated",
             axis="correctness")
    r.row("An internal note for the escalations team names the order", "ticket_messages",
          [["ticket_id", "=", ticket], ["is_internal_note", "=", 1], ["body", "icontains", o["order_id"]]],
          axis="completeness")
    r.row("The customer got a reply on the ticket", "ticket_messages",
          [["ticket_id", "=", ticket], ["author_type", "=", "agent"], ["is_internal_note", "=", 0]],
          axis="completeness")
    r.answer("'Delivered:' line gives the delivery date the window counts from", "Delivered", delivered_on, "date",
             axis="completeness")
    r.answer("'Window:' line gives the customer's return window in days", "Window", window, "number")
    read_policy(r, p, "returns")
    r.call("getOrderDetails", order_id=o["order_id"])
    r.call("getShippingStatus", order_id=o["order_id"])
    r.call("getLoyaltyTier", customer_id=c["customer_id"])
    r.call("updateTicketStatus", ticket_id=ticket, status="escalated", internal=True,
           note=f"Out-of-window return request for {o['order_id']}: delivered {delivered_on}, {delivered} days ago "
                f"({tier}, {window}-day window). Carrier logged damage at delivery. Customer wants a refund; "
                "needs an exception decision.")
    r.call("updateTicketStatus", ticket_id=ticket, status="escalated",
           note=f"Hi {c['first_name']}, your order was delivered on {delivered_on}, past your {window}-day return "
                "window, so I can't approve a return myself. I've escalated your case to our escalations team, "
                "who can approve an exception; the warranty also covers the card.")
    request = ask(f"Please handle ticket {ticket} according to our policies. End your note to me with",
                  "'Delivered: <date>' and 'Window: <days>'.")
    return r.done(request, f"Order {o['order_id']} was delivered {delivered} days ago, past the window for {tier} "
                           "members. I escalated the ticket with an internal note and told the customer; no refund "
                           f"was issued.\nDelivered: {delivered_on}\nWindow: {window}",
                  ticket_id=ticket, days_since_delivery=delivered, window=window)


@family("damaged_in_transit_refund", "workflow", "medium")
def damaged_in_transit_refund(p: Planter, i: int) -> Instance:
    """Damage reported within 7 days with photos: refund in full, original shipping included, no fee."""
    c = p.customer(p.rng.choice(["member", "silver", "gold"]))
    prod = p.product(p.rng.choice(["peripheral", "cooler", "storage"]), lambda x: x.price_cents < 9900)
    o = p.order(c, [(prod, 1)], days_ago=6)
    p.shipment(o, status="delivered", shipped_days_ago=5, promised_days_ago=2, delivered_days_ago=2,
               events=[(2, "damaged", "Box dented on arrival")])
    ticket = p.ticket(c, subject="Arrived damaged", order_id=o["order_id"], product_id=prod.product_id,
                      category="shipping_damage", days_ago=1,
                      description=f"The {prod.name} from order {o['order_id']} arrived smashed; photos of the box, "
                                  "packaging and item attached. I'd like my money back, not a replacement.")
    refund = prod.price_cents + o["shipping_cents"]
    where = [["order_id", "=", o["order_id"]]]
    r = Rubric()
    r.row("An RMA for damage in transit, tied to the ticket, exists", "returns",
          [*where, ["reason", "=", "damaged_in_transit"], ["ticket_id", "=", ticket]])
    r.row("No restocking fee", "returns", [*where, ["restocking_fee_cents", "=", 0]], axis="constraint")
    r.row("The refund includes the original shipping", "refunds", [*where, ["amount_cents", "=", refund]])
    r.count("Exactly one refund was issued", "refunds", where, "==", 1, axis="constraint")
    r.states("Tells the customer the refund amount", "money", dollars(refund), [dollars(prod.price_cents)])
    r.call("processReturn", order_id=o["order_id"], reason="damaged_in_transit", ticket_id=ticket,
           items=[{"product_id": prod.product_id, "quantity": 1, "condition": "damaged"}])
    request = ask(f"Handle ticket {ticket} per policy and tell me what the customer gets back.")
    return r.done(request, f"Refund of {usd(refund)} (item plus original shipping, no restocking fee) is on its way "
                           "for the damaged item.", refund_cents=refund, ticket_id=ticket)


@family("defective_exchange", "workflow", "medium")
def defective_exchange(p: Planter, i: int) -> Instance:
    """Exchange a defective part for the same product."""
    c = p.customer(p.rng.choice(["member", "silver", "gold"]))
    in_stock = {r[0] for r in p.conn.execute(
        "SELECT product_id FROM inventory GROUP BY product_id HAVING SUM(quantity_on_hand - quantity_reserved) >= 3")}
    prod = p.product(p.rng.choice(["memory", "storage", "psu"]), lambda x: x.product_id in in_stock)
    o = p.order(c, [(prod, 1)], days_ago=14)
    p.shipment(o, status="delivered", shipped_days_ago=13, promised_days_ago=10, delivered_days_ago=10)
    where = [["order_id", "=", o["order_id"]]]
    r = Rubric()
    r.row("An exchange RMA exists for the defective item", "returns",
          [*where, ["return_type", "=", "exchange"], ["reason", "=", "defective"]])
    r.row("The RMA points to a replacement order", "returns", [*where, ["exchange_order_id", "not_null", None]],
          axis="correctness")
    r.no_row("The item's price was not refunded (a like-for-like swap)", "refunds",
             [*where, ["amount_cents", ">=", prod.price_cents]])
    r.count("Exactly one replacement order was created", "orders", [["customer_id", "=", c["customer_id"]]], "==", 2)
    r.not_called("Did not refund instead of exchanging", "processReturn")
    r.answer("'Replacement product:' line gives the replacement's product id", "Replacement product",
             prod.product_id, "id", axis="completeness")
    r.call("getOrderDetails", order_id=o["order_id"])
    r.call("processExchange", order_id=o["order_id"], product_id=prod.product_id, new_product_id=prod.product_id,
           condition="defective", reason="defective")
    request = ask(f"The {prod.name} from order {o['order_id']} is dead on arrival. I'd like the same item as a",
                  "replacement, not a refund. End with 'Replacement product: <product id>'.")
    return r.done(request, "I set up an exchange: a replacement is on its way at no cost.\n"
                           f"Replacement product: {prod.product_id}", product_id=prod.product_id)


@family("update_contact_phone", "workflow", "easy")
def update_contact_phone(p: Planter, i: int) -> Instance:
    """Update a customer's phone number (and nothing else)."""
    c = p.customer()
    phone = f"555-{p.rng.randint(200, 999)}-{p.rng.randint(1000, 9999)}"
    where = [["customer_id", "=", c["customer_id"]]]
    r = Rubric()
    r.column("The phone number is updated", "customers", where, "phone", phone)
    r.column("The email is unchanged", "customers", where, "email", c["email"], axis="constraint")
    r.answer("'Phone:' line confirms the number now on file", "Phone", phone, "text", axis="completeness",
             rivals=[c["phone"]])
    r.call("updateCustomer", customer_id=c["customer_id"], phone=phone)
    request = ask(f"This is {c['first_name']} {c['last_name']}, customer {c['customer_id']}. My new phone number is",
                  f"{phone}; please update my account. End with 'Phone: <number on file>'.")
    return r.done(request, f"Your phone number is updated.\nPhone: {phone}", phone=phone)


@family("partial_return_unopened", "workflow", "hard", demands=("policy",))
def partial_return_unopened(p: Planter, i: int) -> Instance:
    """Return one of several units of one line of a multi-line order, unopened: the unit's paid price, no fee."""
    c = p.customer("member")
    mem = p.product("memory")
    items = [(p.product("cpu"), 1), (mem, p.rng.randint(2, 4)), (p.product("cooler"), 1)]
    o = p.order(c, items, days_ago=9)
    p.shipment(o, status="delivered", shipped_days_ago=8, promised_days_ago=5, delivered_days_ago=5)
    refund = mem.price_cents  # one unit at the paid price; no fee on unopened items
    where = [["order_id", "=", o["order_id"]]]
    r = Rubric()
    r.row("An RMA for the memory exists", "returns", where)
    r.row("No restocking fee on an unopened item", "returns", [*where, ["restocking_fee_cents", "=", 0]],
          axis="constraint")
    r.row("Refund is the paid price of one unit", "refunds", [*where, ["amount_cents", "=", refund]])
    r.row("Exactly one unit of the memory line is marked returned", "order_lines",
          [*where, ["product_id", "=", mem.product_id], ["quantity_returned", "=", 1]])
    r.column("The order is partially returned", "orders", where, "status", "partially_returned",
             axis="correctness")
    r.states("Tells the customer the refund", "money", dollars(refund),
             [dollars(mem.price_cents * items[1][1]), dollars(o["total_cents"])])
    r.call("getOrderDetails", order_id=o["order_id"])
    read_policy(r, p, "restocking")  # unopened: no fee
    r.call("processReturn", order_id=o["order_id"], reason="not_needed",
           items=[{"product_id": mem.product_id, "quantity": 1, "condition": "unopened"}])
    request = ask(f"On order {o['order_id']} I bought {items[1][1]} kits of {mem.name}, but I only need",
                  f"{items[1][1] - 1}. One kit is still sealed: please return just that one and tell me the refund.")
    return r.done(request, f"Returned 1 sealed kit of {mem.name}; refund {usd(refund)} (no restocking fee on "
                           "unopened items).", refund_cents=refund)


@family("resolve_ticket_with_return", "workflow", "hard", held_out=True, demands=("policy",))
def resolve_ticket_with_return(p: Planter, i: int) -> Instance:
    """A ticket about a defective part within the window: refund it, tied to the ticket, then resolve."""
    c = p.customer(p.rng.choice(["silver", "gold"]))
    prod = p.product(p.rng.choice(["psu", "storage", "motherboard"]))
    other = p.product("peripheral")
    o = p.order(c, [(prod, 1), (other, 1)], days_ago=16)
    p.shipment(o, status="delivered", shipped_days_ago=15, promised_days_ago=12, delivered_days_ago=12)
    ticket = p.ticket(c, subject=f"{prod.name} stopped working", order_id=o["order_id"], product_id=prod.product_id,
                      category="return", description=f"My {prod.name} died after a week. I want my money back for "
                                                      "it (the other item is fine).")
    # Defective within 30 days: the paid price in full, no fee, and original shipping back (our error).
    refund = prod.price_cents + o["shipping_cents"]
    where = [["order_id", "=", o["order_id"]]]
    r = Rubric()
    r.row("A defective-item RMA tied to the ticket exists", "returns",
          [*where, ["reason", "=", "defective"], ["ticket_id", "=", ticket]])
    r.row("Refund is the item's paid price, no fee", "refunds", [*where, ["amount_cents", "=", refund]])
    r.row("The other item was not returned", "order_lines",
          [*where, ["product_id", "=", other.product_id], ["quantity_returned", "=", 0]], axis="constraint")
    r.column("The ticket is resolved", "support_tickets", [["ticket_id", "=", ticket]], "status", "resolved")
    r.row("A reply to the customer is on the ticket", "ticket_messages",
          [["ticket_id", "=", ticket], ["author_type", "=", "agent"], ["is_internal_note", "=", 0]],
          axis="completeness")
    r.states("States the refund amount (not the order total)", "money", dollars(refund), [dollars(o["total_cents"])])
    r.call("getOrderDetails", order_id=o["order_id"])
    r.call("getShippingStatus", order_id=o["order_id"])  # delivered 12 days ago: inside the defective window
    read_policy(r, p, "returns")
    r.call("processReturn", order_id=o["order_id"], reason="defective", ticket_id=ticket,
           items=[{"product_id": prod.product_id, "quantity": 1, "condition": "defective"}])
    r.call("updateTicketStatus", ticket_id=ticket, status="resolved",
           note=f"We refunded {usd(refund)} for the defective {prod.name}.")
    request = ask(f"Work ticket {ticket} to completion and resolve it with a reply to the customer.")
    return r.done(request, f"Refunded {usd(refund)} for the defective {prod.name} and resolved {ticket}.",
                  refund_cents=refund, ticket_id=ticket)


_ORDER_STATUSES = ("pending", "processing", "on_hold", "on hold", "shipped", "delivered", "cancelled", "canceled",
                   "returned", "partially_returned")


@family("hold_order_for_review", "workflow", "easy")
def hold_order_for_review(p: Planter, i: int) -> Instance:
    """Put an order on hold with a note (suspected address typo); an order that already shipped cannot be held,
    and the answer says it shipped (a third of the instances)."""
    c = p.customer()
    shipped = i % 3 == 2
    o = p.order(c, [(p.product("motherboard"), 1)], days_ago=2 if shipped else 0,
                status="shipped" if shipped else "processing")
    if shipped:
        p.shipment(o, status="in_transit", shipped_days_ago=1, promised_days_ago=-3)
    where = [["order_id", "=", o["order_id"]]]
    status = ["shipped"] if shipped else ["on_hold", "on hold"]
    r = Rubric()
    if shipped:
        r.column("The order still ships (it cannot be held)", "orders", where, "status", "shipped", axis="constraint")
    else:
        r.column("The order is on hold", "orders", where, "status", "on_hold")
        r.row("A note explains the hold", "orders", [*where, ["notes", "icontains", "address"]], axis="completeness")
    r.no_row("No refund or cancellation happened", "refunds", where, axis="constraint")
    r.answer("'Status:' line reports the order's status now", "Status", status, "text", axis="completeness",
             rivals=[x for x in _ORDER_STATUSES if x not in status])
    if shipped:
        r.call("getOrderDetails", order_id=o["order_id"])
        answer = (f"Order {o['order_id']} has already shipped, so it can no longer be held; the carrier has it."
                  "\nStatus: shipped")
    else:
        r.call("updateOrder", order_id=o["order_id"], status="on_hold", note="Hold: customer is checking the address")
        answer = f"Order {o['order_id']} is on hold with a note about the address.\nStatus: on_hold"
    request = ask(f"Please pause order {o['order_id']} before it ships: I think I typed my address wrong and will",
                  "call back. Add a note about the address so the warehouse knows why. End with 'Status: <order",
                  "status>'.")
    return r.done(request, answer, order_id=o["order_id"], shipped=shipped)


@family("late_delivery_shipping_refund", "workflow", "medium")
def late_delivery_shipping_refund(p: Planter, i: int) -> Instance:
    """A customer asks for their shipping charge back: refunded (reason shipping_delay) only when the delivery
    was late against the promised date, per the refunds policy."""
    c = p.customer(p.rng.choice(["member", "silver"]))
    late = i % 3 != 2
    prod = p.product(p.rng.choice(["peripheral", "storage", "memory", "cooler"]), lambda x: x.price_cents < 9900)
    o = p.order(c, [(prod, 1)], days_ago=12, service=p.service("expedited"), shipping_cents=p.rng.choice([1299, 1899]))
    promised = p.rng.randint(4, 8)
    p.shipment(o, status="delivered", shipped_days_ago=10, promised_days_ago=promised,
               delivered_days_ago=promised - p.rng.randint(1, 3) if late else promised + p.rng.randint(0, 1))
    where = [["order_id", "=", o["order_id"]]]
    r = Rubric()
    if late:
        r.row("The shipping charge was refunded as a shipping delay", "refunds",
              [*where, ["amount_cents", "=", o["shipping_cents"]], ["reason", "=", "shipping_delay"]])
        r.count("Exactly one refund was issued", "refunds", where, "==", 1, axis="constraint")
        r.states("Tells the customer the amount refunded", "money", dollars(o["shipping_cents"]),
                 [dollars(o["total_cents"])])
    else:
        r.no_row("Nothing was refunded (the delivery was on time)", "refunds", where, axis="constraint")
    r.answer("'Refunded:' line is right", "Refunded", late, "bool")
    r.answer("'Promised:' line gives the promised delivery date", "Promised", p.day(promised).isoformat(), "date",
             axis="completeness")
    r.call("getShippingStatus", order_id=o["order_id"])
    if late:
        r.call("updateOrder", order_id=o["order_id"], refund_usd=dollars(o["shipping_cents"]),
               refund_reason="shipping_delay", note="Shipping refunded: delivered after the promised date")
    request = ask(f"I paid {usd(o['shipping_cents'])} for expedited shipping on order {o['order_id']} and I think it",
                  "came late. Can I get the shipping charge back? End with 'Refunded: yes/no' and 'Promised: <date>'.")
    answer = (f"Your order arrived after the promised date, so I refunded the {usd(o['shipping_cents'])} shipping "
              "charge.\nRefunded: yes" if late else
              "Your order arrived before the promised date, so the shipping charge is not refundable.\nRefunded: no")
    answer += f"\nPromised: {p.day(promised).isoformat()}"
    return r.done(request, answer, late=late)


@family("price_match_after_shipping", "workflow", "hard", held_out=True, demands=("policy",))
def price_match_after_shipping(p: Planter, i: int) -> Instance:
    """A valid price match on an order that already shipped: refund the difference (reason price_match), tied to
    the ticket, and note the competitor listing on the ticket; a base-tier member gets a polite no."""
    eligible = i % 2 == 0
    c = p.customer(p.rng.choice(["silver", "gold", "platinum"]) if eligible else "member")
    prod = p.product(p.rng.choice(["gpu", "monitor", "cpu"]), lambda x: x.price_cents >= 25000)
    o = p.order(c, [(prod, 1)], days_ago=p.rng.randint(3, 10), status="delivered")
    p.shipment(o, status="delivered", shipped_days_ago=2, promised_days_ago=0, delivered_days_ago=0)
    diff = p.rng.randint(1500, 8000)
    seller = p.rng.choice(["Best Buy", "B&H Photo", "Newegg (sold and shipped by Newegg)"])
    t = p.ticket(c, subject="Price match request", order_id=o["order_id"], product_id=prod.product_id,
                 category="price_match",
                 description=f"{seller} now sells the identical new {prod.name}, in stock, for "
                             f"{usd(prod.price_cents - diff)}. Link: https://example.com/listing/{i}. Please match it.")
    where = [["order_id", "=", o["order_id"]]]
    r = Rubric()
    if eligible:
        r.row("The difference was refunded as a price match", "refunds",
              [*where, ["amount_cents", "=", diff], ["reason", "=", "price_match"]])
        r.row("The refund is tied to the ticket", "refunds", [*where, ["ticket_id", "=", t]], axis="completeness")
        r.row("The competitor listing is noted on the ticket", "ticket_messages",
              [["ticket_id", "=", t], ["author_type", "=", "agent"], ["body", "icontains", seller.split(" (")[0]]],
              axis="completeness")
        r.states("Tells the requester the amount refunded", "money", dollars(diff),
                 [dollars(prod.price_cents - diff), dollars(prod.price_cents)])
    else:
        r.no_row("Nothing was refunded (price matching starts at Silver)", "refunds", where, axis="constraint")
        r.row("The customer got a reply on the ticket", "ticket_messages",
              [["ticket_id", "=", t], ["author_type", "=", "agent"], ["is_internal_note", "=", 0]],
              axis="completeness")
        r.states_any("Explains that price matching is a benefit from Silver up", ["silver", "rewards benefit"])
    r.answer("'Price match:' line says whether it was granted", "Price match", eligible, "bool")
    read_policy(r, p, "price_matching")
    r.call("getOrderDetails", order_id=o["order_id"])
    r.call("getLoyaltyTier", customer_id=c["customer_id"])
    if eligible:
        r.call("updateOrder", order_id=o["order_id"], refund_usd=dollars(diff), refund_reason="price_match",
               ticket_id=t)
        r.call("updateTicketStatus", ticket_id=t, status="resolved", internal=True,
               note=f"Price match granted against {seller} at {usd(prod.price_cents - diff)}; refunded {usd(diff)}.")
    else:
        r.call("updateTicketStatus", ticket_id=t, status="resolved",
               note=f"Hi {c['first_name']}, price matching is a CoreCraft Rewards benefit from Silver up, so I can't "
                    "match this price on your account.")
    request = ask(f"Work ticket {t} per our price-match policy and resolve it. End your note to me with",
                  "'Price match: yes/no'.")
    answer = (f"Refunded {usd(diff)} as a price match.\nPrice match: yes" if eligible else
              "Price matching is a Rewards benefit from Silver up; the customer is a base-tier member.\n"
              "Price match: no")
    return r.done(request, answer, eligible=eligible, diff_cents=diff)
