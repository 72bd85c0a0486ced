"""Customers (with near-duplicates and incomplete records), saved builds, and final loyalty figures."""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from typing import Any

from corecraft.world import compat
from corecraft.world.generator import (
    Generator,
    Row,
    ts,
)


def customers(g: Generator) -> None:
    """Customers across tiers, with incomplete records and near-duplicate accounts (noise)."""
    rng = g.rng("customers")
    ppl = g.data.people
    n = g.count("customers")
    tiers = ["member", "silver", "gold", "platinum"]
    tier_weights = [0.58, 0.24, 0.13, 0.05]
    g.customers_: list[Row] = []
    used_emails: set[str] = set()
    for _ in range(n):
        first = rng.choice(ppl["first_names"])
        last = rng.choice(ppl["last_names"])
        email = _email(g, rng, first, last, used_emails)
        city, state, zip3 = rng.choice(ppl["cities"])
        created = g.past(rng, 6 * 365, 1, recent_bias=0.8)
        row = {
            "customer_id": g.ids.take("CUST", 10001),
            "first_name": first,
            "last_name": last,
            "email": email,
            "phone": f"+1-{rng.randint(201, 989)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}",
            "company_name": rng.choice(ppl["company_names"]) if rng.random() < 0.06 else None,
            "address_line1": f"{rng.randint(1, 9899)} {rng.choice(ppl['street_names'])} {rng.choice(ppl['street_types'])}",
            "address_line2": f"Apt {rng.randint(1, 40)}{rng.choice('ABCD')}" if rng.random() < 0.2 else None,
            "city": city,
            "state": state,
            "postal_code": f"{zip3}{rng.randint(0, 99):02d}",
            "country": "US",
            "loyalty_tier_id": rng.choices(tiers, tier_weights)[0],
            "loyalty_points": 0,
            "lifetime_spend_cents": 0,
            "account_status": "active" if rng.random() < 0.97 else rng.choice(["suspended", "closed"]),
            "marketing_opt_in": int(rng.random() < 0.45),
            "created_at": ts(created),
            "updated_at": ts(created),
            "notes": None,
        }
        if rng.random() < g.noise["incomplete_customer_rate"]:
            # Incomplete record: imported from the old storefront without phone and/or address.
            if rng.random() < 0.6:
                row["phone"] = None
            if rng.random() < 0.5:
                row.update(address_line1=None, address_line2=None, city=None, state=None, postal_code=None)
            row["notes"] = "Imported from legacy storefront (2021); profile incomplete."
        g.customers_.append(row)
    # Near-duplicates: the same person registered twice (typo'd or alternate email, reformatted phone).
    dups = []
    for original in rng.sample(g.customers_, max(1, round(n * g.noise["near_duplicate_customer_rate"]))):
        dup = dict(original)
        dup["customer_id"] = g.ids.take("CUST", 10001)
        variant = rng.choice(["nickname", "email", "case"])
        nick = {
            "William": "Bill",
            "Robert": "Bob",
            "Jennifer": "Jen",
            "Michael": "Mike",
            "Elizabeth": "Liz",
            "Christopher": "Chris",
            "Matthew": "Matt",
            "Joseph": "Joe",
            "Daniel": "Dan",
            "Nicholas": "Nick",
        }
        if variant == "nickname" and original["first_name"] in nick:
            dup["first_name"] = nick[original["first_name"]]
        elif variant == "case":
            dup["first_name"] = original["first_name"].lower()
            dup["last_name"] = original["last_name"].upper()
        local, _, domain = original["email"].partition("@")
        dup["email"] = rng.choice(
            [
                f"{local}+shop@{domain}",
                f"{local.replace('.', '')}@{domain}",
                f"{local}@{rng.choice(ppl['email_domains'])}",
            ]
        )
        if dup["email"] == original["email"]:
            dup["email"] = f"{local}1@{domain}"
        if original["phone"]:
            digits = original["phone"][3:].replace("-", "")
            dup["phone"] = f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
        created = dt.datetime.fromisoformat(original["created_at"].replace("Z", "")) + dt.timedelta(
            days=rng.randint(5, 300)
        )
        created = min(created, g.now - dt.timedelta(days=1))
        dup.update(loyalty_tier_id="member", created_at=ts(created), updated_at=ts(created), notes=None)
        dups.append(dup)
    g.customers_.extend(dups)
    g.duplicate_customer_ids = {d["customer_id"] for d in dups}
    g.t["customers"] = g.customers_


