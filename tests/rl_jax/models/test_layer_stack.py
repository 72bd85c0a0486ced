"""Scanned models store their layers stacked (``LayerStack``): one ``[L, ...]`` weight per kind.

Asserted here: the stacked layout holds the unrolled one's exact weights (same seed, and converted either way);
the scanned forward, gradient and a cached prefill and decode equal the unrolled model's; the state converters
are inverses (concrete, abstract and gradient states); export and generation see one layer at a time; the
stacked weights' layers axis is replicated on a mesh while their other dimensions keep the per-layer layout.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from rl_jax.learner.loop import generation_model
from rl_jax.models import (
    KVCache,
    LayerStack,
    ModelConfig,
    Transformer,
    save_pretrained,
    stack_layer_state,
    unstack_layer_state,
)
from rl_jax.sharding import make_mesh, shard_module, state_shardings

CFG = ModelConfig(
    family="qwen3", vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4,
    num_kv_heads=2, head_dim=8, qk_norm=True, tie_word_embeddings=False, max_position_embeddings=64,
)


def _inputs(rows: int = 2, length: int = 12) -> tuple[jax.Array, jax.Array]:
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (rows, length)), jnp.int32)
    return tokens, jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)


def _params(model: Transformer) -> nnx.State:
    return nnx.state(model, nnx.Param)


def test_a_scanned_model_stores_one_stacked_weight_per_kind_with_the_unrolled_weights():
    unrolled = Transformer(CFG, rngs=nnx.Rngs(0))
    scanned = Transformer(CFG, rngs=nnx.Rngs(0), scan=True)
    assert isinstance(scanned.layers, LayerStack) and len(scanned.layers) == CFG.num_layers
    assert scanned.scan and not unrolled.scan
    stacked = dict(nnx.to_flat_state(_params(scanned)))
    wq = stacked[("layers", "stacked", "wq")]
    assert wq.get_value().shape == (CFG.num_layers, CFG.hidden_size, CFG.num_heads, CFG.head_dim)
    assert wq.get_metadata()["logical_axes"] == ("layers", "embed", "heads", "head_dim")
    per_layer_kinds = {path[2:] for path, _ in nnx.to_flat_state(_params(unrolled)) if path[0] == "layers"}
    assert {path[2:] for path in stacked if path[0] == "layers"} == per_layer_kinds
    # made layer by layer from the same seed, then stacked: the unrolled model's exact weights
    chex.assert_trees_all_equal(unstack_layer_state(_params(scanned)), _params(unrolled))


def test_converting_in_place_keeps_the_weights_and_the_outputs():
    model = Transformer(CFG, rngs=nnx.Rngs(1))
    before = jax.tree.map(np.asarray, _params(model))
    tokens, positions = _inputs()
    logits, _ = model(tokens, positions)
    model.scan = True
    chex.assert_trees_all_equal(unstack_layer_state(_params(model)), before)
    scanned_logits, _ = model(tokens, positions)
    chex.assert_trees_all_close(scanned_logits, logits, atol=2e-5, rtol=0)
    model.scan = False
    assert not isinstance(model.layers, LayerStack)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, _params(model)), before)
    chex.assert_trees_all_equal(model(tokens, positions)[0], logits)


def test_the_scanned_gradient_is_the_unrolled_one_stacked():
    tokens, positions = _inputs()

    def grads(model: Transformer) -> nnx.State:
        graphdef, params = nnx.split(model)
        return jax.grad(lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p).hidden(tokens, positions))))(params)

    unrolled = grads(Transformer(CFG, rngs=nnx.Rngs(0)))
    scanned = grads(Transformer(CFG, rngs=nnx.Rngs(0), scan=True, remat=True))
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(unrolled))  # f32 sums in another order
    chex.assert_trees_all_close(unstack_layer_state(scanned), unrolled, atol=1e-5 * scale, rtol=0)
    chex.assert_trees_all_close(stack_layer_state(unrolled), scanned, atol=1e-5 * scale, rtol=0)


def test_a_scanned_model_prefills_and_decodes_with_a_cache_as_the_unrolled_one():
    tokens, positions = _inputs(length=8)

    def run(model: Transformer) -> list[jax.Array]:
        graphdef, state = nnx.split(model)

        @jax.jit
        def prefill_then_decode(state: nnx.State) -> list[jax.Array]:
            m = nnx.merge(graphdef, state)
            cache = KVCache.init(CFG, batch=2, max_len=16)
            logits, cache = m(tokens, positions, cache=cache)
            out = [logits]
            for t in range(2):
                nxt = jnp.argmax(out[-1][:, -1], axis=-1)[:, None].astype(jnp.int32)
                logits, cache = m(nxt, jnp.full((2, 1), 8 + t, jnp.int32), cache=cache)
                out.append(logits)
            return out

        return prefill_then_decode(state)

    chex.assert_trees_all_close(
        run(Transformer(CFG, rngs=nnx.Rngs(2), scan=True)), run(Transformer(CFG, rngs=nnx.Rngs(2))),
        atol=2e-5, rtol=0,
    )


def test_state_converters_are_inverses_on_concrete_and_abstract_states():
    params = _params(Transformer(CFG, rngs=nnx.Rngs(3)))
    chex.assert_trees_all_equal(unstack_layer_state(stack_layer_state(params)), params)
    abstract = jax.eval_shape(lambda: _params(Transformer(CFG, rngs=nnx.Rngs(3), scan=True)))
    per_layer = unstack_layer_state(abstract)
    assert per_layer["layers"][2]["w_up"].get_value().shape == (CFG.hidden_size, CFG.intermediate_size)
    assert jax.tree.structure(stack_layer_state(per_layer)) == jax.tree.structure(abstract)
    gapped = nnx.from_flat_state([(p, v) for p, v in nnx.to_flat_state(params) if p[:2] != ("layers", 1)])
    with pytest.raises(ValueError, match=r"not 0\.\.L-1"):
        stack_layer_state(gapped)


def test_layers_of_different_structures_are_refused():
    a = Transformer(CFG, rngs=nnx.Rngs(0)).layers[0]
    b = Transformer(ModelConfig(**{**vars(CFG), "qk_norm": False}), rngs=nnx.Rngs(0)).layers[0]
    with pytest.raises(ValueError, match="one structure"):
        LayerStack([a, b])


def test_export_and_generation_see_one_module_per_layer(tmp_path):
    unrolled = Transformer(CFG, rngs=nnx.Rngs(4))
    scanned = Transformer(CFG, rngs=nnx.Rngs(4), scan=True)
    a = load_file(save_pretrained(unrolled, tmp_path / "unrolled") / "model.safetensors")
    b = load_file(save_pretrained(scanned, tmp_path / "scanned") / "model.safetensors")
    assert sorted(a) == sorted(b) and "model.layers.2.mlp.up_proj.weight" in a
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    graphdef, params, frozen = nnx.split(scanned, nnx.Param, ...)
    generating = generation_model(graphdef, params, frozen)
    assert not generating.scan
    chex.assert_trees_all_equal(_params(generating), _params(unrolled))
    assert scanned.scan  # the trainer's model is left as it was


def test_stacked_weights_shard_like_their_layers_with_the_layers_axis_whole():
    mesh = make_mesh(4, 2)  # data x model over the 8 host devices the tests provide
    cfg = ModelConfig(**{**vars(CFG), "vocab_size": 96})  # the vocabulary divides over the model axis
    scanned = shard_module(Transformer(cfg, rngs=nnx.Rngs(5), scan=True), mesh)
    unrolled_specs = state_shardings(_params(Transformer(cfg, rngs=nnx.Rngs(5))), mesh)
    for path, variable in nnx.to_flat_state(_params(scanned)):
        if path[:2] != ("layers", "stacked"):
            continue
        want = unrolled_specs["layers"][0]
        for key in path[2:]:
            want = want[key]
        assert tuple(variable.get_value().sharding.spec) == (None, *tuple(want.spec)), path
