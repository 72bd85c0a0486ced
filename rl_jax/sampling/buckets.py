"""Shape buckets and left-padded batch packing for the sampler (host side, numpy only).

Every distinct (batch, prompt length, new tokens) shape is a separate XLA program; rounding each up to a
few sizes means a whole run of varied prompts compiles a handful of programs instead of one per length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Batch sizes round up to a power of two; lengths to a power of two or 1.5x one (16, 24, 32, 48, ...), and
    from ``fine_from`` on to eighths of a power of two (2560, 3072, 3584, 4096, 5120, ...).

    The 1.5x steps bound the padding at a third of the bucket instead of a half, for at most twice as many
    programs; ``min_length`` keeps short prompts from each getting a program of their own. Long prompts get
    finer steps (padding under a fifth of the bucket): a prefill's work grows with the square of its length
    (attention) while a program's compile time does not, so at thousands of tokens the padding costs more than
    a few more programs (the main job's 6,594-token prompts: 7,168 slots, not 8,192).
    """

    min_batch: int = 1
    min_length: int = 16
    fine_from: int = 2048

    def __post_init__(self) -> None:
        if self.min_batch < 1 or self.min_length < 1 or self.fine_from < 16:
            raise ValueError(f"bucket minimums must be >= 1 (fine_from >= 16); got {self}")

    def batch(self, n: int) -> int:
        return max(self.min_batch, _next_power_of_two(n))

    def length(self, n: int) -> int:
        n = max(n, self.min_length)
        p = _next_power_of_two(n)
        if n > self.fine_from:
            eighth = p // 8
            return -(-n // eighth) * eighth
        three_quarters = 3 * p // 4
        return three_quarters if p >= 4 and n <= three_quarters else p


def _next_power_of_two(n: int) -> int:
    if n < 1:
        raise ValueError(f"size must be >= 1; got {n}")
    return 1 << (n - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class PackedPrompts:
    """Prompts left-padded to a common length so that every row's last real token sits in the last column."""

    tokens: np.ndarray  # [B, P] int32, pad_id on the left
    positions: np.ndarray  # [B, P] int32, 0.. within each prompt (pads at 0)
    mask: np.ndarray  # [B, P] bool, False on padding
    lengths: np.ndarray  # [B] int32, real prompt lengths (1 for filler rows)
    live: np.ndarray  # [B] bool, False for filler rows that only round the batch up to its bucket


def pack_prompts(
    prompts: Sequence[Sequence[int]], batch: int, length: int, pad_id: int, vocab_size: int
) -> PackedPrompts:
    """Left-pad ``prompts`` into a [batch, length] block; rows past ``len(prompts)`` are one-token fillers."""
    if not prompts:
        raise ValueError("need at least one prompt")
    if len(prompts) > batch:
        raise ValueError(f"{len(prompts)} prompts do not fit a batch bucket of {batch}")
    tokens = np.full((batch, length), pad_id, np.int32)
    mask = np.zeros((batch, length), bool)
    lengths = np.ones((batch,), np.int32)
    live = np.zeros((batch,), bool)
    for row, prompt in enumerate(prompts):
        ids = np.asarray(prompt, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError(f"prompt {row} is empty; every prompt needs at least one token")
        if ids.size > length:
            raise ValueError(f"prompt {row} has {ids.size} tokens, more than the bucket length {length}")
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"prompt {row} has token ids outside [0, {vocab_size})")
        tokens[row, length - ids.size :] = ids
        mask[row, length - ids.size :] = True
        lengths[row] = ids.size
        live[row] = True
    # filler rows attend to one real slot, so no softmax runs over an all-masked row
    mask[len(prompts) :, -1] = True
    positions = np.maximum(np.cumsum(mask, axis=1, dtype=np.int32) - 1, 0)
    return PackedPrompts(tokens=tokens, positions=positions, mask=mask, lengths=lengths, live=live)
