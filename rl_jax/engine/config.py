"""The engine's sizes: how many slots, how long a conversation, how much shared prefix, the program shapes."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Sizes of the slot cache and of the compiled programs (every program's shapes come from here).

    ``max_len``: a conversation's context (prompt plus new tokens; at most the model's positions). A slot's
    own region holds ``own_capacity`` tokens (default ``max_len``): what a conversation adds after the shared
    prefix it starts with. A smaller region saves memory when every prompt begins with the prefix (CoreCraft's
    system prompt and tools); a prompt whose own part does not fit is refused. ``prefix_capacity``: tokens of
    the shared prefix region (0: no prefix cache); prompts sharing at least ``min_shared_prefix`` leading
    tokens with it read them from there. ``chunk``: the most new tokens a prefill row takes in one call (and
    the prefix region's fill chunk); ``chunk_buckets``: the row lengths prefill programs are compiled for
    (default a quarter, a half and all of ``chunk``: a 61-token chat prompt computes 64 positions, not 256);
    ``prefill_rows``: the row buckets of the prefill program (default 1, 4, 16 and ``slots``: a burst of
    requests as large as the slots prefills in one call); ``decode_steps``: tokens per decode call (between
    two calls requests join and leave, and chunks stream out); ``own_views``: the buckets of own-region length
    attention reads.
    """

    slots: int = 16
    max_len: int = 4096
    own_capacity: int | None = None
    prefix_capacity: int = 0
    min_shared_prefix: int = 256
    chunk: int = 256
    chunk_buckets: tuple[int, ...] | None = None  # default: chunk // 4, chunk // 2, chunk
    prefill_rows: tuple[int, ...] | None = None  # default: 1, 4, 16, slots (those up to slots)
    decode_steps: int = 16
    own_views: tuple[int, ...] | None = None  # default: a quarter, a half and all of the own region

    def __post_init__(self) -> None:
        for name in ("slots", "max_len", "chunk", "decode_steps", "min_shared_prefix"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.prefix_capacity < 0:
            raise ValueError(f"prefix_capacity must be >= 0; got {self.prefix_capacity}")
        if self.own_capacity is not None and self.own_capacity < 1:
            raise ValueError(f"own_capacity must be >= 1; got {self.own_capacity}")
        rows = self.prefill_rows if self.prefill_rows is not None else (1, 4, 16, self.slots)
        if not rows or min(rows) < 1:
            raise ValueError(f"prefill_rows must be row counts >= 1; got {self.prefill_rows}")
        object.__setattr__(self, "prefill_rows", tuple(sorted({min(r, self.slots) for r in rows})))
        chunks = self.chunk_buckets if self.chunk_buckets is not None else (self.chunk // 4, self.chunk // 2)
        if self.chunk_buckets is not None and (not chunks or min(chunks) < 1):
            raise ValueError(f"chunk_buckets must be lengths >= 1; got {self.chunk_buckets}")
        # the largest bucket is always ``chunk`` (what the region pads are sized for)
        object.__setattr__(self, "chunk_buckets",
                           tuple(sorted({min(c, self.chunk) for c in chunks if c >= 1} | {self.chunk})))

    @property
    def own_slots(self) -> int:
        """Token slots a conversation's own region can hold."""
        return self.max_len if self.own_capacity is None else min(self.own_capacity, self.max_len)

    @property
    def pad(self) -> int:
        """Slots past each region's capacity that absorb the writes of rows with nothing to write."""
        return max(self.chunk, self.decode_steps)

    @property
    def views(self) -> tuple[int, ...]:
        """Own-region lengths attention reads, ascending; the last is the whole buffer."""
        whole = self.own_slots + self.pad
        wanted = self.own_views if self.own_views is not None else (self.own_slots // 4, self.own_slots // 2)
        return tuple(sorted({v for v in wanted if 0 < v < whole} | {whole}))

    def view_for(self, needed: int) -> int:
        return next(v for v in self.views if v >= needed)

    def rows_for(self, rows: int) -> int:
        return next((r for r in self.prefill_rows if r >= rows), self.prefill_rows[-1])

    def chunk_for(self, tokens: int) -> int:
        """The smallest chunk bucket holding ``tokens`` new tokens (``chunk`` for more)."""
        return next((c for c in self.chunk_buckets if c >= tokens), self.chunk)