def _email(g: Generator, rng: random.Random, first: str, last: str, used: set[str]) -> str:
    base_first = first.lower().encode("ascii", "ignore").decode().replace("-", "")
    base_last = last.lower().replace(" ", "").replace("'", "")
    for attempt in range(100):
        style = rng.randrange(4)
        local = [
            f"{base_first}.{base_last}",
            f"{base_first[0]}{base_last}",
            f"{base_first}{base_last}",
            f"{base_first}_{base_last}",
        ][style]
        if attempt or rng.random() < 0.3:
            local += str(rng.randint(1, 99))
        email = f"{local}@{rng.choice(g.data.people['email_domains'])}"
        if email not in used:
            used.add(email)
            return email
    raise RuntimeError("could not make a unique email")


def _pick_build(g: Generator, rng: random.Random) -> dict[str, int]:
    """A plausible build: parts chosen to fit each other, then (sometimes) one mistake customers make."""
    cat, spec = g.by_category, g.specs

    def fits(pid: str, **need: Any) -> bool:
        s = spec[pid]
        return all(s[key] is not None and test(s[key]) for key, test in need.items())

    def pick(pool: list[str], fallback: list[str]) -> str:
        return rng.choice(pool or fallback)

    cpu = rng.choice(cat["cpu"])
    socket = spec[cpu]["socket"]
    board = pick([b for b in cat["motherboard"] if spec[b]["socket"] == socket], cat["motherboard"])
    bs = spec[board]
    memory = pick(
        [
            m
            for m in cat["memory"]
            if spec[m]["memory_type"] == bs["memory_type"] and spec[m]["memory_modules"] <= bs["memory_slots"]
        ],
        cat["memory"],
    )
    gpu = rng.choice(cat["gpu"])
    gs = spec[gpu]
    case = pick(
        [
            c
            for c in cat["case"]
            if bs["form_factor"] in spec[c]["supported_form_factors"].split(",")
            and spec[c]["max_gpu_length_mm"] >= gs["gpu_length_mm"]
        ],
        cat["case"],
    )
    cs = spec[case]
    cooler = pick(
        [
            c
            for c in cat["cooler"]
            if socket in spec[c]["supported_sockets"].split(",")
            and (
                fits(c, cooler_height_mm=lambda h: h <= cs["max_cooler_height_mm"])
                or fits(c, radiator_size_mm=lambda r: r <= cs["max_radiator_mm"])
            )
        ],
        cat["cooler"],
    )
    need = spec[cpu]["tdp_watts"] + gs["tdp_watts"] + 150
    psu = pick(
        [
            p
            for p in cat["psu"]
            if spec[p]["wattage"] >= need
            and spec[p]["pcie_power_16pin"] >= gs["pcie_power_16pin"]
            and spec[p]["pcie_power_8pin"] >= gs["pcie_power_8pin"]
            and spec[p]["form_factor"] in cs["supported_psu_form_factors"].split(",")
        ],
        cat["psu"],
    )
    storage = rng.choice(cat["storage"])
    parts = {cpu: 1, board: 1, memory: 1, case: 1, gpu: 1, cooler: 1, psu: 1, storage: 1}
    if rng.random() < 0.3:
        parts[rng.choice(cat["storage"])] = 1
    if rng.random() < 0.2:
        # The mistakes customers actually make: swap one part for one that breaks a rule.
        slot, pool = rng.choice(
            [
                (board, [b for b in cat["motherboard"] if spec[b]["socket"] != socket]),
                (memory, [m for m in cat["memory"] if spec[m]["memory_type"] != bs["memory_type"]]),
                (gpu, [g for g in cat["gpu"] if spec[g]["gpu_length_mm"] > cs["max_gpu_length_mm"]]),
                (
                    cooler,
                    [
                        c
                        for c in cat["cooler"]
                        if fits(c, cooler_height_mm=lambda h: h > cs["max_cooler_height_mm"])
                    ],
                ),
                (
                    cooler,
                    [c for c in cat["cooler"] if socket not in spec[c]["supported_sockets"].split(",")],
                ),
                (
                    psu,
                    [
                        p
                        for p in cat["psu"]
                        if spec[p]["wattage"] < need or spec[p]["pcie_power_16pin"] < gs["pcie_power_16pin"]
                    ],
                ),
            ]
        )
        if pool:
            del parts[slot]
            parts[rng.choice(pool)] = 1
    return parts


