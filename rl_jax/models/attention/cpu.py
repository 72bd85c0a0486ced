"""The CPU backend: attention paths tuned for XLA:CPU on this project's 2-core test bed (timings in BUILD.md).

Six paths, each tested equal to the masked whole-matrix form: without a cache (training, scoring) causal
query tiles with a written-out backward pass (``causal_tiled_attention``), and past both
``causal_max_length`` and ``attention_chunk`` tokens square tiles in loops with a written-out backward pass
too (``causal_flash_attention``: the program does not grow with T); a prefill into an empty cache
online-softmax tiles (``prefill_attention``); a long prompt's rest over a cache, query chunk by chunk
(``chunked_attention``); a cache holding a prefix that every row shares, once, a cascade over that one copy
and each row's own slots (``attention_after_prefix``, chunked like the rest past ``attention_chunk``
queries); otherwise the masked einsums over the cache (``masked_attention``), one query per row as
multiplies and sums over the cache's slot-minor keys (``single_query_attention``).

The paths work in the grouped layout, queries [B, KVH, G, T, Dh]; ``CpuAttention`` converts from the model's
token-major one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from rl_jax.models.attention.flash import causal_flash_attention
from rl_jax.models.attention.interface import (
    AttentionBackend,
    Prefix,
    accumulation_dtype,
    from_groups,
    named_residuals,
    to_groups,
)


@dataclass(frozen=True)
class CpuAttention(AttentionBackend):
    """Picks among the paths by length; the two lengths are the model's settings (``Transformer``)."""

    name: ClassVar[str] = "cpu"
    # over a cache, longer query blocks attend chunk by chunk; uncached sequences past both lengths attend in
    # square tiles of min(FLASH_TILE, attention_chunk) in loops
    attention_chunk: int = 1024
    # uncached sequences up to this length attend in unrolled causal query tiles
    causal_max_length: int = 2048

    def causal(self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, dtype: Any) -> jax.Array:
        t = q.shape[1]
        if t <= max(self.attention_chunk, self.causal_max_length):
            return causal_tiled_attention(q, k, v, key_valid, min(CAUSAL_TILE, t), dtype)
        # long: square tiles in loops, a program whose size does not grow with T
        return causal_flash_attention(q, k, v, key_valid, min(FLASH_TILE, self.attention_chunk), dtype)

    def prefill(
        self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, dtype: Any
    ) -> jax.Array:
        # a prompt shorter than a tile is one tile of its own length: no padded queries or keys
        tile = min(FLASH_TILE, self.attention_chunk, q.shape[1])
        qg = to_groups(q, k.shape[2])
        keys, values = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KVH, T, Dh]
        return from_groups(prefill_attention(qg, keys, values, key_valid, tile, dtype))

    def over_cache(
        self,
        q: jax.Array,
        keys: jax.Array,
        values: jax.Array,
        query_slots: jax.Array,
        key_valid: jax.Array,
        prefix: Prefix | None,
        dtype: Any,
    ) -> jax.Array:
        qg = to_groups(q, keys.shape[1])
        attend = masked_attention
        if prefix is not None:
            attend = functools.partial(attention_after_prefix, prefix=prefix)
        if q.shape[1] > self.attention_chunk:  # a long prompt's rest: one chunk of queries' scores at a time
            chunk = self.attention_chunk
            out = chunked_attention(qg, keys, values, query_slots, key_valid, chunk, dtype, attend)
        else:
            out = attend(qg, keys, values, query_slots, key_valid, dtype)
        return from_groups(out)


