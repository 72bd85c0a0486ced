"""Every attention backend equals the XLA reference, forward and gradient, and the reference equals attention
written out by hand. The platform kernels run on CPU as far as they can: cuDNN's wrapper through
``jax.nn.dot_product_attention``'s XLA implementation (same layout, mask and GQA handling), Pallas splash
attention through Pallas' interpreter (the TPU kernels themselves, forward and backward)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from models_helpers import left_padded_batch

from rl_jax.models import KVCache, ModelConfig, Transformer
from rl_jax.models.attention import (
    BACKEND_NAMES,
    CpuAttention,
    CudnnAttention,
    ReferenceAttention,
    SplashAttention,
    select_backend,
)

B, T, KVH, G, DH = 4, 17, 2, 3, 8  # T = 17: no tile size used here divides it

BACKENDS = {
    "cpu_tiles": CpuAttention(),  # T <= causal_max_length: unrolled causal query tiles
    "cpu_flash": CpuAttention(attention_chunk=4, causal_max_length=4),  # past both: square tiles of 4 in loops
    "cudnn_wrapper": CudnnAttention(implementation="xla"),
    "pallas_interpret": SplashAttention(interpret=True),
}


def _key_valid() -> np.ndarray:
    valid = np.ones((B, T), bool)
    valid[1, :6] = False  # left padding (the sampler's layout)
    valid[2, 12:] = False  # right padding (the trainer's)
    valid[3, 3:7] = False  # a hole inside the row: keys 3..6 invalid for the queries after them
    return valid


def _qkv(seed: int, t: int = T, dtype=jnp.float32) -> tuple[jax.Array, jax.Array, jax.Array]:
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (B, t, KVH * G, DH)) * 1.5
    k = jax.random.normal(keys[1], (B, t, KVH, DH)) * 1.5
    v = jax.random.normal(keys[2], (B, t, KVH, DH))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _by_hand(q, k, v, visible) -> np.ndarray:
    """Attention as loops over numpy arrays: q [B, T, H, Dh], k/v [B, S, KVH, Dh], visible [B, T, S]."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, h, dh = q.shape
    out = np.zeros((b, t, h, dh))
    for i in range(b):
        for head in range(h):
            kv = head // (h // k.shape[2])
            for j in range(t):
                seen = np.flatnonzero(visible[i, j])
                if seen.size:
                    scores = k[i, seen, kv] @ q[i, j, head] / np.sqrt(dh)
                    w = np.exp(scores - scores.max())
                    out[i, j, head] = (w / w.sum()) @ v[i, seen, kv]
    return out


def test_the_reference_is_attention_as_written_by_hand():
    """The oracle itself: causal GQA over valid keys, a row with no visible key outputs 0."""
    q, k, v = _qkv(0)
    valid = _key_valid()
    valid[0, :] = False
    valid[0, 5] = True  # row 0: queries before 5 see nothing at all
    got = ReferenceAttention().causal(q, k, v, jnp.asarray(valid), jnp.float32)
    visible = np.tril(np.ones((T, T), bool))[None] & valid[:, None, :]
    chex.assert_shape(got, (B, T, KVH * G, DH))
    np.testing.assert_allclose(np.asarray(got), _by_hand(q, k, v, visible), atol=2e-6)
    assert not np.asarray(got)[0, :5].any()


