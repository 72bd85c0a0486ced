"""The forward pass over a prefix tree: shared token segments computed once, each row's own tokens attending
to its ancestors' keys and values (tree training).

A GRPO batch on an agent environment is mostly prompt: every row opens with the same system prompt and tool
listing, and the G rows of a group repeat their task's request. Laid out plainly, the forward and backward
passes pay for that prompt once per row. Here the batch is a small tree:

    level 0   one segment per copy: the prefix every row of the copy shares (system prompt, tools)
    level 1   one segment per group of rows: what they share after it (the task's request)
    ...       (any number of shared levels)
    rows      each row's own tokens (its sampled turns and tool results): the only tokens with a loss

Each level's tokens go through every layer once. A segment's queries attend to its ancestors' keys and values
(gathered by ``parent``, all visible) and causally to its own (``attention.flash.context_attention``: flash
tiles with a written-out backward pass); level 0 takes the model's plain causal attention. Since it is one differentiable function of the parameters, autodiff gives the exact gradient: the
gradient flowing into a shared segment's keys and values from all its descendants is summed by the gather's
transpose, so the prefix's backward pass, too, runs once. Loss and gradients equal the plain layout's up to
float rounding (tests/rl_jax/train/test_prefix_tree.py).

Copies: level 0 holds one segment per *copy*; rows and segments of copy c only refer to copy c. Under data
parallelism the batch collates one copy per data shard (``rl_jax.train.tree_batch``): every array's leading
axis is then sharded over ``data`` in blocks that line up with the copies, and the gathers, batched over the
copy axis, stay on their shard. The prefix is computed once per shard instead of once per row.

Layouts: level l's arrays are ``[C * R_l, L_l]`` (copy-major), ``parent [C * R_l]`` the row of level l - 1 in
the same copy (local index, 0 <= parent < R_{l-1}; unused at level 0, where R_0 = 1); the rows' arrays are
``[B, S]`` with ``parent [B]`` into the last shared level, copy-major too (rows ``c * B / C ...`` are copy c).
Positions continue across levels (a row's first own token sits at its ancestors' combined real length); a
segment's padding is at its end and marked invalid.

Packed rows (``Lanes``): rows' own tokens differ in length, and padding each to the longest pays for the
difference in every layer and in every query's attention over the ancestors. Rows with the same parent can
instead sit end to end in a lane, told apart by segment ids (a query sees the ancestors and its own row's
tokens only); ``unpack_lanes`` then gathers each row's hidden states back out of its lane.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import struct

from rl_jax.models.attention.flash import context_attention
from rl_jax.models.transformer import (
    DecoderLayer,
    Transformer,
    _rematerialized,
    rms_norm,
    rope_tables,
    scan_layers,
)
from rl_jax.sharding import constrain

# Query and key tile of a segment's attention over its ancestors and itself (``attention.flash``): one block of
# scores [R, H, tile, tile] at a time (8 rows x 9 heads x 256 x 256: 19 MB in f32).
DEFAULT_TREE_TILE = 256


class _TokenRows:
    """``rows`` and ``length`` of a ``[rows, length]`` layout of ``tokens``."""

    tokens: jax.Array

    @property
    def rows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])


@struct.dataclass
class TreeLevel(_TokenRows):
    """One level of shared segments: ``[C * R, L]`` tokens (copy-major), their RoPE positions and validity,
    and ``parent [C * R]``, each segment's parent row in the level above within its copy (0 at level 0)."""

    tokens: jax.Array  # [C * R, L] int32
    positions: jax.Array  # [C * R, L] int32
    valid: jax.Array  # [C * R, L] bool
    parent: jax.Array  # [C * R] int32


@struct.dataclass
class Lanes(_TokenRows):
    """Rows' own tokens packed end to end: ``[C * L, W]`` tokens (copy-major), their RoPE positions, validity
    and ``segment`` ids (rows of a lane differ in id; padding is invalid), and ``parent [C * L]``, each lane's
    row in the last shared level within its copy (every row of a lane has that parent)."""

    tokens: jax.Array  # [C * L, W] int32
    positions: jax.Array  # [C * L, W] int32
    valid: jax.Array  # [C * L, W] bool
    segment: jax.Array  # [C * L, W] int32
    parent: jax.Array  # [C * L] int32
    # the micro-batches the lanes were laid out for (each micro-batch's rows are packed in lanes of their own)
    micro_batches: int = struct.field(pytree_node=False, default=1)


