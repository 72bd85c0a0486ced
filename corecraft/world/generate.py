"""Generate a CoreCraft world: seeded, deterministic, written through sqlite-utils, returned as bytes.

Each section draws from its own ``random.Random`` seeded by (seed, section name), so adding a section never
reshuffles the others. Rows are built in memory as plain dicts (parents before children, so later sections
can update earlier rows, e.g. an order becomes 'returned'), then inserted table by table in the schema's
order. No wall clock anywhere: every timestamp derives from the world's fixed ``today``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import sqlite_utils

from corecraft.world import compat
from corecraft.world.data import WorldData, load
from corecraft.world.schema import DDL, SCHEMA_NAME, SCHEMA_VERSION, TABLES
from corecraft.world.warranty import applicable_warranty

Row = dict[str, Any]

GENERATOR_VERSION = "1"
CATEGORY_CODES = {
    "cpu": "CPU",
    "gpu": "GPU",
    "motherboard": "MB",
    "memory": "RAM",
    "storage": "STO",
    "psu": "PSU",
    "case": "CASE",
    "cooler": "COOL",
    "monitor": "MON",
    "peripheral": "PER",
}
SPEC_COLUMNS = [
    "socket",
    "supported_sockets",
    "cpu_series",
    "supported_cpu_series",
    "chipset",
    "cores",
    "threads",
    "base_clock_ghz",
    "boost_clock_ghz",
    "integrated_graphics",
    "tdp_watts",
    "memory_type",
    "memory_speed_mhz",
    "max_memory_speed_mhz",
    "memory_slots",
    "max_memory_gb",
    "memory_modules",
    "capacity_gb",
    "cas_latency",
    "form_factor",
    "supported_form_factors",
    "supported_psu_form_factors",
    "max_gpu_length_mm",
    "max_cooler_height_mm",
    "max_radiator_mm",
    "gpu_chip",
    "vram_gb",
    "gpu_length_mm",
    "slot_width",
    "recommended_psu_watts",
    "pcie_power_8pin",
    "pcie_power_16pin",
    "wattage",
    "efficiency_rating",
    "modular",
    "cooler_type",
    "cooler_height_mm",
    "radiator_size_mm",
    "cooler_tdp_rating_watts",
    "interface",
    "pcie_gen",
    "read_speed_mbps",
    "write_speed_mbps",
    "m2_slots",
    "sata_ports",
    "wifi",
    "screen_size_in",
    "resolution",
    "refresh_rate_hz",
    "panel_type",
    "connectivity",
]


def cents(dollars: float) -> int:
    return round(dollars * 100)


def ts(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def add_business_days(day: dt.date, n: int) -> dt.date:
    while n > 0:
        day += dt.timedelta(days=1)
        if day.weekday() < 5:
            n -= 1
    return day


class _Ids:
    """Sequential human-facing ids per prefix ('ORD-200001', ...)."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def take(self, prefix: str, start: int, width: int = 0) -> str:
        n = self._next.get(prefix, start)
        self._next[prefix] = n + 1
        return f"{prefix}-{n:0{width}d}" if width else f"{prefix}-{n}"


