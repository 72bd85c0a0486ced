"""Mixed precision: bf16 compute over f32 (or bf16) parameters, with every probability-space number in f32.

The bound on the bf16-vs-f32 log-prob gap, derived:

* bf16 keeps 8 significant bits: one rounding moves a value by at most 2^-9 of itself. A logit is a sum over
  hidden x weight products whose inputs were rounded to bf16, after L layers whose activations were rounded
  too; each layer's matmuls and residual add contribute a few such roundings, mostly cancelling (random
  signs).
  So the logits of a bf16 forward stay within ``(L + 1) * 2^-8 * max|z|`` of the f32 ones: one unit of 2^-8
  of the largest logit per layer and one for the unembedding (measured here at about a third of that).
* log-softmax is 2-Lipschitz in the max norm: ``|d log p_i| = |dz_i - sum_j p_j dz_j| <= 2 max|dz|``, so
  computed exactly (in f32, whose rounding is 2^16 times finer) the log-probs move by at most twice the
  logits' gap. A log-softmax in bf16 would not: log-probs near -log V round to steps of 2^-5 (at V = 256 the
  measured gap was 0.038, against a logit gap of 0.005); the first assertion fails then.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from train_helpers import train_config

from rl_jax.grpo import ClipConfig, LossConfig
from rl_jax.models import ModelConfig, Transformer
from rl_jax.train import collate, create_train_state
from rl_jax.train.state import split_model
from rl_jax.train.step import next_token_logprobs

BF16_ULP = 2.0**-8

# a Qwen3-shaped model (QK-norm, GQA, tied embeddings), tiny
TINY_QWEN3 = ModelConfig(
    family="qwen3",
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    qk_norm=True,
    tie_word_embeddings=True,
    max_position_embeddings=128,
)


def _tokens(rows: int, length: int, vocab: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    tokens = jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (rows, length)), jnp.int32)
    return tokens, jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)


def test_bf16_compute_log_probs_stay_within_the_rounding_bound_of_f32():
    cfg = TINY_QWEN3
    f32 = Transformer(cfg, rngs=nnx.Rngs(0))
    bf16 = Transformer(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)  # the same f32 weights, bf16 compute
    tokens, positions = _tokens(4, 64, cfg.vocab_size)
    z32, z16 = f32(tokens, positions)[0], bf16(tokens, positions)[0]
    chex.assert_type([z32, z16], jnp.float32)  # the vocabulary projection accumulates and returns in f32

    # the training path: chunked log-probs and entropies from the final hidden states
    rows, length = tokens.shape
    batch = collate(
        tokens.tolist(),
        np.ones((rows, length)).tolist(),
        np.zeros((rows, length)).tolist(),
        [0.0] * rows,
        buckets=(length,),
    )
    batch = jax.tree.map(jnp.asarray, batch)
    scores = {}
    for name, model in (("f32", f32), ("bf16", bf16)):
        graphdef, params, frozen = split_model(model)
        scores[name] = next_token_logprobs(graphdef, params, frozen, batch, chunk_size=16, with_entropy=True)
    (logp32, ent32), (logp16, ent16) = scores["f32"], scores["bf16"]
    chex.assert_type([logp32, logp16, ent32, ent16], jnp.float32)

    # the same log-probs the logits give (entry t predicts token t + 1)
    targets = jnp.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)
    from_logits = jnp.take_along_axis(jax.nn.log_softmax(z16), targets[..., None], axis=-1)[..., 0]
    chex.assert_trees_all_close(logp16[:, :-1], from_logits[:, :-1], atol=1e-5)

    logit_gap = float(jnp.max(jnp.abs(z16 - z32)))
    logp_gap = float(jnp.max(jnp.abs(logp16 - logp32)[:, :-1]))
    assert logit_gap > 0  # bf16 really computed something else
    assert logp_gap <= 2 * logit_gap + 1e-5, (logp_gap, logit_gap)  # log-softmax in f32
    bound = (cfg.num_layers + 1) * BF16_ULP * float(jnp.max(jnp.abs(z32)))
    assert logit_gap <= bound, (logit_gap, bound)
    assert logp_gap <= 2 * bound
    # entropies are f32 sums over the same distributions: within the log-probs' bound
    assert float(jnp.max(jnp.abs(ent16 - ent32))) <= 2 * bound


def _learnable_batch(model: Transformer, rows: int = 8, length: int = 16):
    """Fixed sequences every one of which the policy should make likelier (advantage +1), scored on-policy."""
    tokens, _ = _tokens(rows, length, model.config.vocab_size, seed=1)
    masks = np.ones((rows, length), np.float32)
    masks[:, :4] = 0.0  # the prompt
    graphdef, params, frozen = split_model(model)
    plain = collate(
        tokens.tolist(), masks.tolist(), np.zeros((rows, length)).tolist(), [1.0] * rows, buckets=(length,)
    )
    plain = jax.tree.map(jnp.asarray, plain)
    logp, _ = next_token_logprobs(graphdef, params, frozen, plain)
    old = jnp.concatenate([jnp.zeros_like(logp[:, :1]), logp[:, :-1]], axis=1)  # aligned like the batch
    return plain.replace(old_logp=old)


def _leaf_dtypes(tree) -> set:
    return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bf16_compute_over_f32_params_keeps_f32_state_and_metrics_and_learns():
    model = Transformer(TINY_QWEN3, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    batch = _learnable_batch(model)
    # PPO bounds far away: the surrogate keeps rising as the sequences get likelier, so the loss keeps falling
    cfg = train_config(
        micro_batches=2, loss=LossConfig(clip=ClipConfig(rule="ppo", eps_low=0.9, eps_high=10.0))
    )
    _, state, train_step = create_train_state(model, cfg)
    losses = []
    for _ in range(4):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
        assert int(metrics["skipped"]) == 0
    for name, value in metrics.items():
        assert value.dtype in (jnp.float32, jnp.int32), (name, value.dtype)
    assert _leaf_dtypes(state.params) == {jnp.dtype(jnp.float32)}
    assert _leaf_dtypes(state.opt_state) == {jnp.dtype(jnp.float32)}
    assert losses[-1] < losses[0] - 0.01, losses  # on-policy at step 0: the loss starts at -1


def test_bf16_params_and_optimizer_state_stay_bf16_after_an_accumulated_update():
    model = Transformer(TINY_QWEN3, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    batch = _learnable_batch(model)
    _, state, train_step = create_train_state(model, train_config(micro_batches=2))
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = train_step(state, batch)
    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["grad_norm"]))
    assert metrics["loss"].dtype == jnp.float32 and metrics["grad_norm"].dtype == jnp.float32
    assert _leaf_dtypes(state.params) == {jnp.dtype(jnp.bfloat16)}
    assert _leaf_dtypes(state.opt_state) == {jnp.dtype(jnp.bfloat16)}
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), state.params, before))
    assert any(moved)  # the update took place in bf16
