"""Build compatibility: evaluate the declarative ``compatibility_rules`` over a build's parts (pure).

The generator uses it to label saved builds; tools can use it for validateBuildCompatibility, so the
world's labels and the tool's answers agree by construction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Part:
    product_id: str
    category: str
    specs: Mapping[str, Any]
    quantity: int = 1


@dataclass(frozen=True)
class Violation:
    rule_id: str
    severity: str  # 'error' | 'warning'
    message: str
    left_product_id: str | None
    right_product_id: str
    detail: str


def _in_list(value: Any, listing: Any) -> bool:
    return str(value) in {item.strip() for item in str(listing).split(",")}


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "eq":
        return left == right
    if op == "in_list":
        return _in_list(left, right)
    if op == "lte":
        return left <= right
    if op == "gte":
        return left >= right
    raise ValueError(f"unknown pairwise operator {op!r}")


def check_build(parts: Sequence[Part], rules: Iterable[Mapping[str, Any]]) -> list[Violation]:
    """Violations of ``rules`` (rows of compatibility_rules) by ``parts``; empty means compatible.

    A rule applies only when the build has parts of both its categories and both attributes are known
    (NULL specs are skipped, not failed: an incomplete spec sheet is not evidence of incompatibility).
    """
    violations: list[Violation] = []
    for rule in rules:
        op = rule["operator"]
        lcat, lattr = rule["left_category"], rule["left_attribute"]
        rcat, rattr = rule["right_category"], rule["right_attribute"]
        rights = [p for p in parts if p.category == rcat and p.specs.get(rattr) is not None]
        if not rights:
            continue
        if op in ("sum_lte", "count_gte"):
            lefts = [
                p for p in parts if (lcat == "*" or p.category == lcat) and p.specs.get(lattr) is not None
            ]
            if not lefts:
                continue
            total = sum(p.specs[lattr] * p.quantity for p in lefts) + (rule.get("overhead_watts") or 0)
            for right in rights:
                ok = total <= right.specs[rattr]
                if not ok:
                    violations.append(
                        Violation(
                            rule["rule_id"],
                            rule["severity"],
                            rule["message"],
                            None,
                            right.product_id,
                            f"needs {total} {lattr}, {right.product_id} provides {right.specs[rattr]} {rattr}",
                        )
                    )
            continue
        lefts = [p for p in parts if p.category == lcat and p.specs.get(lattr) is not None]
        for left in lefts:
            for right in rights:
                if not _compare(op, left.specs[lattr], right.specs[rattr]):
                    violations.append(
                        Violation(
                            rule["rule_id"],
                            rule["severity"],
                            rule["message"],
                            left.product_id,
                            right.product_id,
                            f"{left.product_id}.{lattr}={left.specs[lattr]!r} vs "
                            f"{right.product_id}.{rattr}={right.specs[rattr]!r}",
                        )
                    )
    return violations


def build_status(violations: Sequence[Violation]) -> str:
    """'incompatible' on any error, 'warnings' on warnings only, else 'compatible'."""
    if any(v.severity == "error" for v in violations):
        return "incompatible"
    if violations:
        return "warnings"
    return "compatible"