def test_the_reference_over_a_cache_with_a_shared_prefix_is_attention_as_written_by_hand():
    """Queries at slots 4..8 over a cache of 9 slots, after a prefix of 5 shared by all rows (two of its slots
    invalid): each sees the valid prefix slots and its row's valid slots up to its own."""
    t, s, p = 5, 9, 5
    q, _, _ = _qkv(1, t)
    keys = jax.random.split(jax.random.key(2), 4)
    own_k, own_v = (jax.random.normal(key, (B, s, KVH, DH)) for key in keys[:2])
    prefix_k, prefix_v = (jax.random.normal(key, (1, p, KVH, DH)) for key in keys[2:])
    own_valid = np.ones((B, s), bool)
    own_valid[1, :3] = False
    own_valid[2, 6] = False
    prefix_valid = np.array([[False, True, True, False, True]])
    slots = np.arange(s - t, s)
    prefix = (prefix_k.transpose(0, 2, 1, 3), prefix_v.transpose(0, 2, 1, 3), jnp.asarray(prefix_valid))
    got = ReferenceAttention().over_cache(
        q, own_k.transpose(0, 2, 3, 1), own_v.transpose(0, 2, 1, 3), jnp.asarray(slots, jnp.int32),
        jnp.asarray(own_valid), prefix, jnp.float32,
    )
    all_k = np.concatenate([np.broadcast_to(prefix_k, (B, p, KVH, DH)), own_k], axis=1)
    all_v = np.concatenate([np.broadcast_to(prefix_v, (B, p, KVH, DH)), own_v], axis=1)
    own_visible = (np.arange(s)[None, :] <= slots[:, None])[None] & own_valid[:, None, :]
    visible = np.concatenate([np.broadcast_to(prefix_valid[:, None, :], (B, t, p)), own_visible], axis=2)
    np.testing.assert_allclose(np.asarray(got), _by_hand(q, all_k, all_v, visible), atol=2e-6)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_each_backend_equals_the_reference_in_values_and_gradients(name):
    """Causal attention without a cache (training): GQA, left, right and inner padding, T = 17. Compared on
    the real rows (a padding query's output is undefined: backends differ there), with no gradient coming in
    at padding rows, as in training, where the loss masks them; the gradients are then compared everywhere."""
    backend = BACKENDS[name]
    q, k, v = _qkv(3)
    real = _key_valid()
    valid = jnp.asarray(real)
    d_out = jax.random.normal(jax.random.key(4), q.shape) * real[:, :, None, None]

    def run(attend):
        out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, valid, jnp.float32), q, k, v)
        return out, vjp(d_out)

    (out, grads), (want, want_grads) = jax.jit(lambda: run(backend.causal))(), jax.jit(
        lambda: run(ReferenceAttention().causal)
    )()
    chex.assert_shape(out, q.shape)
    chex.assert_type(out, jnp.float32)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(want)[real], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(grads, want_grads, atol=1e-5, rtol=1e-4)
    for g in grads:  # a gradient that is there (not trivially zero)
        assert float(jnp.max(jnp.abs(g))) > 1e-2


def test_the_cudnn_wrapper_puts_each_rows_valid_tokens_first_in_order():
    """The order that lets cuDNN run with the causal mask alone (left padding, right padding, holes)."""
    from rl_jax.models.attention.gpu import valid_first

    valid = jnp.asarray([[False, True, False, True, True], [True, True, False, False, False]])
    np.testing.assert_array_equal(np.asarray(valid_first(valid)), [[1, 3, 4, 0, 2], [0, 1, 2, 3, 4]])


@pytest.mark.parametrize("name", list(BACKENDS))
def test_each_backend_in_bfloat16_stays_close_to_the_reference(name):
    """bf16 compute: bf16 out, softmax and sums in f32, within bf16's rounding of the f32 reference."""
    q, k, v = _qkv(5)
    real = _key_valid()
    out = BACKENDS[name].causal(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
                                jnp.asarray(real), jnp.bfloat16)
    want = ReferenceAttention().causal(q, k, v, jnp.asarray(real), jnp.float32)
    chex.assert_type(out, jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32))[real], np.asarray(want)[real], atol=0.05)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_each_backend_prefills_as_the_reference_attends_causally(name):
    """A prefill into an empty cache is causal attention over the prompt (the CPU backend's own tiles)."""
    backend = BACKENDS[name]
    q, k, v = _qkv(6)
    real = _key_valid()
    got = backend.prefill(q, k, v, jnp.asarray(real), jnp.float32)
    want = ReferenceAttention().causal(q, k, v, jnp.asarray(real), jnp.float32)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_prefix", [False, True])
