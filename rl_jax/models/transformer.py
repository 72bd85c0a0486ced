"""Decoder-only transformer in Flax NNX for the Llama and Qwen2/Qwen3 families.

GQA attention with RoPE (default, linear or llama3 scaling), RMSNorm, SwiGLU; optional QKV bias (Qwen2) and
QK-norm (Qwen3); tied or untied embeddings. Numerics follow transformers' PyTorch code (RMSNorm in f32,
softmax in f32, logits in f32, RoPE angles in f32, silu in torch's form), so f32 logits agree to ~2e-6 on small
random models and to <1e-4 on SmolLM2-135M, whose residual stream carries activations near 25,000.

    logits, cache = model(tokens, positions, attention_mask=None, cache=None)   # logits [B, T, V] f32
    hidden, cache = model.forward_hidden(tokens, positions, attention_mask, cache)  # [B, T, D] after final norm
    logits = model.logits(hidden)             # any leading shape, e.g. only the last position when sampling
    h = model.hidden(tokens, positions, attention_mask)   # training: log-probs via h @ model.unembedding().T

Attention takes one of six paths, each tested equal to the masked whole-matrix form: without a cache (training,
scoring) causal query tiles with a written-out backward pass (``_causal_self_attention``), and past both
``causal_max_length`` and ``attention_chunk`` tokens square tiles in loops with a written-out backward pass too
(``_causal_flash_attention``: the program does not grow with T); a prefill into an empty cache online-softmax
tiles (``_prefill_attention``); a long prompt's rest over a cache, query chunk by chunk
(``_chunked_attention``); a cache holding a prefix that every row shares, once, a cascade over that one copy and
each row's own slots (``_attention_after_prefix``, chunked like the rest past ``attention_chunk`` queries);
otherwise the masked einsums over the cache (``_attention``), one query per row as multiplies and sums over
the cache's slot-minor keys.

Layers are separate modules run by a Python loop inside ``jit``: each layer's weights stay their own buffers,
which on CPU decodes ~3x faster than ``lax.scan`` over stacked weights (scan slices copy the weights every
step). Every parameter carries ``logical_axes`` metadata; ``rl_jax.sharding`` maps them onto a mesh.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rl_jax.models.cache import KVCache
from rl_jax.models.config import ModelConfig
from rl_jax.sharding import LOGICAL_AXES_KEY, constrain

_INIT_STD = 0.02  # transformers' default initializer_range


def _param(rngs: nnx.Rngs | None, shape: tuple[int, ...], axes: tuple[str, ...], dtype: Any, init: str) -> nnx.Param:
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        assert rngs is not None
        value = (jax.random.normal(rngs.params(), shape, jnp.float32) * _INIT_STD).astype(dtype)
    return nnx.Param(value, **{LOGICAL_AXES_KEY: axes})


def _acc_dtype(dtype: Any) -> Any:
    """Accumulation dtype: at least f32 (f64 when computing in f64, as exactness tests do)."""
    return jnp.promote_types(dtype, jnp.float32)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in (at least) f32 and cast back, as transformers does (weight applied after)."""
    xf = x.astype(_acc_dtype(x.dtype))
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


