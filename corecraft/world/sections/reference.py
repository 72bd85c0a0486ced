"""Reference data: brands, shipping geography and rates, loyalty tiers, staff, SLAs."""

from __future__ import annotations

from collections import defaultdict

from corecraft.world.generator import (
    Generator,
    cents,
)


def reference_data(g: Generator) -> None:
    """Brands, states/regions/zones, warehouses, carriers and rates, loyalty tiers, employees, SLAs."""
    d = g.data
    t = g.t
    for b in d.brands:
        t["brands"].append(
            {
                "brand_id": b["id"],
                "name": b["name"],
                "country": b.get("country"),
                "support_url": b.get("support_url"),
                "support_phone": b.get("support_phone"),
            }
        )
    lg = d.logistics
    g.state_region = {code: region for code, _name, region in lg["states"]}
    t["shipping_regions"] = [{"state_code": c, "state_name": n, "region": r} for c, n, r in lg["states"]]
    t["shipping_zones"] = [
        {"origin_region": z["origin"], "destination_region": z["destination"], "zone": z["zone"]}
        for z in lg["zones"]
    ]
    g.zone = {(z["origin"], z["destination"]): z["zone"] for z in lg["zones"]}
    for w in lg["warehouses"]:
        t["warehouses"].append(
            {
                "warehouse_id": w["id"],
                "name": w["name"],
                "city": w["city"],
                "state": w["state"],
                "region": w["region"],
                "cutoff_hour_utc": w["cutoff_hour_utc"],
            }
        )
    g.carrier_prefix = {}
    for c in lg["carriers"]:
        g.carrier_prefix[c["id"]] = c["tracking_prefix"]
        t["carriers"].append(
            {
                "carrier_id": c["id"],
                "name": c["name"],
                "tracking_url_template": c["tracking_url_template"],
                "support_phone": c["support_phone"],
                "claims_window_days": c["claims_window_days"],
            }
        )
    g.services = {}
    for s in lg["services"]:
        row = {
            "service_id": s["id"],
            "carrier_id": s["carrier"],
            "name": s["name"],
            "service_level": s["level"],
            "min_transit_days": s["min_days"],
            "max_transit_days": s["max_days"],
            "max_weight_grams": s["max_weight_g"],
            "is_active": s["active"],
        }
        t["shipping_services"].append(row)
        g.services[s["id"]] = row
        for zone, (base, per_kg) in enumerate(s["rates"], start=1):
            t["shipping_rates"].append(
                {
                    "service_id": s["id"],
                    "zone": zone,
                    "base_cents": cents(base),
                    "per_kg_cents": cents(per_kg),
                }
            )
    g.rates = {(r["service_id"], r["zone"]): r for r in t["shipping_rates"]}

    g.tiers = {}
    for tier in d.loyalty["tiers"]:
        threshold = tier["free_shipping_threshold"]
        row = {
            "tier_id": tier["id"],
            "name": tier["name"],
            "rank": tier["rank"],
            "min_annual_spend_cents": cents(tier["min_annual_spend"]),
            "discount_percent": tier["discount_percent"],
            "points_per_dollar": tier["points_per_dollar"],
            "free_shipping_threshold_cents": None if threshold is None else cents(threshold),
            "return_window_days": tier["return_window_days"],
            "restocking_fee_waived": tier["restocking_fee_waived"],
            "extended_warranty_months": tier["extended_warranty_months"],
            "priority_support": tier["priority_support"],
            "price_match": tier["price_match"],
            "benefits": tier["benefits"],
        }
        t["loyalty_tiers"].append(row)
        g.tiers[tier["id"]] = row

    former = set(d.people.get("former_employees", []))
    for emp_id, name, team, role, hired in d.people["employees"]:
        first, _, last = name.partition(" ")
        handle = f"{first.lower()}.{last.lower()[:1]}"
        t["employees"].append(
            {
                "employee_id": emp_id,
                "full_name": name,
                "email": f"{first.lower()}.{last.lower().replace(' ', '').replace(chr(39), '')}@corecraft.com",
                "team": team,
                "role": role,
                "slack_handle": "@" + handle.encode("ascii", "ignore").decode(),
                "hired_on": hired,
                "is_active": 0 if emp_id in former else 1,
            }
        )
    g.staff_by_team: dict[str, list[str]] = defaultdict(list)
    for e in t["employees"]:
        if e["is_active"]:
            g.staff_by_team[e["team"]].append(e["employee_id"])
    g.former_staff = sorted(former)

    for s in d.slas["support"]:
        t["slas"].append(
            {
                "sla_id": s["id"],
                "name": s["name"],
                "sla_type": "support",
                "priority": s["priority"],
                "loyalty_tier_id": s.get("tier"),
                "service_level": None,
                "first_response_minutes": s["first_response_minutes"],
                "resolution_hours": s["resolution_hours"],
                "delivery_business_days": None,
                "breach_action": s["breach_action"],
                "description": f"First response within {s['first_response_minutes']} minutes, resolution "
                f"within {s['resolution_hours']} hours for {s['priority']}-priority tickets"
                + (" from Gold and Platinum members." if s.get("tier") else "."),
            }
        )
    for s in d.slas["delivery"]:
        t["slas"].append(
            {
                "sla_id": s["id"],
                "name": s["name"],
                "sla_type": "delivery",
                "priority": None,
                "loyalty_tier_id": None,
                "service_level": s["service_level"],
                "first_response_minutes": None,
                "resolution_hours": None,
                "delivery_business_days": s["delivery_business_days"],
                "breach_action": s["breach_action"],
                "description": f"Delivered within {s['delivery_business_days']} business days of shipment "
                f"for {s['service_level']} service.",
            }
        )
    g.slas = {s["sla_id"]: s for s in t["slas"]}
