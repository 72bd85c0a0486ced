"""Reasoning and problem solving: combine records and rules (compatibility, windows, SLAs, eligibility, prices)
to reach a decision the records do not state outright."""

from __future__ import annotations

from corecraft.tasks.families.common import (
    Planter,
    Product,
    Rubric,
    ask,
    dollars,
    no_writes,
    read_tool,
    return_window,
    usd,
)
from corecraft.tasks.family import Instance, family


def _failing_rules(p: Planter, parts: list[Product]) -> set[str]:
    report = read_tool(p, "validateBuildCompatibility", product_ids=[x.product_id for x in parts])
    return {e["rule_id"] for e in report.get("errors", [])}


def _rule_ids(p: Planter, operator: str, left: str | None = None) -> set[str]:
    rows = p.conn.execute("SELECT rule_id, left_category FROM compatibility_rules WHERE operator = ? AND "
                          "severity = 'error'", (operator,)).fetchall()
    return {r[0] for r in rows if left is None or r[1] == left}


def _compatible_core(p: Planter) -> list[Product]:
    cpu = p.product("cpu")
    board = p.product("motherboard", lambda b: b.specs.get("socket") == cpu.specs.get("socket"))
    mem = p.product("memory", lambda m: m.specs.get("memory_type") == board.specs.get("memory_type"))
    return [cpu, board, mem]


@family("psu_underpowered_build", "reasoning", "medium")
def psu_underpowered_build(p: Planter, i: int) -> Instance:
    """A saved build whose PSU cannot power the chosen GPU."""
    c = p.customer()
    power_rules = {r[0] for r in p.conn.execute("SELECT rule_id FROM compatibility_rules WHERE severity = 'error' "
                                                "AND right_category = 'psu' AND right_attribute = 'wattage'")}
    for _ in range(200):
        gpu = p.product("gpu", lambda g: (g.specs.get("recommended_psu_watts") or 0) >= 650)
        try:
            core = _compatible_core(p)
            psu = p.product("psu", lambda s, g=gpu: (s.specs.get("wattage") or 0) < g.specs["recommended_psu_watts"]
                            and (s.specs.get("pcie_power_8pin") or 0) >= (g.specs.get("pcie_power_8pin") or 0)
                            and (s.specs.get("pcie_power_16pin") or 0) >= (g.specs.get("pcie_power_16pin") or 0))
            case = p.product("case", lambda k, g=gpu: (k.specs.get("max_gpu_length_mm") or 0)
                             >= (g.specs.get("gpu_length_mm") or 0))
        except LookupError:  # no part fits this GPU's constraints: draw another
            continue
        parts = [*core, gpu, psu, case]
        failing = _failing_rules(p, parts)
        if failing and failing <= power_rules:
            break
    else:
        raise LookupError("could not plant an underpowered build")
    bid = p.build(c, parts, name=f"{c['first_name']}'s gaming build")
    r = Rubric()
    r.answer("'Compatible:' line says no", "Compatible", False, "bool")
    r.states("Names the power supply as the problem", "id", psu.product_id, axis="correctness")
    r.states("Gives the PSU's wattage", "number", psu.specs["wattage"], axis="completeness")
    r.called("Ran the compatibility check", "validateBuildCompatibility", axis="completeness")
    no_writes(r)
    r.call("validateBuildCompatibility", build_id=bid)
    request = ask(f"Before I order saved build {bid}: will it work? If not, what is wrong with it?",
                  "End with 'Compatible: yes/no'.")
    return r.done(request, f"The {psu.name} ({psu.product_id}, {psu.specs['wattage']} W) cannot power this build "
                           f"with the {gpu.name}.\nCompatible: no", build_id=bid, psu=psu.product_id)