def rope_tables(cfg: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, head_dim] in f32 for integer positions [B, T] (half-split layout, as HF).

    Always f32, whatever the compute dtype: transformers computes the angles in f32 too, and exact
    agreement of the angles is what makes the two implementations agree.
    """
    inv_freq = jnp.asarray(cfg.rope_inv_freq(), dtype=jnp.float32)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [B, T, N, Dh] by cos/sin [B, T, Dh]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


class DecoderLayer(nnx.Module):
    """Pre-norm attention block and SwiGLU MLP block, each with a residual connection."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        d, f, h, kv, dh = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.cfg = cfg
        self.dtype = dtype
        p = param_dtype
        self.attn_norm = _param(None, (d,), ("norm",), p, "ones")
        self.wq = _param(rngs, (d, h, dh), ("embed", "heads", "head_dim"), p, "normal")
        self.wk = _param(rngs, (d, kv, dh), ("embed", "kv_heads", "head_dim"), p, "normal")
        self.wv = _param(rngs, (d, kv, dh), ("embed", "kv_heads", "head_dim"), p, "normal")
        self.wo = _param(rngs, (h, dh, d), ("heads", "head_dim", "embed"), p, "normal")
        if cfg.attention_bias:
            self.bq = _param(rngs, (h, dh), ("heads", "head_dim"), p, "normal")
            self.bk = _param(rngs, (kv, dh), ("kv_heads", "head_dim"), p, "normal")
            self.bv = _param(rngs, (kv, dh), ("kv_heads", "head_dim"), p, "normal")
        else:
            self.bq = self.bk = self.bv = None
        if cfg.qk_norm:
            self.q_norm = _param(None, (dh,), ("norm",), p, "ones")
            self.k_norm = _param(None, (dh,), ("norm",), p, "ones")
        else:
            self.q_norm = self.k_norm = None
        self.mlp_norm = _param(None, (d,), ("norm",), p, "ones")
        self.w_gate = _param(rngs, (d, f), ("embed", "mlp"), p, "normal")
        self.w_up = _param(rngs, (d, f), ("embed", "mlp"), p, "normal")
        self.w_down = _param(rngs, (f, d), ("mlp", "embed"), p, "normal")
        if cfg.mlp_bias:
            self.b_gate = _param(rngs, (f,), ("mlp",), p, "normal")
            self.b_up = _param(rngs, (f,), ("mlp",), p, "normal")
            self.b_down = _param(rngs, (d,), ("norm",), p, "normal")
        else:
            self.b_gate = self.b_up = self.b_down = None

    def _w(self, p: nnx.Param | None) -> jax.Array | None:
        return None if p is None else p[...].astype(self.dtype)

    def __call__(
        self,
        x: jax.Array,  # [B, T, D]
        cos: jax.Array,
        sin: jax.Array,
        query_slots: jax.Array,  # int32 [T]: the slot of each query (it sees valid key slots <= its own)
        key_valid: jax.Array,  # bool [B, S]
        k_buf: jax.Array | None,  # [B, KVH, S, Dh] or None (no cache: keys are the T new tokens)
        v_buf: jax.Array | None,
        index: jax.Array | None,
        prefix: tuple[jax.Array, jax.Array, jax.Array] | None,  # shared prefix keys, values, valid (or None)
        attention_chunk: int,
        fresh_cache: bool = False,
        causal_max_length: int = 0,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        q, k, v = self.project(x, cos, sin)
        if k_buf is None or v_buf is None:
            attn = self.causal_attention(q, k, v, key_valid, attention_chunk, causal_max_length)
        else:
            attn, k_buf, v_buf = self._cached_attention(
                q, k, v, query_slots, key_valid, k_buf, v_buf, index, prefix, attention_chunk, fresh_cache
            )
        return self.finish(x, attn), k_buf, v_buf

    def project(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The attention block's queries [B, T, H, Dh], keys and values [B, T, KVH, Dh] of x [B, T, D]: norm,
        projections (and biases, QK-norm), RoPE."""
        cfg = self.cfg
        y = rms_norm(x, self.attn_norm[...], cfg.rms_norm_eps)
        q = jnp.einsum("btd,dhk->bthk", y, self._w(self.wq))
        k = jnp.einsum("btd,dhk->bthk", y, self._w(self.wk))
        v = jnp.einsum("btd,dhk->bthk", y, self._w(self.wv))
        if self.bq is not None:
            q, k, v = q + self._w(self.bq), k + self._w(self.bk), v + self._w(self.bv)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        if self.q_norm is not None:
            q = rms_norm(q, self.q_norm[...], cfg.rms_norm_eps)
            k = rms_norm(k, self.k_norm[...], cfg.rms_norm_eps)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def causal_attention(
        self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, attention_chunk: int,
        causal_max_length: int,
    ) -> jax.Array:
        """Causal attention of T tokens over themselves, without a cache (training, scoring): causal query
        tiles, or past both lengths square tiles in loops. [B, T, H, Dh] -> [B, T, H, Dh]."""
        t = q.shape[1]
        if t <= max(attention_chunk, causal_max_length):
            return _causal_self_attention(q, k, v, key_valid, min(_CAUSAL_TILE, t), self.dtype)
        # long: square tiles in loops, a program whose size does not grow with T
        return _causal_flash_attention(q, k, v, key_valid, min(_FLASH_TILE, attention_chunk), self.dtype)

    def finish(self, x: jax.Array, attn: jax.Array) -> jax.Array:
        """The rest of the layer after attention: output projection and residual, then the SwiGLU MLP block."""
        cfg = self.cfg
        attn = constrain(attn, ("batch", "length", "heads", "head_dim"))
        x = x + jnp.einsum("bthk,hkd->btd", attn, self._w(self.wo))
        x = constrain(x, ("batch", "length", "act_embed"))

        y = rms_norm(x, self.mlp_norm[...], cfg.rms_norm_eps)
        gate = y @ self._w(self.w_gate)
        up = y @ self._w(self.w_up)
        if self.b_gate is not None:
            gate, up = gate + self._w(self.b_gate), up + self._w(self.b_up)
        # x / (1 + exp(-x)): the form PyTorch's silu uses (XLA's logistic op rounds differently, ~2 vs ~1 ulp)
        hidden = constrain(gate / (1 + jnp.exp(-gate)) * up, ("batch", "length", "mlp"))
        out = hidden @ self._w(self.w_down)
        if self.b_down is not None:
            out = out + self._w(self.b_down)
        return constrain(x + out, ("batch", "length", "act_embed"))

    def _cached_attention(
        self,
        q: jax.Array,  # [B, T, H, Dh]
        k: jax.Array,  # [B, T, KVH, Dh]
        v: jax.Array,
        query_slots: jax.Array,
        key_valid: jax.Array,
        k_buf: jax.Array,
        v_buf: jax.Array,
        index: jax.Array | None,
        prefix: tuple[jax.Array, jax.Array, jax.Array] | None,
        attention_chunk: int,
        fresh_cache: bool,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Attention with a cache: writes the new keys and values into it and attends over it (a prefill into
        an empty cache attends over the new tokens alone); returns [B, T, H, Dh] and the buffers. Uncached
        attention never comes here: ``__call__`` sends it to the causal tiles or their loops."""
        cfg = self.cfg
        b, t = q.shape[:2]
        kvh, g, dh = cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim
        k = k.transpose(0, 2, 1, 3)  # [B, KVH, T, Dh]
        v = v.transpose(0, 2, 1, 3)
        # the key cache is slot-minor, [B, KVH, Dh, S] (cache.py says why)
        k_buf = jax.lax.dynamic_update_slice(k_buf, k.transpose(0, 1, 3, 2).astype(k_buf.dtype), (0, 0, 0, index))
        v_buf = jax.lax.dynamic_update_slice(v_buf, v.astype(v_buf.dtype), (0, 0, index, 0))
        keys, values = k_buf.astype(self.dtype), v_buf.astype(self.dtype)

        qg = q.reshape(b, t, kvh, g, dh).transpose(0, 2, 3, 1, 4)  # [B, KVH, G, T, Dh]
        if fresh_cache:
            # a prefill: the cache held nothing before these T tokens, so they are all the keys there are
            # (a prompt shorter than a tile is one tile of its own length: no padded queries or keys)
            tile = min(_FLASH_TILE, attention_chunk, t)
            attn = _prefill_attention(qg, k, v, key_valid[:, :t], tile, self.dtype)
        else:
            attend = _attention if prefix is None else functools.partial(_attention_after_prefix, prefix=prefix)
            if t > attention_chunk:  # a long prompt's rest: one chunk of queries' scores at a time
                attn = _chunked_attention(qg, keys, values, query_slots, key_valid, attention_chunk, self.dtype, attend)
            else:
                attn = attend(qg, keys, values, query_slots, key_valid, self.dtype)
        return attn.transpose(0, 3, 1, 2, 4).reshape(b, t, cfg.num_heads, dh), k_buf, v_buf


def _attention(
    qg: jax.Array, keys: jax.Array, values: jax.Array, query_slots: jax.Array, key_valid: jax.Array, dtype: Any
) -> jax.Array:
    """Masked GQA attention: qg [B, KVH, G, T, Dh] over the cache's keys [B, KVH, Dh, S] (slot-minor) and
    values [B, KVH, S, Dh] -> [B, KVH, G, T, Dh]."""
    if qg.shape[3] == 1:
        return _single_query_attention(qg, keys, values, query_slots, key_valid, dtype)
    acc = _acc_dtype(dtype)
    scores = jnp.einsum("bkgtd,bkds->bkgts", qg, keys, preferred_element_type=acc) * (qg.shape[-1] ** -0.5)
    key_slots = jnp.arange(keys.shape[3], dtype=jnp.int32)
    mask = (key_slots[None, :] <= query_slots[:, None])[None] & key_valid[:, None, :]  # [B, T, S]
    # a large finite negative (not -inf): fully masked rows (padding queries) stay finite
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(acc).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return jnp.einsum("bkgts,bksd->bkgtd", probs, values)


def _single_query_attention(
    qg: jax.Array, keys: jax.Array, values: jax.Array, query_slots: jax.Array, key_valid: jax.Array, dtype: Any
) -> jax.Array:
    """``_attention`` for one query per row (a decode step): multiplies and sums over the slot-minor keys.

    With one query the products are [B x KVH] matrix-vector pieces too small for dots to pay: over 30 layers
    of SmolLM2-135M at batch 16 and 192 slots, batched dots took 24-30 ms and this form 13.6 on the 2-core
    CPU (BUILD.md). Multiplying along contiguous slots needs the keys slot-minor (``KVCache``).
    """
    acc = _acc_dtype(dtype)
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


def _attention_parts(
    q: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array, dtype: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Softmax attention left unnormalised, to merge with another part over other keys: q [N, KVH, Q, Dh] over
    slot-major keys/values [N, KVH, S, Dh] with mask [N, Q, S] -> weighted sums [N, KVH, Q, Dh] (f32), score
    maxima and exp-sums [N, KVH, Q]. The keys are the dots' left operand (a shared prefix: every row's queries
    at once, Q = B x G x T).
    """
    acc = _acc_dtype(dtype)
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
    """``_attention_parts`` over the rows' own cache slots (keys slot-minor [N, KVH, Dh, S]): multiplies and
    sums for a decode step's few queries (``_single_query_attention`` says why), dots for a prompt's rest."""
    acc = _acc_dtype(dtype)
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


def _attention_after_prefix(
    qg: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    query_slots: jax.Array,
    key_valid: jax.Array,
    dtype: Any,
    *,
    prefix: tuple[jax.Array, jax.Array, jax.Array],
) -> jax.Array:
    """``_attention`` over a shared prefix held once (``prefix``: keys and values [1, KVH, P, Dh], valid [1, P])
    followed by each row's own slots (keys [B, KVH, Dh, S], values [B, KVH, S, Dh]): qg [B, KVH, G, T, Dh] ->
    [B, KVH, G, T, Dh].

    Every row's queries meet the one copy of the prefix in a single batched product (cascade attention), so
    the prefix is read once per step rather than once per row; the two parts merge by their score maxima and
    exp-sums, which gives the softmax over all slots at once.
    """
    prefix_k, prefix_v, prefix_valid = prefix
    b, kvh, g, t, dh = qg.shape
    acc = _acc_dtype(dtype)
    all_queries = qg.transpose(1, 0, 2, 3, 4).reshape(1, kvh, b * g * t, dh)
    mask = jnp.broadcast_to(prefix_valid[:, None, :], (1, b * g * t, prefix_valid.shape[1]))
    shared, shared_top, shared_sum = _attention_parts(all_queries, prefix_k.astype(dtype), prefix_v.astype(dtype),
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
_CAUSAL_TILE = 128


def _causal_tile_bounds(t: int, tile: int) -> list[tuple[int, int]]:
    """(first, end) query rows of each tile; tile i's queries see keys [0, end)."""
    return [(i * tile, (i + 1) * tile) for i in range(-(-t // tile))]


def _tile_mask(key_valid: jax.Array, first: int, end: int) -> jax.Array:
    """[B, end - first, end]: query row first + r sees key s when s <= first + r and the key is valid."""
    causal = jnp.arange(end)[None, :] <= (first + jnp.arange(end - first))[:, None]
    return causal[None] & key_valid[:, None, :end]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _causal_self_attention(
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
    acc = _acc_dtype(dtype)
    bounds = _causal_tile_bounds(t, tile)
    pad = bounds[-1][1] - t
    if pad:  # padded keys are invalid; padded queries are cut off at the end
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        key_valid = jnp.pad(key_valid, ((0, 0), (0, pad)))
    # head-major [B, H, T, Dh] once, so every tile's dots are plain batched matmuls (slicing the token-major
    # arrays per tile made XLA transpose each slice: ~10% slower)
    scaled_q = (q * jnp.asarray(dh**-0.5, q.dtype)).transpose(0, 2, 1, 3)
    keys, values = _heads_major(k, group), _heads_major(v, group)
    lse, outs = [], []
    for first, end in bounds:
        p, tile_lse = _tile_probs(scaled_q, keys, key_valid, first, end, acc)
        lse.append(tile_lse)
        outs.append(jnp.einsum("bhts,bhsd->bhtd", p.astype(dtype), values[:, :, :end], preferred_element_type=acc))
    out = jnp.concatenate(outs, axis=2).astype(dtype)  # [B, H, T, Dh]
    # saved: the softmax's log-normaliser per query row, not the probabilities ([B, H, T] floats, not the
    # causal half of [B, H, T, T]): the backward pass recomputes each tile's probabilities from it
    return out.transpose(0, 2, 1, 3)[:, :t], (scaled_q, k, v, key_valid, out, jnp.concatenate(lse, axis=2))


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
    acc = _acc_dtype(dtype)
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
    acc = _acc_dtype(dtype)
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


_causal_self_attention.defvjp(_causal_fwd, _causal_bwd)


# Query and key tile of the prefill attention: ~10 MB of f32 scores per tile at batch 4 (cache-sized).
_FLASH_TILE = 512


def _block_mask(key_valid: jax.Array, i: jax.Array, j: jax.Array, tile: int) -> jax.Array:
    """[B, 1, tile, tile]: query i * tile + r sees key j * tile + c when at or before it and valid."""
    offsets = jnp.arange(tile, dtype=jnp.int32)
    causal = (j * tile + offsets)[None, :] <= (i * tile + offsets)[:, None]
    ok = jax.lax.dynamic_slice_in_dim(key_valid, j * tile, tile, axis=1)
    return (causal[None] & ok[:, None, :])[:, None]


def _block(x: jax.Array, i: jax.Array, tile: int) -> jax.Array:
    """Rows [i * tile, (i + 1) * tile) of a head-major [B, H, T, ...] array."""
    return jax.lax.dynamic_slice_in_dim(x, i * tile, tile, axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _causal_flash_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, tile: int, dtype: Any
) -> jax.Array:
    """``_causal_self_attention`` for long sequences: the same inputs, outputs and gradients, with square
    tiles visited in loops (FlashAttention's schedule) instead of unrolled query tiles over growing key
    ranges, so the program's size (compile time) does not grow with T. Forward: each query tile runs an
    online softmax over the key tiles up to the diagonal and saves its rows' log-normalisers. Backward: each
    query tile recomputes its probabilities block by block from them and accumulates dQ, dK and dV. Memory is
    linear in T; one [B, H, tile, tile] block of scores lives at a time.
    """
    return _flash_fwd(q, k, v, key_valid, tile, dtype)[0]


def _flash_fwd(
    q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, tile: int, dtype: Any
) -> tuple[jax.Array, tuple[Any, ...]]:
    b, t, h, dh = q.shape
    group = h // k.shape[2]
    acc = _acc_dtype(dtype)
    n = -(-t // tile)
    pad = n * tile - t
    if pad:  # padded keys are invalid; padded queries are cut off at the end
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        key_valid = jnp.pad(key_valid, ((0, 0), (0, pad)))
    scaled_q = (q * jnp.asarray(dh**-0.5, q.dtype)).transpose(0, 2, 1, 3)  # [B, H, Tp, Dh]
    keys, values = _heads_major(k, group), _heads_major(v, group)
    lowest = jnp.finfo(acc).min

    def query_tile(i: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        out, lse = carry
        qi = _block(scaled_q, i, tile)

        def key_tile(j: jax.Array, c: tuple[jax.Array, jax.Array, jax.Array]):
            running_max, norm, weighted = c
            mask = _block_mask(key_valid, i, j, tile)
            scores = jnp.einsum("bhtd,bhsd->bhts", qi, _block(keys, j, tile), preferred_element_type=acc)
            scores = jnp.where(mask, scores, lowest)
            new_max = jnp.maximum(running_max, scores.max(axis=-1))
            p = jnp.where(mask, jnp.exp(scores - new_max[..., None]), 0.0)
            rescale = jnp.exp(running_max - new_max)
            weighted = weighted * rescale[..., None] + jnp.einsum(
                "bhts,bhsd->bhtd", p.astype(dtype), _block(values, j, tile), preferred_element_type=acc
            )
            return new_max, norm * rescale + p.sum(axis=-1), weighted

        init = (jnp.full((b, h, tile), lowest, acc), jnp.zeros((b, h, tile), acc), jnp.zeros((b, h, tile, dh), acc))
        running_max, norm, weighted = jax.lax.fori_loop(0, i + 1, key_tile, init)
        # a row with no valid key (a padding query) attends to nothing: output 0, as in the tiles
        safe = jnp.where(norm > 0, norm, 1.0)
        out = jax.lax.dynamic_update_slice_in_dim(out, (weighted / safe[..., None]).astype(dtype), i * tile, axis=2)
        lse = jax.lax.dynamic_update_slice_in_dim(lse, running_max + jnp.log(safe), i * tile, axis=2)
        return out, lse

    init = (jnp.zeros((b, h, n * tile, dh), dtype), jnp.zeros((b, h, n * tile), acc))
    out, lse = jax.lax.fori_loop(0, n, query_tile, init)
    return out.transpose(0, 2, 1, 3)[:, :t], (scaled_q, k, v, key_valid, out, lse)


def _flash_bwd(tile: int, dtype: Any, residuals: tuple[Any, ...], d_out: jax.Array) -> tuple[Any, ...]:
    scaled_q, _, _, key_valid, _, lse = residuals
    b, h, tp, dh = scaled_q.shape
    acc = _acc_dtype(dtype)
    t = d_out.shape[1]
    keys, values, d_out, delta = _backward_inputs(residuals, d_out, dtype)

    def query_tile(i: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]):
        d_q, d_keys, d_values = carry
        qi, d_oi = _block(scaled_q, i, tile), _block(d_out, i, tile)
        lse_i, delta_i = _block(lse, i, tile)[..., None], _block(delta, i, tile)[..., None]

        def key_tile(j: jax.Array, c: tuple[jax.Array, jax.Array, jax.Array]):
            d_qi, d_keys, d_values = c
            kj, vj = _block(keys, j, tile), _block(values, j, tile)
            mask = _block_mask(key_valid, i, j, tile)
            scores = jnp.einsum("bhtd,bhsd->bhts", qi, kj, preferred_element_type=acc)
            p = jnp.where(mask, jnp.exp(scores - lse_i), 0.0)
            d_p = jnp.einsum("bhtd,bhsd->bhts", d_oi, vj, preferred_element_type=acc)
            d_scores = (p * (d_p - delta_i)).astype(dtype)  # zero where masked, since p is
            d_qi = d_qi + jnp.einsum("bhts,bhsd->bhtd", d_scores, kj, preferred_element_type=acc)

            def add(total: jax.Array, part: jax.Array) -> jax.Array:
                return jax.lax.dynamic_update_slice_in_dim(total, _block(total, j, tile) + part, j * tile, axis=2)

            d_keys = add(d_keys, jnp.einsum("bhts,bhtd->bhsd", d_scores, qi, preferred_element_type=acc))
            d_values = add(d_values, jnp.einsum("bhts,bhtd->bhsd", p.astype(dtype), d_oi, preferred_element_type=acc))
            return d_qi, d_keys, d_values

        init = (jnp.zeros((b, h, tile, dh), acc), d_keys, d_values)
        d_qi, d_keys, d_values = jax.lax.fori_loop(0, i + 1, key_tile, init)
        return jax.lax.dynamic_update_slice_in_dim(d_q, d_qi, i * tile, axis=2), d_keys, d_values

    zeros = jnp.zeros((b, h, tp, dh), acc)
    return _backward_outputs(residuals, t, *jax.lax.fori_loop(0, tp // tile, query_tile, (zeros, zeros, zeros)))


_causal_flash_attention.defvjp(_flash_fwd, _flash_bwd)


def _prefill_attention(
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
    acc = _acc_dtype(dtype)
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


def _chunked_attention(
    qg: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    query_slots: jax.Array,
    key_valid: jax.Array,
    chunk: int,
    dtype: Any,
    attend: Callable[..., jax.Array] = _attention,
) -> jax.Array:
    """Attention (``attend``: ``_attention``, or over a shared prefix too) over query chunks, one at a time,
    each rematerialized in the backward pass.

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


def _layer_runner(
    attention_chunk: int, fresh_cache: bool = False, causal_max_length: int = 0
) -> Callable[..., tuple[jax.Array, jax.Array | None, jax.Array | None]]:
    # static settings are closed over: they must stay Python values under nnx.remat, which traces its arguments
    def run(layer: DecoderLayer, *args: Any) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        return layer(*args, attention_chunk, fresh_cache, causal_max_length)

    return run


def _rematerialized(run: Callable[..., Any]) -> Callable[..., Any]:
    """``run`` with its layer's activations recomputed in the backward pass.

    A pure ``jax.checkpoint`` over the layer's state (split here, merged inside): ``nnx.remat`` merges the
    layer's variables back in the trace it was called from, which fails ("Cannot mutate Param from a different
    trace level") when the forward runs inside another transform, as the train step's scan and map over
    micro-batches do.
    """

    def wrapped(layer: nnx.Module, *args: Any) -> Any:
        graphdef, state = nnx.split(layer)

        def pure(state: nnx.State, *args: Any) -> Any:
            return run(nnx.merge(graphdef, state), *args)

        return jax.checkpoint(pure)(state, *args)

    return wrapped


def scan_layers(
    layers: Sequence[nnx.Module], run: Callable[[nnx.Module, Any], Any], carry: Any, *, remat: bool
) -> Any:
    """``carry = run(layer, carry)`` for each layer in order, as one ``lax.scan`` over the layers' weights
    stacked along a new leading axis (stacked here, inside the traced function: the model keeps one module
    per layer, which is what the sampler's decode wants on CPU).

    The program holds one layer's body instead of every layer's, so it compiles in about a layer's time, and
    with ``remat`` the backward loop recomputes one layer's activations at a time: memory holds the layers'
    inputs (the scan's carries) and one layer's intermediates. With the layers unrolled, XLA:CPU's schedule
    kept every layer's attention and MLP intermediates alive whether or not they were rematerialized (BUILD.md:
    tree training). The stack copies the layer weights once per call; its transpose slices the gradients.
    """
    splits = [nnx.split(layer) for layer in layers]
    graphdef = splits[0][0]
    if any(g != graphdef for g, _ in splits[1:]):
        raise ValueError("scan_layers needs layers of one structure")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(state for _, state in splits))

    def body(carry: Any, state: nnx.State) -> tuple[Any, None]:
        return run(nnx.merge(graphdef, state), carry), None

    if remat:  # inside a scan the loop already keeps the recomputation apart: no CSE barrier needed
        body = jax.checkpoint(body, prevent_cse=False)
    carry, _ = jax.lax.scan(body, carry, stacked)
    return carry


class Transformer(nnx.Module):
    """A decoder-only language model: ``logits, cache = model(tokens, positions, attention_mask, cache)``."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        remat: bool = False,
        scan: bool = False,
        attention_chunk: int = 1024,
        causal_max_length: int = 2048,
    ):
        self.config = cfg
        self.dtype = dtype
        # recompute each layer's activations in the backward pass (training memory ~ one layer's activations)
        self.remat = remat
        # without a cache (training, scoring), run the layers as one lax.scan over their stacked weights
        # (``scan_layers``): compile time and backward memory of one layer, not of all of them
        self.scan = scan
        # longer query blocks over a cache (long prompts' rests) attend chunk by chunk to bound memory; uncached
        # sequences past both this and causal_max_length attend in square tiles of min(512, this) in loops
        self.attention_chunk = attention_chunk
        # without a cache (training, scoring) sequences up to this length attend in causal tiles whatever
        # attention_chunk says: their memory is linear in T (the backward pass recomputes each tile's
        # probabilities) and at T = 2,048 a SmolLM2 train step ran 32-34 s against 57-61 s in query chunks
        # (BUILD.md); past it the unrolled tiles' program (and compile time) grows with T: loops take over
        self.causal_max_length = causal_max_length
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), param_dtype, "normal")
        self.layers = nnx.List(
            [DecoderLayer(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype) for _ in range(cfg.num_layers)]
        )
        self.final_norm = _param(None, (cfg.hidden_size,), ("norm",), param_dtype, "ones")
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = _param(
                rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), param_dtype, "normal"
            )

    def unembedding(self) -> jax.Array:
        """The output projection [V, D] (the tied embedding or lm_head): logits = hidden @ w.T."""
        return (self.embed if self.lm_head is None else self.lm_head)[...]

    def forward_hidden(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        *,
        fresh_cache: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states [B, T, D] (compute dtype) and the updated cache (None without one).

        ``fresh_cache=True`` promises the cache holds nothing yet (``cache.index == 0``: a prefill). Then the
        T tokens are all the keys: attention skips the cache's empty slots and the tiles above the diagonal,
        one tile of scores at a time (see ``_prefill_attention``).
        """
        cfg = self.config
        if tokens.ndim != 2 or positions.shape != tokens.shape:
            raise ValueError(
                f"tokens and positions must both be [batch, time]; got {tokens.shape} and {positions.shape}"
            )
        b, t = tokens.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.bool_)
        attention_mask = attention_mask.astype(jnp.bool_)

        if cache is None:
            # without a cache the T tokens occupy slots 0..T-1
            query_slots, key_valid, index = jnp.arange(t, dtype=jnp.int32), attention_mask, None
        else:
            if cache.num_layers != cfg.num_layers or cache.valid.shape[0] != b:
                raise ValueError(
                    f"cache was built for {cache.num_layers} layers x batch {cache.valid.shape[0]}; "
                    f"model has {cfg.num_layers} layers and the input batch is {b}"
                )
            index = cache.index
            key_valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, index))
            query_slots = index + jnp.arange(t, dtype=jnp.int32)

        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)
        x = constrain(x, ("batch", "length", "act_embed"))
        cos, sin = rope_tables(cfg, positions)
        new_k: list[jax.Array] = []
        new_v: list[jax.Array] = []
        if fresh_cache and (cache is None or cache.prefix_k is not None):
            raise ValueError("fresh_cache=True needs the (empty) cache to fill, without a shared prefix")
        run_layer = _layer_runner(self.attention_chunk, fresh_cache, self.causal_max_length)
        if cache is None and self.scan:
            x = scan_layers(
                self.layers,
                lambda layer, h: run_layer(layer, h, cos, sin, query_slots, key_valid, None, None, None, None)[0],
                x, remat=self.remat,
            )
            return rms_norm(x, self.final_norm[...], cfg.rms_norm_eps), None
        if self.remat:
            run_layer = _rematerialized(run_layer)
        for i, layer in enumerate(self.layers):
            k_buf = None if cache is None else cache.k[i]
            v_buf = None if cache is None else cache.v[i]
            prefix = None if cache is None or cache.prefix_k is None else (
                cache.prefix_k[i], cache.prefix_v[i], cache.prefix_valid
            )
            x, k_buf, v_buf = run_layer(layer, x, cos, sin, query_slots, key_valid, k_buf, v_buf, index, prefix)
            if cache is not None:
                new_k.append(k_buf)
                new_v.append(v_buf)
        h = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)
        if cache is None:
            return h, None
        return h, cache.replace(k=tuple(new_k), v=tuple(new_v), valid=key_valid, index=index + t)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Logits [..., V] from final hidden states [..., D]: f32 (f64 when computing in f64)."""
        w = self.unembedding().astype(self.dtype)
        return jnp.einsum("...d,vd->...v", hidden, w, preferred_element_type=_acc_dtype(self.dtype))

    def hidden(
        self, tokens: jax.Array, positions: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """Final-norm hidden states [B, T, D] without a cache (for chunked log-prob computation)."""
        return self.forward_hidden(tokens, positions, attention_mask)[0]

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Logits [B, T, V] in f32 and the updated cache (None when called without one)."""
        h, cache = self.forward_hidden(tokens, positions, attention_mask, cache)
        logits = constrain(self.logits(h), ("batch", "length", "act_vocab"))
        return logits, cache
