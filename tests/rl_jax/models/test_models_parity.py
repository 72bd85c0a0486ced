"""Our logits equal transformers' PyTorch logits (f32, CPU) on random tiny checkpoints of every family."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from models_helpers import FAMILY_CASES, hf_logits, left_padded_batch

from rl_jax.models import ModelConfig, Transformer, load_pretrained

TOL = 1e-4


@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_logits_match_transformers(case, hf_checkpoints):
    ids, _, positions = left_padded_batch([40, 40], 40)
    expected = hf_logits(hf_checkpoints[case], ids)
    model = load_pretrained(hf_checkpoints[case], progress=False)
    logits, cache = model(jnp.asarray(ids), jnp.asarray(positions))
    assert cache is None
    chex.assert_shape(logits, (2, 40, model.config.vocab_size))
    chex.assert_type(logits, jnp.float32)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("case", ["llama3_scaled_untied", "qwen3_untied"])
def test_left_padded_batch_matches_transformers_on_real_tokens(case, hf_checkpoints):
    ids, mask, positions = left_padded_batch([9, 24, 17], 24, seed=1)
    expected = hf_logits(hf_checkpoints[case], ids, attention_mask=mask, positions=positions)
    model = load_pretrained(hf_checkpoints[case], progress=False)
    logits, _ = model(jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask))
    got = np.asarray(logits)
    assert np.isfinite(got).all()  # padding queries attend to nothing but must not poison anything with NaN
    np.testing.assert_allclose(got[mask], expected[mask], atol=TOL, rtol=0)


def test_rope_frequencies_match_transformers_for_llama3_scaling():
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = transformers.LlamaConfig(
        hidden_size=256, num_attention_heads=2, rope_theta=500_000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
    )
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    ours = ModelConfig.from_hf(hf.to_dict()).rope_inv_freq()
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-6, atol=0)  # an ulp or two of libm pow at most


def test_hidden_times_unembedding_gives_the_logits():
    cfg = ModelConfig(family="llama", vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8)
    from flax import nnx

    model = Transformer(cfg, rngs=nnx.Rngs(3))
    ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
    pos = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (2, 6))
    logits, _ = model(ids, pos)
    h = model.hidden(ids, pos)
    chex.assert_shape(h, (2, 6, 32))
    chex.assert_shape(model.unembedding(), (50, 32))
    np.testing.assert_allclose(np.asarray(h @ model.unembedding().T), np.asarray(logits), atol=1e-5)
