"""``corecraft tasks build | verify | stats``."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from corecraft.cli import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tasks", help="build, verify and describe the task set",
                              description="The task set: scenario families planted into the world, with rubrics "
                                          "and oracle solutions.")
    sub = p.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="build the task world and task files from a seed")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--scale", type=float, default=1.0, help="base world scale (default 1.0)")
    b.add_argument("--instances", type=int, default=33, help="instances per training family (default 33)")
    b.add_argument("--eval-per-family", type=int, default=4, help="of those, held back for eval (default 4)")
    b.add_argument("--held-out-instances", type=int, default=12, help="instances per held-out family (default 12)")
    b.add_argument("--family", action="append", default=None, help="only this family (repeatable; default all)")
    b.add_argument("--out", type=Path, default=None, help="directory (default: worlds/tasks/v1 in the repo)")
    b.set_defaults(handler=run_build)

    v = sub.add_parser("verify", help="run every oracle, a do-nothing agent, a polite-reply agent and every hostile "
                                      "answer",
                       description="Runs every task's oracle, a do-nothing agent and a polite-reply agent on fresh "
                                   "forks of the task world, and every hostile answer of corecraft.tasks.hostile "
                                   "(hedged, repeated, stuffed, claimed, junk and constant answers drawn from the task "
                                   "set) both without tool calls and on top of the oracle's. Exits 1 unless every "
                                   "oracle passes, no hostile answer beats its honest baseline on any criterion (an "
                                   "empty answer without calls; the oracle's answer with its calls) and none passes.")
    v.add_argument("--tasks", type=Path, default=None, help="task set directory (default: the shipped set)")
    v.add_argument("--family", action="append", default=None, help="only this family (repeatable)")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument("--no-hostile", action="store_true", help="skip the hostile answers")
    v.add_argument("--judge-base-url", default=None, help="LLM judge endpoint, for tasks with free-form criteria")
    v.add_argument("--judge-model", default=None)
    v.add_argument("--judge-api-key-env", default=None, metavar="VAR")
    v.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per judge request (default 120)")
    v.set_defaults(handler=run_verify)

    f = sub.add_parser("families", help="list the scenario families: category, difficulty (and what makes a hard one "
                                        "hard), held out, what they plant")
    f.add_argument("--json", action="store_true")
    f.set_defaults(handler=run_families)

    s = sub.add_parser("stats", help="task counts by split, category, difficulty and family")
    s.add_argument("--tasks", type=Path, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=run_stats)


def _load(path: Path | None):
    from corecraft.tasks.store import TaskStoreError, load_task_set

    try:
        return load_task_set(path)
    except TaskStoreError as exc:
        raise CliError(str(exc)) from None


def run_build(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from corecraft.tasks.build import BuildConfig, build_task_set
    from corecraft.tasks.store import DEFAULT_DIR, counts, save_task_set

    if args.eval_per_family >= args.instances:
        raise CliError("--eval-per-family must be smaller than --instances")
    cfg = BuildConfig(seed=args.seed, scale=args.scale, instances=args.instances,
                      eval_per_family=args.eval_per_family, held_out_instances=args.held_out_instances,
                      families=tuple(args.family) if args.family else None)
    try:
        world, tasks = build_task_set(cfg, progress=True)
    except KeyError as exc:
        raise CliError(str(exc).strip("'\"")) from None
    build = asdict(cfg)
    if build["families"] is None:
        build.pop("families")
    else:
        build["families"] = list(build["families"])
    root = save_task_set(args.out or DEFAULT_DIR, world, tasks, build)
    print(json.dumps({"out": str(root), **{k: v for k, v in counts(tasks).items() if k != "by_family"}}))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from corecraft.episode.chat import ChatConfig, ChatError
    from corecraft.judge.grader import GradingError
    from corecraft.judge.llm import JudgeError
    from corecraft.tasks.verify import verify

    if bool(args.judge_base_url) != bool(args.judge_model):
        raise CliError("--judge-base-url and --judge-model go together: give both or neither")
    task_set = _load(args.tasks)
    tasks = [t for t in task_set.tasks if not args.family or t.family in args.family]
    if not tasks:
        raise CliError("no tasks selected")
    judge = (ChatConfig(base_url=args.judge_base_url, model=args.judge_model, api_key_env=args.judge_api_key_env,
                        timeout_s=args.judge_timeout) if args.judge_base_url else None)
    try:
        # Hostile answers draw on the whole task set (other tasks of the family), even when verifying a part.
        report = verify(task_set.world(), tasks, progress=not args.json, judge=judge, hostile=not args.no_hostile,
                        pool_tasks=task_set.tasks)
    except (GradingError, ChatError, JudgeError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        out = report.to_json()
        out.pop("oracle_failures")
        print(json.dumps(out | {"oracle_failures": list(report.oracle_failures[:50])}, sort_keys=True))
    else:
        _print_families(report)
        for line in report.oracle_failures[:50]:
            print("oracle failed:", line)
        for line in report.hostile_gains[:50]:
            print("hostile answer gained:", line)
        for line in report.hostile_passes[:50]:
            print("hostile answer passed:", line)
        print(f"{report.tasks} tasks: oracle passes {report.oracle_pass}, do-nothing agent passes "
              f"{report.noop_pass}, polite-reply agent passes {report.polite_pass}")
        if report.hostile_tasks:
            print(f"{report.hostile_answers} hostile answers on {report.hostile_tasks} tasks: "
                  f"{len(report.hostile_gains)} beat their honest baseline on a criterion, "
                  f"{len(report.hostile_passes)} passed")
    ok = report.oracle_pass == report.tasks and not report.hostile_gains and not report.hostile_passes
    return 0 if ok else 1


def _print_families(report) -> None:  # report: VerifyReport
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    print(f"{'family':<32} {'tasks':>5} {'oracle':>7} {'nothing':>15} {'hostile, no calls':>19} "
          f"{'hostile, oracle calls':>23}")
    print(f"{'':<32} {'':>5} {'passes':>7} {'mean':>7} {'max':>7} {'mean':>9} {'max':>9} {'mean':>11} {'max':>11}")
    for name, fam in sorted(report.families.items()):
        print(f"{name:<32} {fam.tasks:>5} {fam.oracle_pass:>7} {f(fam.noop_mean):>7} {f(fam.noop_max):>7} "
              f"{f(fam.hostile_no_calls_mean):>9} {f(fam.hostile_no_calls_max):>9} "
              f"{f(fam.hostile_with_calls_mean):>11} {f(fam.hostile_with_calls_max):>11}")


def run_stats(args: argparse.Namespace) -> int:
    from corecraft.tasks.store import counts

    task_set = _load(args.tasks)
    stats = counts(task_set.tasks)
    stats["criteria_per_task"] = {
        "min": min(len(t.criteria) for t in task_set.tasks), "max": max(len(t.criteria) for t in task_set.tasks),
        "mean": round(sum(len(t.criteria) for t in task_set.tasks) / len(task_set.tasks), 2)}
    stats["criteria_by_kind"] = dict(sorted(Counter(c.kind for t in task_set.tasks for c in t.criteria).items()))
    stats["criteria_by_axis"] = dict(sorted(Counter(c.axis for t in task_set.tasks for c in t.criteria).items()))
    if args.json:
        print(json.dumps(stats, sort_keys=True))
    else:
        for key, value in stats.items():
            print(f"{key}: {value}")
    return 0


def run_families(args: argparse.Namespace) -> int:
    import corecraft.tasks.families  # noqa: F401  (registers them)
    from corecraft.tasks.family import FAMILIES

    rows = [{"family": f.name, "category": f.category, "difficulty": f.difficulty, "held_out": f.held_out,
             "demands": list(f.demands), "summary": f.summary}
            for f in sorted(FAMILIES.values(), key=lambda f: (f.category, f.name))]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        flag = " [held out]" if r["held_out"] else ""
        demands = f" [{', '.join(r['demands'])}]" if r["demands"] else ""
        print(f"{r['family']:<34} {r['category']:<22} {r['difficulty']:<7} {r['summary']}{demands}{flag}")
    print(f"{len(rows)} families")
    return 0
