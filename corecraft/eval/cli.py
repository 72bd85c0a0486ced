"""``corecraft eval`` (benchmark any OpenAI-compatible model on the task set) and ``corecraft report DIR``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from corecraft.cli import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a model (any OpenAI-compatible chat API with tool calling) on the task set",
        description="Runs an agent loop against the model on every task of a split, k times, each run on its "
                    "own fork of the task world through the MCP tools; writes runs.jsonl and summary.json to "
                    "--out. Re-running with the same --out resumes without redoing finished runs; it is refused "
                    "when the model, endpoint, split, judge, --max-steps, --temperature, --prompt-form, "
                    "--tool-choice or --max-tokens differ from those of the recorded runs (--k may grow). A run "
                    "that fails at an endpoint is reported as it happens, not recorded (a rerun retries it) and "
                    "summarised at the end; a run whose prompt outgrows the model's context is graded and "
                    "recorded with stop reason 'context'.")
    p.add_argument("--base-url", required=True, help="chat API base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True, help="model name sent to the API")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="environment variable holding the API key (sent as a bearer token)")
    p.add_argument("--split", choices=["train", "eval"], default="eval")
    p.add_argument("--k", type=int, default=3, help="runs per task (for Pass@k and Pass^k; default 3)")
    p.add_argument("--concurrency", type=int, default=4, help="runs in flight at once (default 4)")
    p.add_argument("--max-steps", type=int, default=200, help="model turns per run (default 200)")
    p.add_argument("--out", required=True, type=Path, help="output directory (resumable)")
    p.add_argument("--tasks", type=Path, default=None, help="task set directory (default: the shipped set)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N tasks of the split")
    p.add_argument("--family", action="append", default=None, help="only tasks of this family (repeatable)")
    p.add_argument("--difficulty", action="append", choices=["easy", "medium", "hard"], default=None,
                   help="only tasks of this difficulty (repeatable)")
    p.add_argument("--task", action="append", default=None, metavar="TASK_ID",
                   help="only this task (repeatable; any split)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per model request (default 300)")
    p.add_argument("--retries", type=int, default=4,
                   help="retries per model request on timeouts, 429 and 5xx, with backoff (default 4)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="most tokens per model answer (sent as max_tokens; default: the server's)")
    p.add_argument("--tool-choice", choices=["auto", "required", "none", "omit"], default="auto",
                   help="tool_choice sent with every request (default auto; some servers drop the tools without "
                        "it). required: a tool call every turn, so a run ends when the model answers in text "
                        "anyway or at --max-steps; none: tools listed but not callable (a baseline); omit: not sent")
    p.add_argument("--judge-base-url", default=None, help="LLM judge endpoint (for LLM criteria / llm_all)")
    p.add_argument("--judge-model", default=None)
    p.add_argument("--judge-api-key-env", default=None, metavar="VAR")
    p.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per judge request (default 120)")
    p.add_argument("--judge-mode", choices=["hybrid", "llm_all"], default="hybrid",
                   help="hybrid: deterministic checks + LLM only for free-form criteria (default); llm_all: every "
                        "criterion to the LLM judge, agreement with the deterministic checks reported")
    p.add_argument("--prompt-form", choices=["full", "compact", "signatures"],
                   help="how the episode is presented (corecraft.episode): full (default: MCP schemas and the "
                        "policy in context), compact or signatures (shorter tools; the policy one search away)")
    p.add_argument("--no-policy-in-context", action="store_true",
                   help="leave the company policy out of the system prompt (same as --prompt-form compact)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_eval)

    r = subparsers.add_parser("report", help="write a self-contained HTML report of an evaluation run",
                              description="Writes DIR/report.html (or --out): summary, charts and every "
                                          "trajectory with its tool calls and per-criterion verdicts.")
    r.add_argument("dir", type=Path, help="an evaluation output directory (with runs.jsonl)")
    r.add_argument("--out", type=Path, default=None, help="HTML file to write (default DIR/report.html)")
    r.set_defaults(handler=run_report)


def run_eval(args: argparse.Namespace) -> int:
    from corecraft.episode.chat import ChatConfig, ChatError
    from corecraft.episode.definition import EpisodeSpec
    from corecraft.eval.runner import EvalConfig, ResumeMismatch, evaluate
    from corecraft.tasks.store import TaskStoreError, load_task_set

    for name, value in (("--k", args.k), ("--concurrency", args.concurrency), ("--max-steps", args.max_steps),
                        ("--max-tokens", 1 if args.max_tokens is None else args.max_tokens)):
        if value < 1:
            raise CliError(f"{name} must be at least 1 (got {value})")
    for name, value in (("--timeout", args.timeout), ("--judge-timeout", args.judge_timeout)):
        if value <= 0:
            raise CliError(f"{name} must be positive (got {value:g})")
    if bool(args.judge_base_url) != bool(args.judge_model):
        given, missing = (("--judge-base-url", "--judge-model") if args.judge_base_url
                          else ("--judge-model", "--judge-base-url"))
        raise CliError(f"{given} needs {missing} too (the LLM judge is an endpoint and a model)")
    if args.api_key_env and not os.environ.get(args.api_key_env):
        raise CliError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    if args.judge_mode == "llm_all" and not (args.judge_base_url and args.judge_model):
        raise CliError("--judge-mode llm_all needs --judge-base-url and --judge-model")
    try:
        task_set = load_task_set(args.tasks)
    except TaskStoreError as exc:
        raise CliError(str(exc)) from None
    tasks = [t for t in task_set.tasks if t.split == args.split or (args.task and t.id in args.task)]
    if args.task:
        tasks = [t for t in tasks if t.id in set(args.task)]
        unknown = set(args.task) - {t.id for t in tasks}
        if unknown:
            raise CliError(f"unknown task ids: {', '.join(sorted(unknown))}")
    if args.family:
        tasks = [t for t in tasks if t.family in set(args.family)]
    if args.difficulty:
        tasks = [t for t in tasks if t.difficulty in set(args.difficulty)]
    if args.limit is not None:
        tasks = tasks[: args.limit]
    if not tasks:
        raise CliError(f"no tasks selected (split {args.split}, families {args.family}, difficulties "
                       f"{args.difficulty})")
    model = ChatConfig(base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                       timeout_s=args.timeout, max_retries=max(0, args.retries), concurrency=args.concurrency,
                       temperature=args.temperature, max_tokens=args.max_tokens)
    judge = None
    if args.judge_base_url and args.judge_model:
        judge = ChatConfig(base_url=args.judge_base_url, model=args.judge_model,
                           api_key_env=args.judge_api_key_env, concurrency=args.concurrency,
                           max_retries=max(0, args.retries), timeout_s=args.judge_timeout)
    form = args.prompt_form or ("compact" if args.no_policy_in_context else "full")
    if args.no_policy_in_context and form == "full":
        raise CliError("--no-policy-in-context contradicts --prompt-form full (the full form has the policy in context)")
    episode = EpisodeSpec(prompt_form=form, max_turns=args.max_steps)
    cfg = EvalConfig(model=model, k=args.k, concurrency=args.concurrency, judge=judge, judge_mode=args.judge_mode,
                     episode=episode, split=args.split,
                     tool_choice=None if args.tool_choice == "omit" else args.tool_choice)
    try:
        summary = asyncio.run(evaluate(tasks, task_set.world(), cfg, args.out, progress=not args.no_progress))
    except (ChatError, ResumeMismatch) as exc:
        raise CliError(str(exc)) from None
    overall = summary["overall"]
    if summary["incomplete_runs"]:
        print(f"corecraft eval: {summary['incomplete_runs']} runs failed at the model or judge endpoint (not "
              "recorded; rerun with the same --out to retry them):", file=sys.stderr)
        for reason, n in summary["failure_reasons"].items():
            print(f"  {n} x {reason}", file=sys.stderr)
    context = (overall.get("stop_reasons") or {}).get("context", 0)
    if context:
        print(f"corecraft eval: {context} runs stopped at the model's context window (graded and recorded; "
              "try --prompt-form compact or signatures, or a model with a longer context)", file=sys.stderr)
    print(json.dumps({k: overall.get(k) for k in overall if k != "errors"} | {
        "incomplete_runs": summary["incomplete_runs"], "out": str(args.out)}, sort_keys=True))
    return 0 if not summary["incomplete_runs"] else 1


def run_report(args: argparse.Namespace) -> int:
    from corecraft.eval.report import write_report

    if not args.dir.is_dir():
        raise CliError(f"{args.dir}: not a directory")
    try:
        path = write_report(args.dir, args.out)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    print(path)
    return 0
