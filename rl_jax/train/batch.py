"""The training batch: padded token arrays, masks and advantages, and bucketing of the sequence length.

Every per-token array is aligned with ``tokens``: entry ``[b, t]`` describes token ``t`` of row ``b``. So
``old_logp[b, t]`` is the sampler's log-probability of ``tokens[b, t]`` given ``tokens[b, :t]``, and
``loss_mask[b, t]`` is 1 where the policy sampled ``tokens[b, t]`` (0 for prompt, tool-output and padding
tokens; position 0 is never trained on since nothing predicts it). The train step shifts by one itself.

Sequence lengths are padded up to one of a few bucket sizes so the jitted step compiles once per bucket,
not once per batch.

The loss window: only positions whose next token is trained on need the vocabulary projection, the costliest
part of the step after the layers themselves (a ``[D] x [D, V]`` product and softmax reductions over V per
position, forward, recomputed and backward). ``collate`` finds, per row, the stretch of next-token positions
from the first trained token to the last (``loss_start``) and the longest such stretch over the batch, rounded
up to a multiple of T / ``window_buckets`` (``loss_window``, static). The step then projects only those
positions: for an agent whose trajectories open with thousands of tokens of system prompt and tool schemas,
most of the sequence goes unprojected. Each window length is a program of its own (a compile), so windows come
in quarters of T by default: at most 3 programs per length beside the full one.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh

from rl_jax.models.prefix_tree import Lanes, TreeLevel
from rl_jax.sharding import batch_sharding, batch_shards

DEFAULT_LENGTH_BUCKETS: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
DEFAULT_WINDOW_BUCKETS = 4  # loss windows are multiples of T / 4: <= 4 programs per length, <= T / 4 padding


@struct.dataclass
class Batch:
    """A batch of B trajectories padded to length T (a pytree: every field but ``loss_window``, a static int
    of its structure, is an array or None)."""

    tokens: jax.Array  # [B, T] int32
    positions: jax.Array  # [B, T] int32 (RoPE positions; padding gets 0)
    attention_mask: jax.Array  # [B, T] bool, True for real tokens
    loss_mask: jax.Array  # [B, T] float32, 1 where the policy sampled the token
    old_logp: jax.Array  # [B, T] float32, the sampler's log-probs of tokens (0 where loss_mask is 0)
    advantages: jax.Array  # [B] float32, one per trajectory
    ref_logp: jax.Array | None = None  # [B, T] float32, the reference policy's log-probs (KL penalty)
    # The loss window (module docstring): next-token positions [loss_start, loss_start + loss_window) of each
    # row hold every trained token's prediction; the step projects only those. None: every position.
    loss_start: jax.Array | None = None  # [B] int32
    loss_window: int | None = struct.field(pytree_node=False, default=None)
    # The prefix-tree layout (``rl_jax.train.tree_batch``, ``rl_jax.models.prefix_tree``): the segments the rows
    # share, computed once, and each row's parent segment in the last shared level. The per-token arrays above
    # then hold each row's own tokens only (positions continue after its ancestors'). None: plain rows.
    shared: tuple[TreeLevel, ...] | None = None
    parent: jax.Array | None = None  # [B] int32, a local row of the last shared level in the row's copy
    # Packed rows (tree layout only): the rows' own tokens laid end to end in lanes, which the model runs on
    # instead of ``tokens``; ``slot[b, t]`` is where row b's token t sits in its copy's (and micro-batch's)
    # lanes, as a flat index lane * W + position. The per-token arrays above still describe the rows (the
    # loss's view). None: the model runs on the rows.
    lanes: Lanes | None = None
    slot: jax.Array | None = None  # [B, T] int32

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])

    def check(self) -> None:
        """Raise on inconsistent shapes or dtypes (cheap; call at the boundary, not inside jit)."""
        chex.assert_rank(self.tokens, 2)
        b, t = self.tokens.shape
        chex.assert_shape([self.positions, self.attention_mask, self.loss_mask, self.old_logp], (b, t))
        chex.assert_shape(self.advantages, (b,))
        chex.assert_type([self.tokens, self.positions], jnp.int32)
        chex.assert_type([self.loss_mask, self.old_logp, self.advantages], jnp.float32)
        chex.assert_type(self.attention_mask, jnp.bool_)
        if self.ref_logp is not None:
            chex.assert_shape(self.ref_logp, (b, t))
        if (self.loss_start is None) != (self.loss_window is None):
            raise ValueError("loss_start and loss_window go together: give both or neither")
        if self.loss_window is not None:
            chex.assert_shape(self.loss_start, (b,))
            chex.assert_type(self.loss_start, jnp.int32)
            w = self.loss_window
            if not 1 <= w <= t:
                raise ValueError(f"loss_window {w} is outside [1, {t}]")
            start = np.asarray(self.loss_start)[:, None]
            if ((start < 0) | (start > t - w)).any():
                raise ValueError(f"loss_start must lie in [0, T - loss_window] = [0, {t - w}]")
            # a trained token predicted outside the window would get log-prob 0: a wrong ratio and loss
            predicted = np.asarray(self.loss_mask)[:, 1:] > 0
            at = np.arange(t - 1)[None, :]
            if (predicted & ((at < start) | (at >= start + w))).any():
                raise ValueError("the loss window misses trained tokens: their predictions lie outside it")
        if (self.shared is None) != (self.parent is None):
            raise ValueError("shared and parent go together: give both or neither")
        if self.shared is not None:
            if not self.shared:
                raise ValueError("shared must hold at least one level (or be None)")
            copies = self.shared[0].rows
            chex.assert_shape(self.parent, (b,))
            if b % copies:
                raise ValueError(f"{b} rows do not divide into the tree's {copies} copies")
            above = self.shared[-1].rows // copies
            for lvl, level in enumerate(self.shared):
                chex.assert_shape([level.positions, level.valid], level.tokens.shape)
                chex.assert_shape(level.parent, (level.rows,))
                if level.rows % copies:
                    raise ValueError(f"shared level {lvl}: {level.rows} segments for {copies} copies")
                if lvl and not 0 <= int(np.min(level.parent)) <= int(np.max(level.parent)) < self.shared[lvl - 1].rows // copies:
                    raise ValueError(f"shared level {lvl}: a parent outside its copy's rows of level {lvl - 1}")
            if not 0 <= int(np.min(self.parent)) <= int(np.max(self.parent)) < above:
                raise ValueError(f"a row's parent lies outside its copy's {above} segments of the last shared level")
        if (self.lanes is None) != (self.slot is None):
            raise ValueError("lanes and slot go together: give both or neither")
        if self.lanes is not None:
            if self.shared is None:
                raise ValueError("packed rows (lanes) need the tree layout's shared levels")
            lanes = self.lanes
            copies = self.shared[0].rows
            chex.assert_shape([lanes.positions, lanes.valid, lanes.segment], lanes.tokens.shape)
            chex.assert_shape(lanes.parent, (lanes.rows,))
            chex.assert_shape(self.slot, (b, t))
            chex.assert_type([lanes.tokens, lanes.positions, lanes.segment, lanes.parent, self.slot], jnp.int32)
            if lanes.rows % copies:
                raise ValueError(f"{lanes.rows} lanes do not divide into the tree's {copies} copies")
            above = self.shared[-1].rows // copies
            if not 0 <= int(np.min(lanes.parent)) <= int(np.max(lanes.parent)) < above:
                raise ValueError(f"a lane's parent lies outside its copy's {above} segments of the last shared level")
            room = lanes.rows // copies * lanes.length
            if not 0 <= int(np.min(self.slot)) <= int(np.max(self.slot)) < room:
                raise ValueError(f"a row's slot lies outside its copy's {room} lane positions")


def bucket_length(length: int, buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS) -> int:
    """The smallest bucket that holds ``length`` tokens."""
    for size in sorted(buckets):
        if length <= size:
            return size
    raise ValueError(f"sequence of {length} tokens exceeds the largest length bucket {max(buckets)}")


def collate(
    tokens: Sequence[Sequence[int]],
    loss_masks: Sequence[Sequence[float]],
    old_logps: Sequence[Sequence[float]],
    advantages: Sequence[float],
    ref_logps: Sequence[Sequence[float]] | None = None,
    *,
    valid: Sequence[bool] | None = None,
    buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
    pad_id: int = 0,
    rows_multiple: int = 1,
    window_buckets: int | None = DEFAULT_WINDOW_BUCKETS,
    window: int | None = None,
) -> Batch:
    """Right-pad variable-length trajectories into a host (numpy) ``Batch`` at a bucketed length.

    ``valid`` (one flag per trajectory, default all True) marks failed or dropped episodes (environment crash,
    truncated tool loop, judge error) with False. Such a row keeps its tokens, so the batch's length bucket
    and row count do not depend on which episodes failed, but nothing in it is trained on: its loss mask is
    all 0 and its advantage 0 (whatever was passed, NaN included). Masking is what excludes it: with the
    advantage alone zeroed its tokens would still count in the token-mean denominators (diluting every other
    token's weight), in the clip-bound search and metrics, and get a KL gradient. Its loss window is empty.
    ``rows_multiple`` pads the batch with empty rows (all masks 0, advantage 0) so B divides evenly over the
    batch axes (data x fsdp) times the number of micro-batches; empty rows carry no loss and no gradient.
    ``window_buckets`` sets the loss window's rounding (module docstring); None projects every position.
    Under multi-host training every process must collate to the same length and window (they are shapes):
    pass one length bucket, and ``window``, a window length agreed across processes (e.g. the largest of each
    process's ``loss_window(...)[1]``, or the length for none); it must hold every row's stretch.
    """
    if window_buckets is not None and window_buckets < 1:
        raise ValueError(f"window_buckets must be >= 1 or None; got {window_buckets}")
    n = len(tokens)
    if not n:
        raise ValueError("collate needs at least one trajectory")
    for name, seqs in (("loss_masks", loss_masks), ("old_logps", old_logps), ("advantages", advantages)):
        if len(seqs) != n:
            raise ValueError(f"{name} has {len(seqs)} entries for {n} trajectories")
    trained = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    if trained.shape != (n,):  # e.g. a [groups, group_size] mask not flattened like the trajectories
        raise ValueError(f"valid has shape {trained.shape}; expected one flag per trajectory, ({n},)")
    for i, seq in enumerate(tokens):
        if len(loss_masks[i]) != len(seq) or len(old_logps[i]) != len(seq):
            raise ValueError(f"trajectory {i}: loss mask / old log-probs length differs from its tokens")
    length = bucket_length(max(len(s) for s in tokens), buckets)
    rows = -(-n // rows_multiple) * rows_multiple

    tok = np.full((rows, length), pad_id, np.int32)
    pos = np.zeros((rows, length), np.int32)
    attn = np.zeros((rows, length), bool)
    mask = np.zeros((rows, length), np.float32)
    old = np.zeros((rows, length), np.float32)
    ref = np.zeros((rows, length), np.float32) if ref_logps is not None else None
    adv = np.zeros((rows,), np.float32)
    for i, seq in enumerate(tokens):
        k = len(seq)
        tok[i, :k] = seq
        pos[i, :k] = np.arange(k)
        attn[i, :k] = True
        old[i, :k] = old_logps[i]
        if ref is not None and ref_logps is not None:
            ref[i, :k] = ref_logps[i]
        if not trained[i]:
            continue  # a failed episode: its mask and advantage stay 0 (docstring)
        mask[i, :k] = loss_masks[i]
        mask[i, 0] = 0.0  # nothing predicts the first token
        adv[i] = advantages[i]
    old *= mask
    start, size = loss_window(mask, window_buckets, window=window)
    return Batch(tokens=tok, positions=pos, attention_mask=attn, loss_mask=mask, old_logp=old,
                 advantages=adv, ref_logp=ref, loss_start=start, loss_window=size)


def loss_window(
    loss_mask: np.ndarray, buckets: int | None = DEFAULT_WINDOW_BUCKETS, *, window: int | None = None
) -> tuple[np.ndarray | None, int | None]:
    """``(loss_start [B] int32, window)`` covering every trained token's prediction, or ``(None, None)`` when
    the window would span the whole length anyway.

    ``window`` fixes the length instead of rounding it (processes that must agree); it has to hold every
    row's stretch, and rows get their starts whether or not any of them trains on anything. Neither ``window``
    nor ``buckets``: no window.

    Token ``s`` is predicted at next-token position ``s - 1`` (token 0 is never trained on), so row b needs
    the positions from its first trained token's minus one to its last's. The window is the longest such
    stretch, rounded up to a multiple of ``ceil(T / buckets)``; a row's start moves left where its stretch
    would run past the end. Rows with nothing to train start at 0.
    """
    if buckets is None and window is None:
        return None, None  # no window: every position is projected
    if buckets is not None and buckets < 1:
        raise ValueError(f"buckets must be >= 1; got {buckets}")
    _, length = loss_mask.shape
    predicted = loss_mask[:, 1:] > 0  # [B, T - 1]: entry p is the prediction made at position p
    has = predicted.any(axis=1)
    first = predicted.argmax(axis=1)
    last = length - 2 - predicted[:, ::-1].argmax(axis=1)
    needed = int((last - first + 1)[has].max()) if has.any() else 0
    if window is not None:
        if not needed <= window <= length or window < 1:
            raise ValueError(f"window {window} must lie in [1, {length}] and hold the longest stretch ({needed})")
    elif not needed:
        return None, None
    else:
        step = -(-length // buckets)
        window = -(-needed // step) * step
    if window >= length:
        return None, None
    start = np.where(has, np.minimum(first, length - window), 0).astype(np.int32)
    return start, window


def batch_shardings(batch: Batch, mesh: Mesh) -> Batch:
    """NamedShardings for a batch: rows over the batch axes (data, fsdp), the rest replicated."""
    return jax.tree.map(lambda x: batch_sharding(mesh, np.ndim(x)), batch)


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
    """Place a host batch on the mesh, rows split over the batch axes (``data``, and ``fsdp`` on a 3-axis mesh).

    Each process passes its own rows (multi-host: the global batch is the concatenation over processes in
    process order); with one process this is a plain device_put.
    """
    data = batch_shards(mesh)
    if (batch.batch_size * jax.process_count()) % data:
        raise ValueError(
            f"global batch of {batch.batch_size * jax.process_count()} rows does not divide over the batch axes "
            f"(data x fsdp = {data}); collate with rows_multiple={data}"
        )
    shardings = batch_shardings(batch, mesh)
    return jax.tree.map(
        lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x)), batch, shardings
    )
