"""``corecraft judge agreement DIR``: measure an LLM judge against the deterministic checks of recorded runs."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from corecraft.cli import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("judge", help="tools for the rubric judge")
    sub = p.add_subparsers(dest="judge_command", metavar="ACTION", required=True)
    a = sub.add_parser("agreement", help="re-grade an evaluation's runs with an LLM judge; report its agreement "
                                         "with the deterministic checks",
                       description="Sends every criterion of every recorded run (DIR/runs.jsonl from `corecraft "
                                   "eval`) to an OpenAI-compatible judge model and compares its verdicts with the "
                                   "deterministic ones. Writes DIR/judge_agreement.json and prints it.")
    a.add_argument("dir", type=Path)
    a.add_argument("--judge-base-url", required=True)
    a.add_argument("--judge-model", required=True)
    a.add_argument("--judge-api-key-env", default=None, metavar="VAR")
    a.add_argument("--concurrency", type=int, default=8)
    a.add_argument("--timeout", type=float, default=120.0, help="seconds per judge request")
    a.add_argument("--limit", type=int, default=None, help="only the first N runs")
    a.set_defaults(handler=run_agreement)


def run_agreement(args: argparse.Namespace) -> int:
    from corecraft.eval.records import read_runs
    from corecraft.judge.agreement import agreement_stats, regrade
    from corecraft.judge.chat import ChatClient, ChatConfig, ChatError
    from corecraft.judge.llm import LLMJudge

    runs = read_runs(args.dir)[: args.limit]
    if not runs:
        raise CliError(f"{args.dir}: no runs.jsonl with finished runs")
    if args.concurrency < 1:
        raise CliError("--concurrency must be at least 1")
    cfg = ChatConfig(base_url=args.judge_base_url, model=args.judge_model, api_key_env=args.judge_api_key_env,
                     concurrency=args.concurrency, timeout_s=args.timeout)

    async def go() -> list:
        async with ChatClient(cfg) as client:
            return await regrade(runs, LLMJudge(client))

    try:
        graded = asyncio.run(go())
    except ChatError as exc:
        raise CliError(str(exc)) from None
    stats = agreement_stats(graded) | {"judge_model": args.judge_model}
    (args.dir / "judge_agreement.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    print(json.dumps(stats, sort_keys=True))
    return 0
