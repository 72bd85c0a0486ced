"""Shrink JSON-schema tool definitions for small context windows, keeping what a model needs to call them.

Schemas generated from type hints (pydantic, the MCP SDK) spell ``Optional[str]`` as
``anyOf: [{type: string, ...}, {type: null}]`` and add titles and ``default: null`` everywhere; rendered into
a prompt, 23 such tools cost ~12k tokens. The compact form keeps names, types, enums, bounds, formats,
descriptions and ``required``, and drops only what carries no information for the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_DROP = frozenset({"title", "additionalProperties", "$schema"})
# Length and range limits are enforced by the tool, which names the argument when one is broken; a model
# with a small context can learn them from that error instead of reading them on every turn.
_BOUNDS = frozenset({"minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems"})


def compact_schema(schema: Any, *, keep_bounds: bool = True) -> Any:
    """A smaller, equivalent-for-the-caller copy of a JSON schema (pure; the input is not modified).

    ``keep_bounds=False`` also drops length and range limits (see ``_BOUNDS``).
    """
    drop = _DROP if keep_bounds else _DROP | _BOUNDS

    return _compact(schema, drop)


def _compact(schema: Any, drop: frozenset[str]) -> Any:
    if isinstance(schema, list):
        return [_compact(s, drop) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    variants = schema.get("anyOf")
    if isinstance(variants, list):
        non_null = [v for v in variants if not (isinstance(v, Mapping) and v.get("type") == "null")]
        if len(non_null) == 1 and len(non_null) < len(variants):
            # Optional[T]: the inner schema, described by the outer description when it has one.
            inner = _compact(non_null[0], drop)
            outer = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            return _compact({**inner, **outer}, drop)
    for key, value in schema.items():
        if key in drop:
            continue
        if key == "default" and value is None:
            continue
        if key == "properties" and isinstance(value, Mapping):
            out[key] = {name: _compact(prop, drop) for name, prop in value.items()}
        else:
            out[key] = _compact(value, drop)
    return out


def compact_description(description: str, max_chars: int = 240) -> str:
    """The first paragraph of a tool description, cut at a sentence end when it is long."""
    first = description.strip().split("\n\n", 1)[0].strip()
    if len(first) <= max_chars:
        return first
    cut = first[:max_chars]
    end = cut.rfind(". ")
    return cut[: end + 1] if end > 0 else cut.rstrip() + "…"
