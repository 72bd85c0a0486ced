"""The main entry point end to end on the tiny preset (a random 2-layer model with SmolLM2's tokenizer): GRPO
steps over real MCP tools and the judge, the run folder a user reads, and resume after a kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments.grpo_corecraft import main
from rl_jax.learner.metrics_log import read_metrics

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--preset", "tiny", "--set", "learner.eval_tasks=0"]


def _main(argv: list[str], capsys, monkeypatch) -> dict:
    # main, an entry point, sets XLA_FLAGS for the process; restored after the test so later tests' child
    # processes start JAX as this one did
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_tiny_preset_trains_and_leaves_a_run_folder_a_user_can_read(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    summary = _main(["--preset", "tiny", "--out", str(out)], capsys, monkeypatch)
    assert summary["grpo_steps"] == 2 and summary["episodes"] == 2 * 1 * 2
    for key in ("mean_reward", "eval_pass_rate", "wall_s", "out", "prompt_tokens"):
        assert key in summary
    assert Path(summary["out"]) == out
    assert 0.0 <= summary["mean_reward"] <= 1.0 and 0.0 <= summary["eval_pass_rate"] <= 1.0

    saved = json.loads((out / "config.json").read_text())
    assert saved["learner"]["steps"] == 2 and saved["sampling"]["stop_token_ids"]  # resolved, then saved
    lines = read_metrics(out / "metrics.jsonl")
    train = [m for m in lines if m["split"] == "train"]
    evals = [m for m in lines if m["split"] == "eval"]
    assert [m["step"] for m in train] == [1, 2] and [m["step"] for m in evals] == [0, 2]
    for key in ("reward_mean", "pass_rate", "loss", "grad_norm", "clip_low", "clip_high", "entropy",
                "adv_mean", "clip_frac_high", "logprob_gap_mean", "logprob_gap_max", "tool_error_rate",
                "parse_error_rate", "turns_per_episode", "sampled_tokens_per_episode", "prefill_s", "decode_s",
                "tools_s_sum", "grade_s_sum", "train_s", "weight_sync_s", "loss_tokens"):
        assert key in train[0], key
    assert any(k.startswith("stop_") for k in train[0])
    # the sampler's own stage seconds, this step's only (the generator's counters since its last reset)
    assert all(0 < m["prefill_s"] + m["decode_s"] <= m["rollout_s"] for m in train)
    # tree training: the group's prompt once, each row's own tokens; fewer positions than 2 plain rows
    assert all(m["batch_prefix_tree"] == 1 for m in train)
    assert all(m["batch_positions"] < m["batch_rows"] * summary["prompt_tokens"] for m in train)
    assert all(m["fault_frac"] == 0 for m in lines), "an episode failed: see episodes.jsonl's errors"
    # the sampler and the trainer agree on the sampled tokens' log-probs (same weights, f32)
    assert train[0]["logprob_gap_max"] < 1e-3
    assert list((out / "tensorboard").iterdir())
    assert (out / "reward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 4 + 2 * 2  # 2 steps x 2 rollouts, 2 evaluations x 1 task x 2 samples
    assert sorted((out / "checkpoints").iterdir())


def test_the_rollouts_can_run_on_the_continuous_engine(tmp_path, capsys, monkeypatch):
    """``--set generator=engine``: the pool generates through SlotEngine (each episode's keys and values kept
    between turns, the shared prompt once in the prefix region), the trainer's log-probs agree with the engine's,
    and the new weights reach the engine after the update (its second step's tokens come from them)."""
    out = tmp_path / "run"
    summary = _main([*FAST, "--set", "generator=engine", "--set", "engine.slots=2", "--out", str(out)],
                    capsys, monkeypatch)
    assert summary["grpo_steps"] == 2 and summary["episodes"] == 2 * 1 * 2
    saved = json.loads((out / "config.json").read_text())
    assert saved["generator"] == "engine" and saved["engine"]["slots"] == 2
    train = [m for m in read_metrics(out / "metrics.jsonl") if m["split"] == "train"]
    assert [m["step"] for m in train] == [1, 2]
    assert all(m["fault_frac"] == 0 for m in train), "an episode failed: see episodes.jsonl's errors"
    assert all(m["prefill_s"] > 0 and m["decode_s"] > 0 for m in train)  # the engine's own counters
    # the engine and the trainer agree on the sampled tokens' log-probs (same weights, f32): also at step 2,
    # after the update, so the engine generated with the new weights
    assert all(m["logprob_gap_max"] < 1e-3 for m in train)


def test_an_engine_longer_than_the_runs_context_is_refused(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match=r"engine\.max_len"):
        _main([*FAST, "--set", "generator=engine", "--set", "rollout.context_limit=4096", "--out",
               str(tmp_path / "run")], capsys, monkeypatch)


def _checkpoint_params(run: Path, step: int) -> dict[str, np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    path = (run / "checkpoints" / str(step) / "state").absolute()
    checkpointer = ocp.StandardCheckpointer()
    # restored onto this process's first device, whatever mesh (or processes) saved it
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    meta = checkpointer.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta.tree
                          if hasattr(meta, "tree") else meta)
    tree = checkpointer.restore(path, target)
    flat: dict[str, np.ndarray] = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}/{k}", v)
        else:
            flat[prefix] = np.asarray(node)

    walk("", tree["params"])
    return flat


