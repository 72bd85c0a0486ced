"""The sampler's copy of the policy under mixed precision: weights in the compute dtype, the same outputs.

The model casts every weight to its compute dtype where it uses it, so a copy whose parameters are already
cast computes bit for bit what the f32 masters compute, while decoding reads half the bytes per token.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from rl_jax.learner.loop import generation_model
from rl_jax.models import ModelConfig, Transformer
from rl_jax.train.state import split_model

CFG = ModelConfig(
    family="qwen3", vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=8, qk_norm=True, tie_word_embeddings=True, max_position_embeddings=64,
)
TOKENS = jnp.arange(24, dtype=jnp.int32).reshape(2, 12) % CFG.vocab_size
POSITIONS = jnp.broadcast_to(jnp.arange(12, dtype=jnp.int32), TOKENS.shape)


def test_f32_masters_under_bf16_compute_are_handed_to_the_sampler_in_bf16_with_identical_logits():
    model = Transformer(CFG, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.float32)
    graphdef, params, frozen = split_model(model)
    generating = generation_model(graphdef, params, frozen)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(generating, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}  # the masters are untouched
    chex.assert_trees_all_equal(generating(TOKENS, POSITIONS)[0], model(TOKENS, POSITIONS)[0])


def test_parameters_already_in_the_compute_dtype_are_not_copied():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    graphdef, params, frozen = split_model(model)
    generating = generation_model(graphdef, params, frozen)
    for a, b in zip(jax.tree.leaves(nnx.state(generating, nnx.Param)), jax.tree.leaves(params), strict=True):
        assert a is b
