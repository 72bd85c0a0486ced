"""The generator's shared state and helpers; the sections (``corecraft.world.sections``) fill the tables.

Each section draws from its own ``random.Random`` seeded by (seed, section name), so adding a section never
reshuffles the others. Rows are built in memory as plain dicts, parents before children, so later sections
can update earlier rows (an order becomes 'returned'); ``corecraft.world.generate`` then inserts them.
No wall clock anywhere: every timestamp derives from the world's fixed ``today``.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from corecraft.world import compat
from corecraft.world.data import WorldData

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


class _Ids:
    """Sequential human-facing ids per prefix ('ORD-200001', ...)."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def take(self, prefix: str, start: int, width: int = 0) -> str:
        n = self._next.get(prefix, start)
        self._next[prefix] = n + 1
        return f"{prefix}-{n:0{width}d}" if width else f"{prefix}-{n}"


class Generator:
    """Shared state of one generation run: the rows so far (``t``, by table) and the indexes sections build
    for the sections after them. Which section sets what:

    reference   state_region, zone, rates, services, carrier_prefix, tiers, slas, staff_by_team, former_staff
    catalog     products, specs, by_category
    knowledge   policy_by_area, policy_params, kb_by_key, promos
    customers   customers_, duplicate_customer_ids, builds_, build_parts
    orders      orders_, lines_by_order, shipments_by_order
    support     tickets_
    """

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

    # Ids ascend with time, as in a real system: renumber rows created out of time order.
    @staticmethod
    def renumber(
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

    def param(self, area: str, key: str) -> Any:
        """A number from an active company policy (policy_parameters), e.g. ('returns', 'window_days')."""
        return self.policy_params[(area, key)]

    def parts(self, components: dict[str, int]) -> list[compat.Part]:
        return [
            compat.Part(pid, self.products[pid]["category"], self.specs[pid], qty)
            for pid, qty in components.items()
        ]

    def shipping_quote(
        self, service_id: str, warehouse_region: str, dest_state: str | None, weight_g: int
    ) -> int:
        dest_region = self.state_region.get(dest_state or "", "central")
        zone = self.zone[(warehouse_region, dest_region)]
        rate = self.rates[(service_id, zone)]
        return rate["base_cents"] + rate["per_kg_cents"] * max(1, math.ceil(weight_g / 1000))
