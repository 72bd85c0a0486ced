"""Group-relative advantages: one scalar per episode, from the rewards of the other episodes of its prompt.

Input rewards are ``[num_groups, group_size]`` (one row per prompt, one column per rollout) with a ``valid``
mask: a failed episode (environment crash, truncated tool loop, judge error) is left out of its group's
statistics and gets advantage 0, so it neither teaches nor shifts the baseline of its siblings.

A group whose valid rewards are all equal carries no learning signal; it gets exactly 0 (tested bit-exact,
not merely close: ``r - mean(r)`` of equal floats is not always 0 in floating point). So does a group with
fewer than two valid members, which has no baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import chex
import jax.numpy as jnp

from rl_jax.grpo.registry import Registry

Array = chex.Array


@dataclass(frozen=True)
class AdvantageConfig:
    """``estimator``: "grpo" (group mean and std), "drgrpo" (mean only), "rloo" (leave-one-out mean)."""

    estimator: str = "grpo"
    eps: float = 1e-6    # added to the group std (grpo)
    std_ddof: int = 1    # 1: unbiased group std, as TRL and verl compute it


# (rewards [G, K] with invalid entries zeroed, valid [G, K] f32 in {0, 1}, n [G, 1], mean [G, 1], cfg) -> [G, K]
AdvantageFn = Callable[[Array, Array, Array, Array, AdvantageConfig], Array]

ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator")


@ADVANTAGE_ESTIMATORS.register("grpo")
def _grpo(rewards: Array, valid: Array, n: Array, mean: Array, cfg: AdvantageConfig) -> Array:
    centred = (rewards - mean) * valid
    var = jnp.sum(centred**2, axis=-1, keepdims=True) / jnp.maximum(n - cfg.std_ddof, 1.0)
    return centred / (jnp.sqrt(var) + cfg.eps)


@ADVANTAGE_ESTIMATORS.register("drgrpo")
def _drgrpo(rewards: Array, valid: Array, n: Array, mean: Array, cfg: AdvantageConfig) -> Array:
    # Dr. GRPO (Liu et al. 2025): no std normalisation, which biases toward easy and hard prompts.
    return rewards - mean


@ADVANTAGE_ESTIMATORS.register("rloo")
def _rloo(rewards: Array, valid: Array, n: Array, mean: Array, cfg: AdvantageConfig) -> Array:
    # r_i - mean_{j != i} r_j  ==  n / (n - 1) * (r_i - mean)
    return (rewards - mean) * n / jnp.maximum(n - 1.0, 1.0)


def group_advantages(
    rewards: Array, valid: Array | None = None, cfg: AdvantageConfig = AdvantageConfig()
) -> Array:
    """Advantages ``[G, K]`` (float32) for rewards ``[G, K]``; ``valid`` ``[G, K]`` bool masks failed episodes.

    Invalid entries may hold anything (NaN included): they are replaced before any arithmetic.
    """
    chex.assert_rank(rewards, 2)
    estimator = ADVANTAGE_ESTIMATORS.get(cfg.estimator)
    if valid is None:
        valid = jnp.ones(rewards.shape, dtype=bool)
    chex.assert_equal_shape([rewards, valid])
    valid = valid.astype(bool)
    r = jnp.where(valid, rewards.astype(jnp.float32), 0.0)
    w = valid.astype(jnp.float32)
    n = jnp.sum(w, axis=-1, keepdims=True)
    mean = jnp.sum(r, axis=-1, keepdims=True) / jnp.maximum(n, 1.0)

    hi = jnp.max(jnp.where(valid, r, -jnp.inf), axis=-1, keepdims=True)
    lo = jnp.min(jnp.where(valid, r, jnp.inf), axis=-1, keepdims=True)
    no_signal = (hi <= lo) | (n < 2)

    adv = estimator(r, w, n, mean, cfg)
    adv = jnp.where(valid & ~no_signal, adv, 0.0)
    chex.assert_shape(adv, rewards.shape)
    return adv


def group_reward_metrics(rewards: Array, valid: Array | None = None) -> dict[str, Array]:
    """Reward statistics of a batch of groups, for logging: mean reward, the fraction of valid episodes, and
    the fraction of groups with no learning signal (all valid rewards equal: solved by all or by none)."""
    chex.assert_rank(rewards, 2)
    if valid is None:
        valid = jnp.ones(rewards.shape, dtype=bool)
    valid = valid.astype(bool)
    r = jnp.where(valid, rewards.astype(jnp.float32), 0.0)
    w = valid.astype(jnp.float32)
    hi = jnp.max(jnp.where(valid, r, -jnp.inf), axis=-1)
    lo = jnp.min(jnp.where(valid, r, jnp.inf), axis=-1)
    n = jnp.sum(w, axis=-1)
    return {
        "reward_mean": jnp.sum(r) / jnp.maximum(jnp.sum(w), 1.0),
        "valid_frac": jnp.mean(w),
        "groups_no_signal_frac": jnp.mean(((hi <= lo) | (n < 2)).astype(jnp.float32)),
    }
