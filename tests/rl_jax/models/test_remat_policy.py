"""Remat policies by name: what a rematerialized layer keeps changes memory and recomputation, never the values.

The scanned layers (``scan_layers``) and the unrolled ones (``_rematerialized``) take a
``jax.checkpoint_policies`` name; the loss and its gradients equal those without remat for every name, and an
unknown name is refused when the model is built, before anything is traced.
"""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rl_jax.models import ModelConfig, Transformer
from rl_jax.models.transformer import REMAT_POLICIES

CFG = ModelConfig(
    family="qwen3", vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4,
    num_kv_heads=2, head_dim=8, qk_norm=True, tie_word_embeddings=True, max_position_embeddings=64,
)


def _loss_and_grads(scan: bool, remat: bool, policy: str | None, *, jaxpr: bool = False):
    model = Transformer(CFG, rngs=nnx.Rngs(0), remat=remat, remat_policy=policy, scan=scan)
    graphdef, params = nnx.split(model)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 16)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), tokens.shape)

    def loss(params: nnx.State) -> jax.Array:
        hidden = nnx.merge(graphdef, params).hidden(tokens, positions)
        return jnp.sum(jnp.sin(hidden))

    if jaxpr:  # the traced program, its recomputed forward included
        return str(jax.make_jaxpr(jax.value_and_grad(loss))(params))
    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
def test_every_remat_policy_gives_the_loss_and_gradients_of_no_remat(scan):
    expected = _loss_and_grads(scan, remat=False, policy=None)
    for policy in (None, *REMAT_POLICIES):
        got = _loss_and_grads(scan, remat=True, policy=policy)
        chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-4)  # f32 sums in another order


def test_an_unknown_remat_policy_is_refused_when_the_model_is_built():
    with pytest.raises(ValueError, match="unknown remat policy 'dots'"):
        Transformer(CFG, rngs=nnx.Rngs(0), remat=True, remat_policy="dots")


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
def test_saving_the_matmuls_leaves_fewer_of_them_to_recompute(scan):
    def matmuls(policy: str) -> int:
        return _loss_and_grads(scan, remat=True, policy=policy, jaxpr=True).count("dot_general")

    assert matmuls("dots_saveable") < matmuls("nothing_saveable")


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
@pytest.mark.parametrize("lengths", [{}, {"attention_chunk": 8, "causal_max_length": 8}],
                         ids=["causal-tiles", "flash-loops"])
def test_saving_the_attention_leaves_its_forward_loops_unrecomputed(scan, lengths):
    """"attention_saveable" keeps the written-out attentions' output and log-normalisers: the backward pass
    reruns the layer's projections but computes the attention's softmax only as often as without remat (its
    forward once, its backward once), where "nothing_saveable" runs the forward a second time."""

    def program(remat: bool, policy: str | None) -> str:
        model = Transformer(CFG, rngs=nnx.Rngs(0), remat=remat, remat_policy=policy, scan=scan, **lengths)
        graphdef, params = nnx.split(model)
        tokens = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 16)), jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), tokens.shape)
        loss = lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p).hidden(tokens, positions)))  # noqa: E731
        return str(jax.make_jaxpr(jax.grad(loss))(params))

    def softmaxes(jaxpr: str) -> int:  # exponentials of score blocks [B, H, Tq, Tk] (the MLP's SiLU is 3-D)
        return len(re.findall(r"f32\[\d+,\d+,\d+,\d+\] = exp ", jaxpr))

    exps = {name: softmaxes(program(True, name)) for name in ("nothing_saveable", "attention_saveable")}
    without_remat = softmaxes(program(False, None))
    assert without_remat > 0
    assert exps["attention_saveable"] == without_remat < exps["nothing_saveable"]
    if lengths:  # the flash path: the forward's tile loop is not in the backward pass
        loops = {name: program(True, name).count("while[") for name in ("nothing_saveable", "attention_saveable")}
        assert loops["attention_saveable"] < loops["nothing_saveable"]


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
def test_saving_the_projections_and_the_attention_recomputes_neither(scan):
    """"dots_and_attention_saveable" keeps what both policies keep: the backward pass recomputes no projection
    ("attention_saveable" reruns them all) and no softmax block the forward pass computed."""
    jaxprs = {p: _loss_and_grads(scan, remat=True, policy=p, jaxpr=True)
              for p in ("attention_saveable", "dots_and_attention_saveable")}
    without_remat = _loss_and_grads(scan, remat=False, policy=None, jaxpr=True)
    both = jaxprs["dots_and_attention_saveable"]
    assert both.count("dot_general") == without_remat.count("dot_general")
    assert both.count("dot_general") < jaxprs["attention_saveable"].count("dot_general")
    exps = re.compile(r"f32\[\d+,\d+,\d+,\d+\] = exp ")
    assert len(exps.findall(both)) == len(exps.findall(without_remat)) > 0