def masked_attention(
    qg: jax.Array, keys: jax.Array, values: jax.Array, query_slots: jax.Array, key_valid: jax.Array, dtype: Any
) -> jax.Array:
    """Masked GQA attention: qg [B, KVH, G, T, Dh] over the cache's keys [B, KVH, Dh, S] (slot-minor) and
    values [B, KVH, S, Dh] -> [B, KVH, G, T, Dh]."""
    if qg.shape[3] == 1:
        return single_query_attention(qg, keys, values, query_slots, key_valid, dtype)
    acc = accumulation_dtype(dtype)
    scores = jnp.einsum("bkgtd,bkds->bkgts", qg, keys, preferred_element_type=acc) * (qg.shape[-1] ** -0.5)
    key_slots = jnp.arange(keys.shape[3], dtype=jnp.int32)
    mask = (key_slots[None, :] <= query_slots[:, None])[None] & key_valid[:, None, :]  # [B, T, S]
    # a large finite negative (not -inf): fully masked rows (padding queries) stay finite
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(acc).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return jnp.einsum("bkgts,bksd->bkgtd", probs, values)


def single_query_attention(
    qg: jax.Array, keys: jax.Array, values: jax.Array, query_slots: jax.Array, key_valid: jax.Array, dtype: Any
) -> jax.Array:
    """``masked_attention`` for one query per row (a decode step): multiplies and sums over the slot-minor
    keys.

    With one query the products are [B x KVH] matrix-vector pieces too small for dots to pay: over 30 layers
    of SmolLM2-135M at batch 16 and 192 slots, batched dots took 24-30 ms and this form 13.6 on the 2-core
    CPU (BUILD.md). Multiplying along contiguous slots needs the keys slot-minor (``KVCache``).
    """
    acc = accumulation_dtype(dtype)
    scores = _scores_over_cache(qg[:, :, :, 0], keys, acc) * (qg.shape[-1] ** -0.5)  # [B, KVH, G, S]
    key_slots = jnp.arange(keys.shape[3], dtype=jnp.int32)
    mask = (key_slots <= query_slots[0]) & key_valid  # [B, S]
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(acc).min)
    probs = jax.nn.softmax(scores, axis=-1)
    return _weighted_values(probs, values, acc).astype(dtype)[:, :, :, None]


# XLA:CPU rewrites a sum over more than 32 elements into windowed partial sums (its tree reduction), and the
# multiply producing them then no longer fuses into the sum: a [N, KVH, Q, Dh, S] product would be written out
# whole. Sums over slices of 16 of head_dim stay fused: over 30 layers at batch 16 and 192 slots, 13.6 ms
# against 18.5 for one sum over head_dim (and 24-30 for batched dots; BUILD.md).
_SCORE_SLICE = 16


def _scores_over_cache(q: jax.Array, keys: jax.Array, acc: Any) -> jax.Array:
    """Unscaled scores [N, KVH, Q, S] of a few queries q [N, KVH, Q, Dh] against slot-minor keys [N, KVH, Dh, S]."""
    q, keys = q.astype(acc), keys.astype(acc)
    parts = [
        jnp.sum(q[..., i : i + _SCORE_SLICE, None] * keys[:, :, None, i : i + _SCORE_SLICE], axis=3)
        for i in range(0, q.shape[-1], _SCORE_SLICE)
    ]
    return functools.reduce(jnp.add, parts)


# The values' sum over the slots is long, so XLA:CPU writes its [N, KVH, Q, S, Dh] product out (see above): still
# faster than dots for a decode step's cache (15.8 vs 18.7 ms for 30 layers at batch 16 and 192 slots), but past
# this size the product goes to a dot, so that a long cache of a large model never holds a huge temporary.
_MAX_WEIGHTED_PRODUCT_BYTES = 64 * 2**20


def _weighted_values(weights: jax.Array, values: jax.Array, acc: Any) -> jax.Array:
    """Sums [N, KVH, Q, Dh] of values [N, KVH, S, Dh] weighted by [N, KVH, Q, S]: multiplies and sums, or a
    dot when their product would be large."""
    n, kvh, q, s = weights.shape
    if n * kvh * q * s * values.shape[-1] * jnp.dtype(acc).itemsize > _MAX_WEIGHTED_PRODUCT_BYTES:
        return jnp.einsum("nkqs,nksd->nkqd", weights, values, preferred_element_type=acc)
    return jnp.sum(weights.astype(acc)[..., None] * values.astype(acc)[:, :, None], axis=3)


