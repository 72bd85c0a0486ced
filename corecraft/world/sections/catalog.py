"""The product catalog (products + typed specs, from worlds/corecraft/catalog) and per-warehouse stock."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from corecraft.world.generator import (
    CATEGORY_CODES,
    SPEC_COLUMNS,
    Generator,
    Row,
    cents,
    ts,
)


def catalog(g: Generator) -> None:
    """Products and their typed specs from the catalog files; a seeded share of prices moves off list."""
    rng = g.rng("catalog")
    brand_names = {b["brand_id"]: b["name"] for b in g.t["brands"]}
    entries: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (category, product fields, specs)
    for _stem, doc in sorted(
        g.data.catalog.items(), key=lambda kv: list(CATEGORY_CODES).index(kv[1]["category"])
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

    g.products: dict[str, Row] = {}
    g.specs: dict[str, Row] = {}
    g.by_category: dict[str, list[str]] = defaultdict(list)
    for category, f, specs in entries:
        pid = g.ids.take(CATEGORY_CODES[category], 1, 4)
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
        release = f.get("release") or (g.today - dt.timedelta(days=rng.randint(120, 900))).isoformat()
        spec_text = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in specs.items() if v is not None)
        g.products[pid] = {
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
        g.specs[pid] = {"product_id": pid, **{c: specs.get(c) for c in SPEC_COLUMNS}}
        g.by_category[category].append(pid)
    g.t["products"] = list(g.products.values())
    g.t["product_specs"] = list(g.specs.values())


def inventory(g: Generator) -> None:
    """Stock per (warehouse, product): out-of-stock items with restock ETAs, preorders, discontinued leftovers."""
    rng = g.rng("inventory")
    for pid, p in g.products.items():
        for wh in g.t["warehouses"]:
            overflow = wh["warehouse_id"] == "WH-ATL"
            if overflow and rng.random() < 0.6:
                continue
            if p["status"] == "preorder":
                on_hand, eta = 0, g.today + dt.timedelta(days=rng.randint(10, 40))
            elif p["status"] == "discontinued":
                on_hand, eta = (rng.choice([0, 0, 0, 1, 2, 3]), None)
            else:
                roll = rng.random()
                if roll < 0.12:
                    on_hand, eta = 0, g.today + dt.timedelta(days=rng.randint(3, 45))
                elif roll < 0.25:
                    on_hand, eta = rng.randint(1, 4), g.today + dt.timedelta(days=rng.randint(5, 30))
                else:
                    base = 60 if p["price_cents"] < 20000 else 25
                    on_hand, eta = rng.randint(5, base), None
            reserved = min(on_hand, rng.choice([0, 0, 0, 1, 2]))
            g.t["inventory"].append(
                {
                    "warehouse_id": wh["warehouse_id"],
                    "product_id": pid,
                    "quantity_on_hand": on_hand,
                    "quantity_reserved": reserved,
                    "reorder_point": 3 if p["price_cents"] > 50000 else 8,
                    "restock_eta": eta.isoformat() if eta else None,
                    "bin_location": f"{rng.choice('ABCDEFGH')}-{rng.randint(1, 40):02d}-{rng.randint(1, 6)}",
                    "updated_at": ts(g.past(rng, 6, recent_bias=2.0)),
                }
            )