@family("socket_mismatch_build", "reasoning", "easy")
def socket_mismatch_build(p: Planter, i: int) -> Instance:
    """A CPU and motherboard with different sockets."""
    socket_rules = _rule_ids(p, "eq", "cpu") | _rule_ids(p, "in_list", "cpu")
    for _ in range(200):
        cpu = p.product("cpu")
        board = p.product("motherboard", lambda b, x=cpu: b.specs.get("socket") != x.specs.get("socket"))
        mem = p.product("memory", lambda m, b=board: m.specs.get("memory_type") == b.specs.get("memory_type"))
        failing = _failing_rules(p, [cpu, board, mem])
        if failing and failing <= socket_rules:
            break
    else:
        raise LookupError("could not plant a socket mismatch")
    r = Rubric()
    r.answer("'Compatible:' line says no", "Compatible", False, "bool")
    r.states("Names both sockets", "phrase", [cpu.specs["socket"], board.specs["socket"]])
    no_writes(r)
    r.call("validateBuildCompatibility", product_ids=[cpu.product_id, board.product_id, mem.product_id])
    request = ask(f"Will the {cpu.name} ({cpu.product_id}) work on the {board.name} ({board.product_id}) with",
                  f"{mem.name} ({mem.product_id})? End with 'Compatible: yes/no'.")
    return r.done(request, f"No: the CPU uses socket {cpu.specs['socket']} but the board is {board.specs['socket']}."
                           "\nCompatible: no", sockets=[cpu.specs["socket"], board.specs["socket"]])


@family("return_eligibility_check", "reasoning", "medium")
def return_eligibility_check(p: Planter, i: int) -> Instance:
    """Is a delivered order still returnable? Window = max(policy standard, tier), counted from delivery."""
    tier = p.rng.choice(["member", "silver", "gold", "platinum"])
    c = p.customer(tier)
    window = return_window(p, tier)
    inside = i % 2 == 0
    delivered = window - p.rng.randint(1, 5) if inside else window + p.rng.randint(1, 5)
    o = p.order(c, [(p.product(p.rng.choice(["monitor", "case", "peripheral"])), 1)], days_ago=delivered + 6)
    p.shipment(o, status="delivered", shipped_days_ago=delivered + 4, promised_days_ago=delivered,
               delivered_days_ago=delivered)
    r = Rubric()
    r.answer("'Eligible:' line is right", "Eligible", inside, "bool")
    r.answer("'Window:' line gives the window that applies (days)", "Window", window, "number")
    r.states("Gives the delivery date", "date", p.day(delivered).isoformat(), axis="completeness")
    r.no_row("Did not process a return (the customer only asked)", "returns", [["order_id", "=", o["order_id"]]],
             axis="constraint")
    r.call("getOrderDetails", order_id=o["order_id"])
    r.call("getLoyaltyTier", customer_id=c["customer_id"])
    request = ask(f"Can I still return order {o['order_id']}? Just tell me, don't start anything yet. End with",
                  "'Eligible: yes/no' and 'Window: <days>'.")
    return r.done(request, f"Your order was delivered on {p.day(delivered).isoformat()}, {delivered} days ago; your "
                           f"window is {window} days.\nEligible: {'yes' if inside else 'no'}\nWindow: {window}",
                  inside=inside, window=window)


@family("shipping_quote", "reasoning", "medium")
def shipping_quote(p: Planter, i: int) -> Instance:
    """Quote the cheapest shipping for items to a state at a service level (the company's rating engine)."""
    for _ in range(50):  # some services cannot carry heavy parcels: draw until one can
        prod = p.product(p.rng.choice(["case", "monitor", "psu", "gpu"]), lambda x: bool(x.weight_grams))
        qty = p.rng.randint(1, 3)
        level = p.rng.choice(["standard", "expedited", "overnight"])
        dest = p.state()
        quote = read_tool(p, "calculateShipping", destination_state=dest, service_level=level,
                          items=[{"product_id": prod.product_id, "quantity": qty}])
        quotes = quote["quotes"]
        if quotes:
            break
    else:
        raise LookupError("calculateShipping gave no option")
    best = quotes[0]
    cost = float(best["price_usd"])
    others = sorted({float(q["price_usd"]) for q in quotes} - {cost})
    r = Rubric()
    r.answer("'Cheapest:' line gives the lowest quote", "Cheapest", cost, "money")
    r.states("Names the cheapest service", "id", best["service_id"], axis="completeness")
    r.states("Gives the cheapest option only as the answer", "money", cost, others[:3], axis="constraint")
    no_writes(r)
    r.call("calculateShipping", destination_state=dest, service_level=level,
           items=[{"product_id": prod.product_id, "quantity": qty}])
    request = ask(f"How much would {level} shipping cost for {qty} x {prod.name} ({prod.product_id}) to {dest}? Give",
                  "me the cheapest service (its id) and price. End with 'Cheapest: <amount>'.")
    return r.done(request, f"The cheapest {level} option is {best['service_name']} ({best['service_id']}).\n"
                           f"Cheapest: ${cost:.2f}", quote=cost, service_id=best["service_id"])


