"""Token log-probs: the chunked path equals the plain one in value and gradient, without [B, T, V] in memory."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from rl_jax.grpo import token_logprobs_from_hidden, token_logprobs_from_logits
from rl_jax.sharding import DATA, MODEL, make_mesh


def _inputs(b=2, t=19, d=16, v=97, seed=0):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.normal(size=(b, t, d)) / 2, jnp.float32)
    w = jnp.asarray(rng.normal(size=(v, d)) / 2, jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    return h, w, targets


@functools.partial(jax.jit, static_argnums=3)
def _full(h, w, targets, temperature):
    return token_logprobs_from_logits(jnp.einsum("btd,vd->btv", h, w), targets, temperature, with_entropy=True)


def test_plain_logprobs_match_log_softmax_with_temperature():
    h, w, targets = _inputs()
    logits = np.einsum("btd,vd->btv", np.asarray(h, np.float64), np.asarray(w, np.float64))
    out = jax.jit(lambda x, t: token_logprobs_from_logits(x, t, temperature=0.7, with_entropy=True))(
        jnp.asarray(logits, jnp.float32), targets
    )
    z = logits / 0.7
    logq = z - z.max(-1, keepdims=True)
    logq = logq - np.log(np.exp(logq).sum(-1, keepdims=True))
    want = np.take_along_axis(logq, np.asarray(targets)[..., None], axis=-1)[..., 0]
    chex.assert_trees_all_close(out.logp, want, atol=1e-5)
    chex.assert_trees_all_close(out.entropy, -(np.exp(logq) * logq).sum(-1), atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 19, 64])
def test_chunked_equals_full_in_value(chunk_size):
    h, w, targets = _inputs()
    full = _full(h, w, targets, 1.3)
    chunked = jax.jit(
        lambda h, w, t: token_logprobs_from_hidden(h, w, t, 1.3, chunk_size=chunk_size, with_entropy=True)
    )(h, w, targets)
    chex.assert_shape([chunked.logp, chunked.entropy], targets.shape)
    chex.assert_trees_all_close(chunked, full, atol=1e-5)


def test_chunked_equals_full_in_gradient():
    h, w, targets = _inputs(t=23)
    weights = jnp.asarray(np.random.default_rng(9).normal(size=targets.shape), jnp.float32)  # uneven token weights

    def full(h, w):
        out = token_logprobs_from_logits(jnp.einsum("btd,vd->btv", h, w), targets, 0.8, with_entropy=True)
        return jnp.sum(out.logp * weights) + jnp.sum(out.entropy)

    def chunked(h, w):
        out = token_logprobs_from_hidden(h, w, targets, 0.8, chunk_size=5, with_entropy=True)
        return jnp.sum(out.logp * weights) + jnp.sum(out.entropy)

    g_full = jax.jit(jax.grad(full, argnums=(0, 1)))(h, w)
    g_chunked = jax.jit(jax.grad(chunked, argnums=(0, 1)))(h, w)
    chex.assert_trees_all_close(g_chunked, g_full, atol=1e-5)


def test_bfloat16_inputs_give_float32_logprobs_close_to_float32_inputs():
    h, w, targets = _inputs()
    f = jax.jit(lambda h, w: token_logprobs_from_hidden(h, w, targets, chunk_size=8).logp)
    ref = f(h, w)
    low = f(h.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert low.dtype == jnp.float32
    chex.assert_trees_all_close(low, ref, atol=0.1)


def test_backward_never_holds_the_full_float32_logits():
    b, t, d, v = 2, 512, 32, 4096
    h, w = jnp.zeros((b, t, d)), jnp.zeros((v, d))
    targets = jnp.zeros((b, t), jnp.int32)
    full_logits_bytes = b * t * v * 4

    def temp_bytes(f):
        compiled = jax.jit(jax.grad(f, argnums=(0, 1))).lower(h, w).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    chunked = temp_bytes(lambda h, w: token_logprobs_from_hidden(h, w, targets, chunk_size=64).logp.sum())
    full = temp_bytes(
        lambda h, w: token_logprobs_from_logits(jnp.einsum("btd,vd->btv", h, w), targets).logp.sum()
    )
    assert full >= full_logits_bytes          # the check can see a materialised [B, T, V]
    assert chunked < full_logits_bytes / 2


def test_bad_inputs_are_refused():
    h, w, targets = _inputs()
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs_from_hidden(h, w, targets, temperature=0.0)
    with pytest.raises(ValueError, match="hidden size"):
        token_logprobs_from_hidden(h, w[:, :8], targets)
    with pytest.raises(AssertionError):
        token_logprobs_from_hidden(h, w, targets[:, :5])


def test_chunked_logprobs_on_a_data_model_mesh_equal_one_device():
    mesh = make_mesh(4, 2)
    h, w, targets = _inputs(b=8, t=12, d=16, v=96)
    f = jax.jit(lambda h, w, t: token_logprobs_from_hidden(h, w, t, 0.9, chunk_size=5, with_entropy=True))
    want = f(h, w, targets)
    # batch over data; the unembedding's vocab over model and its hidden dim over data (FSDP), as the rules say
    got = f(
        jax.device_put(h, NamedSharding(mesh, PartitionSpec(DATA, None, None))),
        jax.device_put(w, NamedSharding(mesh, PartitionSpec(MODEL, DATA))),
        jax.device_put(targets, NamedSharding(mesh, PartitionSpec(DATA, None))),
    )
    chex.assert_trees_all_close(got, want, atol=1e-5)


def test_chunks_are_of_equal_size_so_padding_stays_under_one_position_per_chunk():
    """448 positions at chunk_size 256: two chunks of 224 (not 256 + 256, padding 64 positions' work)."""
    h, w, t = jnp.zeros((1, 448, 8)), jnp.zeros((16, 8)), jnp.zeros((1, 448), jnp.int32)
    jaxpr = str(jax.make_jaxpr(lambda h, w, t: token_logprobs_from_hidden(h, w, t, chunk_size=256).logp)(h, w, t))
    assert "f32[1,224,16]" in jaxpr  # each chunk's logits
    assert "512" not in jaxpr and "256" not in jaxpr
