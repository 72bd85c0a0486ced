"""The clipping/entropy experiment: its reward, its ratios against the behaviour policy, and its clip arms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.clip_entropy import RunConfig, make_run, make_task, score
from rl_jax.grpo import BapoConfig
from rl_jax.grpo.clipping import bapo_candidates


def test_score_exact_partial_and_cutoff():
    allowed = jnp.zeros((1, 4, 5), bool).at[0, :, 1].set(True)   # token 1 is right at every position
    targets = jnp.asarray([2])
    prompts = jnp.zeros(4, jnp.int32)
    tokens = jnp.asarray([
        [1, 1, 0, 3],   # exact: two right tokens, then EOS
        [1, 2, 0, 0],   # one right token, then wrong
        [1, 1, 1, 0],   # right prefix, EOS one late
        [1, 1, 1, 1],   # never stops
    ])
    reward, success, mask = score(tokens, prompts, allowed, targets)
    np.testing.assert_allclose(reward, [1.0, 0.25, 0.5, 0.5])
    np.testing.assert_array_equal(success, [True, False, False, False])
    np.testing.assert_array_equal(mask.sum(-1), [3, 3, 4, 4])   # up to and including the first EOS
    reward, _, _ = score(tokens, prompts, allowed, targets, cutoff_scores_zero=True)
    np.testing.assert_allclose(reward, [1.0, 0.25, 0.5, 0.0])


def test_make_task_is_fixed():
    a1, t1 = make_task(RunConfig().task)
    a2, t2 = make_task(RunConfig().task)
    assert bool((a1 == a2).all()) and bool((t1 == t2).all())
    assert not bool(a1[..., 0].any())   # EOS is never an allowed answer token
    assert bool((a1.sum(-1) == RunConfig().task.allowed).all())


def _run(**kw):
    cfg = RunConfig(steps=kw.pop("steps", 3), optimizer="sgd", lr=30.0, **kw)
    return jax.device_get(make_run(cfg)(jax.random.PRNGKey(0)))


def test_ratio_is_one_on_policy_and_moves_on_stale_data():
    # one update per fresh batch: the ratio is exactly 1, nothing clips
    rec = _run(arm="ppo", epochs=1, minibatches=1, staleness=0)
    np.testing.assert_allclose(rec["approx_kl"], 0.0, atol=1e-6)
    assert float(np.max(rec["clip_frac_high"] + rec["clip_frac_low"])) == 0.0
    # data two steps old: step 0 trains the initial policy on its own samples (ratio 1); later steps train a
    # moved policy on the initial policy's samples, against the log-probs that sampled them
    rec = _run(arm="ppo", epochs=1, minibatches=1, staleness=2)
    assert abs(float(rec["approx_kl"][0])) < 1e-6
    assert float(rec["approx_kl"][1]) > 1e-7 and float(rec["approx_kl"][2]) > 1e-7


def test_clip_bounds_are_the_arms_and_bind():
    ppo = _run(arm="ppo", epochs=4, staleness=2, steps=6)
    wide = _run(arm="wide", epochs=4, staleness=2, steps=6)
    np.testing.assert_allclose(ppo["clip_low"], 0.8, atol=1e-6)
    np.testing.assert_allclose(ppo["clip_high"], 1.2, atol=1e-6)
    np.testing.assert_allclose(wide["clip_high"], 3.0, atol=1e-6)
    assert float(ppo["clip_frac_high"].max()) > 0       # the narrow clip binds here ...
    assert not np.allclose(ppo["entropy"][1:], wide["entropy"][1:])   # ... and changes the run
    bapo = _run(arm="bapo", epochs=4, staleness=2, steps=6)
    grid = bapo_candidates(BapoConfig())
    # per-step means of bounds picked from the search grid
    assert grid[:, 0].min() - 1e-6 <= float(bapo["clip_low"].min()) <= float(bapo["clip_low"].max()) <= 0.9 + 1e-6
    assert 1.2 - 1e-6 <= float(bapo["clip_high"].min()) <= float(bapo["clip_high"].max()) <= 3.0 + 1e-6