def builds(g: Generator) -> None:
    """Saved PC builds: parts chosen to fit, some with a customer's mistake; labels from the rule checker."""
    rng = g.rng("builds")
    purposes = ["gaming", "gaming", "workstation", "streaming", "budget", "sff", "office"]
    rules = g.t["compatibility_rules"]
    g.builds_: list[Row] = []
    g.build_parts: dict[str, dict[str, int]] = {}
    owners = [c for c in g.customers_ if c["account_status"] == "active"]
    for _ in range(g.count("builds")):
        parts = _pick_build(g, rng)
        status = compat.build_status(compat.check_build(g.parts(parts), rules))
        customer = rng.choice(owners) if rng.random() < 0.9 else None
        created = g.past(rng, g.history_days, 1)
        checked = rng.random()
        recorded = status if checked < 0.8 else "unchecked"
        if 0.8 <= checked < 0.85:
            # Stale label: checked before a part was swapped.
            recorded = "compatible"
        build_id = g.ids.take("BLD", 1, 4)
        purpose = rng.choice(purposes)
        owner = f"{customer['first_name']}'s" if customer else "Staff pick:"
        g.builds_.append(
            {
                "build_id": build_id,
                "customer_id": customer["customer_id"] if customer else None,
                "name": f"{owner} {purpose} build",
                "purpose": purpose,
                "status": rng.choice(["draft", "saved", "saved", "archived"]),
                "compatibility_status": recorded,
                "created_at": ts(created),
                "updated_at": ts(min(g.now, created + dt.timedelta(days=rng.randint(0, 30)))),
                "notes": None,
            }
        )
        g.build_parts[build_id] = parts
        for pid, qty in parts.items():
            g.t["build_components"].append({"build_id": build_id, "product_id": pid, "quantity": qty})
    g.t["builds"] = g.builds_


def finalize_customers(g: Generator) -> None:
    """Lifetime spend and points from the order history (plus pre-history spend meeting the tier)."""
    rng = g.rng("finalize")
    spend: dict[str, int] = defaultdict(int)
    last_activity: dict[str, str] = {}
    for o in g.orders_:
        if o["status"] != "cancelled":
            spend[o["customer_id"]] += o["total_cents"]
        last_activity[o["customer_id"]] = max(last_activity.get(o["customer_id"], ""), o["placed_at"])
    for c in g.customers_:
        tier = g.tiers[c["loyalty_tier_id"]]
        # Spend before the order history we keep (older systems) keeps lifetime spend >= the tier minimum.
        prior = (
            0
            if c["customer_id"] in g.duplicate_customer_ids
            else tier["min_annual_spend_cents"] + rng.randint(0, 150000)
        )
        c["lifetime_spend_cents"] = spend[c["customer_id"]] + prior
        c["loyalty_points"] = (c["lifetime_spend_cents"] // 100) * tier["points_per_dollar"] % 250000
        if c["customer_id"] in last_activity and rng.random() < 0.5:
            c["updated_at"] = max(c["created_at"], last_activity[c["customer_id"]])