@family("promo_eligibility_check", "reasoning", "medium")
def promo_eligibility_check(p: Planter, i: int) -> Instance:
    """Would a code apply to an order? Expired, below minimum, tier too low, wrong category, or fine."""
    case = ["ok", "expired", "minimum", "tier", "category"][i % 5]
    c = p.customer("silver" if case == "tier" else "gold")
    prod = p.product("gpu", lambda x: x.price_cents < 60000)
    o = p.order(c, [(prod, 1)], days_ago=3, status="processing")
    code = f"DEAL{i:03d}{p.rng.randint(10, 99)}"
    p.promotion(code=code, discount_type="fixed", value=2000, starts_days_ago=30,
                expires_days_ago=5 if case == "expired" else -20,
                min_order_cents=o["subtotal_cents"] + 5000 if case == "minimum" else 0,
                min_tier="platinum" if case == "tier" else None,
                category="monitor" if case == "category" else None)
    ok = case == "ok"
    r = Rubric()
    r.answer("'Eligible:' line is right", "Eligible", ok, "bool")
    reason_word = {"ok": "$20.00", "expired": "expired", "minimum": "minimum", "tier": "tier",
                   "category": "monitor"}[case]
    r.states("Gives the deciding reason (or the saving when eligible)", "phrase" if not ok else "money",
             reason_word if not ok else 20.0, axis="correctness")
    r.column("Did not apply the code (the customer only asked)", "orders", [["order_id", "=", o["order_id"]]],
             "discount_cents", 0, axis="constraint")
    r.call("applyPromotion", order_id=o["order_id"], code=code, dry_run=True)
    request = ask(f"Would code {code} work on my order {o['order_id']}? Only check, don't apply it yet.",
                  "End with 'Eligible: yes/no'.")
    why = {"ok": "it would take $20.00 off", "expired": "the code expired before the order was placed",
           "minimum": "the order is below the code's minimum", "tier": "it needs a higher loyalty tier",
           "category": "it only covers monitor products"}[case]
    return r.done(request, f"{'Yes' if ok else 'No'}: {why}.\nEligible: {'yes' if ok else 'no'}", case=case)


@family("late_delivery_check", "reasoning", "easy")
def late_delivery_check(p: Planter, i: int) -> Instance:
    """Was a delivered order late against its promised date, and by how many days?"""
    c = p.customer()
    late_by = p.rng.choice([0, 0, 1, 2, 3, 4])
    promised = p.rng.randint(5, 20)
    o = p.order(c, [(p.product("storage"), 1)], days_ago=promised + 6)
    p.shipment(o, status="delivered", shipped_days_ago=promised + 4, promised_days_ago=promised,
               delivered_days_ago=promised - late_by)
    r = Rubric()
    r.answer("'Late:' line is right", "Late", late_by > 0, "bool")
    r.answer("'Days late:' line is right", "Days late", late_by, "number")
    r.states("Gives the promised date", "date", p.day(promised).isoformat(), axis="completeness")
    no_writes(r)
    r.call("getShippingStatus", order_id=o["order_id"])
    request = ask(f"Did order {o['order_id']} arrive late compared to the promised date? End with 'Late: yes/no'",
                  "and 'Days late: <n>'.")
    return r.done(request, f"Promised for {p.day(promised).isoformat()}.\nLate: {'yes' if late_by else 'no'}\n"
                           f"Days late: {late_by}", late_by=late_by)


