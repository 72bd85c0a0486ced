"""FlashAttention on XLA: queries over an optional run of ancestor keys (all visible where valid) and, causally,
their own keys, in square tiles visited in loops, with a written-out backward pass.

Two users: the CPU backend's causal attention past its tile lengths (no ancestors: ``causal_flash_attention``,
a program whose size does not grow with T), and tree training (``rl_jax.models.prefix_tree``), where a row's
own tokens attend to the shared segments above it.

A row of a GRPO batch laid out as a tree holds a few hundred to a few thousand tokens of its own and attends
to thousands of shared ones (system prompt, tools, the task's request). The keys are the ancestors' ``P``
slots (all visible where valid) followed by the row's own ``T`` (causal). FlashAttention's schedule over
square tiles: each query tile runs an online softmax over every ancestor tile and the own tiles up to its
diagonal, and saves its rows' log-normalisers; the backward pass recomputes each block's probabilities from
them and uses FlashAttention's row term ``delta = sum(dO * O)`` instead of differentiating the softmax. One
``[N, KVH, G * tile, tile]`` block of scores (each key/value head's G query heads folded into the rows) lives
at a time and the program's size does not grow with ``P`` or ``T``. Differentiating a masked whole-row softmax
instead (query chunks of 256 against all ``P + T`` keys, each rematerialized) made the tree step slower per
position than the plain step's flash attention (BUILD.md: tree training).

The ancestors' part is padded to a whole number of tiles on its own, so the own tokens start on a tile
boundary and the causal test of a block is the plain ``key slot <= query slot`` with the query slots offset
by the padded ancestor length.

Packed rows: with ``segment`` ids, one sequence of own tokens holds several rows end to end (a lane of
``rl_jax.models.prefix_tree.Lanes``), and a query sees the own keys of its segment only (and every valid
ancestor key): the rows of a lane share their ancestors but not each other's tokens. A query tile skips the
own tiles that lie wholly before the earliest segment start among its queries (over all lanes, which run
batched): at issue 21's lanes, one layer's attention forward + backward 2.6-3.0 s against 2.8-3.4 s (BUILD.md).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from rl_jax.models.attention.interface import accumulation_dtype, from_groups, named_residuals, to_groups


def _pad_to(x: jax.Array, length: int, axis: int) -> jax.Array:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, widths)


def _block(x: jax.Array, i: jax.Array, tile: int) -> jax.Array:
    """Slots [i * tile, (i + 1) * tile) of a key/value-head-major [N, KVH, S, ...] array."""
    return jax.lax.dynamic_slice_in_dim(x, i * tile, tile, axis=2)


def _query_block(x: jax.Array, i: jax.Array, tile: int) -> jax.Array:
    """Query slots [i * tile, (i + 1) * tile) of a grouped [N, KVH, G, Tp, ...] array, each key/value head's
    ``G`` query heads folded into the rows: [N, KVH, G * tile, ...]. One dot per key/value head over all its
    query heads' rows, where repeating the keys per query head ran N x H dots of a third the rows (GQA: the
    layer's attention forward + backward ~12% faster on CPU at issue 21's lanes, ad hoc: BUILD.md)."""
    block = jax.lax.dynamic_slice_in_dim(x, i * tile, tile, axis=3)
    n, kvh, group = block.shape[:3]
    return block.reshape(n, kvh, group * tile, *block.shape[4:])


def _put_query_block(total: jax.Array, block: jax.Array, i: jax.Array, tile: int) -> jax.Array:
    """``_query_block``'s inverse: the folded [N, KVH, G * tile, ...] rows written into [N, KVH, G, Tp, ...]."""
    n, kvh, group = total.shape[:3]
    block = block.reshape(n, kvh, group, tile, *block.shape[3:])
    return jax.lax.dynamic_update_slice_in_dim(total, block, i * tile, axis=3)


