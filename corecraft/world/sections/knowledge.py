"""Company policies, KB articles (incl. stale ones and catalog-derived guides), build rules, warranty
terms and promotions."""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from corecraft.world.generator import (
    Generator,
    Row,
    cents,
    ts,
)


def policies(g: Generator) -> None:
    """Company policies (Markdown) and their machine-readable parameters; retired versions kept."""
    g.policy_by_area: dict[str, Row] = {}
    g.policy_params: dict[tuple[str, str], Any] = {}
    for doc in g.data.policies:
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
        g.t["company_policies"].append(row)
        if row["status"] == "active":
            g.policy_by_area[f["area"]] = row
        for key, value in f.get("parameters", {}).items():
            value_type = {bool: "bool", int: "int", float: "float"}.get(type(value), "text")
            desc = f.get("parameter_docs", {}).get(key, key.replace("_", " "))
            g.t["policy_parameters"].append(
                {
                    "policy_id": f["id"],
                    "param_key": key,
                    "param_value": str(value).lower() if isinstance(value, bool) else str(value),
                    "value_type": value_type,
                    "description": desc,
                }
            )
            if row["status"] == "active":
                g.policy_params[(f["area"], key)] = value
    # Parents before children for the self-reference.
    g.t["company_policies"].sort(key=lambda r: (r["policy_area"], r["version"]))


def knowledge_base(g: Generator) -> None:
    """KB articles from worlds/corecraft/kb (some stale) plus guides derived from the catalog."""
    rng = g.rng("kb")
    g.kb_by_key: dict[str, str] = {}
    rows: list[Row] = []
    authors = g.staff_by_team["support_t2"] + g.staff_by_team["support_t1"][:3] + g.former_staff
    for n, doc in enumerate(g.data.kb, start=1001):
        f = doc.front
        article_id = f.get("id", f"KB-{n}")
        published = g.now - dt.timedelta(days=f.get("published_days_ago", rng.randint(30, 700)))
        updated = published + dt.timedelta(days=rng.randint(0, max(1, (g.now - published).days)))
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
                "updated_at": ts(min(updated, g.now)),
                "view_count": rng.randint(20, 9000),
            }
        )
        if "key" in f:
            g.kb_by_key[f["key"]] = article_id
    rows.extend(_generated_kb(g, rng, authors, start=len(rows) + 2001))
    # Referenced articles first (superseded_by points at newer ones).
    ids = {r["article_id"] for r in rows}
    for r in rows:
        if r["superseded_by"] and r["superseded_by"] not in ids:
            raise ValueError(f"kb {r['article_id']} superseded_by unknown {r['superseded_by']}")
    rows.sort(key=lambda r: (r["superseded_by"] is not None, r["article_id"]))
    g.t["kb_articles"] = rows


def _generated_kb(g: Generator, rng: random.Random, authors: list[str], start: int) -> Iterator[Row]:
    """Per-case clearance sheets and per-socket compatibility guides, derived from the catalog."""
    n = start
    for pid in g.by_category["case"]:
        p, s = g.products[pid], g.specs[pid]
        coolers = [
            g.products[c]["name"]
            for c in g.by_category["cooler"]
            if g.specs[c]["cooler_height_mm"] and g.specs[c]["cooler_height_mm"] <= s["max_cooler_height_mm"]
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
        created = g.past(rng, 500, 20)
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
    for pid in g.by_category["cpu"]:
        sockets[g.specs[pid]["socket"]].append(pid)
    for socket, cpus in sorted(sockets.items()):
        boards = [b for b in g.by_category["motherboard"] if g.specs[b]["socket"] == socket]
        lines = [f"# {socket} platform compatibility guide\n", "## Processors\n"]
        lines += [
            f"- {g.products[c]['name']} ({g.specs[c]['cpu_series']}, {g.specs[c]['tdp_watts']} W)"
            for c in cpus
        ]
        lines.append("\n## Motherboards\n")
        for b in boards:
            bs = g.specs[b]
            lines.append(
                f"- {g.products[b]['name']}: {bs['chipset']}, {bs['form_factor']}, {bs['memory_type']} up to "
                f"{bs['max_memory_speed_mhz']} MT/s; BIOS as shipped supports {bs['supported_cpu_series'].replace(',', ', ')}"
            )
        lines.append(
            "\nIf a processor's series is not listed for a board, the board needs a BIOS update first. "
            "Boards with BIOS Flashback can be updated without a CPU; otherwise see the BIOS update policy "
            "(CoreCraft performs BIOS updates for $29.99, free for Gold and Platinum members).\n"
        )
        created = g.past(rng, 400, 30)
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


def compatibility_rules(g: Generator) -> None:
    """Declarative build rules, each linked to the KB guide that explains it."""
    for r in g.data.compatibility["rules"]:
        g.t["compatibility_rules"].append(
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
                "kb_article_id": g.kb_by_key.get(r.get("kb", "")),
            }
        )


def warranty_policies(g: Generator) -> None:
    """Warranty terms by brand and/or category, with effective dates."""
    for w in g.data.warranty["policies"]:
        g.t["warranty_policies"].append(
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


def promotions(g: Generator) -> None:
    """Promotion codes with eligibility and expiry; some expired ones still flagged active (noise)."""
    rng = g.rng("promotions")
    g.promos: list[Row] = []
    for n, p in enumerate(g.data.promotions["promotions"], start=1):
        start = g.now + dt.timedelta(days=p["start"], hours=-16)
        end = g.now + dt.timedelta(days=p["end"], hours=8)
        expired = end < g.now
        active = 1 if not expired else int(rng.random() < g.noise["stale_promotion_active_rate"])
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
            "terms": _promo_terms(g, p),
        }
        g.promos.append(row)
    g.t["promotions"] = g.promos


def _promo_terms(g: Generator, p: dict[str, Any]) -> str:
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
        "Cannot be combined with other codes." if not p.get("stackable") else "Stacks with one other code."
    )
    parts.append("Not valid on prior purchases; no cash value.")
    return " ".join(parts)
