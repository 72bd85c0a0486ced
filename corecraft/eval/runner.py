"""Evaluating a model on a task set: k runs per task, each on its own fork, graded, appended to runs.jsonl.

The output directory is the run's whole state: ``config.json`` (what was asked), ``runs.jsonl`` (one line per
finished run: trajectory, verdicts, score), ``summary.json`` (metrics). Starting again with the same
directory resumes: runs already in ``runs.jsonl`` are not redone. Runs whose model endpoint failed (after
retries) are not recorded, so a resume retries them; their count is reported. A resume must ask for the same
evaluation (model, endpoint, split, judge, step limit, temperature, policy in context): otherwise runs of two
setups would be mixed in one summary, so it is refused (more samples, a task filter or --limit may change).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from corecraft.episode.chat import ChatClient, ChatConfig, ChatError
from corecraft.episode.definition import EpisodeSpec, company_policy
from corecraft.eval.agent import run_agent
from corecraft.eval.episode import mcp_episode
from corecraft.eval.metrics import summarize
from corecraft.eval.records import CONFIG_FILE, RUNS_FILE, SUMMARY_FILE, read_runs, repair_runs
from corecraft.judge.grader import Mode, grade
from corecraft.judge.llm import JudgeError, LLMJudge
from corecraft.tasks.model import Task
from corecraft.world.world import World


class EndpointDown(ChatError):
    """Too many runs in a row failed at the endpoint: the evaluation stopped early."""


class ResumeMismatch(ValueError):
    """The output directory holds runs of a differently configured evaluation."""


@dataclass(frozen=True)
class EvalConfig:
    model: ChatConfig
    k: int = 3
    concurrency: int = 4
    judge: ChatConfig | None = None
    judge_mode: Mode = "hybrid"
    episode: EpisodeSpec = field(default_factory=EpisodeSpec)  # the prompt form and limits, shared with training (corecraft.episode)
    split: str | None = None  # recorded, so a resume on another split is refused


# What a resumed evaluation must share with the one that wrote the directory.
RESUME_KEYS = ("model", "base_url", "split", "judge_mode", "judge_model", "judge_base_url", "max_steps",
               "temperature", "policy_in_context", "prompt_form")


def run_config(tasks: Sequence[Task], world: World, cfg: EvalConfig) -> dict[str, Any]:
    """config.json: what was asked (the RESUME_KEYS and the rest, for the report)."""
    return {
        "model": cfg.model.model, "base_url": cfg.model.base_url, "split": cfg.split, "k": cfg.k,
        "max_steps": cfg.episode.max_turns, "temperature": cfg.model.temperature, "judge_mode": cfg.judge_mode,
        "judge_model": cfg.judge.model if cfg.judge else None,
        "judge_base_url": cfg.judge.base_url if cfg.judge else None,
        "policy_in_context": cfg.episode.policy_in_context, "prompt_form": cfg.episode.prompt_form,
        "tasks": len(tasks), "world": world.meta, "episode": cfg.episode.to_json(),
    }


def check_resume(out: Path, config: dict[str, Any]) -> None:
    """Refuses (one line) to add runs to a directory whose recorded runs were made with other settings."""
    path = out / CONFIG_FILE
    if not path.exists():
        if read_runs(out):
            raise ResumeMismatch(f"{out}: has {RUNS_FILE} but no {CONFIG_FILE}, so how its runs were made is "
                                 "unknown; use a new --out")
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResumeMismatch(f"{path}: unreadable ({exc}); use a new --out") from None
    diffs = [f"{key} {old.get(key)!r} -> {config[key]!r}" for key in RESUME_KEYS if old.get(key) != config[key]]
    if diffs:
        raise ResumeMismatch(f"{out} holds runs of a different evaluation ({'; '.join(diffs)}): use a new --out, or "
                             "the same settings to resume")


def run_record(task: Task, sample: int, trajectory: Any, score: Any, elapsed_s: float) -> dict[str, Any]:
    return {
        "task_id": task.id, "sample": sample, "family": task.family, "category": task.category,
        "difficulty": task.difficulty, "split": task.split, "request": task.request,
        "criteria": [{"id": c.id, "kind": c.kind, "axis": c.axis, "text": c.text} for c in task.criteria],
        "reward": score.reward, "passed": score.passed, "score": score.to_json(),
        "n_tool_calls": len(trajectory.tool_calls), "turns": trajectory.turns,
        "stop_reason": trajectory.stop_reason, "trajectory": trajectory.to_json(), "elapsed_s": round(elapsed_s, 3),
    }


async def _one_run(task: Task, sample: int, world: World, chat: ChatClient, judge: LLMJudge | None,
                   cfg: EvalConfig, policy: str) -> dict[str, Any]:
    start = time.monotonic()
    fork = world.fork()
    failure: ChatError | None = None
    try:
        async with mcp_episode(fork.conn) as tools:
            try:
                trajectory = await run_agent(chat, tools, task.request, policy=policy, spec=cfg.episode)
            except ChatError as exc:  # caught inside the MCP session, before anyio wraps it in a group
                failure = exc
        if failure is not None:
            raise failure
        score = await grade(task, fork.conn, trajectory, judge=judge, mode=cfg.judge_mode)
    finally:
        fork.close()
    return run_record(task, sample, trajectory, score, time.monotonic() - start)


async def evaluate(tasks: Sequence[Task], world: World, cfg: EvalConfig, out: Path, *,
                   progress: bool = True, on_record: Callable[[dict[str, Any]], None] | None = None,
                   ) -> dict[str, Any]:
    """Runs every (task, sample) not yet in ``out/runs.jsonl``; returns the summary over all recorded runs."""
    out.mkdir(parents=True, exist_ok=True)
    config = run_config(tasks, world, cfg)
    check_resume(out, config)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    repair_runs(out)
    done = {(r["task_id"], r["sample"]) for r in read_runs(out)}
    todo = [(t, s) for t in tasks for s in range(cfg.k) if (t.id, s) not in done]
    with world.reader() as reader:
        policy = company_policy(reader.conn) if cfg.episode.policy_in_context else ""
    failures: list[str] = []
    # A dead or misconfigured endpoint fails every run: stop instead of grinding through the task set.
    give_up_after = max(5, 2 * cfg.concurrency)
    lock = asyncio.Lock()
    bar = tqdm(total=len(todo), desc=f"eval {cfg.model.model}", unit="run", disable=not progress,
               initial=0, dynamic_ncols=True)
    passed = 0
    async with ChatClient(cfg.model) as chat:
        judge_client = ChatClient(cfg.judge) if cfg.judge else None
        judge = LLMJudge(judge_client) if judge_client else None
        if judge_client:
            await judge_client.__aenter__()
        queue: asyncio.Queue[tuple[Task, int]] = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)

        consecutive = 0

        async def worker() -> None:
            nonlocal passed, consecutive
            while consecutive < give_up_after:
                try:
                    task, sample = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    record = await _one_run(task, sample, world, chat, judge, cfg, policy)
                except (ChatError, JudgeError) as exc:
                    failures.append(f"{task.id}#{sample}: {exc}")
                    consecutive += 1
                    bar.update(1)
                    continue
                consecutive = 0
                async with lock:
                    with (out / RUNS_FILE).open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                    passed += record["passed"]
                    bar.update(1)
                    bar.set_postfix(passed=passed, failed_endpoint=len(failures))
                if on_record:
                    on_record(record)

        try:
            await asyncio.gather(*(worker() for _ in range(max(1, cfg.concurrency))))
        finally:
            bar.close()
            if judge_client:
                await judge_client.close()
    if consecutive >= give_up_after:
        raise EndpointDown(f"stopped after {consecutive} runs in a row failed at the model or judge endpoint "
                           f"(finished runs are kept; rerun to resume). Last error: {failures[-1]}")
    wanted = {t.id for t in tasks}
    records = [r for r in read_runs(out) if r["task_id"] in wanted and r["sample"] < cfg.k]
    summary = summarize(records, cfg.k)
    summary["incomplete_runs"] = len(failures)
    summary["endpoint_failures"] = failures[:50]
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
