"""The embedded default model, SmolLM2-135M-Instruct (GGUF, Q4_1), against transformers' own GGUF reader.

transformers dequantizes and un-permutes the llama.cpp tensors with its own code, so agreement checks our GGUF
path (names, dequantization, Q/K permutation, config) as well as the forward pass.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rl_jax.models import load_gguf, load_pretrained, save_pretrained, smollm2_gguf_path

# "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n" in SmolLM2's vocabulary
PROMPT = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]


@pytest.fixture(scope="module")
def ours():
    cfg, model = load_gguf(smollm2_gguf_path(), progress=False)
    return cfg, model


@pytest.fixture(scope="module")
def reference():
    """transformers' LlamaForCausalLM holding transformers' own conversion of the same GGUF file."""
    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = smollm2_gguf_path()
    config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    with torch.device("meta"):  # skip the random init of 135M parameters: every one is assigned below
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    state = {k: torch.as_tensor(np.asarray(v)) for k, v in tensors.items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied
    model.load_state_dict(state, strict=True, assign=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(model.config)  # its buffers were on meta
    return model.eval()


def _ref_logits(model, ids, dtype):
    import torch

    with torch.no_grad():
        return model.to(dtype)(torch.tensor([ids])).logits.numpy()[0]


def _our_logits(model, ids):
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, i, p: nnx.merge(graphdef, s)(i, p)[0])
    n = len(ids)
    return np.asarray(f(state, jnp.asarray([ids], jnp.int32), jnp.arange(n, dtype=jnp.int32)[None]))[0]


def test_gguf_config_is_smollm2_135m(ours):
    cfg, model = ours
    assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == ("llama", 30, 576, 9, 3)
    assert cfg.vocab_size == 49152 and cfg.tie_word_embeddings and cfg.rope_theta == 100_000.0
    assert cfg.rms_norm_eps == 1e-5
    assert 134e6 < cfg.num_params() < 136e6
    chex.assert_shape(model.unembedding(), (49152, 576))


@pytest.mark.slow  # converting the GGUF twice (ours and transformers') takes ~30 s of CPU
def test_smollm2_logits_match_transformers(ours, reference):
    import torch

    _, model = ours
    got = _our_logits(model, PROMPT)
    want32 = _ref_logits(reference, PROMPT, torch.float32)
    np.testing.assert_allclose(got, want32, atol=1e-4, rtol=0)
    # SmolLM2's residual stream carries activations near 25,000, so f32 rounding alone moves logits by ~1e-4 on
    # longer prompts: check we sit as close to the f64 result as transformers' own f32 run does
    want64 = _ref_logits(reference, PROMPT, torch.float64)
    reference.to(torch.float32)
    ours_err, theirs_err = np.abs(got - want64).max(), np.abs(want32 - want64).max()
    assert ours_err <= 2 * theirs_err + 1e-5, (ours_err, theirs_err)
    # and it answers like the instruct model it is: "The capital of France is Paris."
    assert int(got[-1].argmax()) == int(want32[-1].argmax())


def test_smollm2_exports_to_a_checkpoint_transformers_and_we_reload(ours, tmp_path):
    import torch
    import transformers

    _, model = ours
    out = save_pretrained(model, tmp_path / "smollm2")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    got = _our_logits(model, PROMPT[:8])
    np.testing.assert_allclose(got, _ref_logits(hf, PROMPT[:8], torch.float32), atol=1e-4, rtol=0)
    again = load_pretrained(out, progress=False)
    np.testing.assert_array_equal(np.asarray(again.layers[7].wk[...]), np.asarray(model.layers[7].wk[...]))
