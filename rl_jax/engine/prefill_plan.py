"""How one round of prefill pieces is cut into program calls (host side, pure): which rows share a call, at which
chunk bucket and row bucket.

A prefill call computes ``rows x chunk`` positions whatever its rows need, so its cost is the bucket's area, not
the tokens it holds (measured on SmolLM2-135M: ~3 ms per computed position on the 2-core CPU, whether it was a
prompt token or padding). Every row with tokens to prefill gets one piece per round (at most ``chunk`` tokens);
rows are grouped by the chunk bucket their piece needs, largest first, so a short piece never pays for a long
one's chunk; a call's spare rows (its row bucket rounds up) carry the next-largest pieces, which is free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from rl_jax.engine.config import EngineConfig


@dataclasses.dataclass(frozen=True)
class PrefillCall:
    """One prefill program call: ``members`` index the pieces it computes (at most ``rows`` of them), each
    row ``chunk`` positions long."""

    chunk: int
    rows: int
    members: tuple[int, ...]


def plan_prefill_calls(pieces: Sequence[int], config: EngineConfig, row_multiple: int = 1) -> list[PrefillCall]:
    """Calls covering every piece once (``pieces[i]``: tokens row ``i`` still has to prefill, > 0; a row takes
    at most ``config.chunk`` of them this round). ``row_multiple``: row buckets round up to a multiple of it
    (a mesh's batch shards)."""
    if any(p < 1 for p in pieces):
        raise ValueError(f"every piece must hold a token; got {list(pieces)}")
    bucket = [config.chunk_for(min(p, config.chunk)) for p in pieces]
    order = sorted(range(len(pieces)), key=lambda i: (-bucket[i], -pieces[i], i))
    most_rows = config.prefill_rows[-1]
    calls: list[PrefillCall] = []
    while order:
        chunk = bucket[order[0]]
        alike = [i for i in order if bucket[i] == chunk][:most_rows]
        rows = -(-config.rows_for(len(alike)) // row_multiple) * row_multiple
        others = [i for i in order if bucket[i] != chunk]
        members = alike + others[: rows - len(alike)]
        calls.append(PrefillCall(chunk, rows, tuple(members)))
        taken = set(members)
        order = [i for i in order if i not in taken]
    return calls
