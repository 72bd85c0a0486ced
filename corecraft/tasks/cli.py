"""``corecraft tasks build | verify | families | stats | list | show``."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
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
    s.add_argument("--tasks", type=Path, default=None, help="task set directory (default: the shipped set)")
    s.add_argument("--json", action="store_true", help="print one JSON object (default: tables)")
    s.set_defaults(handler=run_stats)

    ls = sub.add_parser("list", help="the tasks, one a line: id, split, difficulty, family, request",
                        description="Lists the tasks of the set (default: the shipped set), filtered by split, "
                                    "family, category and difficulty; `corecraft tasks show ID` shows one whole.")
    ls.add_argument("--tasks", type=Path, default=None, help="task set directory (default: the shipped set)")
    ls.add_argument("--split", choices=["train", "eval"], default=None)
    ls.add_argument("--family", action="append", default=None, help="only this family (repeatable)")
    ls.add_argument("--category", action="append", default=None, help="only this category (repeatable)")
    ls.add_argument("--difficulty", action="append", choices=["easy", "medium", "hard"], default=None,
                    help="only this difficulty (repeatable)")
    ls.add_argument("--json", action="store_true", help="print one JSON object per line (the task files' form, "
                                                        "without rubric, ground truth and oracle)")
    ls.set_defaults(handler=run_list)

    sh = sub.add_parser("show", help="one task whole: request, rubric, oracle",
                        description="Prints one task: its request, its rubric's criteria and the oracle's tool "
                                    "calls and answer (what scores 100%%). The rubric and oracle are hidden from "
                                    "agents; this is for people.")
    sh.add_argument("id", metavar="ID", help="task id (from `corecraft tasks list`)")
    sh.add_argument("--tasks", type=Path, default=None, help="task set directory (default: the shipped set)")
    sh.add_argument("--json", action="store_true", help="print the task's JSON record")
    sh.set_defaults(handler=run_show)


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
        return 0
    tasks = task_set.tasks
    print(f"{stats['tasks']} tasks in {stats['families']} families ({task_set.root}); "
          f"criteria per task {stats['criteria_per_task']['min']}-{stats['criteria_per_task']['max']} "
          f"(mean {stats['criteria_per_task']['mean']})")
    for key in ("category", "difficulty"):
        print()
        _table([key, "train", "eval", "all"],
               [[name, *_by_split(tasks, lambda t, k=key, n=name: getattr(t, k) == n)]
                for name in stats[f"by_{key}"]])
    print()
    eval_only = set(stats["eval_only_families"])
    families = {t.family: t for t in tasks}
    _table(["family", "category", "difficulty", "train", "eval", "all"],
           [[f + (" *" if f in eval_only else ""), families[f].category, families[f].difficulty,
             *_by_split(tasks, lambda t, f=f: t.family == f)] for f in stats["by_family"]])
    print("* held out: eval split only")
    print()
    _table(["criteria by kind", "count"], [[k, v] for k, v in stats["criteria_by_kind"].items()])
    print()
    _table(["criteria by axis", "count"], [[k, v] for k, v in stats["criteria_by_axis"].items()])
    return 0


def _by_split(tasks, keep) -> list[int]:
    chosen = [t for t in tasks if keep(t)]
    return [sum(t.split == "train" for t in chosen), sum(t.split == "eval" for t in chosen), len(chosen)]


def _table(header: list[str], rows: list[list[object]]) -> None:
    """A plain text table: the first column left-aligned, numbers right-aligned."""
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(str(row[i]).isdigit() for row in rows) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True))
              .rstrip())


def _selected(args: argparse.Namespace):
    task_set = _load(args.tasks)
    tasks = [t for t in task_set.tasks
             if (args.split is None or t.split == args.split) and (not args.family or t.family in args.family)
             and (not args.category or t.category in args.category)
             and (not args.difficulty or t.difficulty in args.difficulty)]
    known = {t.family for t in task_set.tasks}
    unknown = sorted(set(args.family or ()) - known)
    if unknown:
        raise CliError(f"unknown family {', '.join(unknown)}; `corecraft tasks families` lists them")
    categories = {t.category for t in task_set.tasks}
    unknown = sorted(set(args.category or ()) - categories)
    if unknown:
        raise CliError(f"unknown category {', '.join(unknown)}; the categories are {', '.join(sorted(categories))}")
    return tasks


def run_list(args: argparse.Namespace) -> int:
    tasks = _selected(args)
    if args.json:
        for t in tasks:
            print(json.dumps({"id": t.id, "split": t.split, "family": t.family, "category": t.category,
                              "difficulty": t.difficulty, "request": t.request, "criteria": len(t.criteria)}))
        return 0
    width = max((len(t.id) for t in tasks), default=2)
    fam = max((len(t.family) for t in tasks), default=6)
    for t in tasks:
        request = " ".join(t.request.split())
        print(f"{t.id:<{width}}  {t.split:<5}  {t.difficulty:<6}  {t.family:<{fam}}  "
              f"{request[:90] + ('…' if len(request) > 90 else '')}")
    print(f"{len(tasks)} tasks", file=sys.stderr)
    return 0


def run_show(args: argparse.Namespace) -> int:
    task_set = _load(args.tasks)
    task = next((t for t in task_set.tasks if t.id == args.id), None)
    if task is None:
        near = [t.id for t in task_set.tasks if args.id.lower() in t.id.lower()][:5]
        hint = f"; did you mean {', '.join(near)}?" if near else "; `corecraft tasks list` lists them"
        raise CliError(f"no task {args.id!r} in {task_set.root}{hint}")
    if args.json:
        print(json.dumps(task.to_json(), indent=1, ensure_ascii=False, sort_keys=True))
        return 0
    print(f"{task.id}  ({task.split} split; {task.family}, {task.category}, {task.difficulty})")
    print("\nRequest:")
    print(textwrap.indent(task.request, "  "))
    print(f"\nRubric ({len(task.criteria)} criteria; all must hold to pass):")
    for c in task.criteria:
        print(f"  {c.id} [{c.kind}, {c.axis}] {c.text}")
    print(f"\nOracle ({len(task.oracle.tool_calls)} tool calls, then the answer):")
    for i, call in enumerate(task.oracle.tool_calls, 1):
        print(f"  {i}. {call.name} {json.dumps(call.to_json()['arguments'], ensure_ascii=False)}")
    print(textwrap.indent(task.oracle.response, "  > "))
    if task.oracle.tool_calls:  # `tools call` runs on the task world by default, where this task's records are
        first = task.oracle.tool_calls[0]
        print(f"\nTry it: corecraft tools call {first.name} "
              f"'{json.dumps(first.to_json()['arguments'], ensure_ascii=False)}'")
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
