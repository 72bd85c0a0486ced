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
    read_policy,
    read_tool,
    return_window,
    usd,
)
from corecraft.tasks.family import Instance, family
from corecraft.tasks.plant import TAX_RATE


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
    """A saved build with a demanding GPU: does its PSU power it? Half the builds' PSUs fall short (the PSU is
    the problem part), half are fine."""
    c = p.customer()
    ok = i % 2 == 1
    power_rules = {r[0] for r in p.conn.execute("SELECT rule_id FROM compatibility_rules WHERE severity = 'error' "
                                                "AND right_category = 'psu' AND right_attribute = 'wattage'")}
    for _ in range(200):
        gpu = p.product("gpu", lambda g: (g.specs.get("recommended_psu_watts") or 0) >= 650)
        try:
            core = _compatible_core(p)
            psu = p.product("psu", lambda s, g=gpu: ((s.specs.get("wattage") or 0) >= g.specs["recommended_psu_watts"])
                            == ok
                            and (s.specs.get("pcie_power_8pin") or 0) >= (g.specs.get("pcie_power_8pin") or 0)
                            and (s.specs.get("pcie_power_16pin") or 0) >= (g.specs.get("pcie_power_16pin") or 0))
            case = p.product("case", lambda k, g=gpu: (k.specs.get("max_gpu_length_mm") or 0)
                             >= (g.specs.get("gpu_length_mm") or 0))
        except LookupError:  # no part fits this GPU's constraints: draw another
            continue
        parts = [*core, gpu, psu, case]
        failing = _failing_rules(p, parts)
        if (not failing) if ok else (failing and failing <= power_rules):
            break
    else:
        raise LookupError("could not plant a build of the kind wanted")
    bid = p.build(c, parts, name=f"{c['first_name']}'s gaming build")
    r = Rubric()
    r.answer("'Compatible:' line is right", "Compatible", ok, "bool")
    if ok:
        r.answer("'Problem part:' line says none", "Problem part", ["none", "n/a"], "text",
                 rivals=[x.product_id for x in parts])
    else:
        r.answer("'Problem part:' line names the power supply", "Problem part", psu.product_id, "id")
    r.called("Ran the compatibility check", "validateBuildCompatibility", axis="completeness")
    no_writes(r)
    r.call("validateBuildCompatibility", build_id=bid)
    request = ask(f"Before I order saved build {bid}: will it work? If not, what is wrong with it?",
                  "End with 'Compatible: yes/no' and 'Problem part: <product id, or none>'.")
    if ok:
        answer = (f"The {psu.name} ({psu.specs['wattage']} W) powers the {gpu.name}, and every part fits."
                  "\nCompatible: yes\nProblem part: none")
    else:
        answer = (f"The {psu.name} ({psu.product_id}, {psu.specs['wattage']} W) cannot power this build with the "
                  f"{gpu.name}.\nCompatible: no\nProblem part: {psu.product_id}")
    return r.done(request, answer, build_id=bid, psu=psu.product_id, compatible=ok)