def unpack_lanes(hidden: jax.Array, slot: jax.Array, copies: int) -> jax.Array:
    """Rows' states out of their lanes: ``hidden [C * L, W, ...]`` at ``slot [C * B, S]``, each a flat index
    ``lane * W + position`` into its own copy's L lanes -> ``[C * B, S, ...]``. Batched over the copy axis like
    ``gather_rows``; the transpose sums each row position's gradient back into its lane slot."""
    lanes, width = hidden.shape[:2]
    flat = hidden.reshape(copies, (lanes // copies) * width, *hidden.shape[2:])
    index = slot.reshape(copies, -1)
    out = jax.vmap(lambda h, i: jnp.take(h, i, axis=0))(flat, index)
    return out.reshape(*slot.shape, *hidden.shape[2:])


def copies_of(levels: Sequence[TreeLevel]) -> int:
    """The number of copies: level 0 holds one segment per copy."""
    return levels[0].rows


def gather_rows(x: jax.Array, index: jax.Array, copies: int) -> jax.Array:
    """``x [C * R, ...]`` at local rows ``index [C * N]`` (each into its own copy's R rows) -> ``[C * N, ...]``.

    Batched over the copy axis, so a copy-sharded ``x`` is gathered on its own shard; the transpose (in the
    backward pass) sums every gathered row's gradient back into its source row.
    """
    xr = x.reshape(copies, x.shape[0] // copies, *x.shape[1:])
    ir = index.reshape(copies, index.shape[0] // copies)
    out = jax.vmap(lambda a, i: jnp.take(a, i, axis=0))(xr, ir)
    return out.reshape(-1, *x.shape[1:])


def ancestors(levels: Sequence[TreeLevel], parent: jax.Array, copies: int) -> list[jax.Array]:
    """For segments (or rows) whose parents in the last of ``levels`` are ``parent [C * N]``: their ancestor's
    local row at each level, ``[level 0, level 1, ...]``, each ``[C * N]``."""
    chain = [parent]
    for level in reversed(levels[1:]):
        chain.append(gather_rows(level.parent, chain[-1], copies))
    return chain[::-1]


def _tree_layer(
    layer: DecoderLayer,
    xs: list[jax.Array],
    ropes: list[tuple[jax.Array, jax.Array]],
    valids: list[jax.Array],
    lineage: list[list[jax.Array]],
    segment: jax.Array | None,
    *,
    copies: int,
    attention_chunk: int,
    causal_max_length: int,
    tree_tile: int,
) -> list[jax.Array]:
    """One decoder layer over every level, top down: each level's keys and values are there when the levels
    below attend to them. ``lineage[l]`` holds level l's ancestor rows at levels 0..l-1; ``segment`` the last
    level's (the rows') segment ids when they are packed."""
    keys: list[jax.Array] = []
    values: list[jax.Array] = []
    out = []
    for lvl, x in enumerate(xs):
        q, k, v = layer.project(x, *ropes[lvl])
        if lvl == 0:
            attn = layer.causal_attention(q, k, v, valids[0], attention_chunk, causal_max_length)
        else:
            up = range(lvl)
            ctx_k = jnp.concatenate([gather_rows(keys[j], lineage[lvl][j], copies) for j in up], axis=1)
            ctx_v = jnp.concatenate([gather_rows(values[j], lineage[lvl][j], copies) for j in up], axis=1)
            ctx_valid = jnp.concatenate([gather_rows(valids[j], lineage[lvl][j], copies) for j in up], axis=1)
            attn = context_attention(q, ctx_k, ctx_v, ctx_valid, k, v, valids[lvl], tree_tile, layer.dtype,
                                     segment=segment if lvl == len(xs) - 1 else None)
        keys.append(k)
        values.append(v)
        out.append(layer.finish(x, attn))
    return out


def tree_hidden(
    model: Transformer,
    levels: Sequence[TreeLevel],
    tokens: jax.Array,
    positions: jax.Array,
    attention_mask: jax.Array,
    parent: jax.Array,
    *,
    segment: jax.Array | None = None,
    tree_tile: int = DEFAULT_TREE_TILE,
) -> jax.Array:
    """Final-norm hidden states ``[B, S, D]`` of the rows' own tokens (``tokens [B, S]``, copy-major, each row
    a child of ``parent [B]`` in the last shared level), computed with every shared level once (module
    docstring). The shared levels' hidden states are not returned: nothing is trained on them. With ``segment
    [B, S]`` the "rows" are lanes of packed rows (``Lanes``): each token sees its own segment's tokens only."""
    if not levels:
        raise ValueError("tree_hidden needs at least one shared level; use Transformer.hidden for plain rows")
    copies = copies_of(levels)
    for lvl, level in enumerate(levels):
        if level.rows % copies:
            raise ValueError(f"shared level {lvl} has {level.rows} segments, not a multiple of {copies} copies")
    if tokens.shape[0] % copies:
        raise ValueError(f"{tokens.shape[0]} rows do not divide into {copies} copies")
    cfg = model.config
    segments = [(lv.tokens, lv.positions, lv.valid.astype(jnp.bool_)) for lv in levels]
    segments.append((tokens, positions, attention_mask.astype(jnp.bool_)))
    lineage = [[]] + [ancestors(levels[:lvl], levels[lvl].parent, copies) for lvl in range(1, len(levels))]
    lineage.append(ancestors(levels, parent, copies))

    embed = model.embed[...]
    xs = [constrain(jnp.take(embed, tok, axis=0).astype(model.dtype), ("batch", "length", "act_embed"))
          for tok, _, _ in segments]
    ropes = [rope_tables(cfg, pos) for _, pos, _ in segments]
    valids = [valid for _, _, valid in segments]

    def run(layer: DecoderLayer, xs: list[jax.Array], ropes: list, valids: list, lineage: list) -> list[jax.Array]:
        return _tree_layer(
            layer, xs, ropes, valids, lineage, segment, copies=copies, attention_chunk=model.attention_chunk,
            causal_max_length=model.causal_max_length, tree_tile=tree_tile,
        )

    if model.scan:
        xs = scan_layers(model.layers, lambda layer, h: run(layer, h, ropes, valids, lineage), xs,
                         remat=model.remat, policy=model.remat_policy)
    else:
        if model.remat:
            run = _rematerialized(run, model.remat_policy)
        for layer in model.layers:
            xs = run(layer, xs, ropes, valids, lineage)
    return rms_norm(xs[-1], model.final_norm[...], cfg.rms_norm_eps)