def attention_parts(
    q: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array, dtype: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Softmax attention left unnormalised, to merge with another part over other keys: q [N, KVH, Q, Dh] over
    slot-major keys/values [N, KVH, S, Dh] with mask [N, Q, S] -> weighted sums [N, KVH, Q, Dh] (f32), score
    maxima and exp-sums [N, KVH, Q]. The keys are the dots' left operand (a shared prefix: every row's queries
    at once, Q = B x G x T).
    """
    acc = accumulation_dtype(dtype)
    batch_dims = ((0, 1), (0, 1))
    scores = jax.lax.dot_general(keys, q, (((3,), (3,)), batch_dims), preferred_element_type=acc)  # [N,KVH,S,Q]
    scores = jnp.where(mask.transpose(0, 2, 1)[:, None], scores * (q.shape[-1] ** -0.5), jnp.finfo(acc).min)
    top = scores.max(axis=2)
    weights = jnp.exp(scores - top[:, :, None])
    summed = jax.lax.dot_general(
        weights.astype(dtype), values, (((2,), (2,)), batch_dims), preferred_element_type=acc
    )  # [N, KVH, Q, Dh]
    return summed, top, weights.sum(axis=2)


def _own_slot_parts(
    q: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array, dtype: Any, one_query: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``attention_parts`` over the rows' own cache slots (keys slot-minor [N, KVH, Dh, S]): multiplies and
    sums for a decode step's few queries (``single_query_attention`` says why), dots for a prompt's rest."""
    acc = accumulation_dtype(dtype)
    if one_query:
        scores = _scores_over_cache(q, keys, acc)
    else:
        scores = jnp.einsum("nkqd,nkds->nkqs", q, keys, preferred_element_type=acc)
    scores = jnp.where(mask[:, None], scores * (q.shape[-1] ** -0.5), jnp.finfo(acc).min)  # [N, KVH, Q, S]
    top = scores.max(axis=3)
    weights = jnp.exp(scores - top[..., None])
    if one_query:
        summed = _weighted_values(weights, values, acc)
    else:
        summed = jnp.einsum("nkqs,nksd->nkqd", weights.astype(dtype), values, preferred_element_type=acc)
    return summed, top, weights.sum(axis=3)


def attention_after_prefix(
    qg: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    query_slots: jax.Array,
    key_valid: jax.Array,
    dtype: Any,
    *,
    prefix: tuple[jax.Array, jax.Array, jax.Array],
) -> jax.Array:
    """``masked_attention`` over a shared prefix held once (``prefix``: keys and values [1, KVH, P, Dh], valid
    [1, P]) followed by each row's own slots (keys [B, KVH, Dh, S], values [B, KVH, S, Dh]):
    qg [B, KVH, G, T, Dh] -> [B, KVH, G, T, Dh].

    Every row's queries meet the one copy of the prefix in a single batched product (cascade attention), so
    the prefix is read once per step rather than once per row; the two parts merge by their score maxima and
    exp-sums, which gives the softmax over all slots at once.
    """
    prefix_k, prefix_v, prefix_valid = prefix
    b, kvh, g, t, dh = qg.shape
    acc = accumulation_dtype(dtype)
    all_queries = qg.transpose(1, 0, 2, 3, 4).reshape(1, kvh, b * g * t, dh)
    mask = jnp.broadcast_to(prefix_valid[:, None, :], (1, b * g * t, prefix_valid.shape[1]))
    shared, shared_top, shared_sum = attention_parts(all_queries, prefix_k.astype(dtype), prefix_v.astype(dtype),
                                                      mask, dtype)

    def per_row(x: jax.Array) -> jax.Array:  # [1, KVH, B*G*T, ...] -> [B, KVH, G*T, ...]
        return jnp.moveaxis(x[0].reshape(kvh, b, g * t, *x.shape[3:]), 1, 0)

    shared, shared_top, shared_sum = per_row(shared), per_row(shared_top), per_row(shared_sum)
    slots = keys.shape[3]
    key_slots = jnp.arange(slots, dtype=jnp.int32)
    own_mask = (key_slots[None, :] <= query_slots[:, None])[None] & key_valid[:, None, :]  # [B, T, S]
    own_mask = jnp.broadcast_to(own_mask[:, None], (b, g, t, slots)).reshape(b, g * t, slots)
    own, own_top, own_sum = _own_slot_parts(qg.reshape(b, kvh, g * t, dh), keys, values, own_mask, dtype, t == 1)
    top = jnp.maximum(shared_top, own_top)
    shared_w, own_w = jnp.exp(shared_top - top), jnp.exp(own_top - top)
    out = (shared * shared_w[..., None] + own * own_w[..., None]) / (shared_sum * shared_w + own_sum * own_w)[
        ..., None
    ]
    return out.astype(acc).reshape(b, kvh, g, t, dh).astype(dtype)