class Generator:
    def __init__(self, seed: int, scale: float, data: WorldData) -> None:
        self.seed = seed
        self.scale = scale
        self.data = data
        self.today = dt.date.fromisoformat(data.world["today"])
        # "Now" in the world: today, mid-afternoon UTC. Nothing happens after it.
        self.now = dt.datetime.combine(self.today, dt.time(16, 0))
        self.history_days = int(data.world["history_days"])
        self.noise = data.world["noise"]
        self.ids = _Ids()
        self.t: dict[str, list[Row]] = defaultdict(list)

    # Helpers -----------------------------------------------------------------------------------------
    def rng(self, section: str) -> random.Random:
        return random.Random(f"corecraft:{self.seed}:{section}")

    def count(self, name: str) -> int:
        return max(1, round(self.data.world["counts"][name] * self.scale))

    def past(
        self, rng: random.Random, max_days: float, min_days: float = 0.0, recent_bias: float = 1.0
    ) -> dt.datetime:
        """A moment between max_days and min_days ago; recent_bias > 1 favours recent moments."""
        u = rng.random() ** recent_bias
        seconds = (min_days + u * (max_days - min_days)) * 86400
        return (self.now - dt.timedelta(seconds=seconds)).replace(microsecond=0)

    # Pipeline --------------------------------------------------------------------------------------------
    def run(self) -> dict[str, list[Row]]:
        steps: list[Callable[[], None]] = [
            self.reference_data,
            self.catalog,
            self.inventory,
            self.policies,
            self.knowledge_base,
            self.compatibility_rules,
            self.warranty_policies,
            self.promotions,
            self.customers,
            self.builds,
            self.orders,
            self.support_tickets,
            self.returns_and_refunds,
            self.warranty_claims,
            self.ops_chat,
            self.finalize_customers,
        ]
        for step in steps:
            step()
        self.t["meta"] = [
            {"key": "schema_name", "value": SCHEMA_NAME},
            {"key": "schema_version", "value": str(SCHEMA_VERSION)},
            {"key": "generator_version", "value": GENERATOR_VERSION},
            {"key": "seed", "value": str(self.seed)},
            {"key": "scale", "value": repr(self.scale)},
            {"key": "today", "value": self.today.isoformat()},
            {"key": "now", "value": ts(self.now)},
            {"key": "currency", "value": "USD"},
        ]
        return self.t

    # Ids ascend with time, as in a real system: renumber rows created out of time order.
    @staticmethod
    def _renumber(
        rows: list[Row],
        id_key: str,
        time_key: str,
        make_id: Callable[[int], Any],
        refs: tuple[tuple[list[Row], str], ...] = (),
    ) -> None:
        rows.sort(key=lambda r: (r[time_key], str(r[id_key])))
        mapping = {}
        for i, row in enumerate(rows):
            mapping[row[id_key]] = make_id(i)
            row[id_key] = mapping[row[id_key]]
        for ref_rows, key in refs:
            for ref in ref_rows:
                if ref[key] is not None:
                    ref[key] = mapping.get(ref[key], ref[key])

    # Reference data ---------------------------------------------------------------------------------------
    def reference_data(self) -> None:
        d = self.data
        t = self.t
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
        self.state_region = {code: region for code, _name, region in lg["states"]}
        t["shipping_regions"] = [{"state_code": c, "state_name": n, "region": r} for c, n, r in lg["states"]]
        t["shipping_zones"] = [
            {"origin_region": z["origin"], "destination_region": z["destination"], "zone": z["zone"]}
            for z in lg["zones"]
        ]
        self.zone = {(z["origin"], z["destination"]): z["zone"] for z in lg["zones"]}
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
        self.carrier_prefix = {}
        for c in lg["carriers"]:
            self.carrier_prefix[c["id"]] = c["tracking_prefix"]
            t["carriers"].append(
                {
                    "carrier_id": c["id"],
                    "name": c["name"],
                    "tracking_url_template": c["tracking_url_template"],
                    "support_phone": c["support_phone"],
                    "claims_window_days": c["claims_window_days"],
                }
            )
        self.services = {}
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
            self.services[s["id"]] = row
            for zone, (base, per_kg) in enumerate(s["rates"], start=1):
                t["shipping_rates"].append(
                    {
                        "service_id": s["id"],
                        "zone": zone,
                        "base_cents": cents(base),
                        "per_kg_cents": cents(per_kg),
                    }
                )
        self.rates = {(r["service_id"], r["zone"]): r for r in t["shipping_rates"]}

        self.tiers = {}
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
            self.tiers[tier["id"]] = row

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
        self.staff_by_team: dict[str, list[str]] = defaultdict(list)
        for e in t["employees"]:
            if e["is_active"]:
                self.staff_by_team[e["team"]].append(e["employee_id"])
        self.former_staff = sorted(former)

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
        self.slas = {s["sla_id"]: s for s in t["slas"]}

    # Catalog -----------------------------------------------------------------------------------------------
    def catalog(self) -> None:
        rng = self.rng("catalog")
        brand_names = {b["brand_id"]: b["name"] for b in self.t["brands"]}
        entries: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (category, product fields, specs)
        for _stem, doc in sorted(
            self.data.catalog.items(), key=lambda kv: list(CATEGORY_CODES).index(kv[1]["category"])
        ):
            category = doc["category"]
            defaults = doc.get("defaults", {})
            for item in doc.get("product", []):
                fields = {**defaults, **{k: v for k, v in item.items() if k != "specs"}}
                entries.append((category, fields, dict(item.get("specs", {}))))
            for card in doc.get("card", []):
                chip = dict(doc["chips"][card["chip"]])
                specs = {
                    "gpu_chip": card["chip"],
                    "vram_gb": chip["vram_gb"],
                    "tdp_watts": chip["tdp_watts"],
                    "recommended_psu_watts": chip["recommended_psu_watts"],
                    "pcie_power_8pin": card.get("pcie_power_8pin", chip["pcie_power_8pin"]),
                    "pcie_power_16pin": card.get("pcie_power_16pin", chip["pcie_power_16pin"]),
                    "pcie_gen": chip["pcie_gen"],
                    "boost_clock_ghz": chip["boost_clock_ghz"],
                    "gpu_length_mm": card["length_mm"],
                    "slot_width": card["slots"],
                }
                fields = {
                    **defaults,
                    "name": card["name"],
                    "brand": card["brand"],
                    "price": card["price"],
                    "msrp": max(chip["msrp"], card["price"]),
                    "release": chip["release"],
                    "model": card["name"].split(" ", 1)[1][:40],
                    **{k: card[k] for k in ("weight_g", "status") if k in card},
                }
                entries.append((category, fields, specs))
            for line in doc.get("line", []):
                for kit_id in line["kits"]:
                    kit = doc["kits"][kit_id]
                    per = kit["capacity_gb"] // kit["memory_modules"]
                    name = (
                        f"{brand_names[line['brand']]} {line['series']} {kit['capacity_gb']}GB "
                        f"({kit['memory_modules']}x{per}GB) {kit['memory_type']}-{kit['memory_speed_mhz']} "
                        f"CL{kit['cas_latency']}"
                    )
                    specs = {
                        k: kit[k]
                        for k in (
                            "memory_type",
                            "memory_speed_mhz",
                            "memory_modules",
                            "capacity_gb",
                            "cas_latency",
                        )
                    }
                    fields = {
                        **defaults,
                        "name": name,
                        "brand": line["brand"],
                        "price": round(kit["price"] * line["premium"], 2),
                        "model": f"{line['series'][:3].upper()}-{kit_id.upper()}",
                    }
                    entries.append((category, fields, specs))
            for model in doc.get("model", []):
                for cap_gb, price in sorted(model["capacities"].items(), key=lambda kv: int(kv[0])):
                    cap = int(cap_gb)
                    label = f"{cap // 1000}TB" if cap >= 1000 else f"{cap}GB"
                    kind = {"nvme_ssd": "NVMe SSD", "sata_ssd": "SATA SSD", "hdd": "Hard Drive"}[
                        model["subcategory"]
                    ]
                    specs = {
                        "capacity_gb": cap,
                        "form_factor": model["form_factor"],
                        "interface": model["interface"],
                        "pcie_gen": model.get("pcie_gen"),
                        "read_speed_mbps": model["read_speed_mbps"],
                        "write_speed_mbps": model["write_speed_mbps"],
                        # An M.2 drive occupies one of the motherboard's M.2 slots (rule CR-017).
                        "m2_slots": 1 if model["form_factor"].startswith("M.2") else None,
                    }
                    fields = {
                        "name": f"{brand_names[model['brand']]} {model['series']} {label} {kind}",
                        "brand": model["brand"],
                        "price": price,
                        "subcategory": model["subcategory"],
                        "weight_g": model["weight_g"],
                        "model": f"{model['series'].replace(' ', '')[:10].upper()}-{label}",
                    }
                    entries.append((category, fields, specs))

        self.products: dict[str, Row] = {}
        self.specs: dict[str, Row] = {}
        self.by_category: dict[str, list[str]] = defaultdict(list)
        for category, f, specs in entries:
            pid = self.ids.take(CATEGORY_CODES[category], 1, 4)
            list_price = cents(f["price"])
            # Seeded price movement: some items are on sale, a few crept up.
            roll = rng.random()
            if roll < 0.25:
                price = round(list_price * rng.uniform(0.85, 0.97), -2) - 1
            elif roll < 0.32:
                price = round(list_price * rng.uniform(1.02, 1.08), -2) - 1
            else:
                price = list_price
            status = f.get("status", "active")
            release = f.get("release") or (self.today - dt.timedelta(days=rng.randint(120, 900))).isoformat()
            spec_text = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in specs.items() if v is not None)
            self.products[pid] = {
                "product_id": pid,
                "name": f["name"],
                "brand_id": f["brand"],
                "category": category,
                "subcategory": f.get("subcategory"),
                "model_number": f.get("model"),
                "upc": "".join(str(rng.randrange(10)) for _ in range(12)),
                "price_cents": int(max(price, 99)),
                "msrp_cents": cents(f["msrp"]) if "msrp" in f else list_price,
                "status": status,
                "is_returnable": int(f.get("is_returnable", 1)),
                "release_date": release,
                "weight_grams": int(f.get("weight_g", 500)),
                "description": f"{f['name']} ({brand_names[f['brand']]}). {spec_text}.",
            }
            self.specs[pid] = {"product_id": pid, **{c: specs.get(c) for c in SPEC_COLUMNS}}
            self.by_category[category].append(pid)
        self.t["products"] = list(self.products.values())
        self.t["product_specs"] = list(self.specs.values())

    def inventory(self) -> None:
        rng = self.rng("inventory")
        for pid, p in self.products.items():
            for wh in self.t["warehouses"]:
                overflow = wh["warehouse_id"] == "WH-ATL"
                if overflow and rng.random() < 0.6:
                    continue
                if p["status"] == "preorder":
                    on_hand, eta = 0, self.today + dt.timedelta(days=rng.randint(10, 40))
                elif p["status"] == "discontinued":
                    on_hand, eta = (rng.choice([0, 0, 0, 1, 2, 3]), None)
                else:
                    roll = rng.random()
                    if roll < 0.12:
                        on_hand, eta = 0, self.today + dt.timedelta(days=rng.randint(3, 45))
                    elif roll < 0.25:
                        on_hand, eta = rng.randint(1, 4), self.today + dt.timedelta(days=rng.randint(5, 30))
                    else:
                        base = 60 if p["price_cents"] < 20000 else 25
                        on_hand, eta = rng.randint(5, base), None
                reserved = min(on_hand, rng.choice([0, 0, 0, 1, 2]))
                self.t["inventory"].append(
                    {
                        "warehouse_id": wh["warehouse_id"],
                        "product_id": pid,
                        "quantity_on_hand": on_hand,
                        "quantity_reserved": reserved,
                        "reorder_point": 3 if p["price_cents"] > 50000 else 8,
                        "restock_eta": eta.isoformat() if eta else None,
                        "bin_location": f"{rng.choice('ABCDEFGH')}-{rng.randint(1, 40):02d}-{rng.randint(1, 6)}",
                        "updated_at": ts(self.past(rng, 6, recent_bias=2.0)),
                    }
                )

    # Knowledge -------------------------------------------------------------------------------------------
    def policies(self) -> None:
        self.policy_by_area: dict[str, Row] = {}
        self.policy_params: dict[tuple[str, str], Any] = {}
        for doc in self.data.policies:
            f = doc.front
            row = {
                "policy_id": f["id"],
                "policy_area": f["area"],
                "title": f["title"],
                "version": f["version"],
                "status": f.get("status", "active"),
                "effective_from": f["effective_from"],
                "effective_to": f.get("effective_to"),
                "supersedes_policy_id": f.get("supersedes"),
                "body": doc.body,
            }
            self.t["company_policies"].append(row)
            if row["status"] == "active":
                self.policy_by_area[f["area"]] = row
            for key, value in f.get("parameters", {}).items():
                value_type = {bool: "bool", int: "int", float: "float"}.get(type(value), "text")
                desc = f.get("parameter_docs", {}).get(key, key.replace("_", " "))
                self.t["policy_parameters"].append(
                    {
                        "policy_id": f["id"],
                        "param_key": key,
                        "param_value": str(value).lower() if isinstance(value, bool) else str(value),
                        "value_type": value_type,
                        "description": desc,
                    }
                )
                if row["status"] == "active":
                    self.policy_params[(f["area"], key)] = value
        # Parents before children for the self-reference.
        self.t["company_policies"].sort(key=lambda r: (r["policy_area"], r["version"]))

    def param(self, area: str, key: str) -> Any:
        return self.policy_params[(area, key)]

    def knowledge_base(self) -> None:
        rng = self.rng("kb")
        self.kb_by_key: dict[str, str] = {}
        rows: list[Row] = []
        authors = self.staff_by_team["support_t2"] + self.staff_by_team["support_t1"][:3] + self.former_staff
        for n, doc in enumerate(self.data.kb, start=1001):
            f = doc.front
            article_id = f.get("id", f"KB-{n}")
            published = self.now - dt.timedelta(days=f.get("published_days_ago", rng.randint(30, 700)))
            updated = published + dt.timedelta(days=rng.randint(0, max(1, (self.now - published).days)))
            if f.get("stale"):
                updated = published + dt.timedelta(days=rng.randint(0, 20))
            rows.append(
                {
                    "article_id": article_id,
                    "title": f["title"],
                    "category": f["category"],
                    "body": doc.body,
                    "tags": ",".join(f.get("tags", [])),
                    "status": f.get("status", "published"),
                    "author_employee_id": f.get("author", rng.choice(authors)),
                    "related_policy_id": f.get("related_policy"),
                    "superseded_by": f.get("superseded_by"),
                    "published_at": ts(published),
                    "updated_at": ts(min(updated, self.now)),
                    "view_count": rng.randint(20, 9000),
                }
            )
            if "key" in f:
                self.kb_by_key[f["key"]] = article_id
        rows.extend(self._generated_kb(rng, authors, start=len(rows) + 2001))
        # Referenced articles first (superseded_by points at newer ones).
        ids = {r["article_id"] for r in rows}
        for r in rows:
            if r["superseded_by"] and r["superseded_by"] not in ids:
                raise ValueError(f"kb {r['article_id']} superseded_by unknown {r['superseded_by']}")
        rows.sort(key=lambda r: (r["superseded_by"] is not None, r["article_id"]))
        self.t["kb_articles"] = rows

    def _generated_kb(self, rng: random.Random, authors: list[str], start: int) -> Iterator[Row]:
        """Per-case clearance sheets and per-socket compatibility guides, derived from the catalog."""
        n = start
        for pid in self.by_category["case"]:
            p, s = self.products[pid], self.specs[pid]
            coolers = [
                self.products[c]["name"]
                for c in self.by_category["cooler"]
                if self.specs[c]["cooler_height_mm"]
                and self.specs[c]["cooler_height_mm"] <= s["max_cooler_height_mm"]
            ]
            body = (
                f"# {p['name']}: clearance and fit\n\n"
                f"- Motherboards: {s['supported_form_factors'].replace(',', ', ')}\n"
                f"- Power supply: {s['supported_psu_form_factors']}\n"
                f"- Maximum graphics card length: {s['max_gpu_length_mm']} mm\n"
                f"- Maximum CPU air-cooler height: {s['max_cooler_height_mm']} mm\n"
                f"- Largest radiator: {s['max_radiator_mm'] or 'none'}{' mm' if s['max_radiator_mm'] else ''}\n\n"
                f"Air coolers we sell that fit: {', '.join(coolers) if coolers else 'none (use a liquid cooler)'}.\n\n"
                "Measurements are from the manufacturer's spec sheet; front-mounted radiators reduce GPU clearance "
                "by the radiator's thickness (typically 27-55 mm).\n"
            )
            created = self.past(rng, 500, 20)
            yield {
                "article_id": f"KB-{n}",
                "title": f"{p['name']} clearance guide",
                "category": "compatibility",
                "body": body,
                "tags": f"case,clearance,{p['brand_id']}",
                "status": "published",
                "author_employee_id": rng.choice(authors),
                "related_policy_id": None,
                "superseded_by": None,
                "published_at": ts(created),
                "updated_at": ts(created + dt.timedelta(days=rng.randint(0, 15))),
                "view_count": rng.randint(20, 4000),
            }
            n += 1
        sockets: dict[str, list[str]] = defaultdict(list)
        for pid in self.by_category["cpu"]:
            sockets[self.specs[pid]["socket"]].append(pid)
        for socket, cpus in sorted(sockets.items()):
            boards = [b for b in self.by_category["motherboard"] if self.specs[b]["socket"] == socket]
            lines = [f"# {socket} platform compatibility guide\n", "## Processors\n"]
            lines += [
                f"- {self.products[c]['name']} ({self.specs[c]['cpu_series']}, {self.specs[c]['tdp_watts']} W)"
                for c in cpus
            ]
            lines.append("\n## Motherboards\n")
            for b in boards:
                bs = self.specs[b]
                lines.append(
                    f"- {self.products[b]['name']}: {bs['chipset']}, {bs['form_factor']}, {bs['memory_type']} up to "
                    f"{bs['max_memory_speed_mhz']} MT/s; BIOS as shipped supports {bs['supported_cpu_series'].replace(',', ', ')}"
                )
            lines.append(
                "\nIf a processor's series is not listed for a board, the board needs a BIOS update first. "
                "Boards with BIOS Flashback can be updated without a CPU; otherwise see the BIOS update policy "
                "(CoreCraft performs BIOS updates for $29.99, free for Gold and Platinum members).\n"
            )
            created = self.past(rng, 400, 30)
            yield {
                "article_id": f"KB-{n}",
                "title": f"{socket} compatibility guide: processors and motherboards",
                "category": "compatibility",
                "body": "\n".join(lines),
                "tags": f"{socket.lower()},cpu,motherboard,bios",
                "status": "published",
                "author_employee_id": rng.choice(authors),
                "related_policy_id": None,
                "superseded_by": None,
                "published_at": ts(created),
                "updated_at": ts(created + dt.timedelta(days=rng.randint(0, 30))),
                "view_count": rng.randint(100, 9000),
            }
            n += 1

    def compatibility_rules(self) -> None:
        for r in self.data.compatibility["rules"]:
            self.t["compatibility_rules"].append(
                {
                    "rule_id": r["id"],
                    "name": r["name"],
                    "left_category": r["left"][0],
                    "left_attribute": r["left"][1],
                    "operator": r["op"],
                    "right_category": r["right"][0],
                    "right_attribute": r["right"][1],
                    "overhead_watts": r.get("overhead"),
                    "severity": r["severity"],
                    "message": r["message"],
                    "kb_article_id": self.kb_by_key.get(r.get("kb", "")),
                }
            )

    def warranty_policies(self) -> None:
        for w in self.data.warranty["policies"]:
            self.t["warranty_policies"].append(
                {
                    "warranty_policy_id": w["id"],
                    "brand_id": w.get("brand"),
                    "category": w.get("category"),
                    "coverage_months": w["months"],
                    "provider": w["provider"],
                    "claim_process": w["process"],
                    "covers_accidental_damage": w["accidental"],
                    "requires_registration": w["registration"],
                    "terms": w["terms"],
                    "effective_from": w.get("from", "2020-01-01"),
                    "effective_to": w.get("to"),
                }
            )

    def promotions(self) -> None:
        rng = self.rng("promotions")
        self.promos: list[Row] = []
        for n, p in enumerate(self.data.promotions["promotions"], start=1):
            start = self.now + dt.timedelta(days=p["start"], hours=-16)
            end = self.now + dt.timedelta(days=p["end"], hours=8 - 1 / 3600 * 0)
            expired = end < self.now
            active = 1 if not expired else int(rng.random() < self.noise["stale_promotion_active_rate"])
            value = p["value"]
            row = {
                "promotion_id": f"PROMO-{n:03d}",
                "code": p["code"],
                "name": p["name"],
                "description": p["description"],
                "discount_type": p["type"],
                "discount_value": cents(value) if p["type"] == "fixed" else int(value),
                "max_discount_cents": cents(p["max_discount"]) if "max_discount" in p else None,
                "min_order_cents": cents(p.get("min_order", 0)),
                "eligible_category": p.get("category"),
                "eligible_brand_id": p.get("brand"),
                "min_loyalty_tier_id": p.get("tier"),
                "first_order_only": p.get("first_order_only", 0),
                "max_uses_per_customer": p.get("max_uses"),
                "stackable": p.get("stackable", 0),
                "starts_at": ts(start),
                "expires_at": ts(end),
                "is_active": active,
                "terms": self._promo_terms(p),
            }
            self.promos.append(row)
        self.t["promotions"] = self.promos

    def _promo_terms(self, p: dict[str, Any]) -> str:
        parts = [p["description"]]
        if p.get("min_order"):
            parts.append(f"Minimum order ${p['min_order']:,.2f} before tax and shipping.")
        if p.get("category"):
            parts.append(f"Eligible items: {p['category']} only.")
        if p.get("brand"):
            parts.append(f"Eligible brand: {p['brand']}.")
        if p.get("tier"):
            parts.append(f"Requires CoreCraft Rewards {p['tier'].title()} tier or higher.")
        if p.get("first_order_only"):
            parts.append("First order only.")
        if p.get("max_uses"):
            parts.append(f"Limit {p['max_uses']} use(s) per customer.")
        parts.append(
            "Cannot be combined with other codes."
            if not p.get("stackable")
            else "Stacks with one other code."
        )
        parts.append("Not valid on prior purchases; no cash value.")
        return " ".join(parts)

    # Customers ----------------------------------------------------------------------------------------
    def customers(self) -> None:
        rng = self.rng("customers")
        ppl = self.data.people
        n = self.count("customers")
        tiers = ["member", "silver", "gold", "platinum"]
        tier_weights = [0.58, 0.24, 0.13, 0.05]
        self.customers_: list[Row] = []
        used_emails: set[str] = set()
        for _ in range(n):
            first = rng.choice(ppl["first_names"])
            last = rng.choice(ppl["last_names"])
            email = self._email(rng, first, last, used_emails)
            city, state, zip3 = rng.choice(ppl["cities"])
            created = self.past(rng, 6 * 365, 1, recent_bias=0.8)
            row = {
                "customer_id": self.ids.take("CUST", 10001),
                "first_name": first,
                "last_name": last,
                "email": email,
                "phone": f"+1-{rng.randint(201, 989)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}",
                "company_name": rng.choice(ppl["company_names"]) if rng.random() < 0.06 else None,
                "address_line1": f"{rng.randint(1, 9899)} {rng.choice(ppl['street_names'])} {rng.choice(ppl['street_types'])}",
                "address_line2": f"Apt {rng.randint(1, 40)}{rng.choice('ABCD')}"
                if rng.random() < 0.2
                else None,
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
            if rng.random() < self.noise["incomplete_customer_rate"]:
                # Incomplete record: imported from the old storefront without phone and/or address.
                if rng.random() < 0.6:
                    row["phone"] = None
                if rng.random() < 0.5:
                    row.update(
                        address_line1=None, address_line2=None, city=None, state=None, postal_code=None
                    )
                row["notes"] = "Imported from legacy storefront (2021); profile incomplete."
            self.customers_.append(row)
        # Near-duplicates: the same person registered twice (typo'd or alternate email, reformatted phone).
        dups = []
        for original in rng.sample(
            self.customers_, max(1, round(n * self.noise["near_duplicate_customer_rate"]))
        ):
            dup = dict(original)
            dup["customer_id"] = self.ids.take("CUST", 10001)
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
            created = min(created, self.now - dt.timedelta(days=1))
            dup.update(loyalty_tier_id="member", created_at=ts(created), updated_at=ts(created), notes=None)
            dups.append(dup)
        self.customers_.extend(dups)
        self.duplicate_customer_ids = {d["customer_id"] for d in dups}
        self.t["customers"] = self.customers_

    def _email(self, rng: random.Random, first: str, last: str, used: set[str]) -> str:
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
            email = f"{local}@{rng.choice(self.data.people['email_domains'])}"
            if email not in used:
                used.add(email)
                return email
        raise RuntimeError("could not make a unique email")

    # Builds ------------------------------------------------------------------------------------------------
    def _parts(self, components: dict[str, int]) -> list[compat.Part]:
        return [
            compat.Part(pid, self.products[pid]["category"], self.specs[pid], qty)
            for pid, qty in components.items()
        ]

    def _pick_build(self, rng: random.Random) -> dict[str, int]:
        """A plausible build: parts chosen to fit each other, then (sometimes) one mistake customers make."""
        cat, spec = self.by_category, self.specs

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
                if spec[m]["memory_type"] == bs["memory_type"]
                and spec[m]["memory_modules"] <= bs["memory_slots"]
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
                            if spec[p]["wattage"] < need
                            or spec[p]["pcie_power_16pin"] < gs["pcie_power_16pin"]
                        ],
                    ),
                ]
            )
            if pool:
                del parts[slot]
                parts[rng.choice(pool)] = 1
        return parts

    def builds(self) -> None:
        rng = self.rng("builds")
        purposes = ["gaming", "gaming", "workstation", "streaming", "budget", "sff", "office"]
        rules = self.t["compatibility_rules"]
        self.builds_: list[Row] = []
        self.build_parts: dict[str, dict[str, int]] = {}
        owners = [c for c in self.customers_ if c["account_status"] == "active"]
        for _ in range(self.count("builds")):
            parts = self._pick_build(rng)
            status = compat.build_status(compat.check_build(self._parts(parts), rules))
            customer = rng.choice(owners) if rng.random() < 0.9 else None
            created = self.past(rng, self.history_days, 1)
            checked = rng.random()
            recorded = status if checked < 0.8 else "unchecked"
            if 0.8 <= checked < 0.85:
                # Stale label: checked before a part was swapped.
                recorded = "compatible"
            build_id = self.ids.take("BLD", 1, 4)
            purpose = rng.choice(purposes)
            owner = f"{customer['first_name']}'s" if customer else "Staff pick:"
            self.builds_.append(
                {
                    "build_id": build_id,
                    "customer_id": customer["customer_id"] if customer else None,
                    "name": f"{owner} {purpose} build",
                    "purpose": purpose,
                    "status": rng.choice(["draft", "saved", "saved", "archived"]),
                    "compatibility_status": recorded,
                    "created_at": ts(created),
                    "updated_at": ts(min(self.now, created + dt.timedelta(days=rng.randint(0, 30)))),
                    "notes": None,
                }
            )
            self.build_parts[build_id] = parts
            for pid, qty in parts.items():
                self.t["build_components"].append({"build_id": build_id, "product_id": pid, "quantity": qty})
        self.t["builds"] = self.builds_

    # Orders, shipments ----------------------------------------------------------------------------------
    def _shipping_quote(
        self, service_id: str, warehouse_region: str, dest_state: str | None, weight_g: int
    ) -> int:
        dest_region = self.state_region.get(dest_state or "", "central")
        zone = self.zone[(warehouse_region, dest_region)]
        rate = self.rates[(service_id, zone)]
        return rate["base_cents"] + rate["per_kg_cents"] * max(1, math.ceil(weight_g / 1000))

    def orders(self) -> None:
        rng = self.rng("orders")
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
        sellable = {
            c: [p for p in self.by_category[c] if self.products[p]["status"] != "preorder"] for c in cats
        }
        warehouses = [w for w in self.t["warehouses"] if w["warehouse_id"] != "WH-ATL"]
        self.orders_: list[Row] = []
        self.lines_by_order: dict[str, list[Row]] = {}
        self.shipments_by_order: dict[str, list[Row]] = defaultdict(list)
        customers = [c for c in self.customers_ if c["account_status"] != "closed"]
        # Repeat buyers: a skewed choice so some customers have long histories.
        cust_weights = [rng.paretovariate(1.5) for _ in customers]
        cust_cum = list(itertools.accumulate(cust_weights))
        customer_by_id = {c["customer_id"]: c for c in self.customers_}
        buildable = [
            b
            for b in self.builds_
            if b["customer_id"] and b["compatibility_status"] in ("compatible", "warnings")
        ]
        services = [s for s in self.services.values() if s["is_active"] and s["service_level"] != "freight"]
        svc_weights = [
            6 if s["service_level"] == "standard" else 2 if s["service_level"] == "expedited" else 1
            for s in services
        ]
        line_id = 1
        history_id = 1
        event_id = 1
        # Plan (moment, customer, build) first, then create orders in time order so ids ascend with time.
        plans: list[tuple[dt.datetime, Row, Row | None]] = []
        for _ in range(self.count("orders")):
            build = None
            if buildable and rng.random() < 0.07:
                build = rng.choice(buildable)
                customer = customer_by_id[build["customer_id"]]
                earliest = max(customer["created_at"], build["created_at"])
            else:
                customer = rng.choices(customers, cum_weights=cust_cum)[0]
                earliest = customer["created_at"]
            age = (self.now - dt.datetime.fromisoformat(earliest.replace("Z", ""))).total_seconds() / 86400
            placed = self.past(rng, min(self.history_days, age), 0.02, recent_bias=1.6)
            plans.append((placed, customer, build))
        plans.sort(key=lambda plan: plan[0])
        promo_uses: dict[str, dict[str, int]] = defaultdict(dict)
        oms_lag = self.rng("oms_lag")  # own stream: this noise does not reshuffle the rest of the orders
        recent_cutoff = ts(self.now - dt.timedelta(days=14))
        for placed, customer, build in plans:
            order_id = self.ids.take("ORD", 200001)
            if build is not None:
                items = dict(self.build_parts[build["build_id"]])
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
                product = self.products[pid]
                drift = rng.uniform(0.94, 1.06) if (self.now - placed).days > 60 else 1.0
                unit = (
                    int(round(product["price_cents"] * drift, -2) - 1)
                    if drift != 1.0
                    else product["price_cents"]
                )
                serial = None
                if (
                    product["category"] in ("cpu", "gpu", "motherboard", "psu", "monitor", "storage")
                    and rng.random() > self.noise["missing_serial_rate"]
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
            member_pct = self.tiers[customer["loyalty_tier_id"]]["discount_percent"]
            member_discount = 0
            for line in lines:
                cut = line["line_total_cents"] * member_pct // 100
                line["discount_cents"] += cut
                line["line_total_cents"] -= cut
                member_discount += cut
            uses = promo_uses[customer["customer_id"]]
            promo, promo_discount = self._apply_promotion(rng, customer, placed, lines, uses)
            uses["__orders__"] = uses.get("__orders__", 0) + 1
            discount = member_discount + promo_discount
            service = rng.choices(services, svc_weights)[0]
            dest = customer["state"] if customer["state"] else rng.choice(self.data.people["cities"])[1]
            dest_region = self.state_region[dest]
            warehouse = next((w for w in warehouses if w["region"] == dest_region), warehouses[0])
            weight = sum(
                self.products[line["product_id"]]["weight_grams"] * line["quantity"] for line in lines
            )
            shipping = self._shipping_quote(service["service_id"], warehouse["region"], dest, weight)
            tier = self.tiers[customer["loyalty_tier_id"]]
            free_at = tier["free_shipping_threshold_cents"]
            if (
                service["service_level"] == "standard"
                and free_at is not None
                and subtotal - discount >= free_at
            ):
                shipping = 0
            if promo and promo["discount_type"] == "free_shipping" and service["service_level"] == "standard":
                shipping = 0
            tax = round((subtotal - discount) * (0 if dest in ("OR", "DE", "MT", "NH") else 0.0725))
            age_days = (self.now - placed).total_seconds() / 86400
            status = self._order_status(rng, age_days)
            payment_method = rng.choices(["credit_card", "paypal", "financing", "gift_card"], [70, 20, 7, 3])[
                0
            ]
            order = {
                "order_id": order_id,
                "customer_id": customer["customer_id"],
                "status": status,
                "sales_channel": rng.choices(
                    ["web", "phone", "marketplace", "in_store_pickup"], [80, 8, 9, 3]
                )[0],
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
                shipment, events, extra_history = self._shipment(
                    rng, order, warehouse, service, placed, weight, status
                )
                for ev in events:
                    ev["event_id"] = event_id
                    event_id += 1
                self.t["shipments"].append(shipment)
                self.t["shipment_events"].extend(events)
                self.shipments_by_order[order_id].append(shipment)
                order["status"] = {"delivered": "delivered"}.get(shipment["status"], "shipped")
                recent = shipment["delivered_at"] is not None and shipment["delivered_at"] >= recent_cutoff
                if recent and oms_lag.random() < self.noise["oms_delivery_lag_rate"]:
                    # The carrier-sync job has not caught up: tracking says delivered, the order says shipped.
                    order["status"] = "shipped"
                    extra_history = [h for h in extra_history if h[2] != "carrier_sync"]
                history.extend(extra_history)
            if status == "pending":
                history = history[:1]
            last = max(h[1] for h in history)
            order["updated_at"] = ts(min(last, self.now))
            for st, when, source, note in history:
                self.t["order_status_history"].append(
                    {
                        "history_id": history_id,
                        "order_id": order_id,
                        "status": st,
                        "changed_at": ts(min(when, self.now)),
                        "source": source,
                        "note": note,
                    }
                )
                history_id += 1
            self.orders_.append(order)
            self.lines_by_order[order_id] = lines
            self.t["order_lines"].extend(lines)
        self.t["orders"] = self.orders_
        self.next_history_id = history_id

    def _order_status(self, rng: random.Random, age_days: float) -> str:
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
        self, rng: random.Random, customer: Row, placed: dt.datetime, lines: list[Row], uses: dict[str, int]
    ) -> tuple[Row | None, int]:
        """Pick a promotion valid for this order per the Promotions policy, spread its discount over lines."""
        if rng.random() > 0.22:
            return None, 0
        moment = ts(placed)
        rank = self.tiers[customer["loyalty_tier_id"]]["rank"]
        first_order = uses.get("__orders__", 0) == 0
        for promo in rng.sample(self.promos, len(self.promos)):
            if not (promo["starts_at"] <= moment <= promo["expires_at"]):
                continue
            if promo["min_loyalty_tier_id"] and self.tiers[promo["min_loyalty_tier_id"]]["rank"] > rank:
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
                if (promo["eligible_category"] in (None, self.products[line["product_id"]]["category"]))
                and (promo["eligible_brand_id"] in (None, self.products[line["product_id"]]["brand_id"]))
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
        self,
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
            for s in self.t["slas"]
            if s["sla_type"] == "delivery" and s["service_level"] == service["service_level"]
        )
        # Warehouse marks the order shipped when the label prints; the carrier's pickup scan comes later.
        label_at = placed + dt.timedelta(hours=rng.uniform(2, 30))
        if label_at >= self.now:
            label_at = placed + (self.now - placed) * 0.5
        pickup_at = label_at + dt.timedelta(hours=rng.uniform(1, 10))
        shipped_at_wms = label_at + dt.timedelta(minutes=rng.randint(5, 60))
        conflicting = rng.random() < self.noise["conflicting_ship_time_rate"]
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
                dt.datetime.combine(delivered_at.date(), dt.time(8, rng.randint(0, 59)))
                + dt.timedelta(hours=5),
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
            if at <= self.now
        ]
        seen_codes = {e["event_code"] for e in events}
        if lost:
            shipment_status = "lost" if (self.now - pickup_at).days > 10 else "in_transit"
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
        shipment_id = self.ids.take("SHP", 300001)
        for e in events:
            e["shipment_id"] = shipment_id
        delivered_ts = ts(delivered_at) if shipment_status == "delivered" else None
        if delivered_ts and rng.random() < 0.03:
            delivered_ts = (
                None  # carrier webhook never landed: tracking shows delivered, shipment row doesn't
            )
        tracking = self.carrier_prefix[carrier] + "".join(
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
            "shipped_at": ts(min(shipped_at_wms, self.now)),
            "promised_delivery_date": promised.isoformat(),
            "estimated_delivery_date": delivered_at.date().isoformat() if shipment_status != "lost" else None,
            "delivered_at": delivered_ts,
            "weight_grams": weight,
            "cost_cents": self._shipping_quote(
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

    # Support ----------------------------------------------------------------------------------------------
    def support_tickets(self) -> None:
        rng = self.rng("tickets")
        templates = self.data.tickets["category"]
        names = sorted(templates)
        weights = [templates[c]["weight"] for c in names]
        orders_by_customer: dict[str, list[Row]] = defaultdict(list)
        for o in self.orders_:
            orders_by_customer[o["customer_id"]].append(o)
        with_orders = [c for c in self.customers_ if orders_by_customer[c["customer_id"]]]
        agents = self.staff_by_team["support_t1"] + self.staff_by_team["support_t2"]
        message_id = 1
        self.tickets_: list[Row] = []
        for _ in range(self.count("support_tickets")):
            category = rng.choices(names, weights)[0]
            tpl = templates[category]
            customer = rng.choice(with_orders if tpl.get("needs_order", True) else self.customers_)
            order = (
                rng.choice(orders_by_customer[customer["customer_id"]])
                if orders_by_customer[customer["customer_id"]]
                else None
            )
            line = rng.choice(self.lines_by_order[order["order_id"]]) if order else None
            product = self.products[line["product_id"]] if line else rng.choice(list(self.products.values()))
            placed = (
                dt.datetime.fromisoformat(order["placed_at"].replace("Z", ""))
                if order
                else self.now - dt.timedelta(days=200)
            )
            created = placed + dt.timedelta(
                hours=rng.uniform(1, max(2.0, min(90 * 24, (self.now - placed).total_seconds() / 3600)))
            )
            created = min(created, self.now - dt.timedelta(minutes=rng.randint(5, 600))).replace(
                microsecond=0
            )
            priority = rng.choices(
                ["low", "normal", "high", "urgent"], tpl.get("priority_weights", [15, 55, 22, 8])
            )[0]
            tier = self.tiers[customer["loyalty_tier_id"]]
            sla_id = f"SLA-SUP-{priority.upper()}"
            if tier["priority_support"] and priority in ("normal", "high"):
                sla_id = f"SLA-SUP-PRIORITY-{priority.upper()}"
            sla = self.slas[sla_id]
            channel = rng.choices(["email", "chat", "phone", "web_form", "social"], [40, 28, 15, 14, 3])[0]
            fmt = {
                "order_id": order["order_id"] if order else "",
                "product": product["name"],
                "first_name": customer["first_name"],
                "tracking": (
                    self.shipments_by_order.get(order["order_id"])
                    or [{"tracking_number": "(not yet assigned)"}]
                )[0]["tracking_number"]
                if order
                else "",
            }
            subject = rng.choice(tpl["subjects"]).format(**fmt)
            opening = rng.choice(tpl["openings"]).format(**fmt)
            age_h = (self.now - created).total_seconds() / 3600
            if age_h < 2:
                status = "new"
            elif age_h < 72:
                status = rng.choices(["open", "pending_customer", "escalated", "resolved"], [45, 25, 10, 20])[
                    0
                ]
            else:
                status = rng.choices(
                    ["resolved", "closed", "open", "escalated", "pending_customer"], [35, 45, 8, 5, 7]
                )[0]
            assigned = (
                None
                if status == "new"
                else rng.choice(self.staff_by_team["escalations"] if status == "escalated" else agents)
            )
            if assigned and rng.random() < 0.03 and self.former_staff:
                assigned = self.former_staff[0]  # still assigned to someone who left (noise)
            first_due = created + dt.timedelta(minutes=sla["first_response_minutes"])
            resolution_due = created + dt.timedelta(hours=sla["resolution_hours"])
            ticket_id = self.ids.take("TKT", 50001)
            messages: list[tuple[dt.datetime, str, str | None, int, str]] = [
                (created, "customer", None, 0, opening)
            ]
            first_response = None
            if status != "new":
                # Most first responses meet the SLA; some breach it.
                limit = sla["first_response_minutes"] * (
                    rng.uniform(0.1, 0.9) if rng.random() < 0.85 else rng.uniform(1.1, 3.0)
                )
                first_response = min(
                    created + dt.timedelta(minutes=limit), self.now - dt.timedelta(minutes=1)
                ).replace(microsecond=0)
                messages.append(
                    (first_response, "agent", assigned, 0, rng.choice(tpl["agent_replies"]).format(**fmt))
                )
                t = first_response
                for _ in range(rng.choice([0, 0, 1, 1, 2])):
                    t = t + dt.timedelta(hours=rng.uniform(1, 30))
                    if t >= self.now:
                        break
                    messages.append((t, "customer", None, 0, rng.choice(tpl["followups"]).format(**fmt)))
                    t2 = t + dt.timedelta(hours=rng.uniform(0.3, 20))
                    if t2 >= self.now:
                        break
                    messages.append(
                        (t2, "agent", assigned, 0, rng.choice(tpl["agent_replies"]).format(**fmt))
                    )
                    t = t2
                if rng.random() < 0.3:
                    note_at = min(
                        t + dt.timedelta(minutes=rng.randint(1, 120)), self.now - dt.timedelta(seconds=30)
                    )
                    messages.append(
                        (
                            note_at,
                            "agent",
                            assigned,
                            1,
                            rng.choice(self.data.tickets["internal_notes"]).format(**fmt),
                        )
                    )
            resolved_at = None
            if status in ("resolved", "closed"):
                resolved_at = min(
                    max(m[0] for m in messages) + dt.timedelta(hours=rng.uniform(0.2, 12)),
                    self.now - dt.timedelta(seconds=10),
                ).replace(microsecond=0)
                messages.append((resolved_at, "system", None, 0, f"Ticket marked {status} by {assigned}."))
            if status == "escalated":
                esc_at = min(
                    max(m[0] for m in messages) + dt.timedelta(minutes=10),
                    self.now - dt.timedelta(seconds=20),
                )
                messages.append(
                    (
                        esc_at,
                        "system",
                        None,
                        0,
                        f"Ticket escalated to the escalations team ({sla['breach_action']}).",
                    )
                )
            row = {
                "ticket_id": ticket_id,
                "customer_id": customer["customer_id"],
                "order_id": order["order_id"] if order and tpl.get("needs_order", True) else None,
                "product_id": product["product_id"] if tpl.get("about_product") else None,
                "subject": subject,
                "description": opening,
                "category": category,
                "channel": channel,
                "priority": priority,
                "status": status,
                "assigned_to": assigned,
                "sla_id": sla_id,
                "created_at": ts(created),
                "updated_at": ts(max(m[0] for m in messages)),
                "first_response_due_at": ts(first_due),
                "first_response_at": ts(first_response) if first_response else None,
                "resolution_due_at": ts(resolution_due),
                "resolved_at": ts(resolved_at) if resolved_at else None,
                "satisfaction_score": rng.choices([1, 2, 3, 4, 5], [6, 6, 14, 34, 40])[0]
                if status == "closed" and rng.random() < 0.6
                else None,
                "tags": ",".join(
                    sorted(
                        {category, channel}
                        | ({"sla_breached"} if first_response and first_response > first_due else set())
                    )
                ),
            }
            self.tickets_.append(row)
            for when, author_type, author, internal, body in sorted(messages, key=lambda m: m[0]):
                self.t["ticket_messages"].append(
                    {
                        "message_id": message_id,
                        "ticket_id": ticket_id,
                        "author_type": author_type,
                        "author_employee_id": author if author_type == "agent" else None,
                        "sent_at": ts(when),
                        "channel": "internal" if internal else channel,
                        "is_internal_note": internal,
                        "body": body,
                    }
                )
                message_id += 1
        self._renumber(
            self.tickets_,
            "ticket_id",
            "created_at",
            lambda i: f"TKT-{50001 + i}",
            ((self.t["ticket_messages"], "ticket_id"),),
        )
        self._renumber(self.t["ticket_messages"], "message_id", "sent_at", lambda i: i + 1)
        self.t["support_tickets"] = self.tickets_

    # Returns and refunds -------------------------------------------------------------------------------
    def returns_and_refunds(self) -> None:
        rng = self.rng("returns")
        window = int(self.param("returns", "window_days"))
        fee_pct = int(self.param("restocking", "fee_percent"))
        delivered = [
            o
            for o in self.orders_
            if o["status"] == "delivered" and self.shipments_by_order.get(o["order_id"])
        ]
        tickets_by_order: dict[str, list[Row]] = defaultdict(list)
        for tk in self.tickets_:
            if tk["order_id"]:
                tickets_by_order[tk["order_id"]].append(tk)
        customers = {c["customer_id"]: c for c in self.customers_}
        refund_n = 0
        for order in rng.sample(delivered, min(len(delivered), self.count("returns"))):
            shipment = self.shipments_by_order[order["order_id"]][0]
            delivered_at = shipment["delivered_at"] or shipment["updated_at"]
            base = dt.datetime.fromisoformat(delivered_at.replace("Z", ""))
            customer = customers[order["customer_id"]]
            tier = self.tiers[customer["loyalty_tier_id"]]
            cust_window = max(window, tier["return_window_days"])
            late_request = rng.random() < 0.15
            offset_days = (
                rng.uniform(cust_window + 1, cust_window + 25)
                if late_request
                else rng.uniform(0.5, cust_window - 0.5)
            )
            requested = base + dt.timedelta(days=offset_days)
            if requested >= self.now:
                continue
            lines = [
                ln
                for ln in self.lines_by_order[order["order_id"]]
                if self.products[ln["product_id"]]["is_returnable"]
            ]
            if not lines:
                continue
            chosen = rng.sample(lines, rng.randint(1, len(lines)))
            reason = rng.choices(
                [
                    "defective",
                    "wrong_item",
                    "not_needed",
                    "damaged_in_transit",
                    "incompatible",
                    "changed_mind",
                    "arrived_late",
                ],
                [25, 8, 18, 10, 20, 15, 4],
            )[0]
            condition = {"defective": "defective", "damaged_in_transit": "damaged"}.get(
                reason, rng.choice(["unopened", "opened", "opened"])
            )
            if late_request:
                status = "rejected"
            else:
                age = (self.now - requested).days
                status = (
                    rng.choice(["requested", "approved"])
                    if age < 2
                    else rng.choice(["label_sent", "received"])
                    if age < 7
                    else rng.choice(["refunded", "refunded", "refunded", "exchanged", "cancelled"])
                )
            ret_type = (
                "exchange"
                if status == "exchanged"
                else rng.choices(["refund", "store_credit", "exchange"], [80, 8, 12])[0]
                if status != "exchanged"
                else "exchange"
            )
            if status == "refunded" and ret_type == "exchange":
                ret_type = "refund"
            goods = sum(ln["line_total_cents"] for ln in chosen)
            fee = 0
            if (
                condition == "opened"
                and reason in ("not_needed", "changed_mind", "incompatible")
                and not tier["restocking_fee_waived"]
            ):
                fee = min(goods * fee_pct // 100, int(self.param("restocking", "max_fee_cents")))
            return_id = self.ids.take("RMA", 40001)
            ticket = tickets_by_order[order["order_id"]][0] if tickets_by_order[order["order_id"]] else None
            received = (
                requested + dt.timedelta(days=rng.uniform(3, 8))
                if status in ("received", "refunded", "exchanged")
                else None
            )
            refund_amount = goods - fee if status == "refunded" else None
            self.t["returns"].append(
                {
                    "return_id": return_id,
                    "order_id": order["order_id"],
                    "customer_id": order["customer_id"],
                    "ticket_id": ticket["ticket_id"] if ticket else None,
                    "return_type": ret_type,
                    "reason": reason,
                    "status": status,
                    "requested_at": ts(requested),
                    "received_at": ts(min(received, self.now)) if received else None,
                    "restocking_fee_cents": fee,
                    "refund_amount_cents": refund_amount,
                    "exchange_order_id": None,
                    "notes": f"Requested {offset_days:.0f} days after delivery; outside the {cust_window}-day window."
                    if late_request
                    else None,
                }
            )
            for ln in chosen:
                qty = ln["quantity"] if rng.random() < 0.8 else 1
                self.t["return_lines"].append(
                    {
                        "return_line_id": len(self.t["return_lines"]) + 1,
                        "return_id": return_id,
                        "order_line_id": ln["order_line_id"],
                        "quantity": qty,
                        "item_condition": condition,
                    }
                )
                if status in ("refunded", "exchanged", "received"):
                    ln["quantity_returned"] = qty
            if status in ("refunded", "exchanged", "received"):
                all_back = all(
                    ln["quantity_returned"] >= ln["quantity"] for ln in self.lines_by_order[order["order_id"]]
                )
                order["status"] = "returned" if all_back else "partially_returned"
                order["updated_at"] = max(order["updated_at"], ts(min(received or requested, self.now)))
            if status == "refunded" and refund_amount and refund_amount > 0:
                refund_n += 1
                issued = min((received or requested) + dt.timedelta(days=rng.uniform(0.5, 4)), self.now)
                self.t["refunds"].append(
                    {
                        "refund_id": self.ids.take("RF", 60001),
                        "order_id": order["order_id"],
                        "return_id": return_id,
                        "ticket_id": ticket["ticket_id"] if ticket else None,
                        "amount_cents": refund_amount,
                        "method": "store_credit" if ret_type == "store_credit" else "original_payment",
                        "reason": "return",
                        "status": "issued",
                        "created_at": ts(received or requested),
                        "issued_at": ts(issued),
                    }
                )
                order["payment_status"] = (
                    "refunded" if order["status"] == "returned" else "partially_refunded"
                )
        # Shipping refunds for late deliveries and goodwill credits (not tied to returns).
        for order in self.orders_:
            shipments = self.shipments_by_order.get(order["order_id"])
            if not shipments or not shipments[0]["delivered_at"] or order["shipping_cents"] == 0:
                continue
            s = shipments[0]
            if s["delivered_at"][:10] > s["promised_delivery_date"] and rng.random() < 0.5:
                created = dt.datetime.fromisoformat(s["delivered_at"].replace("Z", "")) + dt.timedelta(
                    days=rng.uniform(0.5, 5)
                )
                if created >= self.now:
                    continue
                self.t["refunds"].append(
                    {
                        "refund_id": self.ids.take("RF", 60001),
                        "order_id": order["order_id"],
                        "return_id": None,
                        "ticket_id": None,
                        "amount_cents": order["shipping_cents"],
                        "method": "original_payment",
                        "reason": "shipping_delay",
                        "status": rng.choice(["issued", "issued", "issued", "pending"]),
                        "created_at": ts(created),
                        "issued_at": None,
                    }
                )
                r = self.t["refunds"][-1]
                if r["status"] == "issued":
                    r["issued_at"] = ts(min(created + dt.timedelta(days=1), self.now))
                if order["payment_status"] == "captured":
                    order["payment_status"] = "partially_refunded"
        for order in self.orders_:
            if (
                order["status"] == "cancelled"
                and order["payment_method"] != "gift_card"
                and rng.random() < 0.3
            ):
                # A cancelled order whose card was captured before cancellation, so money went back.
                placed = dt.datetime.fromisoformat(order["placed_at"].replace("Z", ""))
                order["payment_status"] = "refunded"
                self.t["refunds"].append(
                    {
                        "refund_id": self.ids.take("RF", 60001),
                        "order_id": order["order_id"],
                        "return_id": None,
                        "ticket_id": None,
                        "amount_cents": order["total_cents"],
                        "method": "original_payment",
                        "reason": "cancellation",
                        "status": "issued",
                        "created_at": ts(min(placed + dt.timedelta(hours=6), self.now)),
                        "issued_at": ts(min(placed + dt.timedelta(days=2), self.now)),
                    }
                )
        self._renumber(
            self.t["returns"],
            "return_id",
            "requested_at",
            lambda i: f"RMA-{40001 + i}",
            ((self.t["return_lines"], "return_id"), (self.t["refunds"], "return_id")),
        )
        self._renumber(self.t["return_lines"], "return_line_id", "return_id", lambda i: i + 1)
        self._renumber(self.t["refunds"], "refund_id", "created_at", lambda i: f"RF-{60001 + i}")

    def warranty_claims(self) -> None:
        rng = self.rng("warranty_claims")
        candidates = []
        for order in self.orders_:
            if order["status"] not in ("delivered", "partially_returned") or not self.shipments_by_order.get(
                order["order_id"]
            ):
                continue
            for ln in self.lines_by_order[order["order_id"]]:
                if self.products[ln["product_id"]]["category"] in (
                    "gpu",
                    "cpu",
                    "psu",
                    "memory",
                    "storage",
                    "motherboard",
                    "monitor",
                    "cooler",
                    "peripheral",
                ):
                    candidates.append((order, ln))
        tickets_by_order: dict[str, list[Row]] = defaultdict(list)
        for tk in self.tickets_:
            if tk["order_id"] and tk["category"] == "warranty":
                tickets_by_order[tk["order_id"]].append(tk)
        issues = self.data.tickets["warranty_issues"]
        for order, ln in rng.sample(candidates, min(len(candidates), self.count("warranty_claims"))):
            product = self.products[ln["product_id"]]
            placed = dt.datetime.fromisoformat(order["placed_at"].replace("Z", ""))
            filed = placed + dt.timedelta(days=rng.uniform(20, max(21, (self.now - placed).days)))
            if filed >= self.now:
                continue
            policy = applicable_warranty(
                self.t["warranty_policies"], product["brand_id"], product["category"], placed.date()
            )
            age = (self.now - filed).days
            status = (
                rng.choice(["submitted", "under_review"])
                if age < 5
                else rng.choices(
                    ["approved", "denied", "replacement_shipped", "repaired", "refunded"],
                    [15, 18, 40, 12, 15],
                )[0]
            )
            decided = (
                filed + dt.timedelta(days=rng.uniform(1, 5))
                if status not in ("submitted", "under_review")
                else None
            )
            resolution = {
                "approved": "Approved; awaiting defective unit.",
                "denied": rng.choice(
                    [
                        "Denied: physical damage (bent socket pins) is not covered.",
                        "Denied: serial number does not match our records.",
                        "Denied: outside the coverage period.",
                    ]
                ),
                "replacement_shipped": "Replacement unit shipped.",
                "repaired": "Repaired by the manufacturer and returned.",
                "refunded": "Replacement unavailable (discontinued); refunded the purchase price.",
            }.get(status)
            ticket = tickets_by_order[order["order_id"]][0] if tickets_by_order[order["order_id"]] else None
            self.t["warranty_claims"].append(
                {
                    "claim_id": self.ids.take("WC", 70001),
                    "customer_id": order["customer_id"],
                    "order_id": order["order_id"],
                    "order_line_id": ln["order_line_id"] if rng.random() > 0.05 else None,
                    "product_id": product["product_id"],
                    "warranty_policy_id": policy["warranty_policy_id"] if policy else None,
                    "ticket_id": ticket["ticket_id"] if ticket else None,
                    "serial_number": ln["serial_number"],
                    "issue_description": rng.choice(issues.get(product["category"], issues["default"])),
                    "status": status,
                    "filed_at": ts(filed),
                    "decided_at": ts(min(decided, self.now)) if decided else None,
                    "resolution": resolution,
                }
            )

        self._renumber(self.t["warranty_claims"], "claim_id", "filed_at", lambda i: f"WC-{70001 + i}")

    # Ops chat -----------------------------------------------------------------------------------------------
    def ops_chat(self) -> None:
        rng = self.rng("ops_chat")
        chat = self.data.ops_chat
        channels = sorted(chat["channel"])
        weights = [chat["channel"][c]["weight"] for c in channels]
        staff = [e for e in self.t["employees"]]
        team_staff: dict[str, list[str]] = defaultdict(list)
        for e in staff:
            team_staff[e["team"]].append(e["employee_id"])
        recent_orders = [
            o for o in self.orders_ if o["placed_at"] >= ts(self.now - dt.timedelta(days=60))
        ] or self.orders_
        products = list(self.products.values())
        msg_id = 1
        posts: list[Row] = []
        for _ in range(self.count("ops_chat_messages")):
            channel = rng.choices(channels, weights)[0]
            spec = chat["channel"][channel]
            teams = spec["teams"]
            author = rng.choice([e for t_ in teams for e in team_staff[t_]])
            order = rng.choice(recent_orders)
            product = rng.choice(products)
            shipment = (self.shipments_by_order.get(order["order_id"]) or [None])[0]
            fmt = {
                "order_id": order["order_id"],
                "product": product["name"],
                "product_id": product["product_id"],
                "carrier": shipment["carrier_id"] if shipment else rng.choice(["UPS", "FedEx", "USPS"]),
                "tracking": shipment["tracking_number"] if shipment else "n/a",
                "n": rng.randint(2, 40),
                "warehouse": rng.choice(["RNO", "DFW", "CMH", "ATL"]),
                "pct": rng.choice([5, 8, 10, 12, 15]),
                "code": rng.choice(self.promos)["code"],
                "hub": rng.choice(["Louisville", "Memphis", "Indianapolis", "Ontario", "Dallas"]),
            }
            template = rng.choice(spec["messages"])
            body = template.format(**fmt)
            posted = self.past(rng, self.history_days, 0.01, recent_bias=2.2)
            row = {
                "message_id": msg_id,
                "channel": channel,
                "author_employee_id": author,
                "posted_at": ts(posted),
                "thread_parent_id": None,
                "related_order_id": order["order_id"] if "{order_id}" in template else None,
                "related_product_id": product["product_id"] if "{product" in template else None,
                "body": body,
            }
            posts.append(row)
            msg_id += 1
            for _ in range(rng.choice([0, 0, 0, 1, 1, 2])):
                replier = rng.choice([e for t_ in teams for e in team_staff[t_]])
                posted = posted + dt.timedelta(minutes=rng.randint(1, 240))
                if posted >= self.now:
                    break
                posts.append(
                    {
                        "message_id": msg_id,
                        "channel": channel,
                        "author_employee_id": replier,
                        "posted_at": ts(posted),
                        "thread_parent_id": row["message_id"],
                        "related_order_id": None,
                        "related_product_id": None,
                        "body": rng.choice(chat["replies"]).format(**fmt),
                    }
                )
                msg_id += 1
        self._renumber(posts, "message_id", "posted_at", lambda i: i + 1, ((posts, "thread_parent_id"),))
        self.t["ops_chat_messages"] = posts

    def finalize_customers(self) -> None:
        rng = self.rng("finalize")
        spend: dict[str, int] = defaultdict(int)
        last_activity: dict[str, str] = {}
        for o in self.orders_:
            if o["status"] != "cancelled":
                spend[o["customer_id"]] += o["total_cents"]
            last_activity[o["customer_id"]] = max(last_activity.get(o["customer_id"], ""), o["placed_at"])
        for c in self.customers_:
            tier = self.tiers[c["loyalty_tier_id"]]
            # Spend before the order history we keep (older systems) keeps lifetime spend >= the tier minimum.
            prior = (
                0
                if c["customer_id"] in self.duplicate_customer_ids
                else tier["min_annual_spend_cents"] + rng.randint(0, 150000)
            )
            c["lifetime_spend_cents"] = spend[c["customer_id"]] + prior
            c["loyalty_points"] = (c["lifetime_spend_cents"] // 100) * tier["points_per_dollar"] % 250000
            if c["customer_id"] in last_activity and rng.random() < 0.5:
                c["updated_at"] = max(c["created_at"], last_activity[c["customer_id"]])


def _insert(db: sqlite_utils.Database, table: str, rows: list[Row]) -> None:
    if rows:
        db[table].insert_all(rows, batch_size=500)  # type: ignore[union-attr]


def generate(seed: int, scale: float, data: WorldData | None = None) -> bytes:
    """Build the world for (seed, scale) and return the SQLite database as bytes."""
    tables = Generator(seed, scale, data or load()).run()
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(DDL)
        db = sqlite_utils.Database(conn)
        with conn:
            for table in TABLES:
                _insert(db, table, tables.get(table, []))
        problems = conn.execute("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise RuntimeError(f"generator produced dangling references: {problems[:5]}")
        conn.execute("VACUUM")
        return conn.serialize()
    finally:
        conn.close()
