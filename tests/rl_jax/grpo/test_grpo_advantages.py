"""Group advantages: GRPO, Dr.GRPO, RLOO; constant groups and failed episodes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.grpo import ADVANTAGE_ESTIMATORS, AdvantageConfig, group_advantages, group_reward_metrics

ESTIMATORS = ("grpo", "drgrpo", "rloo")


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_constant_group_gives_exactly_zero(estimator):
    # values whose float mean is not bit-equal to themselves (0.1 * 7 / 7 != 0.1 in f32 arithmetic)
    rewards = jnp.array([[0.1] * 7, [1 / 3] * 7, [0.7] * 7, [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.5]], jnp.float32)
    adv = group_advantages(rewards, cfg=AdvantageConfig(estimator=estimator))
    assert np.all(np.asarray(adv[:3]) == 0.0)
    assert np.any(np.asarray(adv[3]) != 0.0)


def test_grpo_matches_mean_and_unbiased_std():
    rewards = np.array([[0.0, 1.0, 1.0, 0.5], [0.2, 0.9, 0.4, 0.4]], np.float32)
    adv = group_advantages(jnp.asarray(rewards), cfg=AdvantageConfig("grpo", eps=1e-6))
    want = (rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, ddof=1, keepdims=True) + 1e-6)
    chex.assert_trees_all_close(adv, want, atol=1e-5)


def test_drgrpo_subtracts_the_mean_only():
    rewards = np.array([[0.0, 1.0, 1.0, 0.5]], np.float32)
    adv = group_advantages(jnp.asarray(rewards), cfg=AdvantageConfig("drgrpo"))
    chex.assert_trees_all_close(adv, rewards - rewards.mean(), atol=1e-6)


def test_rloo_subtracts_the_mean_of_the_others():
    rewards = np.array([[0.0, 1.0, 0.25, 0.5, 1.0]], np.float32)
    adv = group_advantages(jnp.asarray(rewards), cfg=AdvantageConfig("rloo"))
    others = np.array([(rewards[0].sum() - r) / 4 for r in rewards[0]])
    chex.assert_trees_all_close(adv[0], rewards[0] - others, atol=1e-6)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_masked_members_get_zero_and_leave_group_statistics(estimator):
    cfg = AdvantageConfig(estimator=estimator)
    rewards = jnp.array([[0.0, 1.0, jnp.nan, 0.5, 99.0]], jnp.float32)
    valid = jnp.array([[True, True, False, True, False]])
    adv = group_advantages(rewards, valid, cfg)
    assert np.all(np.isfinite(np.asarray(adv)))
    assert adv[0, 2] == 0.0 and adv[0, 4] == 0.0
    # the valid members get what they would get in a group of their own
    alone = group_advantages(jnp.array([[0.0, 1.0, 0.5]]), cfg=cfg)
    chex.assert_trees_all_close(adv[0, jnp.array([0, 1, 3])], alone[0], atol=1e-6)


def test_group_with_one_valid_member_gets_zero():
    adv = group_advantages(jnp.array([[1.0, 0.0, 0.0]]), jnp.array([[True, False, False]]), AdvantageConfig("rloo"))
    assert np.all(np.asarray(adv) == 0.0)


def test_masked_members_do_not_make_an_unequal_group_look_constant():
    # the valid members are all 1.0; the masked one differs: still no signal
    rewards = jnp.array([[1.0, 1.0, 0.0]])
    adv = group_advantages(rewards, jnp.array([[True, True, False]]))
    assert np.all(np.asarray(adv) == 0.0)


def test_unknown_estimator_names_the_known_ones():
    with pytest.raises(ValueError, match="drgrpo, grpo, rloo"):
        group_advantages(jnp.zeros((2, 4)), cfg=AdvantageConfig("ppo"))
    assert set(ESTIMATORS) <= set(ADVANTAGE_ESTIMATORS.names())


def test_rewards_must_be_groups_by_members():
    with pytest.raises(AssertionError):
        group_advantages(jnp.zeros((8,)))


def test_reward_metrics_count_groups_without_signal():
    rewards = jnp.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.5, 9.0]])
    valid = jnp.array([[True, True], [True, True], [True, True], [True, False]])
    m = group_reward_metrics(rewards, valid)
    assert float(m["groups_no_signal_frac"]) == pytest.approx(0.75)
    assert float(m["valid_frac"]) == pytest.approx(7 / 8)
    assert float(m["reward_mean"]) == pytest.approx((2 + 1 + 0.5) / 7)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_valid_advantages_of_each_group_sum_to_zero(estimator):
    rng = np.random.default_rng(0)
    rewards = jnp.asarray(rng.choice([0.0, 0.25, 0.5, 1.0], size=(64, 8)), jnp.float32)
    valid = jnp.asarray(rng.uniform(size=(64, 8)) < 0.8)
    adv = jax.jit(lambda r, v: group_advantages(r, v, AdvantageConfig(estimator=estimator)))(rewards, valid)
    sums = np.where(np.asarray(valid), np.asarray(adv), 0.0).sum(-1)
    np.testing.assert_allclose(sums, 0.0, atol=1e-5)
    assert np.any(np.asarray(adv) != 0.0)
