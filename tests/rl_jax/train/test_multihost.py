"""Multi-host through ``jax.distributed``: two real processes (gloo collectives, 4 CPU devices each) run one
train step and one sampling call on a global 4x2 mesh, and must compute what one process with 8 devices does.
Also: the mesh keeps each host's devices on the model axis, and the main entry point joins the process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from train_helpers import (
    SAMPLE_KEY,
    SAMPLE_PROMPTS,
    assert_same_step,
    sample_config,
    tiny_model,
    train_config,
)

from rl_jax.sampling import Sampler
from rl_jax.sharding import make_mesh

HELPERS = Path(__file__).with_name("train_helpers.py")
ROOT = Path(__file__).resolve().parents[3]
PROCESSES = 2
# each child exits by itself after this (a watchdog thread), and the test kills both shortly after: a
# coordinator that never answers, or a peer that died mid-collective, cannot hang the suite
CHILD_DEADLINE_S = 420
TEST_DEADLINE_S = CHILD_DEADLINE_S + 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill(proc: subprocess.Popen) -> None:
    """End one child (its own process group, started by this test) and reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _run_group(out_dir: Path) -> None:
    """Start the processes of one jax.distributed group and wait for all; fail (killing the others) as soon
    as one fails, or at the deadline."""
    port = _free_port()
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    try:
        for rank in range(PROCESSES):
            env = dict(
                os.environ,
                XLA_FLAGS="--xla_force_host_platform_device_count=4",
                JAX_PLATFORMS="cpu",
                RL_JAX_COORDINATOR=f"127.0.0.1:{port}",
                RL_JAX_NUM_PROCESSES=str(PROCESSES),
                RL_JAX_PROCESS_ID=str(rank),
            )
            logs.append(out_dir / f"proc{rank}.log")
            argv = ["multiprocess", str(out_dir), "--deadline", str(CHILD_DEADLINE_S)]
            with logs[-1].open("w") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, str(HELPERS), *argv],
                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                ))
        deadline = time.monotonic() + TEST_DEADLINE_S
        while True:
            codes = [p.poll() for p in procs]
            if all(c == 0 for c in codes):
                return
            failed = [rank for rank, c in enumerate(codes) if c not in (None, 0)]
            if failed or time.monotonic() > deadline:
                tails = "\n".join(f"--- process {r} (exit {codes[r]}):\n{logs[r].read_text()[-3000:]}"
                                  for r in range(PROCESSES))
                pytest.fail(f"process(es) {failed or 'all'} failed or timed out\n{tails}")
            time.sleep(0.5)
    finally:
        for proc in procs:
            _kill(proc)


@pytest.mark.slow
def test_two_processes_on_a_global_4x2_mesh_equal_one_process(tmp_path, mesh_4x2_step):
    _run_group(tmp_path)
    lr = train_config().optimizer.learning_rate
    want_sample = Sampler(tiny_model()).generate(SAMPLE_PROMPTS, sample_config(), jax.random.key(SAMPLE_KEY))
    for rank in range(PROCESSES):
        # every process holds the same, global, result (gathered from both processes' shards)
        state = dict(np.load(tmp_path / f"proc{rank}_state.npz"))
        metrics = dict(np.load(tmp_path / f"proc{rank}_metrics.npz"))
        assert_same_step(state, metrics, mesh_4x2_step["state"], mesh_4x2_step["metrics"], lr)
        sample = np.load(tmp_path / f"proc{rank}_sample.npz")
        np.testing.assert_array_equal(sample["tokens"], want_sample.tokens)
        np.testing.assert_array_equal(sample["lengths"], want_sample.lengths)
        np.testing.assert_allclose(sample["logprobs"], want_sample.logprobs, atol=1e-5)


def test_mesh_on_one_host_keeps_the_device_order():
    devices = jax.devices()
    assert len(devices) == 8
    mesh = make_mesh(4, 2)
    np.testing.assert_array_equal(mesh.devices, np.asarray(devices).reshape(4, 2))
    reordered = devices[::-1]
    np.testing.assert_array_equal(make_mesh(2, 2, reordered).devices, np.asarray(reordered[:4]).reshape(2, 2))
    with pytest.raises(ValueError, match="needs 16 devices but 8"):
        make_mesh(8, 2)


def test_main_joins_the_process_group_before_anything_else():
    """Incomplete RL_JAX_* settings are refused by ``initialize_distributed``: the main entry point reports
    them at once, before it loads a policy or touches a device (the checkpoint does not even exist)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RL_JAX_")}
    env["RL_JAX_COORDINATOR"] = "127.0.0.1:1"
    proc = subprocess.run(
        [sys.executable, "experiments/grpo_corecraft.py", "--set", "policy.checkpoint=/nonexistent/policy"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "needs all of coordinator address" in proc.stderr
    assert "Traceback" not in proc.stderr
