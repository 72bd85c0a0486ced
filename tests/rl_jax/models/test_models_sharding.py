"""Sharded (4x2 fake CPU devices: FSDP over data, tensor parallel over model) equals unsharded."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from models_helpers import left_padded_batch

from rl_jax.models import KVCache, ModelConfig, Transformer, load_pretrained
from rl_jax.sharding import (
    DEFAULT_RULES,
    axis_rules,
    make_mesh,
    shard_module,
    state_shardings,
    with_overrides,
)

CFG = ModelConfig(
    family="llama", vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=16, tie_word_embeddings=False,
)
# the test checkpoints' vocabulary of 97 divides no mesh axis: these tests keep it whole by rule
WHOLE_VOCAB = with_overrides(DEFAULT_RULES, {"vocab": None})


def _jitted(graphdef):
    @jax.jit
    def f(state, ids, pos, mask, cache):
        return nnx.merge(graphdef, state)(ids, pos, mask, cache)

    return f


def test_parameters_follow_logical_rules_on_a_4x2_mesh():
    mesh = make_mesh(4, 2)
    model = shard_module(Transformer(CFG, rngs=nnx.Rngs(0)), mesh)
    layer = model.layers[0]
    assert layer.w_gate[...].sharding.spec == P("data", "model")
    assert layer.w_down[...].sharding.spec == P("model", "data")
    assert layer.wq[...].sharding.spec == P("data", "model", None)
    assert layer.wo[...].sharding.spec == P("model", None, "data")
    assert model.embed[...].sharding.spec == P("model", "data")
    assert model.final_norm[...].sharding.spec == P(None)
    # each device holds an eighth of the MLP weight
    assert layer.w_gate[...].addressable_shards[0].data.shape == (16, 48)
    specs = state_shardings(nnx.state(model), mesh)
    assert specs["layers"][0]["w_up"].spec == P("data", "model")


def test_sharded_forward_and_decode_equal_unsharded():
    ids, mask, pos = left_padded_batch([10, 7, 10, 4], 10, vocab=CFG.vocab_size, seed=7)
    model = Transformer(CFG, rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(model)
    f = _jitted(graphdef)
    want, _ = f(state, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask), None)
    cache = KVCache.init(CFG, 4, 12)
    want_pre, cache = f(state, jnp.asarray(ids[:, :8]), jnp.asarray(pos[:, :8]), jnp.asarray(mask[:, :8]), cache)
    want_dec, _ = f(state, jnp.asarray(ids[:, 8:]), jnp.asarray(pos[:, 8:]), jnp.asarray(mask[:, 8:]), cache)

    mesh = make_mesh(4, 2)
    sharded = jax.device_put(state, state_shardings(state, mesh))
    with jax.set_mesh(mesh):  # activation constraints apply under the ambient mesh
        got, _ = f(sharded, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask), None)
        scache = KVCache.init(CFG, 4, 12, mesh=mesh)
        assert scache.k[0].sharding.spec == P("data", "model", None, None)
        got_pre, scache = f(sharded, jnp.asarray(ids[:, :8]), jnp.asarray(pos[:, :8]), jnp.asarray(mask[:, :8]),
                            scache)
        got_dec, _ = f(sharded, jnp.asarray(ids[:, 8:]), jnp.asarray(pos[:, 8:]), jnp.asarray(mask[:, 8:]), scache)
    assert len(got.sharding.device_set) == 8
    for a, b in ((got, want), (got_pre, want_pre), (got_dec, want_dec)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def test_load_pretrained_places_each_tensor_on_its_sharding(hf_checkpoints):
    mesh = make_mesh(4, 2)
    path = hf_checkpoints["qwen3_untied"]
    plain = load_pretrained(path, progress=False)
    # vocab 97 divides neither axis: an error naming the parameter, unless a rule keeps that dimension whole
    named = r"parameter embed \(model.embed_tokens.weight\): dimension 0 \(logical axis 'vocab'\).*97"
    with pytest.raises(ValueError, match=named + r".*mesh axis 'model' of size 2"):
        load_pretrained(path, mesh=mesh, progress=False)
    with axis_rules(WHOLE_VOCAB):
        sharded = load_pretrained(path, mesh=mesh, progress=False)
    wq = sharded.layers[1].wq[...]
    assert wq.sharding.spec == P("data", "model", None)
    assert wq.addressable_shards[0].data.shape == (16, 2, 32)
    assert sharded.lm_head[...].sharding.spec == P(None, "data")  # the hidden dimension is still split
    a = nnx.to_flat_state(nnx.state(plain, nnx.Param))
    b = dict(nnx.to_flat_state(nnx.state(sharded, nnx.Param)))
    for k, v in a:
        np.testing.assert_array_equal(np.asarray(v.get_value()), np.asarray(b[k].get_value()))


def test_loader_reads_only_each_devices_shard(hf_checkpoints):
    """Every device's callback slices its own shard out of the memory-mapped view; none reads a whole tensor."""
    from rl_jax.models.loading import build_from_tensors, read_hf_config
    from rl_jax.models.safetensors_io import SafetensorsDir

    path = hf_checkpoints["llama3_scaled_untied"]
    cfg, tensors = read_hf_config(path), SafetensorsDir(path)
    reads: dict[str, list[int]] = {}

    class Recording(np.ndarray):
        """An ndarray view that records how many elements each indexing reads."""

        def __array_finalize__(self, obj):  # reshaped and transposed views keep the tensor's name
            self.hf_name = getattr(obj, "hf_name", None)

        def __getitem__(self, index):
            out = np.asarray(super().__getitem__(index))
            reads.setdefault(self.hf_name, []).append(out.size)
            return out

    def source(name: str) -> np.ndarray:
        view = tensors[name].view(Recording)
        view.hf_name = name
        return view

    mesh = make_mesh(4, 2)
    with axis_rules(WHOLE_VOCAB):
        model = build_from_tensors(cfg, source, mesh=mesh, progress=False)
    gate = "model.layers.0.mlp.gate_proj.weight"
    full = tensors[gate].size
    assert len(reads[gate]) == 8 and set(reads[gate]) == {full // 8}  # 4x2 shards, each an eighth
    assert model.layers[0].w_gate[...].sharding.spec == P("data", "model")
    np.testing.assert_array_equal(np.asarray(model.layers[0].w_gate[...]), tensors[gate].T)