# Query tile of the uncached causal attention: each tile of queries meets only the keys up to its last row.
# At T=512 four tiles of 128 do 5/8 of the full score matrix; on the 2-core CPU a SmolLM2-135M layer's
# attention forward + backward takes ~105 ms against ~225 ms for the masked whole-matrix einsums (tiles of 64
# and 256 were slower; bench_attention.py, BUILD.md).
CAUSAL_TILE = 128


def _causal_tile_bounds(t: int, tile: int) -> list[tuple[int, int]]:
    """(first, end) query rows of each tile; tile i's queries see keys [0, end)."""
    return [(i * tile, (i + 1) * tile) for i in range(-(-t // tile))]


def _tile_mask(key_valid: jax.Array, first: int, end: int) -> jax.Array:
    """[B, end - first, end]: query row first + r sees key s when s <= first + r and the key is valid."""
    causal = jnp.arange(end)[None, :] <= (first + jnp.arange(end - first))[:, None]
    return causal[None] & key_valid[:, None, :end]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def causal_tiled_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, tile: int, dtype: Any
) -> jax.Array:
    """Causal GQA attention of T tokens over themselves (no cache): q [B, T, H, Dh], k/v [B, T, KVH, Dh],
    key_valid [B, T] -> [B, T, H, Dh], all in the token-major layout the projections produce.

    Queries go tile by tile, each against the keys up to its tile's end, so the score blocks above the
    diagonal are never computed. Keys and values are repeated to the H query heads (dots batched over B x H
    beat the grouped form's 5-D dots on CPU). The backward pass is written out (``_causal_bwd``): it
    recomputes each tile's probabilities from the saved log-normalisers (memory linear in T, as in
    FlashAttention) and uses the row sums of dO * O (FlashAttention's delta) instead of differentiating the
    softmax, so it never builds the transposes XLA adds when it transposes these einsums itself.
    """
    return _causal_fwd(q, k, v, key_valid, tile, dtype)[0]


def _causal_fwd(
    q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, tile: int, dtype: Any
) -> tuple[jax.Array, tuple[Any, ...]]:
    t, h, dh = q.shape[1:]
    group = h // k.shape[2]
    acc = accumulation_dtype(dtype)
    bounds = _causal_tile_bounds(t, tile)
    pad = bounds[-1][1] - t
    if pad:  # padded keys are invalid; padded queries are cut off at the end
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        key_valid = jnp.pad(key_valid, ((0, 0), (0, pad)))
    # head-major [B, H, T, Dh] once, so every tile's dots are plain batched matmuls (slicing the token-major
    # arrays per tile made XLA transpose each slice: ~10% slower)
    scaled_q = (q * jnp.asarray(dh**-0.5, q.dtype)).transpose(0, 2, 1, 3)
    keys, values = _heads_major(k, group), _heads_major(v, group)
    lses, outs = [], []
    for first, end in bounds:
        p, tile_lse = _tile_probs(scaled_q, keys, key_valid, first, end, acc)
        lses.append(tile_lse)
        outs.append(jnp.einsum("bhts,bhsd->bhtd", p.astype(dtype), values[:, :, :end], preferred_element_type=acc))
    # out [B, H, T, Dh]
    out, lse = named_residuals(jnp.concatenate(outs, axis=2).astype(dtype), jnp.concatenate(lses, axis=2))
    # saved: the softmax's log-normaliser per query row, not the probabilities ([B, H, T] floats, not the
    # causal half of [B, H, T, T]): the backward pass recomputes each tile's probabilities from it
    return out.transpose(0, 2, 1, 3)[:, :t], (scaled_q, k, v, key_valid, out, lse)


def _tile_probs(
    scaled_q: jax.Array, keys: jax.Array, key_valid: jax.Array, first: int, end: int, acc: Any,
    lse: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Softmax probabilities [B, H, end - first, end] of query rows [first, end) over keys [0, end) and their
    log-normalisers [B, H, end - first, 1]; given ``lse`` (the forward pass's), the same probabilities again.

    Masked keys get probability 0. A row with no valid key (a padding query) gets none at all and attends to
    nothing (output 0): its log-normaliser, ``min + log(end)``, rounds to ``min`` itself in f32, so without
    the mask every masked key would get ``exp(0) = 1``.
    """
    mask = _tile_mask(key_valid, first, end)[:, None]
    scores = jnp.einsum("bhtd,bhsd->bhts", scaled_q[:, :, first:end], keys[:, :, :end], preferred_element_type=acc)
    scores = jnp.where(mask, scores, jnp.finfo(acc).min)  # finite, not -inf: the padding rows stay finite
    if lse is None:
        lse = jax.nn.logsumexp(scores, axis=-1, keepdims=True)
    return jnp.where(mask, jnp.exp(scores - lse), 0.0), lse


def _heads_major(x: jax.Array, group: int) -> jax.Array:
    """[B, T, KVH, Dh] -> [B, H, T, Dh], each key/value head repeated for its ``group`` query heads."""
    return jnp.repeat(x, group, axis=2).transpose(0, 2, 1, 3)


def _backward_inputs(
    residuals: tuple[Any, ...], d_out: jax.Array, dtype: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """What both written-out causal backward passes start from: keys and values head-major (repeated again,
    cheap, rather than saved H-wide), dO head-major and padded like the saved inputs, and FlashAttention's
    row term delta[b, h, t] = sum_d dO * O = sum_s P * dP (from [T, Dh], not [T, S])."""
    scaled_q, k, v, _, out, _ = residuals
    group = scaled_q.shape[1] // k.shape[2]
    tp, t = scaled_q.shape[2], d_out.shape[1]
    if tp > t:
        d_out = jnp.pad(d_out, ((0, 0), (0, tp - t), (0, 0), (0, 0)))
    d_out = d_out.astype(dtype).transpose(0, 2, 1, 3)  # [B, H, Tp, Dh]
    acc = accumulation_dtype(dtype)
    delta = jnp.sum(d_out.astype(acc) * out.astype(acc), axis=-1)
    return _heads_major(k, group), _heads_major(v, group), d_out, delta


def _backward_outputs(
    residuals: tuple[Any, ...], t: int, d_q: jax.Array, d_keys: jax.Array, d_values: jax.Array
) -> tuple[Any, ...]:
    """Head-major, padded gradients back in the inputs' layouts: dQ for the unscaled queries, dK and dV summed
    over each group of query heads (the repeat's transpose); none for the key mask."""
    scaled_q, k = residuals[0], residuals[1]
    b, h, _, dh = scaled_q.shape
    kvh = k.shape[2]

    def per_kv_head(x: jax.Array) -> jax.Array:
        return x.transpose(0, 2, 1, 3)[:, :t].reshape(b, t, kvh, h // kvh, dh).sum(axis=3).astype(k.dtype)

    d_q = (d_q * dh**-0.5).transpose(0, 2, 1, 3)[:, :t].astype(scaled_q.dtype)
    return d_q, per_kv_head(d_keys), per_kv_head(d_values), None


def _causal_bwd(tile: int, dtype: Any, residuals: tuple[Any, ...], d_out: jax.Array) -> tuple[Any, ...]:
    scaled_q, _, _, key_valid, _, lse = residuals
    b, h, tp, dh = scaled_q.shape
    acc = accumulation_dtype(dtype)
    t = d_out.shape[1]
    keys, values, d_out, delta = _backward_inputs(residuals, d_out, dtype)
    d_keys = jnp.zeros((b, h, tp, dh), acc)
    d_values = jnp.zeros((b, h, tp, dh), acc)
    d_q = []
    for first, end in _causal_tile_bounds(tp, tile):
        p, _ = _tile_probs(scaled_q, keys, key_valid, first, end, acc, lse[:, :, first:end])
        d_o = d_out[:, :, first:end]
        d_values = d_values.at[:, :, :end].add(
            jnp.einsum("bhts,bhtd->bhsd", p.astype(dtype), d_o, preferred_element_type=acc)
        )
        d_p = jnp.einsum("bhtd,bhsd->bhts", d_o, values[:, :, :end], preferred_element_type=acc)
        # zero where masked, since p is: masked scores are constants and get no gradient
        d_scores = (p * (d_p - delta[:, :, first:end, None])).astype(dtype)
        d_q.append(jnp.einsum("bhts,bhsd->bhtd", d_scores, keys[:, :, :end], preferred_element_type=acc))
        d_keys = d_keys.at[:, :, :end].add(
            jnp.einsum("bhts,bhtd->bhsd", d_scores, scaled_q[:, :, first:end], preferred_element_type=acc)
        )
    return _backward_outputs(residuals, t, jnp.concatenate(d_q, axis=2), d_keys, d_values)


causal_tiled_attention.defvjp(_causal_fwd, _causal_bwd)


# Query and key tile of the prefill attention: ~10 MB of f32 scores per tile at batch 4 (cache-sized).
FLASH_TILE = 512


def prefill_attention(
    qg: jax.Array, keys: jax.Array, values: jax.Array, key_valid: jax.Array, tile: int, dtype: Any
) -> jax.Array:
    """Causal attention of T queries over their own T tokens (a prefill into an empty cache), tile by tile.

    The scores of a long prompt do not fit in cache, so the plain softmax streams [B, H, T, T] through memory
    several times. Here each query tile visits only the key tiles up to the diagonal, keeping a running max,
    normaliser and weighted sum (the online softmax of FlashAttention): one tile of scores at a time, and
    half the work. On this project's 2-core CPU a T=8192 prefill's attention is 3x faster than the masked
    whole-row softmax. Both the query tiles and the key tiles are loops, not unrolled: the program stays the
    same size whatever T is (BUILD.md: compile time). qg [B, KVH, G, T, Dh], keys/values [B, KVH, T, Dh],
    key_valid [B, T].
    """
    b, kvh, g, t, dh = qg.shape
    acc = accumulation_dtype(dtype)
    n = -(-t // tile)
    pad = n * tile - t
    if pad:  # padded keys are invalid; padded queries are cut off at the end
        qg = jnp.pad(qg, ((0, 0), (0, 0), (0, 0), (0, pad), (0, 0)))
        keys = jnp.pad(keys, ((0, 0), (0, 0), (0, pad), (0, 0)))
        values = jnp.pad(values, ((0, 0), (0, 0), (0, pad), (0, 0)))
        key_valid = jnp.pad(key_valid, ((0, 0), (0, pad)))
    qg = qg * jnp.asarray(dh**-0.5, qg.dtype)
    lowest = jnp.finfo(acc).min  # finite: a row with no valid key yet stays finite and is reset by the next
    offsets = jnp.arange(tile, dtype=jnp.int32)

    def query_tile(i: jax.Array | int, out: jax.Array) -> jax.Array:
        q = jax.lax.dynamic_slice_in_dim(qg, i * tile, tile, axis=3)
        q_slots = i * tile + offsets

        def visit(j: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]):
            running_max, norm, weighted = carry
            k = jax.lax.dynamic_slice_in_dim(keys, j * tile, tile, axis=2)
            v = jax.lax.dynamic_slice_in_dim(values, j * tile, tile, axis=2)
            ok = jax.lax.dynamic_slice_in_dim(key_valid, j * tile, tile, axis=1)
            scores = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=acc)
            k_slots = j * tile + offsets
            mask = (k_slots[None, :] <= q_slots[:, None])[None] & ok[:, None, :]  # [B, tile, tile]
            scores = jnp.where(mask[:, None, None], scores, lowest)
            new_max = jnp.maximum(running_max, scores.max(axis=-1))
            probs = jnp.exp(scores - new_max[..., None])
            rescale = jnp.exp(running_max - new_max)
            weighted = weighted * rescale[..., None] + jnp.einsum(
                "bkgts,bksd->bkgtd", probs.astype(dtype), v, preferred_element_type=acc
            )
            return new_max, norm * rescale + probs.sum(axis=-1), weighted

        init = (
            jnp.full((b, kvh, g, tile), lowest, acc),
            jnp.zeros((b, kvh, g, tile), acc),
            jnp.zeros((b, kvh, g, tile, dh), acc),
        )
        _, norm, weighted = jax.lax.fori_loop(0, i + 1, visit, init)  # the key tiles up to the diagonal
        return jax.lax.dynamic_update_slice_in_dim(out, (weighted / norm[..., None]).astype(dtype), i * tile, axis=3)

    out = jnp.zeros((b, kvh, g, n * tile, dh), dtype)
    # one tile (a short prompt) needs no loop around it
    out = query_tile(0, out) if n == 1 else jax.lax.fori_loop(0, n, query_tile, out)
    return out[:, :, :, :t]


def chunked_attention(
    qg: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    query_slots: jax.Array,
    key_valid: jax.Array,
    chunk: int,
    dtype: Any,
    attend: Callable[..., jax.Array] = masked_attention,
) -> jax.Array:
    """Attention (``attend``: ``masked_attention``, or over a shared prefix too) over query chunks, one at a
    time, each rematerialized in the backward pass.

    Peak memory holds one chunk's scores [B, H, chunk, S] instead of all [B, H, T, S]: long prompts' rests
    over a cache fit. Queries are padded to a multiple of ``chunk``; the padding is dropped.
    """
    b, kvh, g, t, dh = qg.shape
    n = -(-t // chunk)
    pad = n * chunk - t
    qg = jnp.pad(qg, ((0, 0), (0, 0), (0, 0), (0, pad), (0, 0)))
    slots = jnp.pad(query_slots, (0, pad))
    q_chunks = jnp.moveaxis(qg.reshape(b, kvh, g, n, chunk, dh), 3, 0)
    body = jax.checkpoint(lambda xs: attend(xs[0], keys, values, xs[1], key_valid, dtype))
    out = jax.lax.map(body, (q_chunks, slots.reshape(n, chunk)))  # [n, B, KVH, G, chunk, Dh]
    return jnp.moveaxis(out, 0, 3).reshape(b, kvh, g, n * chunk, dh)[:, :, :, :t]

