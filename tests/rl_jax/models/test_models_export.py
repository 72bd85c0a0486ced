"""Export writes checkpoints transformers loads unchanged, and loading our own export round-trips exactly."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from models_helpers import hf_logits, left_padded_batch

from rl_jax.models import ModelConfig, load_pretrained, save_pretrained
from rl_jax.models.safetensors_io import SafetensorsDir


def _params(model) -> dict:
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("case", ["llama3_scaled_untied", "qwen2_tied"])
def test_export_loads_in_transformers_with_identical_logits(case, hf_checkpoints, tmp_path):
    ids, _, _ = left_padded_batch([21], 21, seed=5)
    model = load_pretrained(hf_checkpoints[case], progress=False)
    out = save_pretrained(model, tmp_path / "export", copy_files_from=hf_checkpoints[case])
    assert (out / "generation_config.json").exists()
    np.testing.assert_array_equal(hf_logits(out, ids), hf_logits(hf_checkpoints[case], ids))
    # and the tensors themselves are bit-identical to the source checkpoint's
    src, dst = SafetensorsDir(hf_checkpoints[case]), SafetensorsDir(out)
    for name in dst:
        np.testing.assert_array_equal(dst[name], src[name])
    assert set(dst.keys()) <= set(src.keys())


def test_config_round_trips_through_to_hf(hf_checkpoints):
    for path in hf_checkpoints.values():
        hf = json.loads((path / "config.json").read_text())
        cfg = ModelConfig.from_hf(hf)
        assert ModelConfig.from_hf(cfg.to_hf()) == cfg


def test_sharded_bfloat16_export_round_trips(hf_checkpoints, tmp_path):
    case = "qwen3_untied"
    model = load_pretrained(hf_checkpoints[case], dtype=jnp.bfloat16, progress=False)
    out = save_pretrained(model, tmp_path / "bf16", max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert SafetensorsDir(out)["model.embed_tokens.weight"].dtype == ml_dtypes.bfloat16

    again = load_pretrained(out, dtype=jnp.bfloat16, progress=False)
    a, b = _params(model), _params(again)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype == jnp.bfloat16
        np.testing.assert_array_equal(a[k], b[k])
    ids, _, _ = left_padded_batch([12], 12, seed=6)
    # transformers reads our sharded bf16 checkpoint too; compare in f32 against our f32 model of the same weights
    f32 = load_pretrained(out, dtype=jnp.float32, progress=False)
    ours, _ = jax.jit(lambda m, i, p: m(i, p))(f32, jnp.asarray(ids), jnp.arange(12, dtype=jnp.int32)[None])
    np.testing.assert_allclose(np.asarray(ours), hf_logits(out, ids), atol=1e-4, rtol=0)


def test_missing_checkpoint_pieces_give_clear_errors(hf_checkpoints, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_pretrained(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    src = hf_checkpoints["llama3_scaled_untied"]
    (broken / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_pretrained(broken)
    hf = json.loads((src / "config.json").read_text())
    hf["model_type"] = "gpt2"
    with pytest.raises(ValueError, match="unsupported model_type"):
        ModelConfig.from_hf(hf)
