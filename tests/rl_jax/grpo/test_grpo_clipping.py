"""BAPO adaptive bounds: direction, range, the paper's sequential search, and exactness under sharding."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from rl_jax.grpo import (
    BapoConfig,
    BapoSums,
    ClipConfig,
    bapo_candidates,
    bapo_contribution_sums,
    bapo_select_bounds,
    compute_clip_bounds,
)
from rl_jax.sharding import DATA, make_mesh


def _sequential_search(ratio, adv, mask, cfg: ClipConfig):
    """The search as the method states it, one step at a time on the host: an independent oracle."""
    b = cfg.bapo
    r, a, m = (np.asarray(x, np.float64) for x in (ratio, adv, mask))

    def pn(lo, hi):
        if b.contribution == "surrogate":
            eff = np.where(a >= 0, np.minimum(r, hi), np.maximum(r, lo)) * a * m
            return eff.clip(min=0).sum(), (-eff).clip(min=0).sum()
        pos = (a > 0) & (r <= hi)
        neg = (a < 0) & (r >= lo) & (r <= cfg.dual_clip_c)
        return (a * r * m * pos).sum(), (-a * r * m * neg).sum()

    def met(lo, hi):
        p, n = pn(lo, hi)
        return p >= b.rho0 * n

    lo, hi = b.low_start, b.high_start
    while not met(lo, hi) and lo < b.low_max - 1e-9:
        lo = min(lo + b.low_step, b.low_max)
    while not met(lo, hi) and hi < b.high_max - 1e-9:
        hi = min(hi + b.high_step, b.high_max)
    return lo, hi


def _batch(seed, b=16, t=24, neg_bias=0.0, spread=0.5):
    rng = np.random.default_rng(seed)
    old = -rng.uniform(size=(b, t)) * 3
    logp = old + spread * rng.normal(size=(b, t))
    adv = rng.normal(size=b) - neg_bias
    mask = rng.uniform(size=(b, t)) < 0.8
    return jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32), jnp.asarray(adv, jnp.float32), jnp.asarray(mask)


def test_candidate_grid_spans_the_documented_ranges():
    grid = bapo_candidates(BapoConfig())
    assert tuple(grid[0]) == pytest.approx((0.6, 1.2))
    assert tuple(grid[-1]) == pytest.approx((0.9, 3.0))
    assert np.all(np.diff(grid[:, 0]) >= 0) and np.all(np.diff(grid[:, 1]) >= 0)
    # c_high only moves once c_low has reached its maximum
    assert np.all(grid[grid[:, 1] > 1.2, 0] == pytest.approx(0.9))


@pytest.mark.parametrize("contribution", ["surrogate", "gradient"])
def test_bounds_equal_the_sequential_search(contribution):
    cfg = ClipConfig(bapo=BapoConfig(contribution=contribution))
    search = jax.jit(lambda *a: compute_clip_bounds(*a, cfg))
    for seed in range(12):
        logp, old, adv, mask = _batch(seed, neg_bias=0.15 * (seed % 6), spread=0.1 + 0.15 * (seed % 4))
        bounds = search(logp, old, adv, mask)
        ratio = np.exp(np.clip(np.asarray(logp - old), -20, 20))
        want = _sequential_search(ratio, np.broadcast_to(np.asarray(adv)[:, None], ratio.shape), mask, cfg)
        assert (float(bounds.low), float(bounds.high)) == pytest.approx(want, abs=1e-5), seed


@pytest.mark.parametrize("contribution", ["surrogate", "gradient"])
def test_bounds_rise_when_negatives_dominate_and_stay_in_range(contribution):
    cfg = ClipConfig(bapo=BapoConfig(contribution=contribution))
    search = jax.jit(lambda *a: compute_clip_bounds(*a, cfg))
    # positives dominate: P/N >= rho_0 at the start, bounds stay at (0.6, 1.2)
    logp, old, adv, mask = _batch(0, neg_bias=-1.5)
    start = search(logp, old, adv, mask)
    assert (float(start.low), float(start.high)) == pytest.approx((0.6, 1.2))
    # negatives dominate more and more: the bounds never go down, and stay in [0.6, 0.9] x [1.2, 3.0]
    prev = (0.6, 1.2)
    for bias in (0.6, 1.0, 1.4, 3.0):
        b = search(logp, old, adv - bias, mask)
        low, high = float(b.low), float(b.high)
        assert 0.6 - 1e-6 <= low <= 0.9 + 1e-6 and 1.2 - 1e-6 <= high <= 3.0 + 1e-6
        assert low >= prev[0] - 1e-6 and high >= prev[1] - 1e-6
        prev = (low, high)
    assert prev != (0.6, 1.2)


@pytest.mark.parametrize("contribution", ["surrogate", "gradient"])
def test_chosen_bounds_meet_the_target_when_it_is_reachable(contribution):
    cfg = ClipConfig(bapo=BapoConfig(contribution=contribution))
    grid = bapo_candidates(cfg.bapo)

    @jax.jit
    def search(*batch):
        sums = bapo_contribution_sums(*batch, cfg)
        return sums, bapo_select_bounds(sums, cfg)

    for seed in range(6):
        logp, old, adv, mask = _batch(seed, neg_bias=0.4, spread=0.6)
        sums, bounds = search(logp, old, adv, mask)
        ok = np.asarray(sums.pos) >= 0.5 * np.asarray(sums.neg)
        idx = int(np.argmax(np.all(np.isclose(grid, [float(bounds.low), float(bounds.high)]), axis=1)))
        if ok.any():
            assert ok[idx] and not ok[:idx].any()
        else:
            assert idx == len(grid) - 1


def test_micro_batch_sums_add_up_to_the_global_bounds():
    cfg = ClipConfig()
    logp, old, adv, mask = _batch(5, b=12, neg_bias=0.5)

    @jax.jit
    def accumulated(logp, old, adv, mask):
        parts = [bapo_contribution_sums(logp[s], old[s], adv[s], mask[s], cfg) for s in (slice(0, 4), slice(4, 12))]
        return bapo_select_bounds(BapoSums(parts[0].pos + parts[1].pos, parts[0].neg + parts[1].neg), cfg)

    whole = jax.jit(lambda *a: compute_clip_bounds(*a, cfg))(logp, old, adv, mask)
    chex.assert_trees_all_close(accumulated(logp, old, adv, mask), whole)
    assert (float(whole.low), float(whole.high)) != pytest.approx((0.6, 1.2))   # the search had work to do


def test_no_gradient_flows_through_the_search():
    logp, old, adv, mask = _batch(2, neg_bias=0.5)
    grad = jax.jit(jax.grad(lambda lp: compute_clip_bounds(lp, old, adv, mask).high))(logp)
    assert np.all(np.asarray(grad) == 0.0)


def test_sharded_search_equals_unsharded_and_sees_the_global_batch():
    mesh = make_mesh(4, 2)
    cfg = ClipConfig()
    # the first data shard holds only positive advantages, the rest only negative ones: a search local to a
    # shard would keep the start bounds on the first and jump to the maxima on the second; globally c_high
    # lands in between
    logp, old, _, mask = _batch(11, b=16, t=32, spread=0.6)
    adv = jnp.where(jnp.arange(16) < 4, 1.0, -0.4 - 0.01 * jnp.arange(16))
    search = jax.jit(lambda *a: compute_clip_bounds(*a, cfg))
    want = search(logp, old, adv, mask)

    rows = NamedSharding(mesh, PartitionSpec(DATA, None))
    vec = NamedSharding(mesh, PartitionSpec(DATA))
    sharded = (jax.device_put(logp, rows), jax.device_put(old, rows), jax.device_put(adv, vec), jax.device_put(mask, rows))
    assert len(sharded[0].sharding.device_set) == 8
    got = search(*sharded)
    chex.assert_trees_all_close(got, want)

    first, second = (search(logp[s], old[s], adv[s], mask[s]) for s in (slice(0, 4), slice(4, 8)))  # one shape
    assert (float(first.low), float(first.high)) == pytest.approx((0.6, 1.2))
    assert (float(second.low), float(second.high)) == pytest.approx((0.9, 3.0))
    assert 1.2 < float(want.high) < 3.0
