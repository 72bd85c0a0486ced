"""Checkpoints: real orbax files on disk. Keep the last N, record data position and config, restore onto a
different mesh, and resume exactly after a kill -9 (4 steps straight == 2 steps, SIGKILL, restore, 2 more)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import random_batch, state_arrays, tiny_model, train_config

from rl_jax.models import unstack_layer_state
from rl_jax.sharding import make_mesh
from rl_jax.train import Checkpointer, create_train_state, shard_batch, state_shardings
from rl_jax.train.checkpoint import abstract_state, read_meta

HELPERS = Path(__file__).with_name("train_helpers.py")


def test_keeps_last_n_and_records_data_position_and_config(tmp_path):
    cfg = train_config()
    _, state, _ = create_train_state(tiny_model(), cfg)
    with Checkpointer(tmp_path, keep=2) as ckpt:
        for i in range(1, 5):
            state = state.replace(step=jnp.asarray(i, jnp.int32))
            assert ckpt.save(state, data_position={"batch": 10 * i}, config=cfg)
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4]
        assert ckpt.latest_step() == 4
    meta = read_meta(tmp_path, 4)
    assert meta["data_position"] == {"batch": 40}
    assert meta["config"]["optimizer"]["learning_rate"] == cfg.optimizer.learning_rate
    assert meta["config"]["loss"]["clip"]["rule"] == "bapo"


def test_restore_without_checkpoint_says_so(tmp_path):
    _, state, _ = create_train_state(tiny_model(), train_config())
    with Checkpointer(tmp_path / "empty") as ckpt, pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.restore(state)


def test_restore_onto_a_different_mesh(tmp_path):
    """Saved from a 4x2 mesh after a step, restored onto 2x4: same values, laid out for the new mesh."""
    cfg = train_config()
    mesh_a, mesh_b = make_mesh(4, 2), make_mesh(2, 4)
    _, state, step = create_train_state(tiny_model(), cfg, mesh_a)
    state, _ = step(state, shard_batch(random_batch(0), mesh_a))
    saved = state_arrays(state)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(state, data_position={"batch": 1}, config=cfg)
        ckpt.wait()
        _, fresh, _ = create_train_state(tiny_model(seed=7), cfg, mesh_b)
        target = abstract_state(fresh, state_shardings(fresh, mesh_b))
        restored, meta = ckpt.restore(target)
    assert meta["step"] == 1 and meta["data_position"] == {"batch": 1}
    for key, value in state_arrays(restored).items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)
    wq = restored.params["layers"][0]["wq"].get_value()
    assert wq.sharding.mesh.shape == {"data": 2, "model": 4}
    assert wq.sharding.spec == state_shardings(fresh, mesh_b).params["layers"][0]["wq"].get_value().spec
    mu = restored.opt_state[1][0].mu["layers"][0]["wq"].get_value()
    assert mu.sharding.mesh.shape == {"data": 2, "model": 4}


@pytest.mark.parametrize("saved_scan", [False, True], ids=["unrolled-to-scanned", "scanned-to-unrolled"])
def test_restore_converts_between_layer_layouts(tmp_path, saved_scan):
    """A run saved with one layer per entry (unrolled, or scanned before the layers were stored stacked) resumes
    in the scanned layout, and back: the same values, stacked (or unstacked) in the parameters and in the
    optimizer's moments, laid out for the target's mesh."""
    cfg = train_config()
    mesh_a, mesh_b = make_mesh(4, 2), make_mesh(2, 4)
    saved_model = tiny_model()
    saved_model.scan = saved_scan
    _, state, step = create_train_state(saved_model, cfg, mesh_a)
    state, _ = step(state, shard_batch(random_batch(0), mesh_a))
    fresh_model = tiny_model(seed=7)
    fresh_model.scan = not saved_scan
    _, fresh, _ = create_train_state(fresh_model, cfg, mesh_b)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(state, config=cfg)
        ckpt.wait()
        restored, meta = ckpt.restore(abstract_state(fresh, state_shardings(fresh, mesh_b)))
    assert meta["step"] == 1
    assert jax.tree.structure(restored) == jax.tree.structure(fresh)
    per_layer = {"params": lambda s: s.params, "mu": lambda s: s.opt_state[1][0].mu}
    for name, part in per_layer.items():
        want = part(state) if not saved_scan else unstack_layer_state(part(state))
        got = part(restored) if saved_scan else unstack_layer_state(part(restored))
        for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got), strict=True):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=f"{name}{jax.tree_util.keystr(path)}")
    wq = restored.params["layers"][0 if saved_scan else "stacked"]["wq"].get_value()
    assert wq.sharding.mesh.shape == {"data": 2, "model": 4}
    want_spec = state_shardings(fresh, mesh_b).params["layers"][0 if saved_scan else "stacked"]["wq"].get_value().spec
    assert wq.sharding.spec == want_spec


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPERS), *args], capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.slow
def test_resume_after_kill_9_is_bitwise_exact(tmp_path):
    # 4 steps straight, in this process
    cfg = train_config()
    _, state, step = create_train_state(tiny_model(), cfg)
    for position in range(4):
        state, _ = step(state, jax.tree.map(np.asarray, random_batch(position)))
    straight = state_arrays(state)

    # 2 steps in a process that is killed with SIGKILL once its step-2 checkpoint is committed
    ckpt_dir = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, str(HELPERS), "train", str(ckpt_dir), str(tmp_path / "never.npz"),
         "--steps", "4", "--hang-after", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("COMMITTED 2"):
                break
        else:
            pytest.fail(f"trainer exited before committing step 2: {proc.stderr.read() if proc.stderr else ''}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "never.npz").exists()

    # a new process restores the latest checkpoint (step 2) and trains 2 more steps
    out = tmp_path / "resumed.npz"
    done = _run(["train", str(ckpt_dir), str(out), "--steps", "4", "--resume"])
    assert done.returncode == 0, done.stderr[-4000:]
    assert "RESTORED 2 position=2" in done.stdout
    resumed = np.load(out)
    assert set(resumed.files) == set(straight)
    for key, value in straight.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)
