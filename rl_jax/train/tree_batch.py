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

Shapes are bucketed like the plain layout's, so steps reuse their compiled programs: each segment length takes
a length bucket and the segments per copy of level 1 a power of two. When the tree would not save at least
``min_saving`` of the plain layout's token positions (rows with little in common), the plain layout is
returned instead. Under multi-host every process must collate to the same shapes: agree on a ``TreeShape``
(``tree_shape`` on each process, the element-wise maximum over processes, e.g. ``rl_jax.learner.hosts
.gather_max``) and pass it as ``shape``: the tree is then used whatever it saves.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from rl_jax.models.prefix_tree import TreeLevel
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

    def as_list(self) -> list[int]:
        return [self.prefix, self.group_length, self.groups, self.length]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> TreeShape:
        prefix, group_length, groups, length = (int(v) for v in values)
        return cls(prefix, group_length, groups, length)


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


def _natural_shape(plan: list[_Copy], tokens: Sequence[np.ndarray], buckets: Sequence[int]) -> TreeShape:
    own = max(len(tokens[i]) - cp.offset(k) for cp in plan for k, i in enumerate(cp.rows))
    groups = max(1, max(len(cp.group_lengths) for cp in plan))
    longest_group = max((g for cp in plan for g in cp.group_lengths), default=0)
    return TreeShape(
        prefix=bucket_length(max(cp.prefix for cp in plan), buckets),
        # no group shares anything past level 0 (one group a copy, say): no level 1 at all
        group_length=bucket_length(longest_group, buckets) if longest_group else 0,
        groups=1 << (groups - 1).bit_length(),
        length=bucket_length(own, buckets),
    )


def _prepare(
    tokens: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[float]], valid: Sequence[bool] | None,
    groups: Sequence[Hashable] | None, copies: int, rows_multiple: int,
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, int]:
    n = len(tokens)
    if not n:
        raise ValueError("collate_tree needs at least one trajectory")
    if copies < 1:
        raise ValueError(f"copies must be >= 1; got {copies}")
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} trajectories")
    trained = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    if trained.shape != (n,):
        raise ValueError(f"valid has shape {trained.shape}; expected one flag per trajectory, ({n},)")
    multiple = int(np.lcm(rows_multiple, copies))
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
    rows_multiple: int = 1,
    buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
) -> TreeShape:
    """The shape ``collate_tree`` would choose for these rows (to agree on across processes)."""
    toks, masks, trained, rows = _prepare(tokens, loss_masks, valid, groups, copies, rows_multiple)
    return _natural_shape(_plan(toks, masks, trained, groups, copies, rows), toks, buckets)


def saves_enough(
    shape: TreeShape, *, rows: int, copies: int, plain_length: int, min_saving: float = DEFAULT_MIN_SAVING
) -> bool:
    """Whether a tree of ``shape`` (``rows`` rows in ``copies`` copies) computes at most ``1 - min_saving`` of
    the token positions of the plain layout at ``plain_length``. A pure function of shapes: processes that
    agreed on them agree on this too."""
    tree = copies * (shape.prefix + shape.groups * shape.group_length) + rows * shape.length
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
    buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
    pad_id: int = 0,
    rows_multiple: int = 1,
    window_buckets: int | None = DEFAULT_WINDOW_BUCKETS,
    window: int | None = None,
    shape: TreeShape | None = None,
    min_saving: float = DEFAULT_MIN_SAVING,
) -> Batch:
    """A host ``Batch`` laid out as a prefix tree (module docstring), or ``collate``'s plain one when the tree
    would save less than ``min_saving`` of the token positions and no ``shape`` is imposed.

    Arguments as ``collate``'s, plus ``groups`` (one hashable per trajectory: rows of a group share a level-1
    segment; default: grouped by their first token after the common prefix), ``copies`` (level-0 copies, one
    per data shard; the row count is padded to a multiple of it, rows ``c * B / copies ...`` belong to copy
    c) and ``shape`` (a ``TreeShape`` agreed across processes; it must hold these rows' tree). ``window``
    fixes the loss window's length as in ``collate``.
    """
    if not 0 <= min_saving < 1:
        raise ValueError(f"min_saving must lie in [0, 1); got {min_saving}")
    n = len(tokens)
    for name, seqs in (("loss_masks", loss_masks), ("old_logps", old_logps), ("advantages", advantages)):
        if len(seqs) != n:
            raise ValueError(f"{name} has {len(seqs)} entries for {n} trajectories")
    toks, masks, trained, rows = _prepare(tokens, loss_masks, valid, groups, copies, rows_multiple)
    plan = _plan(toks, masks, trained, groups, copies, rows)
    natural = _natural_shape(plan, toks, buckets)
    if shape is None:
        plain_length = bucket_length(max(len(t) for t in toks), buckets)
        if not saves_enough(natural, rows=rows, copies=copies, plain_length=plain_length, min_saving=min_saving):
            return collate(tokens, loss_masks, old_logps, advantages, ref_logps, valid=valid, buckets=buckets,
                           pad_id=pad_id, rows_multiple=int(np.lcm(rows_multiple, copies)),
                           window_buckets=window_buckets, window=window)
        shape = natural
    elif any(have > room for have, room in zip(natural.as_list(), shape.as_list(), strict=True)):
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
    return Batch(tokens=tok, positions=pos, attention_mask=attn, loss_mask=mask, old_logp=old, advantages=adv,
                 ref_logp=ref, loss_start=start_w, loss_window=size, parent=parent,
                 shared=(level0,) if level1 is None else (level0, level1))


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
