"""Multi-host GRPO on CPU: two real processes (``jax.distributed`` over loopback, gloo collectives, one device
each) run a full step of the main entry point, each with its rollout pool on its share of the tasks, and must
compute what one process with both devices computes: the same episodes, the same update."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_grpo_corecraft_main import _checkpoint_params

from rl_jax.learner.metrics_log import read_metrics

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--preset", "tiny", "--mesh", "2x1", "--set", "learner.steps=1", "--set", "learner.tasks_per_step=2",
        "--set", "learner.eval_tasks=2", "--set", "learner.eval_samples=1", "--set", "learner.eval_at_start=false"]
DEADLINE_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(envs: list[dict[str, str]], out: Path) -> None:
    procs, logs = [], []
    try:
        for rank, env in enumerate(envs):
            logs.append(out.with_name(f"{out.name}.proc{rank}.log"))
            with logs[-1].open("w") as log:
                procs.append(subprocess.Popen([sys.executable, "experiments/grpo_corecraft.py", *ARGS, "--out", str(out)],
                                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = time.monotonic() + DEADLINE_S
        while True:
            codes = [p.poll() for p in procs]
            if all(c == 0 for c in codes):
                return
            failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if failed or time.monotonic() > deadline:
                tails = "\n".join(f"--- process {r} (exit {codes[r]}):\n{logs[r].read_text()[-3000:]}"
                                  for r in range(len(procs)))
                pytest.fail(f"process(es) {failed or 'all'} failed or timed out\n{tails}")
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.mark.slow
def test_two_processes_run_a_grpo_step_as_one_process_does(tmp_path):
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    one = tmp_path / "one"
    _run([base], one)  # the main entry point gives itself 2 host devices for the 2x1 mesh
    two = tmp_path / "two"
    port = _free_port()
    _run([base | {"RL_JAX_COORDINATOR": f"127.0.0.1:{port}", "RL_JAX_NUM_PROCESSES": "2",
                  "RL_JAX_PROCESS_ID": str(rank)} for rank in range(2)], two)

    def episodes(run: Path) -> list[tuple]:
        # (episode ids carry each launch's own prefix; the slot and index say which episode it is)
        return [(e["split"], e["slot"], e["task_id"], e["episode_id"].rsplit("-", 1)[-1], e["reward"],
                 e["sampled_tokens"], e["tokens"], e["final_response"])
                for e in map(json.loads, (run / "episodes.jsonl").read_text().splitlines())]

    # every episode of both processes is recorded (by process 0), and they are the one process's episodes
    assert episodes(two) == episodes(one)
    assert len([e for e in episodes(one) if e[0] == "train"]) == 2 * 2
    a, b = _checkpoint_params(one, 1), _checkpoint_params(two, 1)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    (m1,), (m2,) = ([m for m in read_metrics(run / "metrics.jsonl") if m["split"] == "train"] for run in (one, two))
    for key in ("loss", "reward_mean", "loss_tokens", "episodes", "batch_rows", "batch_length"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), key
