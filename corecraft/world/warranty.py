"""Which warranty policy covers a product on a date (pure): the rule the Warranty Service Policy states.

The most specific policy in force wins: (brand, category) > (brand, any category) > (any brand, category) >
(any, any); among equally specific ones, the most recent ``effective_from``. The generator labels warranty
claims with it; a tool answering getWarrantyPolicy should give the same answer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any


def applicable_warranty(
    policies: Iterable[Mapping[str, Any]], brand_id: str | None, category: str | None, on: dt.date
) -> Mapping[str, Any] | None:
    day = on.isoformat()
    best: tuple[int, str] | None = None
    chosen = None
    for policy in policies:
        if policy["effective_from"] > day or (policy["effective_to"] and policy["effective_to"] < day):
            continue
        if policy["brand_id"] not in (None, brand_id) or policy["category"] not in (None, category):
            continue
        key = (
            2 * (policy["brand_id"] is not None) + (policy["category"] is not None),
            policy["effective_from"],
        )
        if best is None or key > best:
            best, chosen = key, policy
    return chosen