@pytest.mark.slow
def test_a_run_killed_and_resumed_equals_the_run_straight_through(tmp_path, capsys, monkeypatch):
    straight = tmp_path / "straight"
    _main([*FAST, "--out", str(straight)], capsys, monkeypatch)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "experiments/grpo_corecraft.py", *FAST, "--out", str(killed)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 400
    try:
        while not (killed / "checkpoints" / "1").is_dir():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint of step 1"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9: nothing gets to clean up
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (killed / "checkpoints" / "2").exists(), "the run finished before it was killed; nothing resumed"

    _main(["--resume", str(killed)], capsys, monkeypatch)
    a, b = _checkpoint_params(straight, 2), _checkpoint_params(killed, 2)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # bitwise on CPU
    drawn = [{(e["step"], e["task_id"]) for e in map(json.loads, (run / "episodes.jsonl").read_text().splitlines())
              if e["split"] == "train"} for run in (straight, killed)]
    assert drawn[0] == drawn[1]
    steps = [m["step"] for m in read_metrics(killed / "metrics.jsonl") if m["split"] == "train"]
    assert steps[-1] == 2


@pytest.mark.slow
def test_a_resumed_run_logs_each_step_once(tmp_path, capsys, monkeypatch):
    """A run killed after step 2's episodes, metrics and evaluation were logged but before step 2's checkpoint
    was saved: resumed from step 1's checkpoint, its episodes.jsonl and metrics.jsonl are the uninterrupted
    run's, each step once (the lines written after the checkpoint are cut before the step runs again)."""
    straight = tmp_path / "straight"
    _main(["--preset", "tiny", "--out", str(straight)], capsys, monkeypatch)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "2")  # the kill came before step 2's checkpoint
    summary = _main(["--resume", str(resumed)], capsys, monkeypatch)
    assert summary["grpo_steps"] == 1

    def episodes(run: Path) -> list[tuple]:
        return [(e["split"], e["step"], e["slot"], e["task_id"], e["reward"], e["sampled_tokens"])
                for e in map(json.loads, (run / "episodes.jsonl").read_text().splitlines())]

    def metrics(run: Path) -> list[tuple]:
        return [(m["split"], m["step"], m["reward_mean"], m["episodes"]) for m in read_metrics(run / "metrics.jsonl")]

    assert episodes(resumed) == episodes(straight)
    assert metrics(resumed) == metrics(straight)
    assert [(m[0], m[1]) for m in metrics(resumed)] == [("eval", 0), ("train", 1), ("train", 2), ("eval", 2)]


def test_a_grpo_step_over_the_http_fleet_grades_on_the_trainer_route(tmp_path, capsys, monkeypatch):
    """`env.transport=http`: the run starts `corecraft serve` on loopback with an agent token and a separate
    trainer token; episodes' tools go over streamable HTTP and grading over the trainer-only route."""
    out = tmp_path / "http"
    summary = _main([*FAST, "--set", "learner.steps=1", "--set", "env.transport=http", "--out", str(out)],
                    capsys, monkeypatch)
    assert summary["grpo_steps"] == 1 and summary["episodes"] == 2
    (train,) = [m for m in read_metrics(out / "metrics.jsonl") if m["split"] == "train"]
    assert train["fault_frac"] == 0, (out / "episodes.jsonl").read_text()[:2000]
    log = (out / "corecraft-serve.log").read_text()
    assert "listening on http://127.0.0.1:" in log


@pytest.mark.slow
def test_the_same_command_runs_on_an_8x4_mesh_of_host_devices(tmp_path):
    """`--mesh 8x4` on CPU: 32 fake host devices, the same code (a fresh process: device counts are set at start)."""
    proc = subprocess.run([sys.executable, "experiments/grpo_corecraft.py", *FAST, "--mesh", "8x4", "--set",
                           "learner.steps=1", "--out", str(tmp_path / "mesh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["devices"] == 32 and summary["mesh"] == "8x4" and summary["grpo_steps"] == 1
    assert summary["eval_pass_rate"] is None  # no evaluation asked for: null, not NaN


def test_a_step_whose_episodes_all_fail_to_start_is_skipped_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    """Every episode faults (its tool fleet refuses connections): no update, the step still counted and
    checkpointed by its own number, the next step runs, and the faults are in the metrics."""
    monkeypatch.setenv("CORECRAFT_TEST_TRAINER_TOKEN", "t0k3n")
    out = tmp_path / "down"
    summary = _main([*FAST, "--set", "env.transport=http", "--set", "env.url=http://127.0.0.1:9/mcp",
                     "--set", "env.trainer_token_env=CORECRAFT_TEST_TRAINER_TOKEN",
                     "--set", "rollout.start_timeout_s=5", "--out", str(out)], capsys, monkeypatch)
    assert summary["grpo_steps"] == 2 and summary["episodes"] == 4
    train = [m for m in read_metrics(out / "metrics.jsonl") if m["split"] == "train"]
    assert [m["step"] for m in train] == [1, 2]
    assert all(m["fault_frac"] == 1.0 and m["stop_start_failed_frac"] == 1.0 and m["update_skipped"] == 1.0
               for m in train)
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [1, 2]
