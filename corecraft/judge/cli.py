"""``corecraft judge agreement DIR``: measure an LLM judge against the deterministic checks of recorded runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from corecraft.cli import CliError

RESULTS_FILE = "judge_agreement.jsonl"  # one line per re-graded run, appended as results come in
STATS_FILE = "judge_agreement.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("judge", help="tools for the rubric judge")
    sub = p.add_subparsers(dest="judge_command", metavar="ACTION", required=True)
    a = sub.add_parser("agreement", help="re-grade an evaluation's runs with an LLM judge; report its agreement "
                                         "with the deterministic checks",
                       description="Sends every criterion of every recorded run (DIR/runs.jsonl from `corecraft "
                                   "eval`) to an OpenAI-compatible judge model and compares its verdicts with the "
                                   f"deterministic ones. Each run's verdicts are appended to DIR/{RESULTS_FILE} "
                                   "as they come in, so an interrupted re-grading resumes where it stopped (runs "
                                   f"the judge failed on are retried); the summary goes to DIR/{STATS_FILE} and "
                                   "stdout.")
    a.add_argument("dir", type=Path)
    a.add_argument("--judge-base-url", required=True)
    a.add_argument("--judge-model", required=True)
    a.add_argument("--judge-api-key-env", default=None, metavar="VAR")
    a.add_argument("--concurrency", type=int, default=8)
    a.add_argument("--timeout", type=float, default=120.0, help="seconds per judge request")
    a.add_argument("--limit", type=int, default=None, help="only the first N runs")
    a.add_argument("--fresh", action="store_true", help=f"discard DIR/{RESULTS_FILE} and re-grade every run")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    a.set_defaults(handler=run_agreement)


def _key(record: dict[str, Any]) -> tuple[str, int]:
    return str(record["task_id"]), int(record.get("sample", 0))


def _recorded(path: Path, judge: dict[str, str]) -> dict[tuple[str, int], dict[str, Any]]:
    """The results already in the JSONL (the latest per run; a line cut by an interruption is skipped). They must
    come from this judge: mixing two judges' verdicts would measure neither."""
    from corecraft.eval.records import read_jsonl, repair_jsonl

    repair_jsonl(path)
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for record in read_jsonl(path):
        other = {k: record.get(k) for k in judge}
        if other != judge:
            raise CliError(f"{path} holds verdicts of another judge ({other}); pass --fresh to start over")
        latest[_key(record)] = record
    return latest


def run_agreement(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from corecraft.episode.chat import ChatClient, ChatConfig, ChatError
    from corecraft.eval.records import read_runs
    from corecraft.judge.agreement import agreement_stats, regrade
    from corecraft.judge.llm import LLMJudge

    runs = read_runs(args.dir)[: args.limit]
    if not runs:
        raise CliError(f"{args.dir}: no runs.jsonl with finished runs")
    if args.concurrency < 1:
        raise CliError("--concurrency must be at least 1")
    cfg = ChatConfig(base_url=args.judge_base_url, model=args.judge_model, api_key_env=args.judge_api_key_env,
                     concurrency=args.concurrency, timeout_s=args.timeout)
    judge = {"judge_model": args.judge_model, "judge_base_url": args.judge_base_url}
    path = args.dir / RESULTS_FILE
    if args.fresh:
        path.unlink(missing_ok=True)
    done = _recorded(path, judge)
    todo = [r for r in runs if "llm" not in done.get(_key(r), {})]
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc=f"judge {args.judge_model}", unit="run",
               file=sys.stderr, disable=args.no_progress, dynamic_ncols=True)

    def record(result: dict[str, Any]) -> None:
        line = judge | result
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        done[_key(result)] = line
        bar.update(1)

    async def go() -> None:
        async with ChatClient(cfg) as client:
            await regrade(todo, LLMJudge(client), on_result=record)

    try:
        asyncio.run(go())
    except ChatError as exc:
        raise CliError(str(exc)) from None
    finally:
        bar.close()
    graded = [done[_key(r)] for r in runs if _key(r) in done]
    stats = agreement_stats(graded) | {"judge_model": args.judge_model, "regraded_now": len(todo),
                                       "resumed_from_file": len(runs) - len(todo)}
    (args.dir / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True))
    print(json.dumps(stats, sort_keys=True))
    return 0