def _masked(x: jax.Array, mask: jax.Array, fill: float) -> jax.Array:
    """Folded [N, KVH, G * tile, tile] scores where ``mask`` [N, 1, tile, tile] holds, ``fill`` elsewhere (the
    mask is the same for every query head)."""
    n, kvh, rows, tile = x.shape
    grouped = x.reshape(n, kvh, rows // tile, tile, tile)
    return jnp.where(mask[:, :, None], grouped, fill).reshape(x.shape)


def _block_mask(
    key_valid: jax.Array, offset: int, i: jax.Array, j: jax.Array, tile: int,
    segments: tuple[jax.Array, jax.Array] | None,
) -> jax.Array:
    """[N, 1, tile, tile]: query ``r`` of tile ``i`` (slot ``offset + i * tile + r``) sees key ``c`` of tile
    ``j`` (slot ``j * tile + c``) when the key is at or before it and valid, and, with ``segments`` (the keys'
    [N, slots] and the queries' [N, Tp] ids; ancestors' keys are -1), an ancestor's or of the query's
    segment."""
    r = jnp.arange(tile, dtype=jnp.int32)
    causal = (j * tile + r)[None, :] <= (offset + i * tile + r)[:, None]
    ok = jax.lax.dynamic_slice_in_dim(key_valid, j * tile, tile, axis=1)
    mask = causal[None] & ok[:, None, :]
    if segments is not None:
        key_segment, query_segment = segments
        ks = jax.lax.dynamic_slice_in_dim(key_segment, j * tile, tile, axis=1)[:, None, :]
        qs = jax.lax.dynamic_slice_in_dim(query_segment, i * tile, tile, axis=1)[:, :, None]
        mask = mask & ((ks < 0) | (ks == qs))
    return mask[:, None]


def context_attention(
    q: jax.Array,
    ctx_k: jax.Array,
    ctx_v: jax.Array,
    ctx_valid: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array,
    tile: int,
    dtype: Any,
    segment: jax.Array | None = None,
) -> jax.Array:
    """q [N, T, H, Dh] over the ancestors' ctx_k/ctx_v [N, P, KVH, Dh] (visible where ``ctx_valid [N, P]``)
    and causally over its own k/v [N, T, KVH, Dh] (where ``valid [N, T]``) -> [N, T, H, Dh]. With ``segment
    [N, T]`` (int32, >= 0), the own keys a query sees are those of its own segment (packed rows).

    A query with no visible key (padding) gets output 0 and no gradient.
    """
    return _attention(q, ctx_k, ctx_v, ctx_valid, k, v, valid, segment, tile, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _attention(
    q: jax.Array, ctx_k: jax.Array, ctx_v: jax.Array, ctx_valid: jax.Array, k: jax.Array, v: jax.Array,
    valid: jax.Array, segment: jax.Array | None, tile: int, dtype: Any,
) -> jax.Array:
    return _forward(q, ctx_k, ctx_v, ctx_valid, k, v, valid, segment, tile, dtype)[0]


def _layout(
    q: jax.Array, ctx_k: jax.Array, ctx_v: jax.Array, ctx_valid: jax.Array, k: jax.Array, v: jax.Array,
    valid: jax.Array, segment: jax.Array | None, tile: int,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, int, tuple[jax.Array, jax.Array] | None]:
    """Padded queries (scaled, grouped by key/value head: [N, KVH, G, Tp, Dh]), keys and values ([N, KVH, S,
    Dh]) and key validity over ``[ancestors | own]``, the padded ancestor length (the own tokens' first slot)
    and, with ``segment``, the keys' and the queries' segment ids (ancestors -1)."""
    t, dh, kvh = q.shape[1], q.shape[3], k.shape[2]
    p_pad, t_pad = -(-ctx_k.shape[1] // tile) * tile, -(-t // tile) * tile
    keys = jnp.concatenate([_pad_to(ctx_k, p_pad, 1), _pad_to(k, t_pad, 1)], axis=1).transpose(0, 2, 1, 3)
    values = jnp.concatenate([_pad_to(ctx_v, p_pad, 1), _pad_to(v, t_pad, 1)], axis=1).transpose(0, 2, 1, 3)
    key_valid = jnp.concatenate([_pad_to(ctx_valid, p_pad, 1), _pad_to(valid, t_pad, 1)], axis=1)
    scaled_q = to_groups(_pad_to(q, t_pad, 1) * jnp.asarray(dh**-0.5, q.dtype), kvh)
    segments, skipped = None, jnp.zeros((t_pad // tile,), jnp.int32)
    if segment is not None:
        own = _pad_to(segment.astype(jnp.int32), t_pad, 1)
        ancestors = jnp.full((segment.shape[0], p_pad), -1, jnp.int32)
        segments = (jnp.concatenate([ancestors, own], axis=1), own)
        # where each query's segment starts (ids change at a row's first token, padding included) and so, per
        # query tile, the own tiles no query of any lane can see: those wholly before the earliest start among
        # the tile's first queries (starts only grow along a lane)
        slots = jnp.arange(t_pad, dtype=jnp.int32)
        change = jnp.concatenate([jnp.ones_like(own[:, :1], bool), own[:, 1:] != own[:, :-1]], axis=1)
        start = jax.lax.cummax(jnp.where(change, slots[None], 0), axis=1)
        skipped = jnp.min(start[:, ::tile], axis=0) // tile
    return scaled_q, keys, values, key_valid, p_pad, segments, skipped


def _key_tiles(i: jax.Array, first_own: int, skipped: jax.Array) -> tuple[jax.Array, Any]:
    """Query tile i's key tiles: every ancestor tile, then its own tiles from the first one any of its queries
    can see up to the diagonal, as (how many, the tile index of visit number m)."""
    lo = skipped[i]
    return first_own + i + 1 - lo, lambda m: jnp.where(m < first_own, m, m + lo)


def _forward(
    q: jax.Array, ctx_k: jax.Array, ctx_v: jax.Array, ctx_valid: jax.Array, k: jax.Array, v: jax.Array,
    valid: jax.Array, segment: jax.Array | None, tile: int, dtype: Any,
) -> tuple[jax.Array, tuple[Any, ...]]:
    n, t, h, dh = q.shape
    kvh = k.shape[2]
    rows = h // kvh * tile  # a query tile's rows per key/value head, its query heads folded in
    acc = accumulation_dtype(dtype)
    scaled_q, keys, values, key_valid, offset, segments, skipped = _layout(
        q, ctx_k, ctx_v, ctx_valid, k, v, valid, segment, tile
    )
    tiles, first_own = scaled_q.shape[3] // tile, offset // tile
    lowest = jnp.finfo(acc).min  # finite, not -inf: a query with no visible key yet stays finite

    def query_tile(i: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        out, lse = carry
        qi = _query_block(scaled_q, i, tile)
        count, key_index = _key_tiles(i, first_own, skipped)

        def key_tile(visit: jax.Array, c: tuple[jax.Array, jax.Array, jax.Array]):
            running_max, norm, weighted = c
            j = key_index(visit)
            mask = _block_mask(key_valid, offset, i, j, tile, segments)
            scores = jnp.einsum("nkqd,nksd->nkqs", qi, _block(keys, j, tile), preferred_element_type=acc)
            scores = _masked(scores, mask, lowest)
            new_max = jnp.maximum(running_max, scores.max(axis=-1))
            p = _masked(jnp.exp(scores - new_max[..., None]), mask, 0.0)
            rescale = jnp.exp(running_max - new_max)
            weighted = weighted * rescale[..., None] + jnp.einsum(
                "nkqs,nksd->nkqd", p.astype(dtype), _block(values, j, tile), preferred_element_type=acc
            )
            return new_max, norm * rescale + p.sum(axis=-1), weighted

        init = (jnp.full((n, kvh, rows), lowest, acc), jnp.zeros((n, kvh, rows), acc),
                jnp.zeros((n, kvh, rows, dh), acc))
        running_max, norm, weighted = jax.lax.fori_loop(0, count, key_tile, init)
        safe = jnp.where(norm > 0, norm, 1.0)  # a query with no visible key: output 0
        out = _put_query_block(out, (weighted / safe[..., None]).astype(dtype), i, tile)
        lse = _put_query_block(lse, running_max + jnp.log(safe), i, tile)
        return out, lse

    init = (jnp.zeros(scaled_q.shape, dtype), jnp.zeros(scaled_q.shape[:4], acc))
    out, lse = named_residuals(*jax.lax.fori_loop(0, tiles, query_tile, init))
    # saved: the inputs (not their padded, grouped forms: recomputed, cheap) and the log-normalisers
    residuals = (q, ctx_k, ctx_v, ctx_valid, k, v, valid, segment, out, lse)
    return from_groups(out)[:, :t], residuals


def _backward(tile: int, dtype: Any, residuals: tuple[Any, ...], d_out: jax.Array) -> tuple[Any, ...]:
    q, ctx_k, ctx_v, ctx_valid, k, v, valid, segment, out, lse = residuals
    n, t, h, dh = q.shape
    kvh, p = k.shape[2], ctx_k.shape[1]
    rows = h // kvh * tile
    acc = accumulation_dtype(dtype)
    scaled_q, keys, values, key_valid, offset, segments, skipped = _layout(
        q, ctx_k, ctx_v, ctx_valid, k, v, valid, segment, tile
    )
    tiles, first_own = scaled_q.shape[3] // tile, offset // tile
    d_out = to_groups(_pad_to(d_out.astype(dtype), tiles * tile, 1), kvh)  # [N, KVH, G, Tp, Dh]
    delta = jnp.sum(d_out.astype(acc) * out.astype(acc), axis=-1)  # sum_s P * dP, from [T, Dh]

    def query_tile(i: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]):
        d_q, d_keys, d_values = carry
        qi, d_oi = _query_block(scaled_q, i, tile), _query_block(d_out, i, tile)
        lse_i, delta_i = _query_block(lse, i, tile)[..., None], _query_block(delta, i, tile)[..., None]
        count, key_index = _key_tiles(i, first_own, skipped)

        def key_tile(visit: jax.Array, c: tuple[jax.Array, jax.Array, jax.Array]):
            d_qi, d_keys, d_values = c
            j = key_index(visit)
            kj, vj = _block(keys, j, tile), _block(values, j, tile)
            mask = _block_mask(key_valid, offset, i, j, tile, segments)
            scores = jnp.einsum("nkqd,nksd->nkqs", qi, kj, preferred_element_type=acc)
            probs = _masked(jnp.exp(scores - lse_i), mask, 0.0)
            d_p = jnp.einsum("nkqd,nksd->nkqs", d_oi, vj, preferred_element_type=acc)
            d_scores = (probs * (d_p - delta_i)).astype(dtype)  # zero where masked, since the probabilities are
            d_qi = d_qi + jnp.einsum("nkqs,nksd->nkqd", d_scores, kj, preferred_element_type=acc)

            def add(total: jax.Array, part: jax.Array) -> jax.Array:
                return jax.lax.dynamic_update_slice_in_dim(total, _block(total, j, tile) + part, j * tile, axis=2)

            # summed over the key/value head's query heads (folded into the rows) by the dot itself
            d_keys = add(d_keys, jnp.einsum("nkqs,nkqd->nksd", d_scores, qi, preferred_element_type=acc))
            d_values = add(d_values, jnp.einsum("nkqs,nkqd->nksd", probs.astype(dtype), d_oi,
                                                preferred_element_type=acc))
            return d_qi, d_keys, d_values

        init = (jnp.zeros((n, kvh, rows, dh), acc), d_keys, d_values)
        d_qi, d_keys, d_values = jax.lax.fori_loop(0, count, key_tile, init)
        return _put_query_block(d_q, d_qi, i, tile), d_keys, d_values

    zeros_q, zeros_kv = jnp.zeros(scaled_q.shape, acc), jnp.zeros(keys.shape, acc)
    d_q, d_keys, d_values = jax.lax.fori_loop(0, tiles, query_tile, (zeros_q, zeros_kv, zeros_kv))
    d_keys, d_values = d_keys.transpose(0, 2, 1, 3), d_values.transpose(0, 2, 1, 3)  # [N, S, KVH, Dh]
    d_q = from_groups(d_q * dh**-0.5)[:, :t].astype(q.dtype)
    return (
        d_q,
        d_keys[:, :p].astype(ctx_k.dtype), d_values[:, :p].astype(ctx_v.dtype), None,
        d_keys[:, offset:offset + t].astype(k.dtype), d_values[:, offset:offset + t].astype(v.dtype), None, None,
    )


_attention.defvjp(_forward, _backward)


def causal_flash_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, tile: int, dtype: Any
) -> jax.Array:
    """Causal GQA attention of T tokens over themselves in square tiles (``context_attention`` with no
    ancestors): q [B, T, H, Dh], k/v [B, T, KVH, Dh], key_valid [B, T] -> [B, T, H, Dh]. Memory is linear in T;
    one [B, KVH, G * tile, tile] block of scores lives at a time."""
    b, _, kvh, dh = k.shape
    none = jnp.zeros((b, 0, kvh, dh), k.dtype)
    return context_attention(q, none, none, jnp.zeros((b, 0), jnp.bool_), k, v, key_valid, tile, dtype)
