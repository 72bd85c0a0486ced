"""What the processes of a multi-host run agree on: their share of the tasks, shared shapes, gathered records.

Every process runs its own rollout pool on its share of a step's tasks and feeds its own rows to the train
step; these are the few values they exchange (with ``process_allgather``, a collective: every process calls
each function at the same point). With one process each is the identity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

T = TypeVar("T")


def process_share(items: Sequence[T], processes: int | None = None, index: int | None = None) -> tuple[list[T], int]:
    """This process's contiguous block of ``items`` and where it starts (blocks differ in size by at most 1)."""
    n = jax.process_count() if processes is None else processes
    me = jax.process_index() if index is None else index
    bounds = np.linspace(0, len(items), n + 1).round().astype(int)
    return list(items[bounds[me]:bounds[me + 1]]), int(bounds[me])


def gather_max(values: Sequence[int]) -> list[int]:
    """The element-wise maximum of ``values`` over all processes."""
    if jax.process_count() == 1:
        return [int(v) for v in values]
    gathered = np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int64)))
    return [int(v) for v in gathered.reshape(jax.process_count(), -1).max(axis=0)]


def gather_records(records: Sequence[Any]) -> list[Any]:
    """Every process's JSON-able ``records``, concatenated in process order."""
    if jax.process_count() == 1:
        return list(records)
    data = np.frombuffer(json.dumps(list(records), default=str).encode(), np.uint8)
    (longest,) = gather_max([data.size])
    padded = np.zeros(longest + 1, np.int64)
    padded[0] = data.size
    padded[1 : data.size + 1] = data
    table = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), -1)
    out: list[Any] = []
    for row in table:
        out.extend(json.loads(bytes(row[1 : int(row[0]) + 1].astype(np.uint8)).decode()))
    return out