@pytest.mark.parametrize("t", [1, 5])
@pytest.mark.parametrize("name", [*BACKENDS, "cpu_chunked"])
def test_each_backend_over_a_cache_equals_the_reference(name, t, with_prefix):
    """Attention over the sampler's cache: a decode step (one query) and a prompt's rest (five; the CPU
    backend's chunks of 2 in ``cpu_chunked``), with and without a prefix held once for every row."""
    backend = CpuAttention(attention_chunk=2) if name == "cpu_chunked" else BACKENDS[name]
    s, p = 11, 4
    keys = jax.random.split(jax.random.key(7), 5)
    q = jax.random.normal(keys[0], (B, t, KVH * G, DH))
    cache_k = jax.random.normal(keys[1], (B, KVH, DH, s))  # slot-minor, as KVCache
    cache_v = jax.random.normal(keys[2], (B, KVH, s, DH))
    valid = np.ones((B, s), bool)
    valid[1, :3] = False
    valid[3, 8] = False
    slots = jnp.arange(s - t, s, dtype=jnp.int32)
    prefix = None
    if with_prefix:
        prefix = (jax.random.normal(keys[3], (1, KVH, p, DH)), jax.random.normal(keys[4], (1, KVH, p, DH)),
                  jnp.asarray([[True, False, True, True]]))
    got = backend.over_cache(q, cache_k, cache_v, slots, jnp.asarray(valid), prefix, jnp.float32)
    want = ReferenceAttention().over_cache(q, cache_k, cache_v, slots, jnp.asarray(valid), prefix, jnp.float32)
    chex.assert_shape(got, (B, t, KVH * G, DH))
    chex.assert_trees_all_close(got, want, atol=2e-6, rtol=1e-5)


def test_auto_picks_the_platforms_backend_and_names_override_it():
    assert BACKEND_NAMES == ("auto", "reference", "cpu", "cudnn", "pallas")
    assert isinstance(select_backend("auto", platform="cpu"), CpuAttention)
    assert isinstance(select_backend("auto", platform="gpu"), CudnnAttention)
    assert select_backend("auto", platform="gpu").implementation == "cudnn"
    assert isinstance(select_backend("auto", platform="tpu"), SplashAttention)
    assert isinstance(select_backend("auto", platform="metal"), ReferenceAttention)  # an unknown platform
    assert isinstance(select_backend("reference", platform="gpu"), ReferenceAttention)
    assert isinstance(select_backend("cpu", platform="tpu"), CpuAttention)  # plain XLA: runs anywhere
    assert select_backend("cpu", attention_chunk=64, causal_max_length=256) == CpuAttention(64, 256)
    assert select_backend("cudnn", attention_chunk=64, platform="gpu").attention_chunk == 64
    assert isinstance(select_backend("auto"), CpuAttention)  # this machine


def test_unknown_backends_and_kernels_the_platform_lacks_are_refused():
    with pytest.raises(ValueError, match=r"unknown attention backend 'flash'.*auto, reference, cpu, cudnn, pallas"):
        select_backend("flash")
    with pytest.raises(ValueError, match="'cudnn' runs on gpu only, and JAX computes on cpu"):
        select_backend("cudnn", platform="cpu")
    with pytest.raises(ValueError, match="'pallas' runs on tpu only, and JAX computes on gpu"):
        select_backend("pallas", platform="gpu")
    cfg = _tiny_config()
    with pytest.raises(ValueError, match="unknown attention backend"):
        Transformer(cfg, rngs=nnx.Rngs(0), attention_backend="Reference")
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="runs on gpu only"):
        model.set_attention_backend("cudnn")
    assert model.attention_backend == "auto"  # unchanged by the refused call


def _tiny_config() -> ModelConfig:
    return ModelConfig(
        family="qwen3", vocab_size=61, hidden_size=48, intermediate_size=64, num_layers=2, num_heads=6,
        num_kv_heads=2, head_dim=8, qk_norm=True, rope_theta=10_000.0,
    )