@family("carrier_pickup_vs_warehouse", "reasoning", "hard", held_out=True)
def carrier_pickup_vs_warehouse(p: Planter, i: int) -> Instance:
    """Conflicting timestamps: the warehouse says shipped on day A, the carrier's first scan is days later."""
    c = p.customer()
    o = p.order(c, [(p.product("gpu"), 1)], days_ago=12, status="shipped")
    gap = p.rng.randint(2, 4)
    s = p.shipment(o, status="in_transit", shipped_days_ago=10, promised_days_ago=2, estimated_days_ago=-2,
                   carrier_scan_days_ago=10 - gap)
    scan = p.day(10 - gap)
    r = Rubric()
    r.answer("'Picked up:' line gives the carrier's first scan date", "Picked up", scan.isoformat(), "date")
    r.states("Does not give the warehouse date as the pickup", "date", scan.isoformat(), [p.day(10).isoformat()],
             axis="constraint")
    r.states("Explains the records disagree by the right number of days", "number", gap, axis="completeness")
    no_writes(r)
    r.call("getShippingStatus", order_id=o["order_id"])
    request = ask(f"Our warehouse says order {o['order_id']} shipped, but the customer says it sat for days. When",
                  "did the carrier actually pick it up, and how many days after the warehouse's ship date? End with",
                  "'Picked up: <date>'.")
    return r.done(request, f"The carrier's first scan is {scan.isoformat()}, {gap} days after the warehouse's "
                           f"record.\nPicked up: {scan.isoformat()}", scan=scan.isoformat(), shipment=s["shipment_id"])


@family("cheapest_psu_for_gpu", "reasoning", "hard")
def cheapest_psu_for_gpu(p: Planter, i: int) -> Instance:
    """The cheapest in-stock PSU meeting a GPU's recommended wattage: search, paginate, compare specs."""
    stock = {r[0]: r[1] for r in p.conn.execute(
        "SELECT product_id, SUM(quantity_on_hand - quantity_reserved) FROM inventory GROUP BY product_id")}
    psus = [x for x in p.products("psu") if (stock.get(x.product_id) or 0) > 0 and x.specs.get("wattage")]
    for _ in range(100):
        gpu = p.product("gpu", lambda g: bool(g.specs.get("recommended_psu_watts")))
        need = gpu.specs["recommended_psu_watts"]
        fit = sorted((x for x in psus if x.specs["wattage"] >= need), key=lambda x: (x.price_cents, x.product_id))
        cheaper_weak = [x for x in psus if x.specs["wattage"] < need and x.price_cents < (fit[0].price_cents if fit else 0)]
        if len(fit) >= 2 and fit[0].price_cents < fit[1].price_cents and cheaper_weak:
            break
    else:
        raise LookupError("no GPU with a clear cheapest PSU")
    best = fit[0]
    r = Rubric()
    r.answer("'PSU:' line names the cheapest in-stock PSU with enough wattage", "PSU", best.product_id, "id")
    r.states("Gives its price", "money", dollars(best.price_cents), axis="completeness")
    r.states("States the GPU's recommended wattage", "number", need, axis="correctness")
    no_writes(r)
    r.call("getProductDetails", product_id=gpu.product_id)
    r.call("searchProducts", category="psu", in_stock_only=True)
    r.call("getProductDetails", product_id=best.product_id)
    request = ask(f"A customer is buying the {gpu.name} ({gpu.product_id}). What is the cheapest power supply we",
                  "have in stock that meets the card's recommended PSU wattage? End with 'PSU: <product id>'.")
    return r.done(request, f"The {gpu.name} recommends {need} W. The cheapest in-stock PSU with at least that is "
                           f"{best.name} at {usd(best.price_cents)}.\nPSU: {best.product_id}",
                  psu=best.product_id, need=need)


