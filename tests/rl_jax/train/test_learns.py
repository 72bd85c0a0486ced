"""Proof that it learns: GRPO with BAPO clipping trains a small Transformer, from scratch, on a verifiable task.

The task: after the prompt ``[BOS, a]`` count on: ``a+1, a+2, a+3, a+4`` (mod V). The reward is the fraction of the
four answer tokens that are one more than the token before them, in [0, 1]; an untrained policy scores about 1/V. Rollouts come from the real
KV-cache ``Sampler`` (its log-probs are the ``old_logp``), advantages from ``group_advantages``, updates from
the jitted ``train_step``: the whole loop, on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rl_jax.grpo import group_advantages
from rl_jax.models import ModelConfig, Transformer
from rl_jax.sampling import Sampler, SamplingConfig
from rl_jax.train import OptimizerConfig, TrainConfig, collate, create_train_state

VOCAB = 12
BOS = 0
ANSWER = 4
PROMPTS = 16  # distinct prompts per step
GROUP = 8  # rollouts per prompt


def reward(prompt_token: int, answer: np.ndarray) -> float:
    """The fraction of answer tokens that are one more (mod V) than the token before them."""
    previous = np.concatenate([[prompt_token], answer[: ANSWER - 1]])
    return float(np.mean(answer[:ANSWER] == (previous + 1) % VOCAB))


def test_grpo_raises_mean_reward_from_below_0_2_to_above_0_8():
    cfg = ModelConfig(
        family="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
        num_kv_heads=2, head_dim=8, tie_word_embeddings=True, max_position_embeddings=32,
    )
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    train_cfg = TrainConfig(
        optimizer=OptimizerConfig(learning_rate=1e-2, max_grad_norm=1.0), logprob_chunk=8, length_buckets=(8,)
    )
    graphdef, state, train_step = create_train_state(model, train_cfg)
    sampler = Sampler(model)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=ANSWER)
    rng = np.random.default_rng(0)
    key = jax.random.key(0)

    history = []
    for _ in range(80):
        firsts = rng.integers(1, VOCAB, size=PROMPTS)
        prompts = [[BOS, int(a)] for a in firsts for _ in range(GROUP)]
        key, sample_key = jax.random.split(key)
        out = sampler.generate(prompts, sampling, sample_key)
        rewards = np.array([reward(p[1], t) for p, t in zip(prompts, out.tokens, strict=True)], np.float32)
        history.append(float(rewards.mean()))
        if len(history) >= 3 and np.mean(history[-3:]) > 0.9:
            break
        adv = np.asarray(group_advantages(jnp.asarray(rewards.reshape(PROMPTS, GROUP)))).reshape(-1)
        batch = collate(
            tokens=[p + out.tokens[i, :ANSWER].tolist() for i, p in enumerate(prompts)],
            loss_masks=[[0.0] * len(p) + [1.0] * ANSWER for p in prompts],
            old_logps=[[0.0] * len(p) + out.logprobs[i, :ANSWER].tolist() for i, p in enumerate(prompts)],
            advantages=adv.tolist(),
            buckets=train_cfg.length_buckets,
        )
        state, metrics = train_step(state, jax.tree.map(jnp.asarray, batch))
        assert int(metrics["skipped"]) == 0
        # on-policy: the trainer's log-probs of the sampled tokens equal the sampler's (ratio 1)
        if len(history) == 1:
            np.testing.assert_allclose(metrics["ratio_mean"], 1.0, atol=1e-4)
        sampler.load_state(nnx.merge(graphdef, state.params, state.frozen))

    assert history[0] < 0.2, history
    assert np.mean(history[-3:]) > 0.8, history