@pytest.mark.parametrize("scan", [False, True])
def test_the_model_runs_whichever_backend_it_names(scan):
    """The whole model with the reference backend equals it with the CPU backend: the loss's gradient without
    a cache (scanned layers or a loop), and a prefill then two decode steps with one."""
    cfg = _tiny_config()
    ids, mask, positions = left_padded_batch([12, 9, 5], 12, vocab=cfg.vocab_size, seed=1)
    ids, mask, positions = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(positions)
    models = {}
    for name in ("cpu", "reference"):
        model = Transformer(cfg, rngs=nnx.Rngs(0), scan=scan, attention_backend=name)
        assert model.attention_backend == name and all(layer.attention_backend == name for layer in model.layers)
        models[name] = model

    def loss(model):
        logits, _ = model(ids, positions, mask)
        return jnp.sum(jax.nn.log_softmax(logits) * mask[:, :, None]) / mask.sum()

    grads = {name: nnx.grad(loss)(model) for name, model in models.items()}
    chex.assert_trees_all_close(grads["cpu"], grads["reference"], atol=1e-5, rtol=1e-4)

    def generate(model):
        cache = KVCache.init(cfg, batch=3, max_len=16)
        hidden, cache = model.forward_hidden(ids[:, :10], positions[:, :10], mask[:, :10], cache, fresh_cache=True)
        outs = [hidden]
        for i in (10, 11):
            hidden, cache = model.forward_hidden(ids[:, i:i + 1], positions[:, i:i + 1], mask[:, i:i + 1], cache)
            outs.append(hidden)
        return jnp.concatenate(outs, axis=1)

    real = np.asarray(mask)
    np.testing.assert_allclose(
        np.asarray(generate(models["cpu"]))[real], np.asarray(generate(models["reference"]))[real], atol=1e-5
    )
    # switching a built model's backend takes effect in its next trace
    models["cpu"].set_attention_backend("reference")
    assert all(layer.attention_backend == "reference" for layer in models["cpu"].layers)


@pytest.mark.parametrize("name", ["cpu_tiles", "pallas_interpret"])
def test_backends_under_a_mesh_equal_the_reference_on_one_device(name):
    """On a 2 x 2 x 2 (data x fsdp x model) mesh of fake devices, batch over data x fsdp and heads over model
    as the default rules place them: the same values and gradients as the reference without a mesh (splash
    runs per shard inside a shard_map, the XLA paths are partitioned by XLA)."""
    from rl_jax.sharding import constrain, make_mesh

    backend = BACKENDS[name]
    q, k, v = _qkv(8)
    real = _key_valid()
    valid = jnp.asarray(real)
    d_out = jax.random.normal(jax.random.key(9), q.shape) * real[:, :, None, None]

    def placed(q, k, v):  # as the projections place them (a no-op without a mesh)
        kv_axes = ("batch", "length", "kv_heads", "head_dim")
        return constrain(q, ("batch", "length", "heads", "head_dim")), constrain(k, kv_axes), constrain(v, kv_axes)

    def run(attend):
        out, vjp = jax.vjp(lambda q, k, v: attend(*placed(q, k, v), valid, jnp.float32), q, k, v)
        return out, vjp(d_out)

    want, want_grads = jax.jit(lambda: run(ReferenceAttention().causal))()
    with jax.set_mesh(make_mesh(2, 2, fsdp=2)):
        out, grads = jax.jit(lambda: run(backend.causal))()
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(want)[real], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(grads, want_grads, atol=1e-5, rtol=1e-4)


def test_splash_refuses_a_mesh_that_splits_the_sequence():
    from rl_jax.sharding import axis_rules, make_mesh

    q, k, v = _qkv(8)
    rules = (("batch", "data"), ("length", "model"))
    with jax.set_mesh(make_mesh(4, 2)), axis_rules(rules), pytest.raises(ValueError, match="splits the batch"):
        SplashAttention(interpret=True).causal(q, k, v, jnp.asarray(_key_valid()), jnp.float32)