@family("best_promo_choice", "reasoning", "hard", held_out=True)
def best_promo_choice(p: Planter, i: int) -> Instance:
    """Three codes for one order: one expired, one percent with a cap, one fixed; which saves the most?"""
    c = p.customer("gold")
    gpu = p.product("gpu", lambda x: 30000 <= x.price_cents <= 150000)
    o = p.order(c, [(gpu, 1), (p.product("memory"), 1)], days_ago=1, status="processing")
    pct, cap = p.rng.choice([10, 15, 20]), p.rng.choice([4000, 6000, 9000])
    fixed = p.rng.choice([3500, 5000, 7500])
    expired_value = 15000
    codes = {f"PCT{i:03d}": min(gpu.price_cents * pct // 100, cap), f"FLAT{i:03d}": fixed, f"OLD{i:03d}": 0}
    if codes[f"PCT{i:03d}"] == fixed:
        fixed += 500
        codes[f"FLAT{i:03d}"] = fixed
    p.promotion(code=f"PCT{i:03d}", discount_type="percent", value=pct, max_discount_cents=cap, starts_days_ago=30,
                expires_days_ago=-30, category="gpu")
    p.promotion(code=f"FLAT{i:03d}", discount_type="fixed", value=fixed, starts_days_ago=30, expires_days_ago=-30)
    p.promotion(code=f"OLD{i:03d}", discount_type="fixed", value=expired_value, starts_days_ago=60, expires_days_ago=7)
    best = max(codes, key=lambda k: codes[k])
    r = Rubric()
    r.answer("'Best code:' line names the code that saves the most", "Best code", best, "id")
    r.answer("'Saving:' line gives that code's saving", "Saving", dollars(codes[best]), "money")
    r.states("Notes that the large fixed code has expired", "id", f"OLD{i:03d}", axis="completeness")
    r.column("Did not apply anything (the customer only asked)", "orders", [["order_id", "=", o["order_id"]]],
             "discount_cents", 0, axis="constraint")
    for code in codes:
        r.call("applyPromotion", order_id=o["order_id"], code=code, dry_run=True)
    request = ask(f"I have three codes: PCT{i:03d}, FLAT{i:03d} and OLD{i:03d}. Which one saves me the most on",
                  f"order {o['order_id']}? Don't apply anything yet. End with 'Best code: <code>' and",
                  "'Saving: <amount>'.")
    return r.done(request, f"OLD{i:03d} has expired. PCT{i:03d} saves {usd(codes[f'PCT{i:03d}'])}, FLAT{i:03d} saves "
                           f"{usd(fixed)}.\nBest code: {best}\nSaving: {usd(codes[best])}", savings=codes)


@family("tier_qualification", "reasoning", "hard", held_out=True)
def tier_qualification(p: Planter, i: int) -> Instance:
    """Which loyalty tier does trailing-12-month spend qualify for (cancelled orders excluded)?"""
    tiers = p.conn.execute("SELECT tier_id, name, min_annual_spend_cents FROM loyalty_tiers ORDER BY rank").fetchall()
    target = tiers[1 + i % (len(tiers) - 1)]
    c = p.customer("member")
    spend = 0
    goal = target["min_annual_spend_cents"] + p.rng.randint(1000, 20000)
    while spend < goal:
        o = p.order(c, [(p.product(p.rng.choice(["gpu", "cpu", "monitor"])), 1)], days_ago=p.rng.randint(10, 300))
        spend += o["total_cents"]
    p.order(c, [(p.product("gpu"), 2)], days_ago=20, status="cancelled")
    qualified = [t for t in tiers if t["min_annual_spend_cents"] <= spend][-1]
    r = Rubric()
    r.answer("'Tier:' line names the tier the spend qualifies for", "Tier", [qualified["tier_id"], qualified["name"]],
             "text")
    r.states("Gives the trailing-12-month spend", "money", dollars(spend), axis="completeness")
    r.column("Did not change the customer's tier (only asked)", "customers", [["customer_id", "=", c["customer_id"]]],
             "loyalty_tier_id", "member", axis="constraint")
    r.call("getLoyaltyTier", customer_id=c["customer_id"])
    request = ask(f"Based on what customer {c['customer_id']} spent with us over the last 12 months (cancelled orders",
                  "don't count), which loyalty tier do they qualify for? Don't change anything. End with",
                  "'Tier: <tier>'.")
    return r.done(request, f"Trailing-12-month spend is {usd(spend)}.\nTier: {qualified['tier_id']}",
                  spend_cents=spend, tier=qualified["tier_id"])


@family("price_match_eligibility", "reasoning", "medium")
def price_match_eligibility(p: Planter, i: int) -> Instance:
    """A price-match request checked against the policy: tier, 14-day window, approved sellers, $500 cap."""
    case = ["ok", "member", "late", "marketplace", "capped"][i % 5]
    c = p.customer("member" if case == "member" else p.rng.choice(["silver", "gold", "platinum"]))
    if case == "capped":
        prod = p.product("gpu", lambda x: x.price_cents >= 120000)
        diff = p.rng.randint(55000, 70000)
    else:
        prod = p.product(p.rng.choice(["gpu", "monitor", "cpu"]), lambda x: x.price_cents >= 20000)
        diff = p.rng.randint(1500, 6000)
    days = p.rng.randint(16, 25) if case == "late" else p.rng.randint(2, 12)
    o = p.order(c, [(prod, 1)], days_ago=days, status="delivered")
    seller = ("a marketplace seller on Amazon" if case == "marketplace"
              else p.rng.choice(["Best Buy", "B&H Photo", "Micro Center (online price)"]))
    price = prod.price_cents - diff
    eligible = case in ("ok", "capped")
    adjustment = min(diff, int(p.policy_param("price_matching", "max_per_order_cents")))
    r = Rubric()
    r.answer("'Eligible:' line is right", "Eligible", eligible, "bool")
    if eligible:
        r.answer("'Adjustment:' line gives the difference, capped per order", "Adjustment", dollars(adjustment),
                 "money")
    else:
        reason = {"member": ["silver", "rewards benefit"], "late": ["14 days", "14-day"],
                  "marketplace": ["marketplace", "third-party", "sold and shipped by"]}[case]
        r.states_any("Gives the policy reason it is not eligible", reason, axis="correctness")
    r.no_row("Nothing was refunded yet (the agent was asked to check only)", "refunds",
             [["order_id", "=", o["order_id"]]], axis="constraint")
    no_writes(r)
    r.call("getOrderDetails", order_id=o["order_id"])
    r.call("getLoyaltyTier", customer_id=c["customer_id"])
    request = ask(f"Customer {c['customer_id']} wants a price match on the {prod.name} from order {o['order_id']}:",
                  f"{seller} lists the identical new item, in stock, at {usd(price)}. Check it against our policy",
                  "(don't process anything yet). End with 'Eligible: yes/no' and, if eligible, 'Adjustment: <amount>'.")
    why = {"ok": "all conditions are met", "capped": "eligible, but the adjustment is capped at $500 per order",
           "member": "price matching is a Rewards benefit from Silver up", "late": "requests are accepted only up to "
           "14 days after the order date", "marketplace": "marketplace sellers are excluded"}[case]
    tail = f"\nAdjustment: {usd(adjustment)}" if eligible else ""
    return r.done(request, f"{why.capitalize()}.\nEligible: {'yes' if eligible else 'no'}{tail}", case=case,
                  adjustment_cents=adjustment if eligible else 0)


@family("escalate_if_policy_requires", "reasoning", "hard")
def escalate_if_policy_requires(p: Planter, i: int) -> Instance:
    """Triage a ticket by the escalation policy: escalate (with an internal note) only when a rule applies."""
    case = ["high_value_dispute", "repeat_contacts", "status_question", "chargeback", "routine_return"][i % 5]
    c = p.customer(p.rng.choice(["member", "silver", "gold"]))
    if case == "high_value_dispute":
        gpu = p.product("gpu", lambda x: x.price_cents >= 110000)
        o = p.order(c, [(gpu, 2)], days_ago=60)
        text = (f"You refused my return on order {o['order_id']} and I dispute that decision. I paid "
                f"{usd(o['total_cents'])} for these cards.")
    else:
        o = p.order(c, [(p.product(p.rng.choice(["monitor", "storage"])), 1)], days_ago=6, status="shipped")
        p.shipment(o, status="in_transit", shipped_days_ago=5, promised_days_ago=-2)
        text = {"repeat_contacts": f"This is the third time I'm writing about order {o['order_id']}: nobody "
                                   "answers. Where is it?",
                "status_question": f"Hi! Could you tell me where order {o['order_id']} is?",
                "chargeback": f"Order {o['order_id']} is late. If I don't hear back today I'm filing a chargeback "
                              "with my bank.",
                "routine_return": f"Once order {o['order_id']} arrives, how do I return it if I don't like it?"}[case]
    t = p.ticket(c, subject=f"About order {o['order_id']}", order_id=o["order_id"], category="order_status",
                 description=text, days_ago=1)
    if case == "repeat_contacts":
        for d in (5, 3):
            p.ticket_message(t, f"Following up on order {o['order_id']}: still no news.", days_ago=d)
    escalate = case in ("high_value_dispute", "repeat_contacts", "chargeback")
    where = [["ticket_id", "=", t]]
    r = Rubric()
    r.column("The ticket's status follows the escalation policy", "support_tickets", where, "status",
             "escalated" if escalate else "pending_customer")
    if escalate:
        r.row("An internal note summarises the issue for the escalations team", "ticket_messages",
              [*where, ["is_internal_note", "=", 1], ["author_type", "=", "agent"]], axis="completeness")
    else:
        r.row("The customer got a reply", "ticket_messages",
              [*where, ["is_internal_note", "=", 0], ["author_type", "=", "agent"]], axis="completeness")
        r.no_row("No internal escalation note was written", "ticket_messages",
                 [*where, ["is_internal_note", "=", 1]], axis="constraint")
    r.answer("'Escalated:' line is right", "Escalated", escalate, "bool")
    r.call("getOrderDetails", order_id=o["order_id"])
    if escalate:
        r.call("updateTicketStatus", ticket_id=t, status="escalated", internal=True,
               note=f"Escalating per policy ({case.replace('_', ' ')}): order {o['order_id']}, customer "
                    f"{c['customer_id']}. Customer wants a resolution today.")
    else:
        r.call("updateTicketStatus", ticket_id=t, status="pending_customer",
               note=f"Hi {c['first_name']}, here is the latest on order {o['order_id']}.")
    request = ask(f"Triage ticket {t} by our escalation policy: escalate it (with an internal note) if the policy",
                  "requires, otherwise reply to the customer and set it to pending_customer. End with",
                  "'Escalated: yes/no'.")
    return r.done(request, f"Escalated: {'yes' if escalate else 'no'}", case=case)


@family("late_orders_audit", "reasoning", "hard")
def late_orders_audit(p: Planter, i: int) -> Instance:
    """Which of a customer's recent deliveries were late? One tracking lookup per order, then compare."""
    c = p.customer(p.rng.choice(["silver", "gold", "platinum"]))
    late, on_time = [], []
    for k in range(p.rng.randint(4, 6)):
        promised = 8 + 9 * k
        slip = p.rng.choice([0, 0, 1, 2, 3])
        o = p.order(c, [(p.product(p.rng.choice(["gpu", "cpu", "storage", "monitor"])), 1)], days_ago=promised + 5)
        p.shipment(o, status="delivered", shipped_days_ago=promised + 3, promised_days_ago=promised,
                   delivered_days_ago=promised - slip)
        (late if slip else on_time).append(o["order_id"])
    if not late:  # every audit finds at least one late delivery
        o = p.order(c, [(p.product("memory"), 1)], days_ago=12)
        p.shipment(o, status="delivered", shipped_days_ago=10, promised_days_ago=6, delivered_days_ago=4)
        late.append(o["order_id"])
    r = Rubric()
    r.answer_set("'Late orders:' line lists exactly the late deliveries", "Late orders", late)
    r.states("Mentions every late order", "id", late, axis="completeness")
    r.answer("'Late count:' line gives how many were late", "Late count", len(late), "number", axis="format")
    no_writes(r)
    r.call("searchOrders", customer_id=c["customer_id"])
    for oid in sorted(late + on_time):
        r.call("getShippingStatus", order_id=oid)
    request = ask(f"Customer {c['customer_id']} says many of their recent orders came late. Which of their orders",
                  "were delivered after the promised date? End with 'Late orders: <comma-separated order ids>' and",
                  "'Late count: <n>'.")
    return r.done(request, f"Late orders: {', '.join(late)}\nLate count: {len(late)}", late=late, on_time=on_time)
