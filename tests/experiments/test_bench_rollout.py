"""bench_rollout on small numbers: real episodes (forks, the MCP SDK, the grader), the figures it reports, no leaks.

Timings are never asserted (the machine is shared); what is asserted is that every episode ran and was graded,
that no concurrent episode saw another's write, and that the leak detector does see a write that is shared.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments" / "benchmarks"))

import bench_rollout  # noqa: E402

from corecraft.env.environment import CoreCraftEnv  # noqa: E402
from corecraft.episode import EpisodeSpec  # noqa: E402
from corecraft.tasks.store import load_task_set  # noqa: E402
from rl_jax.rollout import McpTarget  # noqa: E402

KEYS = ("env_cpu_ms_per_episode", "env_cpu_ms_runs", "split_cpu_ms", "grading_cpu_ms", "wall_ms_per_episode",
        "concurrent_episodes", "concurrent_graded", "cross_episode_leaks", "own_write_missing", "transport",
        "tool_calls_per_episode", "cpu_target_met", "concurrency_target_met", "machine")


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return bench_rollout.run_benchmark(bench_rollout.parse_args(
        ["--runs", "2", "--episodes", "6", "--warmup", "3", "--concurrent", "16", "--profile", "3"]))


def test_the_benchmark_reports_every_figure_with_all_episodes_graded_and_no_leaks(result):
    assert all(k in result for k in KEYS), sorted(set(KEYS) - set(result))
    assert result["transport"] == "in_process" and result["tool_calls_per_episode"] == 6
    assert len(result["env_cpu_ms_runs"]) == 2 and result["env_cpu_ms_per_episode"] > 0
    assert set(result["split_cpu_ms"]) == set(bench_rollout.PHASES)
    # the oracle's calls with its answer pass their task's whole rubric: grading ran real checks on real state
    assert result["sequential_passed"] == result["sequential_episodes"] == 12
    assert result["concurrent_episodes"] == result["concurrent_graded"] == result["concurrent_passed"] == 16
    assert result["cross_episode_leaks"] == 0 and result["own_write_missing"] == 0
    assert result["concurrent_errors"] == 0, result["first_error"]
    assert result["reuse_episodes"] == 16 and result["reuse_leaks"] == 0  # on forks given back by others
    assert result["profile"]["share_by_package"] and result["profile"]["top_cumulative_ms_per_episode"]
    assert result["no_mcp_floor_cpu_ms_per_episode"] > 0 and result["no_mcp_pooled_floor_cpu_ms_per_episode"] > 0
    assert len(result["machine"]["loadavg_start"]) == 3
    json.dumps(result)  # one JSON line


def test_the_last_stdout_line_is_the_json_result(capsys):
    out = bench_rollout.main(["--runs", "1", "--episodes", "2", "--warmup", "0", "--skip-concurrent", "--no-floor"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == out and "concurrent_episodes" not in out


def test_the_leak_detector_counts_a_write_from_another_episode():
    """Control: two episodes' stamped writes on ONE world (what a leak would look like) are seen, on read-back
    and in the graded state, so a 0 from the concurrent phase means something."""
    base = load_task_set(None)
    task_set = bench_rollout.with_stamped_tasks(base, 2)
    env = CoreCraftEnv(task_set, EpisodeSpec(prompt_form="signatures"), target=McpTarget)
    plan = bench_rollout.leak_plan(task_set, bench_rollout.task_pool(task_set, env, "six"))
    mine, other = bench_rollout.stamped_task(plan, 0), bench_rollout.stamped_task(plan, 1)
    shared = bench_rollout.Script(mine.task, other.calls + mine.calls, mine.response)

    async def go() -> tuple[Any, Any]:
        async with env:
            alone = await bench_rollout.leak_episode(env, plan, mine, 0, "alone")
            graded, text = await bench_rollout.scripted_episode(env, shared, "shared", readback=plan.readback)
            return alone, bench_rollout.inspect(0, graded, text)

    alone, leaked = asyncio.run(go())
    assert alone.graded and alone.own_seen and alone.graded_own and not alone.foreign_seen
    assert not alone.graded_foreign and alone.passed
    assert leaked.foreign_seen == (1,) and leaked.graded_foreign and not leaked.passed
    summary = bench_rollout.leak_summary([alone, leaked], plan, 1.0, 1.0)
    assert summary["cross_episode_leaks"] == 1 and summary["concurrent_graded"] == 2


def test_over_http_the_episodes_are_graded_by_the_server_with_no_leaks():
    """The same episodes against a `corecraft serve --transport http` subprocess (grading on its trainer route)."""
    out = bench_rollout.run_benchmark(bench_rollout.parse_args(
        ["--transport", "http", "--runs", "1", "--episodes", "2", "--warmup", "1", "--concurrent", "8"]))
    assert out["transport"] == "http" and out["server_cpu_ms_per_episode"] > 0
    assert out["concurrent_episodes"] == 8 and out["concurrent_errors"] == 0, out["first_error"]
    assert out["cross_episode_leaks"] == 0 and out["own_write_missing"] == 0
    if bench_rollout.trainer_grading_supported():  # the server's trainer-only grading route
        assert "http_grading" not in out
        assert out["sequential_passed"] == out["sequential_episodes"] == 2
        assert out["concurrent_graded"] == out["concurrent_passed"] == 8
    else:  # a server without it: the episodes run ungraded, and the run says so
        assert out["http_grading"].startswith("skipped") and out["concurrent_graded"] == 0
