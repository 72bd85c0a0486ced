"""Small helpers the families share: money text, standard criteria, read-only tool calls at build time."""

from __future__ import annotations

import datetime as dt
from typing import Any

from corecraft.tasks.family import Rubric
from corecraft.tasks.plant import Planter, Product, usd

__all__ = ["Planter", "Product", "Rubric", "ask", "dollars", "fmt_date", "no_writes", "read_policy", "read_tool",
           "return_window", "usd"]


def dollars(cents: int) -> float:
    return round(cents / 100, 2)


def fmt_date(day: dt.date | str) -> str:
    d = dt.date.fromisoformat(day[:10]) if isinstance(day, str) else day
    return d.isoformat()


def no_writes(r: Rubric, text: str = "Changes nothing in the company's systems (a read-only request)") -> None:
    """Read-only requests must not modify anything: every writing tool leaves an audit_log row."""
    r.count(text, "audit_log", [], "==", 0, axis="constraint")


def read_tool(p: Planter, name: str, **arguments: Any) -> dict[str, Any]:
    """Runs a read-only tool on the world being built, for facts the company's own engines define (shipping
    quotes, warranty end dates). Raises if the tool refuses: a family must plant a situation the tools accept."""
    from corecraft.tools import TOOLS, call_tool

    if TOOLS[name].writes:
        raise ValueError(f"{name} writes; families may only read while building")
    result = call_tool(p.conn, name, arguments)
    if result.is_error or result.data is None:
        raise RuntimeError(f"{name}({arguments}) failed while building a task: {result.text}")
    return result.data


def read_policy(r: Rubric, p: Planter, area: str) -> None:
    """The oracle reads the active company policy of an area in full, as an agent without it in context must."""
    r.call("getKnowledgebaseArticle", article_id=p.policy_id(area))


def return_window(p: Planter, tier: str) -> int:
    """The return window a tier gets: the returns policy's tier window (else its standard one), or the tier
    record's own window when that is longer."""
    try:
        policy = int(p.policy_param("returns", f"{tier}_window_days"))
    except LookupError:
        policy = int(p.policy_param("returns", "window_days"))
    return max(policy, p.tier(tier)["return_window_days"])


def ask(*parts: str) -> str:
    return " ".join(x.strip() for x in parts if x.strip())
