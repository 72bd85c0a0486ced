"""Collating GRPO rows as a prefix tree: the tokens rows share are found, laid out once, and trained once.

``collate_tree`` takes the same trajectories as ``collate`` and finds, per copy (one per data shard):

* level 0, the longest prefix every row of the copy shares (the system prompt and tool listing);
* level 1, per group of rows (a GRPO group: ``groups`` gives each row's, or rows are grouped by their first
  token after level 0), the longest prefix the group's rows share after level 0 (the task's request);
* each row's own tokens after its group's segment: sampled turns, tool results, every trained token.

A shared segment never holds a token whose prediction is trained on: a row's shared part ends before the
position that predicts its first trained token (its logits must be the row's own, scored against its own
advantage), so the loss, the loss window and every per-token array of the ``Batch`` concern the rows' own
tokens only, as in the plain layout. ``rl_jax.models.prefix_tree`` computes the forward and backward passes.

Packed rows: the rows' own tokens differ in length (an episode of two turns beside one of six), and padding
every row to the longest pays for the difference in every layer and in every query's attention over the
thousands of shared tokens. So the rows of each (copy, micro-batch) that share a parent are packed end to end
into lanes of a common width (first fit, longest first; ``Lanes``), each token seeing the shared levels and its
own row only, and the step gathers every row's hidden states back out of its lane: the loss sees the rows as
before. The width is the length bucket (from the rows' own to four times it) that needs the fewest lane
positions. Packing is used when it computes fewer positions than padded rows (``pack=False``: never).

Shapes are bucketed like the plain layout's, so steps reuse their compiled programs: each segment length takes
a length bucket, the segments per copy of level 1 a power of two, and the lanes per (copy, micro-batch) one of
1, 2, 3, 4, 6, 8, 12, ... (two sizes an octave). When the tree would not save at least ``min_saving`` of the
plain layout's token positions (rows with little in common), the plain layout is returned instead. Under
multi-host every process must collate to the same shapes: agree on a ``TreeShape`` (``tree_shape`` on each
process, the element-wise maximum over processes, e.g. ``rl_jax.learner.hosts.gather_max``; it holds every
process's packing at that process's own width) and pass it as ``shape``: the tree is then used whatever it
saves.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from rl_jax.models.prefix_tree import Lanes, TreeLevel
from rl_jax.train.batch import (
    DEFAULT_LENGTH_BUCKETS,
    DEFAULT_WINDOW_BUCKETS,
    Batch,
    bucket_length,
    collate,
    loss_window,
)

DEFAULT_MIN_SAVING = 0.25


@dataclass(frozen=True)
class TreeShape:
    """The static shape of a tree batch: the padded lengths of level 0, of level 1 (0: no level 1, when no
    group shares anything past level 0) and of the rows' own tokens, and the number of level-1 segments per
    copy. ``as_list`` / ``from_list`` round-trip it through an
    element-wise maximum across processes (a larger shape holds every process's tree)."""

    prefix: int
    group_length: int
    groups: int
    length: int
    # the packed layout (module docstring): lanes per (copy, micro-batch) and their width; 0: none
    lanes: int = 0
    lane_length: int = 0

    def as_list(self) -> list[int]:
        return [self.prefix, self.group_length, self.groups, self.length, self.lanes, self.lane_length]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> TreeShape:
        return cls(*(int(v) for v in values))

    def packs(self, *, rows: int, copies: int, micro_batches: int = 1) -> bool:
        """Whether the rows run packed in lanes: when lanes compute fewer positions than ``rows`` padded rows.
        A pure function of shapes (processes that agreed on them agree on this)."""
        return 0 < copies * micro_batches * self.lanes * self.lane_length < rows * self.length

    def row_positions(self, *, rows: int, copies: int, micro_batches: int = 1, pack: bool = True) -> int:
        """The token positions the rows' own tokens take (packed or padded)."""
        if pack and self.packs(rows=rows, copies=copies, micro_batches=micro_batches):
            return copies * micro_batches * self.lanes * self.lane_length
        return rows * self.length


@dataclass(frozen=True)
class _Copy:
    """How one copy's rows split: the level-0 length, each group's level-1 length, each row's group."""

    rows: tuple[int, ...]  # global row indices (real rows only)
    prefix: int
    group_lengths: tuple[int, ...]
    row_group: tuple[int, ...]  # per entry of ``rows``: its group (index into group_lengths)

    def offset(self, k: int) -> int:
        """Where row ``rows[k]``'s own tokens start."""
        return self.prefix + self.group_lengths[self.row_group[k]]


def _common_prefix(seqs: Sequence[np.ndarray]) -> int:
    """Length of the longest common prefix of 1-D integer arrays."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0][:n]
    same = np.ones(n, bool)
    for s in seqs[1:]:
        same &= s[:n] == first
    return n if same.all() else int(np.argmin(same))


def _shareable(tokens: np.ndarray, mask: np.ndarray, trained: bool) -> np.ndarray:
    """A row's tokens that a shared segment may hold: those before the position predicting its first trained
    token (at least one token stays the row's own)."""
    hits = np.flatnonzero(mask[1:] > 0) if trained else np.empty(0, int)
    limit = int(hits[0]) if hits.size else len(tokens) - 1  # token s is predicted at position s - 1
    return tokens[: max(limit, 0)]


def _plan(
    tokens: Sequence[np.ndarray], masks: Sequence[np.ndarray], trained: np.ndarray,
    groups: Sequence[Hashable] | None, copies: int, rows: int,
) -> list[_Copy]:
    block = rows // copies
    plan = []
    for c in range(copies):
        members = tuple(range(c * block, min((c + 1) * block, len(tokens))))
        share = {i: _shareable(tokens[i], masks[i], bool(trained[i])) for i in members}
        prefix = _common_prefix([share[i] for i in members])
        keys: dict[Hashable, int] = {}
        row_group = []
        for i in members:
            if groups is not None:
                key: Hashable = ("group", groups[i])
            else:  # the first token after level 0, or the row alone when it has nothing more to share
                key = ("token", int(share[i][prefix])) if len(share[i]) > prefix else ("row", i)
            row_group.append(keys.setdefault(key, len(keys)))
        lengths = []
        for g in range(len(keys)):
            lengths.append(_common_prefix([share[i][prefix:] for i, k in zip(members, row_group, strict=True) if k == g]))
        plan.append(_Copy(members, prefix, tuple(lengths), tuple(row_group)))
    return plan


def lane_bucket(n: int) -> int:
    """The lane count that holds ``n`` lanes: 1, 2, 3, 4, 6, 8, 12, 16, ... (at most two programs an octave)."""
    if n <= 2:
        return max(n, 1)
    power = 1 << (n - 1).bit_length()
    return power * 3 // 4 if n <= power * 3 // 4 else power


def _first_fit(lengths: Sequence[tuple[int, int]], width: int) -> list[list[tuple[int, int]]]:
    """(row, length) items packed into lanes of ``width``: first fit, longest first (ties by row)."""
    lanes: list[list[tuple[int, int]]] = []
    room: list[int] = []
    for row, n in sorted(lengths, key=lambda item: (-item[1], item[0])):
        for j, free in enumerate(room):
            if n <= free:
                lanes[j].append((row, n))
                room[j] -= n
                break
        else:
            lanes.append([(row, n)])
            room.append(width - n)
    return lanes


def _cells(
    plan: list[_Copy], tokens: Sequence[np.ndarray], micro_batches: int, rows: int,
) -> list[dict[int, list[tuple[int, int]]]]:
    """Per (copy, micro-batch) cell, copy-major: its rows by parent, as (row, own length).

    Row r of copy c is in micro-batch ``r % micro_batches`` (``split_micro_batches`` strides rows). Every real
    row takes a lane, as every row is computed in the unpacked layout (its log-probs are scored); the empty
    rows that pad the batch take none. A copy whose groups share nothing past level 0 packs its groups
    together (their level-1 segments are empty, so one parent serves all)."""
    block = rows // len(plan)
    cells: list[dict[int, list[tuple[int, int]]]] = [{} for _ in range(len(plan) * micro_batches)]
    for c, cp in enumerate(plan):
        level1 = any(cp.group_lengths)
        for k, i in enumerate(cp.rows):
            start = cp.offset(k)
            parent = cp.row_group[k] if level1 else 0
            cell = cells[c * micro_batches + (i - c * block) % micro_batches]
            cell.setdefault(parent, []).append((i, len(tokens[i]) - start))
    return cells


def _packing(cells: list[dict[int, list[tuple[int, int]]]], width: int) -> list[list[tuple[int, list]]]:
    """Each cell's lanes at ``width``: (parent, [(row, own length), ...]) in lane order."""
    return [[(parent, lane) for parent, items in sorted(cell.items()) for lane in _first_fit(items, width)]
            for cell in cells]


def _lane_shape(cells: list[dict[int, list[tuple[int, int]]]], length: int, buckets: Sequence[int]) -> tuple[int, int]:
    """(lanes per cell, width) with the fewest lane positions, widths from the rows' bucket ``length`` to four
    times it (ties: the narrower, whose own-token attention is cheaper); (0, 0) when no row takes a lane."""
    if not any(cells):
        return 0, 0
    best = (0, 0)
    for width in sorted(b for b in buckets if length <= b <= 4 * length):
        lanes = lane_bucket(max(len(cell) for cell in _packing(cells, width)))
        if not best[0] or lanes * width < best[0] * best[1]:
            best = (lanes, width)
    return best


def _natural_shape(
    plan: list[_Copy], tokens: Sequence[np.ndarray], buckets: Sequence[int], micro_batches: int, rows: int,
) -> TreeShape:
    own = max(len(tokens[i]) - cp.offset(k) for cp in plan for k, i in enumerate(cp.rows))
    groups = max(1, max(len(cp.group_lengths) for cp in plan))
    longest_group = max((g for cp in plan for g in cp.group_lengths), default=0)
    length = bucket_length(own, buckets)
    lanes, width = _lane_shape(_cells(plan, tokens, micro_batches, rows), length, buckets)
    return TreeShape(
        prefix=bucket_length(max(cp.prefix for cp in plan), buckets),
        # no group shares anything past level 0 (one group a copy, say): no level 1 at all
        group_length=bucket_length(longest_group, buckets) if longest_group else 0,
        groups=1 << (groups - 1).bit_length(),
        length=length,
        lanes=lanes,
        lane_length=width,
    )


def _prepare(
    tokens: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[float]], valid: Sequence[bool] | None,
    groups: Sequence[Hashable] | None, copies: int, rows_multiple: int, micro_batches: int,
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, int]:
    n = len(tokens)
    if not n:
        raise ValueError("collate_tree needs at least one trajectory")
    if copies < 1:
        raise ValueError(f"copies must be >= 1; got {copies}")
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be >= 1; got {micro_batches}")
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} trajectories")
    trained = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    if trained.shape != (n,):
        raise ValueError(f"valid has shape {trained.shape}; expected one flag per trajectory, ({n},)")
    multiple = int(np.lcm(rows_multiple, copies * micro_batches))
    rows = -(-n // multiple) * multiple
    toks = [np.asarray(t, np.int64) for t in tokens]
    masks = [np.asarray(m, np.float32) for m in loss_masks]
    for i, (t, m) in enumerate(zip(toks, masks, strict=True)):
        if len(t) != len(m):
            raise ValueError(f"trajectory {i}: loss mask length differs from its tokens")
    return toks, masks, trained, rows


def tree_shape(
    tokens: Sequence[Sequence[int]],
    loss_masks: Sequence[Sequence[float]],
    *,
    valid: Sequence[bool] | None = None,
    groups: Sequence[Hashable] | None = None,
    copies: int = 1,
    micro_batches: int = 1,
    rows_multiple: int = 1,
    buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
) -> TreeShape:
    """The shape ``collate_tree`` would choose for these rows (to agree on across processes)."""
    toks, masks, trained, rows = _prepare(tokens, loss_masks, valid, groups, copies, rows_multiple, micro_batches)
    plan = _plan(toks, masks, trained, groups, copies, rows)
    return _natural_shape(plan, toks, buckets, micro_batches, rows)


def saves_enough(
    shape: TreeShape, *, rows: int, copies: int, plain_length: int, min_saving: float = DEFAULT_MIN_SAVING,
    micro_batches: int = 1, pack: bool = True,
) -> bool:
    """Whether a tree of ``shape`` (``rows`` rows in ``copies`` copies, split into ``micro_batches``) computes
    at most ``1 - min_saving`` of the token positions of the plain layout at ``plain_length``. A pure function
    of shapes: processes that agreed on them agree on this too."""
    own = shape.row_positions(rows=rows, copies=copies, micro_batches=micro_batches, pack=pack)
    tree = copies * (shape.prefix + shape.groups * shape.group_length) + own
    return tree <= (1 - min_saving) * rows * plain_length


def collate_tree(
    tokens: Sequence[Sequence[int]],
    loss_masks: Sequence[Sequence[float]],
    old_logps: Sequence[Sequence[float]],
    advantages: Sequence[float],
    ref_logps: Sequence[Sequence[float]] | None = None,
    *,
    valid: Sequence[bool] | None = None,
    groups: Sequence[Hashable] | None = None,
    copies: int = 1,
    micro_batches: int = 1,
    buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
    pad_id: int = 0,
    rows_multiple: int = 1,
    window_buckets: int | None = DEFAULT_WINDOW_BUCKETS,
    window: int | None = None,
    shape: TreeShape | None = None,
    min_saving: float = DEFAULT_MIN_SAVING,
    pack: bool = True,
) -> Batch:
    """A host ``Batch`` laid out as a prefix tree (module docstring), or ``collate``'s plain one when the tree
    would save less than ``min_saving`` of the token positions and no ``shape`` is imposed.

    Arguments as ``collate``'s, plus ``groups`` (one hashable per trajectory: rows of a group share a level-1
    segment; default: grouped by their first token after the common prefix), ``copies`` (level-0 copies, one
    per data shard; the row count is padded to a multiple of it, rows ``c * B / copies ...`` belong to copy
    c), ``micro_batches`` (the train step's: rows are packed within each micro-batch; the row count is padded
    to a multiple of copies x micro-batches), ``shape`` (a ``TreeShape`` agreed across processes; it must hold
    these rows' tree) and ``pack`` (False: never pack rows into lanes). ``window`` fixes the loss window's
    length as in ``collate``.
    """
    if not 0 <= min_saving < 1:
        raise ValueError(f"min_saving must lie in [0, 1); got {min_saving}")
    n = len(tokens)
    for name, seqs in (("loss_masks", loss_masks), ("old_logps", old_logps), ("advantages", advantages)):
        if len(seqs) != n:
            raise ValueError(f"{name} has {len(seqs)} entries for {n} trajectories")
    toks, masks, trained, rows = _prepare(tokens, loss_masks, valid, groups, copies, rows_multiple, micro_batches)
    plan = _plan(toks, masks, trained, groups, copies, rows)
    natural = _natural_shape(plan, toks, buckets, micro_batches, rows)
    if shape is None:
        plain_length = bucket_length(max(len(t) for t in toks), buckets)
        if not saves_enough(natural, rows=rows, copies=copies, plain_length=plain_length, min_saving=min_saving,
                            micro_batches=micro_batches, pack=pack):
            return collate(tokens, loss_masks, old_logps, advantages, ref_logps, valid=valid, buckets=buckets,
                           pad_id=pad_id, rows_multiple=int(np.lcm(rows_multiple, copies * micro_batches)),
                           window_buckets=window_buckets, window=window)
        shape = natural
    else:
        # the lanes must hold this process's packing only where the agreed shape packs
        fields = 6 if pack and shape.packs(rows=rows, copies=copies, micro_batches=micro_batches) else 4
        have, room = natural.as_list()[:fields], shape.as_list()[:fields]
        if any(h > r for h, r in zip(have, room, strict=True)):
            raise ValueError(f"these rows need a tree of {natural}; the agreed shape {shape} is smaller")

    level0 = _empty_level(copies, shape.prefix, pad_id)
    level1 = _empty_level(copies * shape.groups, shape.group_length, pad_id) if shape.group_length else None
    tok = np.full((rows, shape.length), pad_id, np.int32)
    pos = np.zeros((rows, shape.length), np.int32)
    attn = np.zeros((rows, shape.length), bool)
    mask = np.zeros((rows, shape.length), np.float32)
    old = np.zeros((rows, shape.length), np.float32)
    ref = np.zeros((rows, shape.length), np.float32) if ref_logps is not None else None
    adv = np.zeros((rows,), np.float32)
    parent = np.zeros((rows,), np.int32)
    for c, cp in enumerate(plan):
        if not cp.rows:
            continue
        head = toks[cp.rows[0]]
        _fill(level0, c, head[: cp.prefix], 0)
        for g, length in enumerate(cp.group_lengths if level1 is not None else ()):
            first = cp.rows[cp.row_group.index(g)]
            _fill(level1, c * shape.groups + g, toks[first][cp.prefix : cp.prefix + length], cp.prefix)
        for k, i in enumerate(cp.rows):
            start = cp.offset(k)
            own = toks[i][start:]
            m = len(own)
            tok[i, :m] = own
            pos[i, :m] = start + np.arange(m)
            attn[i, :m] = True
            parent[i] = cp.row_group[k] if level1 is not None else 0
            old[i, :m] = np.asarray(old_logps[i], np.float32)[start:]
            if ref is not None and ref_logps is not None:
                ref[i, :m] = np.asarray(ref_logps[i], np.float32)[start:]
            if not trained[i]:
                continue  # a failed episode: nothing trained (as in ``collate``)
            mask[i, :m] = masks[i][start:]
            mask[i, 0] = 0.0  # never trained: _shareable keeps every trained token's predictor here
            adv[i] = advantages[i]
    old *= mask
    start_w, size = loss_window(mask, window_buckets, window=window)
    lanes = slot = None
    if pack and shape.packs(rows=rows, copies=copies, micro_batches=micro_batches):
        # packed at this process's own width, which fits the agreed shape (an element-wise maximum)
        cells = _cells(plan, toks, micro_batches, rows)
        lanes, slot = _lay_out_lanes(_packing(cells, natural.lane_length), tok, pos, shape, micro_batches, pad_id)
    return Batch(tokens=tok, positions=pos, attention_mask=attn, loss_mask=mask, old_logp=old, advantages=adv,
                 ref_logp=ref, loss_start=start_w, loss_window=size, parent=parent,
                 shared=(level0,) if level1 is None else (level0, level1), lanes=lanes, slot=slot)


def _lay_out_lanes(
    packing: list[list[tuple[int, list]]], tok: np.ndarray, pos: np.ndarray, shape: TreeShape,
    micro_batches: int, pad_id: int,
) -> tuple[Lanes, np.ndarray]:
    """The lanes of every (copy, micro-batch) cell and each row's slots in them.

    Cell (c, k)'s lane j is global lane ``(c * lanes + j) * micro_batches + k``: ``split_micro_batches``'s
    stride then hands micro-batch k exactly its lanes, copy c's as a block (like the rows), and a row's slot
    ``j * W + offset + t`` indexes its copy's lanes within its micro-batch."""
    width, per_cell = shape.lane_length, shape.lanes
    total = len(packing) * per_cell
    tokens = np.full((total, width), pad_id, np.int32)
    positions = np.zeros((total, width), np.int32)
    valid = np.zeros((total, width), bool)
    segment = np.zeros((total, width), np.int32)
    parent = np.zeros((total,), np.int32)
    slot = np.zeros(tok.shape, np.int32)  # the empty rows that pad the batch: any slot (they hold nothing)
    for cell, lanes in enumerate(packing):
        c, k = divmod(cell, micro_batches)
        for j, (lane_parent, items) in enumerate(lanes):
            lane = (c * per_cell + j) * micro_batches + k
            parent[lane] = lane_parent
            offset = 0
            for seg, (row, n) in enumerate(sorted(items, key=lambda item: item[0]), start=1):
                tokens[lane, offset:offset + n] = tok[row, :n]
                positions[lane, offset:offset + n] = pos[row, :n]
                valid[lane, offset:offset + n] = True
                segment[lane, offset:offset + n] = seg
                slot[row] = j * width + offset + np.minimum(np.arange(tok.shape[1]), n - 1)
                offset += n
    lanes = Lanes(tokens=tokens, positions=positions, valid=valid, segment=segment, parent=parent,
                  micro_batches=micro_batches)
    return lanes, slot


def _empty_level(segments: int, length: int, pad_id: int) -> TreeLevel:
    return TreeLevel(
        tokens=np.full((segments, length), pad_id, np.int32),
        positions=np.zeros((segments, length), np.int32),
        valid=np.zeros((segments, length), bool),
        parent=np.zeros((segments,), np.int32),
    )


def _fill(level: TreeLevel, row: int, tokens: np.ndarray, start: int) -> None:
    m = len(tokens)
    level.tokens[row, :m] = tokens
    level.positions[row, :m] = start + np.arange(m)
    level.valid[row, :m] = True