@family("socket_mismatch_build", "reasoning", "easy")
def socket_mismatch_build(p: Planter, i: int) -> Instance:
    """A CPU, motherboard and memory: do the sockets match? Half the pairs differ, half match."""
    ok = i % 2 == 1
    socket_rules = _rule_ids(p, "eq", "cpu") | _rule_ids(p, "in_list", "cpu")
    for _ in range(200):
        cpu = p.product("cpu")
        try:
            board = p.product("motherboard", lambda b, x=cpu: (b.specs.get("socket") == x.specs.get("socket")) == ok)
            mem = p.product("memory", lambda m, b=board: m.specs.get("memory_type") == b.specs.get("memory_type"))
        except LookupError:
            continue
        failing = _failing_rules(p, [cpu, board, mem])
        if (not failing) if ok else (failing and failing <= socket_rules):
            break
    else:
        raise LookupError("could not plant a CPU/board pair of the kind wanted")
    r = Rubric()
    r.answer("'Compatible:' line is right", "Compatible", ok, "bool")
    r.answer_set("'Sockets:' line names both sockets", "Sockets", [cpu.specs["socket"], board.specs["socket"]],
                 axis="completeness")
    no_writes(r)
    r.call("validateBuildCompatibility", product_ids=[cpu.product_id, board.product_id, mem.product_id])
    request = ask(f"Will the {cpu.name} ({cpu.product_id}) work on the {board.name} ({board.product_id}) with",
                  f"{mem.name} ({mem.product_id})? End with 'Compatible: yes/no' and",
                  "'Sockets: <CPU socket>, <motherboard socket>'.")
    why = (f"Yes: both use socket {cpu.specs['socket']}." if ok else
           f"No: the CPU uses socket {cpu.specs['socket']} but the board is {board.specs['socket']}.")
    return r.done(request, f"{why}\nCompatible: {'yes' if ok else 'no'}\n"
                           f"Sockets: {cpu.specs['socket']}, {board.specs['socket']}",
                  sockets=[cpu.specs["socket"], board.specs["socket"]], compatible=ok)


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
    r.answer("'Delivered:' line gives the delivery date the window counts from", "Delivered",
             p.day(delivered).isoformat(), "date", axis="completeness")
    r.no_row("Did not process a return (the customer only asked)", "returns", [["order_id", "=", o["order_id"]]],
             axis="constraint")
    r.call("getOrderDetails", order_id=o["order_id"])
    r.call("getLoyaltyTier", customer_id=c["customer_id"])
    request = ask(f"Can I still return order {o['order_id']}? Just tell me, don't start anything yet. End with",
                  "'Eligible: yes/no', 'Window: <days>' and 'Delivered: <date>'.")
    return r.done(request, f"Your order was delivered {delivered} days ago; your window is {window} days.\n"
                           f"Eligible: {'yes' if inside else 'no'}\nWindow: {window}\n"
                           f"Delivered: {p.day(delivered).isoformat()}",
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
        # Two or more services at different prices: the others are what "the cheapest only" is checked against.
        if len({float(q["price_usd"]) for q in quotes}) >= 2:
            break
    else:
        raise LookupError("calculateShipping gave no choice of services")
    best = quotes[0]
    cost = float(best["price_usd"])
    others = sorted({float(q["price_usd"]) for q in quotes} - {cost})
    r = Rubric()
    r.answer("'Cheapest:' line gives the lowest quote", "Cheapest", cost, "money")
    r.states("Names the cheapest service, not a dearer one", "id", best["service_id"],
             [q["service_id"] for q in quotes[1:]], axis="completeness")
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
    case = ["ok", "expired", "ok", "minimum", "ok", "tier", "ok", "category"][i % 8]
    c = p.customer("silver" if case == "tier" else "gold")
    prod = p.product("gpu", lambda x: x.price_cents < 60000)
    o = p.order(c, [(prod, 1)], days_ago=3, status="processing")
    code = f"DEAL{i:03d}{p.rng.randint(10, 99)}"
    saving = p.rng.choice([1000, 1500, 2000, 2500, 3000, 4000])
    p.promotion(code=code, discount_type="fixed", value=saving, starts_days_ago=30,
                expires_days_ago=5 if case == "expired" else -20,
                min_order_cents=o["subtotal_cents"] + 5000 if case == "minimum" else 0,
                min_tier="platinum" if case == "tier" else None,
                category="monitor" if case == "category" else None)
    ok = case == "ok"
    r = Rubric()
    r.answer("'Eligible:' line is right", "Eligible", ok, "bool")
    if ok:
        r.answer("'Saving:' line gives what the code takes off", "Saving", dollars(saving), "money")
    else:
        reasons = {"expired": ["expired", "expiry", "no longer valid"], "minimum": ["minimum"],
                   "tier": ["tier", "platinum"], "category": ["monitor", "monitors"]}
        r.states_any("Gives the deciding reason (and no other)", reasons[case], axis="correctness",
                     rivals=[w for k, ws in reasons.items() if k != case for w in ws])
    r.column("Did not apply the code (the customer only asked)", "orders", [["order_id", "=", o["order_id"]]],
             "discount_cents", 0, axis="constraint")
    r.call("applyPromotion", order_id=o["order_id"], code=code, dry_run=True)
    request = ask(f"Would code {code} work on my order {o['order_id']}? Only check, don't apply it yet.",
                  "End with 'Eligible: yes/no' and, if eligible, 'Saving: <amount>'.")
    why = {"ok": f"it would take {usd(saving)} off", "expired": "the code expired before the order was placed",
           "minimum": "the order is below the code's minimum", "tier": "it needs a higher loyalty tier",
           "category": "it only covers monitor products"}[case]
    tail = f"\nSaving: {usd(saving)}" if ok else ""
    return r.done(request, f"{'Yes' if ok else 'No'}: {why}.\nEligible: {'yes' if ok else 'no'}{tail}", case=case)


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
    r.answer("'Promised:' line gives the promised date", "Promised", p.day(promised).isoformat(), "date",
             axis="completeness")
    no_writes(r)
    r.call("getShippingStatus", order_id=o["order_id"])
    request = ask(f"Did order {o['order_id']} arrive late compared to the promised date? End with 'Late: yes/no',",
                  "'Days late: <n>' and 'Promised: <date>'.")
    return r.done(request, f"Late: {'yes' if late_by else 'no'}\nDays late: {late_by}\n"
                           f"Promised: {p.day(promised).isoformat()}", late_by=late_by)


@family("carrier_pickup_vs_warehouse", "reasoning", "medium", held_out=True)
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
    r.answer("'Days after warehouse:' line gives how many days the records disagree by", "Days after warehouse", gap,
             "number", axis="completeness")
    no_writes(r)
    r.call("getShippingStatus", order_id=o["order_id"])
    request = ask(f"Our warehouse says order {o['order_id']} shipped, but the customer says it sat for days. When",
                  "did the carrier actually pick it up, and how many days after the warehouse's ship date? End with",
                  "'Picked up: <date>' and 'Days after warehouse: <n>'.")
    return r.done(request, f"The carrier's first scan is {scan.isoformat()}, {gap} days after the warehouse's "
                           f"record.\nPicked up: {scan.isoformat()}\nDays after warehouse: {gap}",
                  scan=scan.isoformat(), shipment=s["shipment_id"])


@family("cheapest_psu_for_gpu", "reasoning", "hard", demands=("pagination",))
def cheapest_psu_for_gpu(p: Planter, i: int) -> Instance:
    """The cheapest in-stock PSU with a customer's headroom over a GPU's recommended wattage: the catalog lists
    in-stock PSUs cheapest first, 10 a page, and every PSU on the first page is too small."""
    # Exactly what the agent's search lists, in its order (cheapest first), every page.
    listing: list[dict] = []
    for page in range(1, 20):
        found = read_tool(p, "searchProducts", category="psu", in_stock_only=True, page=page)
        listing += found["products"]
        if not found["has_more"]:
            break
    watts = {row[0]: row[1] or 0 for row in p.conn.execute("SELECT product_id, wattage FROM product_specs")}
    for _ in range(200):
        gpu = p.product("gpu", lambda g: bool(g.specs.get("recommended_psu_watts")))
        need = gpu.specs["recommended_psu_watts"] + p.rng.choice([50, 100, 150, 200, 250, 300])
        at = [k for k, x in enumerate(listing) if watts.get(x["product_id"], 0) >= need]
        # The first big enough unit is past page 1, is on sale (not discontinued), and is strictly cheaper than
        # the next one: one right answer, and only after the second page.
        if (len(at) >= 2 and at[0] >= 10 and listing[at[0]]["status"] == "active"
                and listing[at[0]]["price_usd"] < listing[at[1]]["price_usd"]):
            break
    else:
        raise LookupError("no GPU and headroom whose cheapest PSU is past the first result page")
    best, runner_up = listing[at[0]], listing[at[1]]
    weaker = [x["price_usd"] for x in listing[:at[0]]]
    r = Rubric()
    r.answer("'PSU:' line names the cheapest in-stock PSU with enough wattage", "PSU", best["product_id"], "id")
    r.answer("'Minimum wattage:' line gives the card's recommendation plus the headroom", "Minimum wattage", need,
             "number")
    r.states("Gives its price, not that of a smaller or a dearer unit", "money", best["price_usd"],
             [runner_up["price_usd"], *weaker[-3:]], axis="completeness")
    no_writes(r)
    r.call("getProductDetails", product_id=gpu.product_id)
    r.call("searchProducts", category="psu", in_stock_only=True)
    r.call("searchProducts", category="psu", in_stock_only=True, page=2)
    r.call("getProductDetails", product_id=best["product_id"])
    headroom = need - gpu.specs["recommended_psu_watts"]
    request = ask(f"A customer is buying the {gpu.name} ({gpu.product_id}) and wants a power supply with at least",
                  f"{headroom} W more than the card's recommended PSU wattage, for future upgrades. What is the",
                  "cheapest power supply we have in stock that meets that? End with 'PSU: <product id>' and",
                  "'Minimum wattage: <watts>'.")
    return r.done(request, f"The {gpu.name} recommends {gpu.specs['recommended_psu_watts']} W, so the PSU needs at "
                           f"least {need} W. The cheapest in-stock one is {best['name']} at "
                           f"${best['price_usd']:,.2f}.\nPSU: {best['product_id']}\nMinimum wattage: {need}",
                  psu=best["product_id"], need=need)


@family("best_promo_choice", "reasoning", "hard", held_out=True, demands=("policy", "reconcile"))
def best_promo_choice(p: Planter, i: int) -> Instance:
    """Three codes for one order (one code per order, by policy): one expired, one percent with a cap, one
    fixed; which saves the most?"""
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
    r.answer("'Expired:' line names the large fixed code, which has expired", "Expired", f"OLD{i:03d}", "id",
             axis="completeness")
    r.column("Did not apply anything (the customer only asked)", "orders", [["order_id", "=", o["order_id"]]],
             "discount_cents", 0, axis="constraint")
    read_policy(r, p, "promotions")
    for code in codes:
        r.call("applyPromotion", order_id=o["order_id"], code=code, dry_run=True)
    request = ask(f"I have three codes: PCT{i:03d}, FLAT{i:03d} and OLD{i:03d}. Which one saves me the most on",
                  f"order {o['order_id']}? Don't apply anything yet. End with 'Best code: <code>',",
                  "'Saving: <amount>' and 'Expired: <codes that have expired, or none>'.")
    return r.done(request, f"OLD{i:03d} has expired. PCT{i:03d} saves {usd(codes[f'PCT{i:03d}'])}, FLAT{i:03d} saves "
                           f"{usd(fixed)}.\nBest code: {best}\nSaving: {usd(codes[best])}\nExpired: OLD{i:03d}",
                  savings=codes)


def _order_total_cents(price_cents: int) -> int:
    """What Planter.order charges for one unit: price, shipping under the free-shipping line, tax."""
    return price_cents + (0 if price_cents >= 9900 else 999) + round(price_cents * TAX_RATE)


@family("tier_qualification", "reasoning", "hard", held_out=True, demands=("reconcile",))
def tier_qualification(p: Planter, i: int) -> Instance:
    """A customer's spend is split over a duplicate record: which tier would the merged account's trailing-12-month
    spend (both records, cancelled and older orders out) qualify for? Neither record qualifies on its own."""
    tiers = p.conn.execute("SELECT tier_id, name, min_annual_spend_cents FROM loyalty_tiers ORDER BY rank").fetchall()
    k = 1 + i % (len(tiers) - 1)
    target = tiers[k]
    ceiling = tiers[k + 1]["min_annual_spend_cents"] if k + 1 < len(tiers) else 10**9
    first, last = p.rng.choice(["Hana", "Diego", "Nora", "Felix", "Leah"]), p.rng.choice(["Calloway", "Ellery", "Osei"])
    phone = f"555-{p.rng.randint(200, 999)}-{p.rng.randint(1000, 9999)}"
    main = p.customer("member", first=first, last=last, phone=phone, created_days_ago=150)
    old = p.customer("member", first=first, last=last, phone=phone, created_days_ago=1100,
                     email=f"{first[0].lower()}{last.lower()}{i}@oldmail.example")
    spend = {main["customer_id"]: 0, old["customer_id"]: 0}
    goal = target["min_annual_spend_cents"] + p.rng.randint(1000, 20000)
    while sum(spend.values()) < goal:
        who = main if spend[main["customer_id"]] <= spend[old["customer_id"]] else old
        # Each record stays below the target on its own; together they stay below the next tier.
        room = min(target["min_annual_spend_cents"] - 1 - spend[who["customer_id"]],
                   ceiling - 1 - sum(spend.values()))
        pool = [x for cat in ("gpu", "cpu", "monitor", "memory", "storage") for x in p.products(cat)
                if x.price_cents >= 5000 and _order_total_cents(x.price_cents) <= room]
        if not pool:
            raise LookupError("no product fits the remaining spend")
        prod = p.rng.choice(pool)
        spend[who["customer_id"]] += p.order(who, [(prod, 1)], days_ago=p.rng.randint(10, 300))["total_cents"]
    p.order(main, [(p.product("gpu"), 2)], days_ago=20, status="cancelled")
    p.order(old, [(p.product("gpu"), 1)], days_ago=p.rng.randint(400, 700))  # outside the 12 months
    combined = sum(spend.values())
    qualified = [t for t in tiers if t["min_annual_spend_cents"] <= combined][-1]
    if qualified["tier_id"] != target["tier_id"]:
        raise LookupError("planted spend missed the target tier")
    r = Rubric()
    r.answer("'Other account:' line names the duplicate record", "Other account", old["customer_id"], "id",
             axis="completeness")
    r.answer("'Combined spend:' line gives both records' trailing-12-month spend", "Combined spend",
             dollars(combined), "money")
    r.answer("'Tier:' line names the tier the combined spend qualifies for", "Tier",
             [qualified["tier_id"], qualified["name"]], "text")
    no_writes(r, "Changes nothing (no tier change or merge: the customer only asked)")
    r.call("searchCustomers", phone=phone)
    r.call("getLoyaltyTier", customer_id=main["customer_id"])
    r.call("getLoyaltyTier", customer_id=old["customer_id"])
    request = ask(f"Customer {first} {last} ({main['customer_id']}, phone {phone}) also has an older account with",
                  "us under the same name and phone. If we merged the two, which loyalty tier would the merged",
                  "account qualify for, going by the last 12 months of spend on both (cancelled orders don't",
                  "count)? Don't change anything yet. End with 'Other account: <customer id>', 'Combined spend:",
                  "<amount>' and 'Tier: <tier>'.")
    return r.done(request, f"The two records spent {usd(spend[main['customer_id']])} and "
                           f"{usd(spend[old['customer_id']])} over the last 12 months.\n"
                           f"Other account: {old['customer_id']}\nCombined spend: {usd(combined)}\n"
                           f"Tier: {qualified['name']}", spend_cents=spend, tier=qualified["tier_id"])


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
        reasons = {"member": ["silver", "rewards benefit"], "late": ["14 days", "14-day"],
                   "marketplace": ["marketplace", "third-party", "sold and shipped by"]}
        r.states_any("Gives the policy reason it is not eligible (and no other)", reasons[case], axis="correctness",
                     rivals=[w for k, ws in reasons.items() if k != case for w in ws])
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


@family("escalate_if_policy_requires", "reasoning", "hard", demands=("policy",))
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
    read_policy(r, p, "escalation")
    r.call("getCustomerHistory", customer_id=c["customer_id"])  # the ticket's whole thread: how often they wrote
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


@family("late_orders_audit", "reasoning", "hard", demands=("reconcile",))
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
    r.answer("'Late count:' line gives how many were late", "Late count", len(late), "number", axis="completeness")
    no_writes(r)
    r.call("searchOrders", customer_id=c["customer_id"])
    for oid in sorted(late + on_time):
        r.call("getShippingStatus", order_id=oid)
    request = ask(f"Customer {c['customer_id']} says many of their recent orders came late. Which of their orders",
                  "were delivered after the promised date? End with 'Late orders: <comma-separated order ids>' and",
                  "'Late count: <n>'.")
    return r.done(request, f"Late orders: {', '.join(late)}\nLate count: {len(late)}", late=late, on_time=on_time)
