"""The train step: accumulation equals one batch, non-finite updates are skipped, gradients reach only the
policy, and a sharded step equals the single-device step (4x2 here, 8x4 in a 32-device subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import (
    BATCH_ROWS,
    LENGTH_BUCKETS,
    TINY,
    assert_same_step,
    random_batch,
    random_trajectories,
    state_arrays,
    tiny_model,
    train_config,
)

from rl_jax.grpo import LossConfig
from rl_jax.sharding import make_mesh
from rl_jax.train import (
    collate,
    create_train_state,
    make_loss_fn,
    next_token_logprobs,
    shard_batch,
    split_micro_batches,
    split_model,
)

HELPERS = Path(__file__).with_name("train_helpers.py")


def _device_batch(position=0, **kw):
    return jax.tree.map(jnp.asarray, random_batch(position, **kw))


def _numpy(metrics):
    return {k: np.asarray(v) for k, v in metrics.items()}


def _params_close(a, b, lr):
    # Adam's first update is about lr * sign(g) per weight: compare updates to a small fraction of lr
    chex.assert_trees_all_close(a, b, atol=1e-2 * lr, rtol=0)


@pytest.fixture(scope="module")
def one_batch_step():
    """The reference: one step over the whole 16-row batch (BAPO adaptive bounds, token mean)."""
    cfg = train_config()
    graphdef, state, step = create_train_state(tiny_model(), cfg)
    before = jax.tree.map(jnp.copy, state.params)
    new_state, metrics = step(state, _device_batch())
    return cfg, graphdef, before, new_state, metrics


def test_micro_batch_accumulation_equals_one_batch(one_batch_step):
    cfg, _, before, reference, ref_metrics = one_batch_step
    _, state, step = create_train_state(tiny_model(), train_config(micro_batches=4))
    state, metrics = step(state, _device_batch())
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-4)
    assert set(metrics) == set(ref_metrics)
    for key in ("clip_low", "clip_high", "clip_frac_low", "clip_frac_high", "entropy", "loss_tokens"):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, err_msg=key)
    # the trained tokens of the whole batch (their predictions sit one position left), not of one micro-batch
    assert float(metrics["loss_tokens"]) == float(np.sum(random_batch(0).loss_mask[:, 1:]))
    _params_close(state.params, reference.params, cfg.optimizer.learning_rate)
    # and the step did move the weights
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), reference.params, before)
    assert max(jax.tree.leaves(moved)) > 0.5 * cfg.optimizer.learning_rate


def test_adaptive_bounds_are_searched_on_the_whole_batch_not_per_micro_batch(one_batch_step):
    """A batch whose halves would each pick other BAPO bounds: accumulation must use the global ones."""
    cfg = train_config(micro_batches=2)
    batch = random_batch(0)
    # rows 0, 2, 4, ... (micro-batch 0) get positive advantages, the odd rows negative: per-micro-batch P/N
    # would be 0 or inf, the global one is in between
    adv = np.abs(batch.advantages) * np.where(np.arange(16) % 2 == 0, 1.0, -1.0).astype(np.float32)
    batch = batch.replace(advantages=adv.astype(np.float32))
    micro = split_micro_batches(batch, 2)
    assert (micro.advantages[0] > 0).all() and (micro.advantages[1] < 0).all()

    _, s1, step1 = create_train_state(tiny_model(), train_config())
    s1, m1 = step1(s1, jax.tree.map(jnp.asarray, batch))
    _, s2, step2 = create_train_state(tiny_model(), cfg)
    s2, m2 = step2(s2, jax.tree.map(jnp.asarray, batch))
    np.testing.assert_allclose(m2["clip_low"], m1["clip_low"])
    np.testing.assert_allclose(m2["clip_high"], m1["clip_high"])
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    _params_close(s2.params, s1.params, cfg.optimizer.learning_rate)


def test_the_step_compiles_once_for_a_model_loaded_onto_its_device():
    """Loaded checkpoints hand the trainer committed parameters beside fresh (uncommitted) counters; the
    state a step returns must have the signature of the one it was given, or every run compiles twice."""
    from flax import nnx
    from jax._src import dispatch, monitoring

    model = tiny_model()
    nnx.update(model, jax.device_put(nnx.state(model), jax.devices()[0]))  # as a checkpoint loader leaves it
    _, state, step = create_train_state(model, train_config())
    batch = _device_batch()
    compiles: list[str] = []

    def on_event(event: str, _duration: float, **_: object) -> None:
        if event == dispatch.BACKEND_COMPILE_EVENT:
            compiles.append(event)

    monitoring.register_event_duration_secs_listener(on_event)
    try:
        for _ in range(3):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    finally:
        monitoring.unregister_event_duration_listener(on_event)
    assert int(metrics["step"]) == 3
    assert len(compiles) == 1


def test_non_finite_loss_skips_update_and_reports_it():
    _, state, step = create_train_state(tiny_model(), train_config())
    # one good step first, so the optimizer state is not trivially zero
    state, good = step(state, _device_batch(0))
    assert int(good["skipped"]) == 0
    before = state_arrays(state)
    state, metrics = step(state, _device_batch(1, nan_row=True))
    assert not np.isfinite(float(metrics["loss"]))
    assert int(metrics["skipped"]) == 1
    assert int(state.step) == 2 and int(state.skipped) == 1
    after = state_arrays(state)
    for key, value in before.items():
        if key.startswith(".params") or key.startswith(".opt_state"):
            np.testing.assert_array_equal(after[key], value, err_msg=key)
    # the run goes on: the next finite batch updates again, at the schedule position of 1 applied update
    state, metrics = step(state, _device_batch(2))
    assert int(metrics["skipped"]) == 0 and int(state.skipped) == 1
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("dropped", [5, BATCH_ROWS - 1])
def test_a_failed_episode_changes_no_loss_metric_or_update(dropped):
    """A row collated with ``valid=False`` trains exactly like the batch without that row: same loss, metrics,
    gradient (the optimizer's moments) and params. Zeroing only its advantage, as before, did not: its tokens
    still counted in the token mean's denominator and metrics and drew a KL gradient."""
    tokens, masks, olds, adv = random_trajectories(0)
    refs = [(np.asarray(o) + 0.2).tolist() for o in olds]  # a reference off the sampler: KL and its gradient
    cfg = train_config(loss=LossConfig(kl_coef=0.1))
    lr = cfg.optimizer.learning_rate

    def run(keep, valid=None, advantages=adv):
        rows = [i for i in range(BATCH_ROWS) if i in keep]

        def pick(xs):
            return [xs[i] for i in rows]

        batch = collate(
            pick(tokens), pick(masks), pick(olds), pick(advantages), pick(refs),
            valid=None if valid is None else pick(valid),
            buckets=LENGTH_BUCKETS, window_buckets=8, rows_multiple=BATCH_ROWS,
        )
        _, state, step = create_train_state(tiny_model(), cfg)
        state, metrics = step(state, jax.tree.map(jnp.asarray, batch))
        return state_arrays(state), _numpy(metrics)

    everyone = set(range(BATCH_ROWS))
    want_state, want = run(everyone - {dropped})  # 15 rows (and one empty padding row)
    failed = [i != dropped for i in range(BATCH_ROWS)]
    crashed_adv = [float("nan") if i == dropped else a for i, a in enumerate(adv)]
    got_state, got = run(everyone, valid=failed, advantages=crashed_adv)
    assert want["loss"] != 0.0 and want["kl"] > 0.0
    assert int(got["skipped"]) == 0  # the NaN advantage of the failed row never reaches the loss
    assert got["loss_tokens"] == want["loss_tokens"]
    if dropped == BATCH_ROWS - 1:
        # the other rows sit where they sat without it, so every sum adds the same numbers in the same order
        # (the failed row's tokens add exact zeros): bit for bit the same step
        chex.assert_trees_all_equal((got_state, got), (want_state, want))
    else:
        # the rows after it move up one: batch-wide sums add in another order, equal to f32 rounding
        assert_same_step(got_state, got, want_state, want, lr)

    # the old way of dropping it (advantage 0, tokens still trained on) gives another loss and update
    zero_adv = [0.0 if i == dropped else a for i, a in enumerate(adv)]
    old_state, old = run(everyone, advantages=zero_adv)
    assert old["loss_tokens"] > want["loss_tokens"]
    for key in ("loss", "kl", "pg_loss"):
        assert not np.isclose(old[key], want[key], rtol=1e-3), key
    with pytest.raises(AssertionError):
        assert_same_step(old_state, old, want_state, want, lr)


def test_gradients_reach_only_the_policy_not_the_reference():
    cfg = train_config(loss=LossConfig(kl_coef=0.1))
    graphdef, params, frozen = split_model(tiny_model(0))
    _, ref_params, _ = split_model(tiny_model(1))
    ref_before = jax.tree.map(jnp.copy, ref_params)
    batch = _device_batch()
    loss_fn = make_loss_fn(graphdef, cfg)

    def numerator(p, r):
        return loss_fn(p, frozen, batch, None, r)[0]

    g_policy, g_ref = jax.grad(numerator, argnums=(0, 1))(params, ref_params)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(g_ref))
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_policy)) > 0.0

    # through the jitted step, with the reference computed in-step: it is read, never changed or donated
    _, state, step = create_train_state(tiny_model(0), cfg)
    state, metrics = step(state, batch, ref_params)
    assert float(metrics["kl"]) > 0.0
    chex.assert_trees_all_equal(ref_params, ref_before)
    # and a reference equal to the policy gives zero KL
    _, metrics = step(state, batch, jax.tree.map(jnp.copy, state.params))
    np.testing.assert_allclose(metrics["kl"], 0.0, atol=1e-6)


