"""Policy loss: clip regions for both advantage signs, dual clip, masks, KL, aggregation, accumulation."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.grpo import (
    ClipBounds,
    ClipConfig,
    LossConfig,
    add_terms,
    compute_clip_bounds,
    mean_loss,
    policy_loss,
    summarize,
)

RULES = ("ppo", "dapo", "dual", "bapo")


def _normal(seed, shape, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def _logp(seed, shape, scale=3.0):
    return jnp.asarray(-np.random.default_rng(seed).uniform(size=shape) * scale, jnp.float32)


def _mask(seed, shape, p):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape) < p)


# Tests run the loss jitted, as training does (and as eager op-by-op dispatch would be slow on CI).
@functools.partial(jax.jit, static_argnames=("cfg",))
def _loss(logp, old, adv, mask, cfg: LossConfig = LossConfig(), ref_logp=None, bounds=None):  # noqa: B008
    return mean_loss(policy_loss(logp, old, adv, mask, cfg, ref_logp=ref_logp, bounds=bounds))


_loss_and_grad = jax.jit(jax.value_and_grad(_loss), static_argnames=("cfg",))


def _one_token(ratio: float, adv: float, rule: str):
    """Loss and d loss / d logp for a single token with the given ratio and advantage."""
    cfg = LossConfig(clip=ClipConfig(rule=rule))
    bounds = None
    if rule == "bapo":  # pin the adaptive bounds at their start so the regions are known
        bounds = ClipBounds(jnp.float32(0.6), jnp.float32(1.2), jnp.float32(3.0))
    logp = jnp.full((1, 1), np.log(ratio), jnp.float32)
    value, grad = _loss_and_grad(logp, jnp.zeros((1, 1)), jnp.array([adv]), jnp.ones((1, 1)), cfg, bounds=bounds)
    return float(value), float(grad[0, 0])


@pytest.mark.parametrize("rule", RULES)
def test_ratio_one_gives_minus_mean_advantage(rule):
    logp = _logp(0, (6, 9))
    adv = _normal(1, (6,))
    loss = _loss(logp, logp, adv, jnp.ones((6, 9)), LossConfig(clip=ClipConfig(rule=rule)))
    chex.assert_trees_all_close(loss, -jnp.mean(adv), atol=1e-6)


# (rule, low, high): the ratio bounds each rule uses here
BOUNDS = {"ppo": (0.8, 1.2), "dapo": (0.8, 1.28), "dual": (0.8, 1.2), "bapo": (0.6, 1.2)}


@pytest.mark.parametrize("rule", RULES)
def test_positive_advantage_clipped_above_high_only(rule):
    low, high = BOUNDS[rule]
    # inside and below the region: gradient A * r (pushes the probability up)
    for r in (1.0, high - 0.01, low - 0.1):
        value, grad = _one_token(r, 2.0, rule)
        assert value == pytest.approx(-2.0 * r, rel=1e-5)
        assert grad == pytest.approx(-2.0 * r, rel=1e-5)
    # above high: the objective is flat at A * high and the gradient is exactly 0
    value, grad = _one_token(high + 0.3, 2.0, rule)
    assert value == pytest.approx(-2.0 * high, rel=1e-5)
    assert grad == 0.0


@pytest.mark.parametrize("rule", RULES)
def test_negative_advantage_clipped_below_low_only(rule):
    low, high = BOUNDS[rule]
    # below low: flat at A * low, zero gradient
    value, grad = _one_token(low - 0.1, -1.5, rule)
    assert value == pytest.approx(1.5 * low, rel=1e-5)
    assert grad == 0.0
    # ABOVE high with A < 0 the unclipped term is the smaller one: gradient must stay (the common sign bug)
    for r in (1.0, low + 0.01, high + 0.3):
        value, grad = _one_token(r, -1.5, rule)
        assert value == pytest.approx(1.5 * r, rel=1e-5)
        assert grad == pytest.approx(1.5 * r, rel=1e-5)


@pytest.mark.parametrize("rule", ["dual", "bapo"])
def test_dual_clip_caps_negative_advantage_at_large_ratio(rule):
    value, grad = _one_token(5.0, -1.5, rule)
    assert value == pytest.approx(1.5 * 3.0, rel=1e-5)
    assert grad == 0.0
    # dual clip never touches positive advantages
    value, grad = _one_token(5.0, 1.5, rule)
    assert grad == 0.0 and value == pytest.approx(-1.5 * BOUNDS[rule][1], rel=1e-5)


@pytest.mark.parametrize("rule", ["ppo", "dapo"])
def test_rules_without_dual_clip_keep_gradient_at_large_ratio(rule):
    value, grad = _one_token(5.0, -1.5, rule)
    assert value == pytest.approx(1.5 * 5.0, rel=1e-5)
    assert grad == pytest.approx(1.5 * 5.0, rel=1e-5)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-scale"])
@pytest.mark.parametrize("rule", RULES)
def test_masked_tokens_contribute_nothing_to_value_or_gradient(rule, aggregation):
    logp = _logp(3, (4, 10), 2.0)
    old = logp + _normal(4, (4, 10), 0.3)
    adv = jnp.array([1.0, -1.0, 0.5, -2.0])
    mask = _mask(5, (4, 10), 0.6).at[:, 0].set(True)
    cfg = LossConfig(clip=ClipConfig(rule=rule), aggregation=aggregation, kl_coef=0.1, token_scale=16.0)
    ref = logp - 0.2

    # garbage where the mask is 0: NaN, inf and huge values in every input
    def poison(x, v):
        return jnp.where(mask, x, v)

    def f(lp, o, r):
        terms = policy_loss(lp, o, adv, mask, cfg, ref_logp=r, entropy=poison(jnp.ones_like(lp), jnp.nan))
        return mean_loss(terms), terms.metrics

    f = jax.jit(jax.value_and_grad(f, has_aux=True))
    (clean, m1), g_clean = f(logp, old, ref)
    (dirty, m2), g_dirty = f(poison(logp, jnp.nan), poison(old, 1e30), poison(ref, -jnp.inf))
    chex.assert_trees_all_close(clean, dirty)
    chex.assert_trees_all_close(g_clean, g_dirty)
    assert np.all(np.asarray(g_dirty)[~np.asarray(mask)] == 0.0)
    assert np.any(np.asarray(g_dirty)[np.asarray(mask)] != 0.0)
    m1, m2 = jax.jit(summarize)(m1), jax.jit(summarize)(m2)
    chex.assert_trees_all_close(m1, m2)
    assert all(np.isfinite(float(v)) for v in m2.values())


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_same_policy_and_reference_give_zero_kl(estimator):
    logp = _logp(0, (3, 7), 4.0)
    adv = jnp.array([1.0, -1.0, 0.3])
    mask = jnp.ones((3, 7))
    cfg0 = LossConfig(kl_coef=0.0, kl_estimator=estimator)
    cfg1 = LossConfig(kl_coef=0.5, kl_estimator=estimator)
    terms = jax.jit(lambda lp: policy_loss(lp, lp, adv, mask, cfg1, ref_logp=lp))(logp)
    assert float(summarize(terms.metrics)["kl"]) == 0.0
    chex.assert_trees_all_close(mean_loss(terms), _loss(logp, logp, adv, mask, cfg0))


def test_k3_penalty_is_nonnegative_with_zero_gradient_at_the_reference():
    logp = _logp(7, (3, 5))
    ref = logp + _normal(8, (3, 5), 0.5)
    zero_adv, mask = jnp.zeros((3,)), jnp.ones((3, 5))
    cfg = LossConfig(kl_coef=1.0, kl_estimator="k3")
    assert float(_loss(logp, logp, zero_adv, mask, cfg, ref_logp=ref)) > 0.0
    grad = jax.jit(jax.grad(lambda lp: _loss(lp, lp, zero_adv, mask, cfg, ref_logp=lp)))(logp)
    assert np.all(np.asarray(grad) == 0.0)


def test_kl_coefficient_without_reference_is_refused():
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.ones(1), jnp.ones((1, 2)), LossConfig(kl_coef=0.1))


def test_aggregation_modes_weigh_tokens_and_sequences_as_documented():
    # at ratio 1 every token's loss is -A: sequence 0 (A=1) has 1 token, sequence 1 (A=-1) has 3
    logp = jnp.zeros((2, 4))
    adv = jnp.array([1.0, -1.0])
    mask = jnp.array([[1, 0, 0, 0], [1, 1, 1, 0]], jnp.float32)
    got = {
        agg: float(_loss(logp, logp, adv, mask, LossConfig(aggregation=agg, token_scale=8)))
        for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-scale")
    }
    assert got["token-mean"] == pytest.approx((-1 + 3) / 4)
    assert got["seq-mean-token-mean"] == pytest.approx((-1 + 1) / 2)
    assert got["seq-mean-token-scale"] == pytest.approx((-1 / 8 + 3 / 8) / 2)


def test_token_scale_aggregation_refuses_to_run_without_a_fixed_scale():
    # the old fallback divided by the padded length T, so the same episodes lost half their weight when
    # a longer episode moved the batch from the 64-token bucket to the 128-token one
    with pytest.raises(ValueError, match="needs token_scale"):
        LossConfig(aggregation="seq-mean-token-scale")
    with pytest.raises(ValueError, match="token_scale must be > 0"):
        LossConfig(aggregation="seq-mean-token-scale", token_scale=0.0)
    assert LossConfig(aggregation="seq-mean-token-scale", token_scale=256).token_scale == 256
    LossConfig(aggregation="token-mean")   # the other aggregations need no scale


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-scale"])
def test_loss_does_not_depend_on_the_length_bucket(aggregation):
    """The same episodes padded to T = 10, 16 and 64 (as collate's length buckets would): same loss, same
    gradient on the real tokens."""
    b, t = 5, 10
    logp = _logp(0, (b, t))
    old = logp + _normal(1, (b, t), 0.3)
    adv = _normal(2, (b,))
    mask = _mask(3, (b, t), 0.7)
    cfg = LossConfig(aggregation=aggregation, token_scale=24.0)

    def padded(length):
        def pad(x, value):
            return jnp.concatenate([x, jnp.full((b, length - t), value, x.dtype)], axis=1)

        value, grad = _loss_and_grad(pad(logp, 0.0), pad(old, 0.0), adv, pad(mask, False), cfg)
        chex.assert_trees_all_equal(grad[:, t:], jnp.zeros((b, length - t)))
        return value, grad[:, :t]

    want = padded(t)
    assert float(want[0]) != 0.0
    for length in (16, 64):
        chex.assert_trees_all_close(padded(length), want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-scale"])
def test_accumulated_micro_batches_equal_one_batch(aggregation):
    b, t = 8, 12
    logp = _logp(0, (b, t))
    old = logp + _normal(1, (b, t), 0.4)
    adv = _normal(2, (b,))
    mask = _mask(3, (b, t), 0.7)
    cfg = LossConfig(aggregation=aggregation, token_scale=16.0)

    @jax.jit
    def both(lp):
        bounds = compute_clip_bounds(lp, old, adv, mask, cfg.clip)   # once, on the global batch

        def full(lp):
            terms = policy_loss(lp, old, adv, mask, cfg, bounds=bounds)
            return mean_loss(terms), terms.metrics

        def accumulated(lp):
            total = None
            for s in (slice(0, 3), slice(3, 5), slice(5, 8)):
                terms = policy_loss(lp[s], old[s], adv[s], mask[s], cfg, bounds=bounds)
                total = terms if total is None else add_terms(total, terms)
            return mean_loss(total), total.metrics

        one = jax.value_and_grad(full, has_aux=True)(lp)
        acc = jax.value_and_grad(accumulated, has_aux=True)(lp)
        return one, acc, summarize(one[0][1]), summarize(acc[0][1])

    (one, one_grad), (acc, acc_grad), m_one, m_acc = both(logp)
    chex.assert_trees_all_close(acc[0], one[0], atol=1e-6)
    chex.assert_trees_all_close(acc_grad, one_grad, atol=1e-6)
    chex.assert_trees_all_close(m_acc, m_one, atol=1e-5)
    # every metric, the count of trained tokens included: the three micro-batches' counts add up to the batch's
    assert float(m_acc["loss_tokens"]) == float(m_one["loss_tokens"]) == float(jnp.sum(mask))
    assert float(m_one["clip_low"]) > 0.6   # the adaptive bounds moved, and the micro-batches shared them


def test_per_token_advantages_equal_broadcast_sequence_advantages():
    logp = _logp(0, (3, 5), 1.0)
    old = logp + 0.3
    adv = jnp.array([0.5, -1.0, 2.0])
    mask = jnp.ones((3, 5))
    a = _loss(logp, old, adv, mask)
    b = _loss(logp, old, jnp.broadcast_to(adv[:, None], (3, 5)), mask)
    chex.assert_trees_all_close(a, b)


def test_metrics_report_clip_fractions_and_bounds():
    # 4 tokens: A>0 above high, A<0 below low, A<0 above dual, one unclipped
    ratio = jnp.array([[1.5, 0.5, 4.0, 1.0]])
    adv = jnp.array([[1.0, -1.0, -1.0, 1.0]])
    logp = jnp.log(ratio)
    cfg = LossConfig(clip=ClipConfig(rule="dual"))
    m = summarize(jax.jit(lambda lp: policy_loss(lp, jnp.zeros_like(lp), adv, jnp.ones((1, 4)), cfg).metrics)(logp))
    assert float(m["clip_frac_high"]) == pytest.approx(0.25)
    assert float(m["clip_frac_low"]) == pytest.approx(0.25)
    assert float(m["clip_frac_dual"]) == pytest.approx(0.25)
    assert float(m["clip_low"]) == pytest.approx(0.8) and float(m["clip_high"]) == pytest.approx(1.2)
    assert float(m["approx_kl"]) > 0.0
    assert float(m["adv_mean"]) == pytest.approx(0.0) and float(m["adv_std"]) == pytest.approx(1.0)


def test_unknown_rule_and_aggregation_are_refused_with_the_known_names():
    with pytest.raises(ValueError, match="bapo, dapo, dual, ppo"):
        LossConfig(clip=ClipConfig(rule="grpo"))
    with pytest.raises(ValueError, match="token-mean"):
        LossConfig(aggregation="mean")


def test_shape_mismatch_is_refused():
    with pytest.raises(AssertionError):
        policy_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.ones(2), jnp.ones((2, 3)))
    with pytest.raises(AssertionError):
        policy_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones(3), jnp.ones((2, 3)))
