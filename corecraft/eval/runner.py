"""Evaluating a model on a task set: k runs per task, each on its own fork, graded, appended to runs.jsonl.

The output directory is the run's whole state: ``config.json`` (what was asked), ``runs.jsonl`` (one line per
finished run: trajectory, verdicts, score), ``summary.json`` (metrics). Starting again with the same
directory resumes: runs already in ``runs.jsonl`` are not redone. Runs whose model or judge endpoint failed
(after retries) are not recorded, so a resume retries them; each failure is reported as it happens (one line
on stderr) and counted in the summary (``incomplete_runs``, ``failure_reasons``). A run whose prompt outgrew
the model's context is not such a failure: it is graded and recorded with stop reason ``context`` (so the
metrics cover every run, and a resume does not retry it). A resume must ask for the same evaluation (model,
endpoint, split, judge, step limit, temperature, prompt form, tool choice, answer length): otherwise runs of
two setups would be mixed in one summary, so it is refused (more samples, a task filter or --limit may
change). A directory with no recorded run yet takes the new settings (a wrong --base-url is fixed by rerunning).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from corecraft.episode.chat import ChatClient, ChatConfig, ChatError
from corecraft.episode.definition import EpisodeSpec, company_policy
from corecraft.eval.agent import AgentRun, ToolChoice, run_agent_detailed
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
    tool_choice: ToolChoice | None = "auto"  # sent with every request (None: not sent; some servers then drop tools)


# What a resumed evaluation must share with the one that wrote the directory.
RESUME_KEYS = ("model", "base_url", "split", "judge_mode", "judge_model", "judge_base_url", "max_steps",
               "temperature", "policy_in_context", "prompt_form", "tool_choice", "max_tokens")


def run_config(tasks: Sequence[Task], world: World, cfg: EvalConfig) -> dict[str, Any]:
    """config.json: what was asked (the RESUME_KEYS and the rest, for the report)."""
    return {
        "model": cfg.model.model, "base_url": cfg.model.base_url, "split": cfg.split, "k": cfg.k,
        "max_steps": cfg.episode.max_turns, "temperature": cfg.model.temperature, "judge_mode": cfg.judge_mode,
        "judge_model": cfg.judge.model if cfg.judge else None,
        "judge_base_url": cfg.judge.base_url if cfg.judge else None,
        "policy_in_context": cfg.episode.policy_in_context, "prompt_form": cfg.episode.prompt_form,
        "tool_choice": cfg.tool_choice, "max_tokens": cfg.model.max_tokens,
        "tasks": len(tasks), "world": world.meta, "episode": cfg.episode.to_json(),
    }


def check_resume(out: Path, config: dict[str, Any]) -> None:
    """Refuses (one line) to add runs to a directory whose recorded runs were made with other settings."""
    path = out / CONFIG_FILE
    recorded = read_runs(out)
    if not path.exists():
        if recorded:
            raise ResumeMismatch(f"{out}: has {RUNS_FILE} but no {CONFIG_FILE}, so how its runs were made is "
                                 "unknown; use a new --out")
        return
    if not recorded:
        return  # nothing to mix with: the new settings replace the old ones (e.g. a corrected --base-url)
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResumeMismatch(f"{path}: unreadable ({exc}); use a new --out") from None
    diffs = [f"{key} {old.get(key)!r} -> {config[key]!r}" for key in RESUME_KEYS if old.get(key) != config[key]]
    if diffs:
        raise ResumeMismatch(f"{out} holds runs of a different evaluation ({'; '.join(diffs)}): use a new --out, or "
                             "the same settings to resume")


def run_record(task: Task, sample: int, run: AgentRun, score: Any, elapsed_s: float) -> dict[str, Any]:
    """One line of runs.jsonl. Tool calls: ``n_tool_calls`` the model made, ``n_tool_calls_refused`` of them
    never reached a tool (unknown tool, arguments not a JSON object), ``n_tool_calls_executed`` did, and
    ``n_tool_errors`` of those the tool answered with an error. Tokens as the server counted them (None where
    it did not say): the opening prompt, the largest prompt of the run, and all answers together."""
    trajectory = run.trajectory
    calls = trajectory.tool_calls
    refused = sum(c.refused for c in calls)
    return {
        "task_id": task.id, "sample": sample, "family": task.family, "category": task.category,
        "difficulty": task.difficulty, "split": task.split, "request": task.request,
        "criteria": [{"id": c.id, "kind": c.kind, "axis": c.axis, "text": c.text} for c in task.criteria],
        "reward": score.reward, "passed": score.passed, "score": score.to_json(),
        "n_tool_calls": len(calls), "n_tool_calls_executed": len(calls) - refused, "n_tool_calls_refused": refused,
        "n_tool_errors": sum(c.is_error and not c.refused for c in calls), "turns": trajectory.turns,
        "prompt_tokens": run.prompt_tokens, "max_prompt_tokens": run.max_prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "stop_reason": trajectory.stop_reason, "stop_detail": run.stop_detail,
        "trajectory": trajectory.to_json(), "elapsed_s": round(elapsed_s, 3),
    }


async def _one_run(task: Task, sample: int, world: World, chat: ChatClient, judge: LLMJudge | None,
                   cfg: EvalConfig, policy: str) -> dict[str, Any]:
    start = time.monotonic()
    fork = world.fork()
    failure: ChatError | None = None
    try:
        async with mcp_episode(fork.conn) as tools:
            try:
                run = await run_agent_detailed(chat, tools, task.request, policy=policy, spec=cfg.episode,
                                               tool_choice=cfg.tool_choice)
            except ChatError as exc:  # caught inside the MCP session, before anyio wraps it in a group
                failure = exc
        if failure is not None:
            raise failure
        score = await grade(task, fork.conn, run.trajectory, judge=judge, mode=cfg.judge_mode)
    finally:
        fork.close()
    return run_record(task, sample, run, score, time.monotonic() - start)


def _stderr(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def failure_reasons(failures: Sequence[str]) -> dict[str, int]:
    """How many failed runs gave each reason (the failure lines without their ``task#sample: `` prefix)."""
    return dict(Counter(f.split(": ", 1)[-1] for f in failures).most_common())


async def evaluate(tasks: Sequence[Task], world: World, cfg: EvalConfig, out: Path, *,
                   progress: bool = True, on_record: Callable[[dict[str, Any]], None] | None = None,
                   log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Runs every (task, sample) not yet in ``out/runs.jsonl``; returns the summary over all recorded runs.

    ``log`` gets one line per run that failed at an endpoint (not recorded) and per run stopped by the model's
    context (recorded), as it happens."""
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
    passed = context = 0
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
            nonlocal passed, consecutive, context
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
                    log(f"run failed (not recorded; a rerun retries it): {failures[-1]}")
                    bar.update(1)
                    bar.set_postfix(passed=passed, context=context, failed_endpoint=len(failures))
                    continue
                consecutive = 0
                async with lock:
                    with (out / RUNS_FILE).open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                    passed += record["passed"]
                    if record["stop_reason"] == "context":
                        context += 1
                        log(f"run stopped at the model's context (graded, {'passed' if record['passed'] else 'failed'}"
                            f"): {task.id}#{sample} after {record['turns']} turns: {record['stop_detail']}")
                    bar.update(1)
                    bar.set_postfix(passed=passed, context=context, failed_endpoint=len(failures))
                if on_record:
                    on_record(record)

        try:
            await asyncio.gather(*(worker() for _ in range(max(1, cfg.concurrency))))
        finally:
            bar.close()
            if judge_client:
                await judge_client.close()
    if consecutive >= give_up_after and not queue.empty():
        # Stopped early: runs were left unstarted. (When the queue ran dry, every run was tried; the summary
        # below says how many failed, and nothing is claimed about stopping.)
        raise EndpointDown(f"stopped after {consecutive} runs in a row failed at the model or judge endpoint, with "
                           f"{queue.qsize()} of {len(todo)} runs not started (finished runs are kept; rerun to "
                           f"resume). Last error: {failures[-1]}")
    wanted = {t.id for t in tasks}
    records = [r for r in read_runs(out) if r["task_id"] in wanted and r["sample"] < cfg.k]
    summary = summarize(records, cfg.k)
    summary["incomplete_runs"] = len(failures)
    summary["endpoint_failures"] = failures[:50]
    summary["failure_reasons"] = failure_reasons(failures)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