def _long_prompt_batch(window_buckets):
    """Trajectories that are mostly prompt: the loss window is a fraction of the length."""
    rng = np.random.default_rng(7)
    tokens, masks, olds = [], [], []
    for _ in range(8):
        n = int(rng.integers(24, 33))
        tokens.append(rng.integers(1, TINY["vocab_size"], size=n).tolist())
        mask = np.zeros(n, np.float32)
        mask[int(rng.integers(n - 9, n - 4)) :] = 1.0  # the answer after a long prompt
        mask[-3] = 0.0  # and a tool output inside it
        masks.append(mask.tolist())
        olds.append((np.log(1 / 64) + rng.normal(0, 0.3, size=n)).tolist())
    adv = rng.normal(size=8).tolist()
    return jax.tree.map(
        jnp.asarray, collate(tokens, masks, olds, adv, buckets=LENGTH_BUCKETS, window_buckets=window_buckets)
    )


def test_the_loss_window_changes_no_log_prob_loss_metric_or_update():
    windowed, full = _long_prompt_batch(8), _long_prompt_batch(None)
    assert full.loss_window is None and windowed.loss_window == 12  # 32 positions, 12 projected
    graphdef, params, frozen = split_model(tiny_model())
    # chunks of 5: the window's 12 positions in three chunks of 4, the full 32 in seven of 5 (3 padded)
    lp_w, ent_w = next_token_logprobs(graphdef, params, frozen, windowed, chunk_size=5, with_entropy=True)
    lp_f, ent_f = next_token_logprobs(graphdef, params, frozen, full, chunk_size=5, with_entropy=True)
    chex.assert_shape([lp_w, ent_w], full.tokens.shape)
    inside = np.zeros(full.tokens.shape, bool)
    for row, start in enumerate(np.asarray(windowed.loss_start)):
        inside[row, start : start + windowed.loss_window] = True
    assert inside[:, :-1][np.asarray(full.loss_mask)[:, 1:] > 0].all()  # every trained token's prediction
    np.testing.assert_allclose(np.asarray(lp_w)[inside], np.asarray(lp_f)[inside], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ent_w)[inside], np.asarray(ent_f)[inside], rtol=1e-6)
    assert not np.asarray(lp_w)[~inside].any() and not np.asarray(ent_w)[~inside].any()

    # one step each, with the adaptive bounds searched in the loss (1 micro-batch) and in the pre-pass (2)
    lr = train_config().optimizer.learning_rate
    for micro_batches in (1, 2):
        results = []
        for batch in (windowed, full):
            _, state, step = create_train_state(tiny_model(), train_config(micro_batches=micro_batches))
            state, metrics = step(state, batch)
            results.append((state_arrays(state), _numpy(metrics)))
        (got_state, got_metrics), (want_state, want_metrics) = results
        assert want_metrics["loss"] != 0.0
        assert_same_step(got_state, got_metrics, want_state, want_metrics, lr)


