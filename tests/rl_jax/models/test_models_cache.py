"""KV-cache decoding equals full recomputation, under jit with split/merge, for left-padded batches."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from models_helpers import left_padded_batch

from rl_jax.models import KVCache, ModelConfig, Transformer

CFG = ModelConfig(
    family="qwen3", vocab_size=101, hidden_size=48, intermediate_size=80, num_layers=3, num_heads=6,
    num_kv_heads=2, head_dim=16, qk_norm=True, attention_bias=True, rope_theta=10_000.0,
)


def _step_fn(graphdef):
    @jax.jit
    def step(state, tokens, positions, mask, cache):
        model = nnx.merge(graphdef, state)
        return model(tokens, positions, mask, cache)

    return step


def test_cache_init_shapes_and_dtypes():
    cache = KVCache.init(CFG, batch=3, max_len=20, dtype=jnp.bfloat16)
    assert cache.num_layers == CFG.num_layers and cache.batch == 3 and cache.max_len == 20
    for buf in cache.k:  # keys slot-minor, values slot-major
        chex.assert_shape(buf, (3, CFG.num_kv_heads, CFG.head_dim, 20))
    for buf in cache.v:
        chex.assert_shape(buf, (3, CFG.num_kv_heads, 20, CFG.head_dim))
    for buf in (*cache.k, *cache.v):
        chex.assert_type(buf, jnp.bfloat16)
    chex.assert_shape(cache.valid, (3, 20))
    assert not bool(cache.valid.any()) and int(cache.index) == 0
    # a pytree: jit can take and return it
    assert len(jax.tree.leaves(cache)) == 2 * CFG.num_layers + 2


@pytest.mark.parametrize("chunks", [(11, 1, 1, 1, 1, 1), (5, 3, 4), (17,)])
def test_incremental_decode_equals_full_recompute(chunks):
    total = sum(chunks)
    ids, mask, positions = left_padded_batch([total, total - 4, total // 2], total, vocab=CFG.vocab_size, seed=4)
    graphdef, state = nnx.split(Transformer(CFG, rngs=nnx.Rngs(0)))
    step = _step_fn(graphdef)
    full, _ = step(state, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask), None)
    cache = KVCache.init(CFG, batch=3, max_len=24)
    outs, start = [], 0
    for n in chunks:
        sl = slice(start, start + n)
        logits, cache = step(state, jnp.asarray(ids[:, sl]), jnp.asarray(positions[:, sl]),
                             jnp.asarray(mask[:, sl]), cache)
        chex.assert_shape(logits, (3, n, CFG.vocab_size))
        outs.append(np.asarray(logits))
        start += n
    assert int(cache.index) == total
    np.testing.assert_array_equal(np.asarray(cache.valid[:, :total]), mask)
    assert not np.asarray(cache.valid[:, total:]).any()
    got = np.concatenate(outs, axis=1)
    np.testing.assert_allclose(got[mask], np.asarray(full)[mask], atol=2e-5, rtol=0)


def test_decode_after_left_padded_prefill_ignores_padding_slots():
    """Row 1 is row 0's prompt behind 6 padding slots: its decoded logits must be row 0's exactly."""
    model = Transformer(CFG, rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(model)
    step = _step_fn(graphdef)
    prompt = np.arange(5, 15, dtype=np.int32)
    ids = np.stack([np.concatenate([prompt, np.full(6, 7, np.int32)]),
                    np.concatenate([np.full(6, 99, np.int32), prompt])])
    mask = np.stack([np.r_[np.ones(10, bool), np.zeros(6, bool)], np.r_[np.zeros(6, bool), np.ones(10, bool)]])
    # row 0 also pads, but at the end; both keep positions 0..9 for their real tokens
    positions = np.stack([np.r_[np.arange(10), np.zeros(6)], np.r_[np.zeros(6), np.arange(10)]]).astype(np.int32)
    cache = KVCache.init(CFG, batch=2, max_len=20)
    _, cache = step(state, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask), cache)
    nxt = jnp.asarray([[42], [42]], jnp.int32)
    logits, cache = step(state, nxt, jnp.full((2, 1), 10, jnp.int32), jnp.ones((2, 1), bool), cache)
    np.testing.assert_allclose(np.asarray(logits[0]), np.asarray(logits[1]), atol=1e-5, rtol=0)
    assert np.isfinite(np.asarray(logits)).all()


def test_bfloat16_model_decodes_with_f32_logits():
    model = Transformer(CFG, rngs=nnx.Rngs(2), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    chex.assert_type(model.embed[...], jnp.bfloat16)
    graphdef, state = nnx.split(model)
    step = _step_fn(graphdef)
    ids, mask, positions = left_padded_batch([6, 4], 6, vocab=CFG.vocab_size)
    cache = KVCache.init(CFG, batch=2, max_len=8, dtype=jnp.bfloat16)
    logits, cache = step(state, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask), cache)
    chex.assert_type(logits, jnp.float32)
    chex.assert_type(cache.k[0], jnp.bfloat16)
    full, _ = step(state, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask), None)
    np.testing.assert_allclose(np.asarray(logits)[mask], np.asarray(full)[mask], atol=2e-2)


def test_bad_inputs_are_refused_with_clear_errors():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        model(jnp.zeros((4,), jnp.int32), jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="batch"):
        model(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3), jnp.int32), cache=KVCache.init(CFG, 1, 8))
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(family="llama", vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1,
                    num_heads=3, num_kv_heads=2, head_dim=4)


def test_rematerialized_layers_give_the_same_gradients():
    ids, mask, positions = left_padded_batch([9, 6], 9, vocab=CFG.vocab_size, seed=8)

    def grads(remat: bool):
        model = Transformer(CFG, rngs=nnx.Rngs(5), remat=remat)
        graphdef, params = nnx.split(model, nnx.Param)

        @jax.jit
        def loss(params):
            m = nnx.merge(graphdef, params)
            h = m.hidden(jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask))
            return jnp.mean((h @ m.unembedding().T) ** 2)

        return jax.grad(loss)(params), str(jax.make_jaxpr(loss)(params)).count("remat")

    (plain, plain_regions), (remat, remat_regions) = grads(False), grads(True)
    assert plain_regions == 0
    assert remat_regions == CFG.num_layers  # one checkpointed region per layer
    chex.assert_trees_all_close(plain, remat, atol=1e-6)


def test_long_sequence_attention_equals_the_short_one_in_values_and_gradients():
    """Long uncached sequences (square tiles in loops, here of 4) and long prompts into a cache (query chunks)
    change memory and program size, not results; T=17 is not a multiple of 4."""
    ids, mask, positions = left_padded_batch([17, 11], 17, vocab=CFG.vocab_size, seed=9)
    ids, mask, positions = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(positions)

    def run(chunk: int, remat: bool):
        model = Transformer(CFG, rngs=nnx.Rngs(6), attention_chunk=chunk, remat=remat, causal_max_length=0)
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(params):
            h = nnx.merge(graphdef, params).hidden(ids, positions, mask)
            return jnp.sum(jnp.where(mask[..., None], h, 0.0) ** 2), h

        (_, h), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        cache = KVCache.init(CFG, batch=2, max_len=20)
        prefill, _ = jax.jit(lambda p, c: nnx.merge(graphdef, p)(ids, positions, mask, c))(params, cache)
        return h, grads, prefill

    h0, g0, p0 = run(chunk=1024, remat=False)
    h1, g1, p1 = run(chunk=4, remat=True)
    np.testing.assert_allclose(np.asarray(h1)[np.asarray(mask)], np.asarray(h0)[np.asarray(mask)], atol=1e-5)
    np.testing.assert_allclose(np.asarray(p1)[np.asarray(mask)], np.asarray(p0)[np.asarray(mask)], atol=1e-5)
    # each f32 path's gradients are ~9e-5 from the same model's float64 gradients (measured), so two f32
    # paths that sum in different orders may differ by twice that
    chex.assert_trees_all_close(g0, g1, atol=2e-4)


@pytest.mark.parametrize(
    ("attention_chunk", "causal_max_length", "tiles"),
    [(4, 32, True), (4, 8, False), (32, 0, True), (4, 17, True), (4, 16, False)],
)
def test_uncached_sequences_take_causal_tiles_up_to_the_larger_of_the_two_limits(
    attention_chunk, causal_max_length, tiles
):
    """T=17 without a cache: the unrolled causal tiles when T <= max(attention_chunk, causal_max_length),
    else square tiles in loops."""
    ids, mask, positions = left_padded_batch([17, 11], 17, vocab=CFG.vocab_size, seed=9)
    model = Transformer(
        CFG, rngs=nnx.Rngs(6), attention_chunk=attention_chunk, causal_max_length=causal_max_length
    )
    jaxpr = str(jax.make_jaxpr(lambda: model.hidden(jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask)))())
    assert "custom_vjp" in jaxpr  # both write their backward pass out
    assert ("while" in jaxpr) == (not tiles)


@pytest.mark.parametrize("tile", [4, 1024])
def test_prefill_into_an_empty_cache_attends_tile_by_tile_to_the_same_result(tile):
    """fresh_cache=True (the sampler's prefill) attends over the prompt's own tokens in causal tiles with an
    online softmax; hidden states and the filled cache equal the general path's, which attends over every
    cache slot at once. Left padding leaves whole tiles of a short row without a valid key (tile 4)."""
    ids, mask, positions = left_padded_batch([17, 6], 17, vocab=CFG.vocab_size, seed=5)
    ids, mask, positions = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(positions)
    model = Transformer(CFG, rngs=nnx.Rngs(3), attention_chunk=tile)
    graphdef, state = nnx.split(model)

    def prefill(fresh):
        m = nnx.merge(graphdef, state)
        return m.forward_hidden(ids, positions, mask, KVCache.init(CFG, 2, 24), fresh_cache=fresh)

    (h_tiled, c_tiled), (h_whole, c_whole) = jax.jit(lambda: prefill(True))(), jax.jit(lambda: prefill(False))()
    keep = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(h_tiled)[keep], np.asarray(h_whole)[keep], atol=1e-5)
    # padding tokens attend to nothing real, so their keys from layer 1 on are arbitrary: compare real slots
    np.testing.assert_array_equal(np.asarray(c_tiled.valid), np.asarray(c_whole.valid))
    real = np.asarray(c_whole.valid)
    for slot_axis, tiled, whole in ((3, c_tiled.k, c_whole.k), (2, c_tiled.v, c_whole.v)):
        for a, b in zip(tiled, whole, strict=True):
            np.testing.assert_allclose(np.moveaxis(np.asarray(a), slot_axis, 1)[real],
                                       np.moveaxis(np.asarray(b), slot_axis, 1)[real], atol=1e-5)
    assert int(c_tiled.index) == int(c_whole.index) == 17
    with pytest.raises(ValueError, match="fresh_cache"):
        model.forward_hidden(ids, positions, mask, fresh_cache=True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_single_query_attention_equals_the_batched_matmul_form(dtype, monkeypatch):
    """A decode step's attention (one query per row: multiplies and sums over the cache) equals the einsum
    form every other call uses, masks included: padding slots, slots past the query, a row with one key."""
    from rl_jax.models.attention import cpu
    from rl_jax.models.attention.cpu import masked_attention as _attention

    b, kvh, g, s, dh = 3, 2, 3, 11, 40  # head_dim 40: scores in slices of 16, 16 and 8
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    qg = jax.random.normal(k1, (b, kvh, g, 2, dh), jnp.float32).astype(dtype)
    keys = jax.random.normal(k2, (b, kvh, dh, s), jnp.float32).astype(dtype)  # slot-minor, as the cache
    values = jax.random.normal(k3, (b, kvh, s, dh), jnp.float32).astype(dtype)
    valid = np.ones((b, s), bool)
    valid[1, :4] = False  # left padding
    valid[2, :7] = False  # the query's own slot is the row's only key
    valid = jnp.asarray(valid)
    slots = jnp.asarray([7, 8], jnp.int32)  # slots past the first query hold keys it must not see
    # the second query forces the einsum path; its first row is what a one-query call must give
    batched = _attention(qg, keys, values, slots, valid, dtype)[:, :, :, :1]
    single = _attention(qg[:, :, :, :1], keys, values, slots[:1], valid, dtype)
    chex.assert_shape(single, (b, kvh, g, 1, dh))
    chex.assert_type(single, dtype)
    tol = 1e-6 if dtype == jnp.float32 else 2e-2
    chex.assert_trees_all_close(single.astype(jnp.float32), batched.astype(jnp.float32), atol=tol, rtol=tol)
    # row 2 sees one key only: its output is that key's value exactly
    want = jnp.broadcast_to(values[2, :, None, 7].astype(jnp.float32), (kvh, g, dh))
    chex.assert_trees_all_close(single[2, :, :, 0].astype(jnp.float32), want, atol=tol, rtol=tol)
    # a cache too long for the values' written-out product weighs them with a dot instead: the same result
    monkeypatch.setattr(cpu, "_MAX_WEIGHTED_PRODUCT_BYTES", 0)
    by_dot = _attention(qg[:, :, :, :1], keys, values, slots[:1], valid, dtype)
    chex.assert_trees_all_close(by_dot.astype(jnp.float32), single.astype(jnp.float32), atol=tol, rtol=tol)


@pytest.mark.parametrize("kind", ["tiles", "flash"])
@pytest.mark.parametrize("tile", [4, 5, 17])
def test_causal_tiled_attention_equals_masked_attention_in_values_and_gradients(tile, kind):
    """The uncached attention (training, scoring) goes tile by tile over the causal lower triangle, with a
    written-out backward pass. Its outputs and its gradients for q, k and v equal JAX's own differentiation of
    the masked whole-matrix attention: GQA, left padding, T = 17 not a multiple of the tile. Queries at padding
    positions see no valid key; no real token reads what they output and the loss masks it, so the two paths
    (which treat them differently: the tiled one outputs 0) are compared on real rows, with no gradient coming
    in at padding rows."""
    from rl_jax.models.attention.cpu import _causal_fwd
    from rl_jax.models.attention.cpu import causal_tiled_attention as _causal_self_attention
    from rl_jax.models.attention.cpu import masked_attention as _attention
    from rl_jax.models.attention.flash import causal_flash_attention as _causal_flash_attention

    # the unrolled query tiles (up to causal_max_length) or the square tiles in loops (longer sequences)
    attention, forward = {
        "tiles": (_causal_self_attention, _causal_fwd), "flash": (_causal_flash_attention, None)
    }[kind]

    b, t, kvh, g, dh = 3, 17, 2, 3, 8
    keys = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(keys[0], (b, t, kvh * g, dh), jnp.float32)
    k = jax.random.normal(keys[1], (b, t, kvh, dh), jnp.float32)
    v = jax.random.normal(keys[2], (b, t, kvh, dh), jnp.float32)
    valid = np.ones((b, t), bool)
    valid[1, :6] = False
    valid[2, :16] = False  # one valid key: the last query's own
    d_out = jax.random.normal(keys[3], (b, t, kvh * g, dh), jnp.float32) * valid[:, :, None, None]
    real = valid
    valid = jnp.asarray(valid)

    def reference(q, k, v):
        qg = q.reshape(b, t, kvh, g, dh).transpose(0, 2, 3, 1, 4)
        slots = jnp.arange(t, dtype=jnp.int32)
        out = _attention(qg, k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3), slots, valid, jnp.float32)
        return out.transpose(0, 3, 1, 2, 4).reshape(b, t, kvh * g, dh)

    def tiled(q, k, v):
        return attention(q, k, v, valid, tile, jnp.float32)

    def run(fn):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(d_out)

    (out, grads), (want, want_grads) = jax.jit(lambda: run(tiled))(), jax.jit(lambda: run(reference))()
    chex.assert_shape(out, (b, t, kvh * g, dh))
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(want)[real], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(grads, want_grads, atol=1e-4, rtol=1e-4)
    # row 2's last query has one key: its output is that key's value, for each of the key's query heads
    chex.assert_trees_all_close(out[2, 16], jnp.repeat(v[2, 16], g, axis=0), atol=1e-6)
    # the gradient is not trivially zero where it should not be
    assert float(jnp.max(jnp.abs(grads[1]))) > 1e-2
    # a query with no valid key attends to nothing: output 0 (not the sum of every masked key's value, which
    # exp(scores - lse) gives there when lse rounds to the masking constant)
    assert not np.asarray(out)[~real].any()

    # on every row, padding rows with an incoming gradient included, the written-out backward pass is the
    # derivative of the tiled forward pass itself (JAX differentiating the same forward code)
    d_all = jax.random.normal(keys[3], (b, t, kvh * g, dh), jnp.float32)
    _, vjp = jax.vjp(tiled, q, k, v)
    if kind == "tiles":
        _, auto_vjp = jax.vjp(lambda q, k, v: forward(q, k, v, valid, tile, jnp.float32)[0], q, k, v)
    else:  # JAX cannot differentiate loops with dynamic bounds: the loops must equal the tiles, checked so
        _, auto_vjp = jax.vjp(lambda q, k, v: _causal_self_attention(q, k, v, valid, tile, jnp.float32), q, k, v)
    chex.assert_trees_all_close(vjp(d_all), auto_vjp(d_all), atol=1e-4, rtol=1e-4)


def test_causal_tiled_attention_in_bfloat16_stays_close_to_float32():
    """bf16 compute: the tiled path keeps its softmax and accumulation in f32 and returns bf16."""
    from rl_jax.models.attention.cpu import causal_tiled_attention as _causal_self_attention

    b, t, h, kvh, dh = 2, 33, 4, 2, 16
    keys = jax.random.split(jax.random.key(2), 3)
    q, k, v = (
        jax.random.normal(key, (b, t, n, dh), jnp.float32) for key, n in zip(keys, (h, kvh, kvh), strict=True)
    )
    valid = jnp.ones((b, t), bool)

    def loss(q, k, v, dtype):
        out = _causal_self_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), valid, 8, dtype)
        assert out.dtype == dtype
        return jnp.sum(out.astype(jnp.float32) ** 2)

    full = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, jnp.float32)
    half = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, jnp.bfloat16)
    for a, c in zip(full, half, strict=True):
        chex.assert_type(c, jnp.float32)  # cotangents come back in the primal's dtype (f32 inputs here)
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), atol=0.15, rtol=0.05)


@pytest.mark.parametrize("t", [1, 5])
def test_attention_after_a_shared_prefix_equals_attention_over_prefix_and_rows_together(t):
    """A prefix held once for every row (cascade attention: all rows' queries against one copy, merged with
    each row's own slots by the softmax maxima and sums) equals ``_attention`` over a cache in which every
    row holds the prefix followed by its own slots: GQA, invalid prefix slots, left padding in the rows'
    slots, causal masking among the rows' own slots, one query (decode) and several (a prompt's rest)."""
    from rl_jax.models.attention.cpu import attention_after_prefix as _attention_after_prefix
    from rl_jax.models.attention.cpu import chunked_attention as _chunked_attention
    from rl_jax.models.attention.cpu import masked_attention as _attention

    b, kvh, g, p, s, dh = 3, 2, 3, 7, 9, 8
    keys = jax.random.split(jax.random.key(4), 5)
    qg = jax.random.normal(keys[0], (b, kvh, g, t, dh)) * 2.0
    prefix_k, prefix_v = (jax.random.normal(k, (1, kvh, p, dh)) for k in keys[1:3])
    own_k, own_v = (jax.random.normal(k, (b, kvh, s, dh)) for k in keys[3:5])
    prefix_valid = jnp.asarray([[False, False, True, True, True, True, True]])
    own_valid = np.ones((b, s), bool)
    own_valid[1, :2] = False  # a shorter rest of the prompt, left-padded
    own_valid[2, : s - t] = False  # a row whose only own keys are its new queries' slots
    own_valid = jnp.asarray(own_valid)
    query_slots = jnp.arange(s - t, s, dtype=jnp.int32)

    prefix = (prefix_k, prefix_v, prefix_valid)
    own_k_cache = own_k.transpose(0, 1, 3, 2)  # the cache holds the rows' keys slot-minor
    got = _attention_after_prefix(qg, own_k_cache, own_v, query_slots, own_valid, jnp.float32, prefix=prefix)
    # a long rest of a prompt goes in chunks of queries (two of 3 here, the second padded): the same result
    attend = functools.partial(_attention_after_prefix, prefix=prefix)
    chunked = _chunked_attention(qg, own_k_cache, own_v, query_slots, own_valid, 3, jnp.float32, attend)
    together = (
        jnp.concatenate([jnp.broadcast_to(prefix_k, (b, kvh, p, dh)), own_k], axis=2).transpose(0, 1, 3, 2),
        jnp.concatenate([jnp.broadcast_to(prefix_v, (b, kvh, p, dh)), own_v], axis=2),
    )
    valid = jnp.concatenate([jnp.broadcast_to(prefix_valid, (b, p)), own_valid], axis=1)
    want = _attention(qg, *together, query_slots + p, valid, jnp.float32)
    chex.assert_shape(got, (b, kvh, g, t, dh))
    chex.assert_trees_all_close(got, want, atol=2e-6)
    chex.assert_trees_all_close(chunked, want, atol=2e-6)