def test_step_on_4x2_mesh_equals_single_device(one_batch_step, mesh_4x2_step):
    cfg, _, _, reference, ref_metrics = one_batch_step
    assert mesh_4x2_step["wq_mesh"] == {"data": 4, "model": 2} and not mesh_4x2_step["wq_replicated"]
    assert_same_step(
        mesh_4x2_step["state"], mesh_4x2_step["metrics"], state_arrays(reference), _numpy(ref_metrics),
        cfg.optimizer.learning_rate,
    )


def test_micro_batches_on_4x2_mesh_equal_single_device_step(one_batch_step):
    """Accumulation on a mesh: micro-batches are strided rows re-constrained to the data axis
    (``build_step_fn``'s ``micro_sharding``); the update must equal one big batch on one device."""
    cfg, _, _, reference, ref_metrics = one_batch_step
    mesh = make_mesh(4, 2)
    _, state, step = create_train_state(tiny_model(), train_config(micro_batches=2), mesh)
    state, metrics = step(state, shard_batch(random_batch(0), mesh))
    wq = state.params["layers"][0]["wq"].get_value()
    assert wq.sharding.mesh.shape == {"data": 4, "model": 2} and not wq.sharding.is_fully_replicated
    assert_same_step(
        state_arrays(state), _numpy(metrics), state_arrays(reference), _numpy(ref_metrics),
        cfg.optimizer.learning_rate,
    )


@pytest.mark.slow
def test_step_on_8x4_mesh_of_32_devices_equals_single_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=32", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(HELPERS), "sharded", str(tmp_path)], env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    single, mesh = np.load(tmp_path / "single_state.npz"), np.load(tmp_path / "mesh8x4_state.npz")
    m1, m2 = np.load(tmp_path / "single_metrics.npz"), np.load(tmp_path / "mesh8x4_metrics.npz")
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m2["grad_norm"], m1["grad_norm"], rtol=1e-4)
    lr = train_config().optimizer.learning_rate
    assert set(single.files) == set(mesh.files)
    for key in single.files:
        np.testing.assert_allclose(mesh[key], single[key], atol=1e-2 * lr, rtol=0, err_msg=key)
