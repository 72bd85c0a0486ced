"""Benchmark the environment side of RL rollouts: CPU per scripted episode, and many episodes at once without leaks.

    .venv/bin/python experiments/benchmarks/bench_rollout.py [--runs 5] [--episodes 40] [--warmup 10]
        [--concurrent 256] [--transport in_process|http] [--workers 1] [--profile 40] [--skip-concurrent]
        [--client-per-episode] [--spare-forks 16]

An episode is what a trainer's rollout does, minus the model (``rl_jax.rollout.run_episode`` with a scripted
policy): ``CoreCraftEnv.start`` (a fork of the task world; in process the episode is added to the one MCP server
object of the environment), the episode's MCP session (``rl_jax.rollout.McpClients``, as ``collect_groups``
opens it: in process one SDK client shared by all episodes, each call naming its episode in its ``_meta``; over
HTTP a client per episode; ``--client-per-episode``: a client per episode in process too), 6 ``call_tool``
calls, ``CoreCraftEnv.grade`` with an ``EpisodeRecord`` (the task's whole rubric), then ``CoreCraftEnv.end``. The 6 calls are the task's oracle calls
(train tasks whose oracle makes >= 6: reads and ticket writes, so grading runs real state checks that pass);
a task with fewer is padded with read-only calls (``--pool all``).

Phase 1, CPU per episode: ``time.process_time`` over ``--episodes`` sequential episodes divided by their count,
after ``--warmup`` episodes; repeated ``--runs`` times, the median reported, with the split start / MCP session
(connect + close) / MCP calls / grade / end. CPU time, unlike wall time, does not depend on what else the
machine runs (other engineers' tests share it). Over HTTP the server's CPU (read from /proc) is added: the
environment is then both processes. A reference floor runs the same episodes with no MCP at all (fork, the
tools called directly, grade, close): what the environment costs without the protocol; once with new forks
(``World.fork``), once with pooled ones (``ForkPool``, as ``CoreCraftEnv`` takes them).

Phase 2, concurrency and isolation: ``--concurrent`` episodes at once (asyncio.gather) on one train task, every
episode on its own fork. Each stamps its two ticket notes with a marker unique to it (``[bench-ep-0042]``), then
reads the customer's history back (the ticket thread) and counts the markers it sees; it is graded against the
task's rubric plus two state criteria of its own (its note exists; exactly its own notes carry a marker), so
the final graded state is checked too. ``cross_episode_leaks`` counts episodes that saw another's marker on
read-back or whose graded state held one. Then the first 32 of them run again one after another, each on a
fork that an earlier stamped episode wrote to and gave back (in process, ``ForkPool`` reuses connections):
``reuse_leaks`` (counted in ``cross_episode_leaks`` too) are those that saw another episode's marker.

``--profile N`` runs N more episodes under cProfile and reports where the CPU goes (by package, and the
costliest call paths). Progress goes to stderr; the last stdout line is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import importlib.metadata
import json
import os
import platform
import pstats
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from corecraft.env.environment import CoreCraftEnv, HttpFleet, to_trajectory  # noqa: E402
from corecraft.episode import EpisodeSpec  # noqa: E402
from corecraft.judge.grader import grade_deterministic  # noqa: E402
from corecraft.server.app import in_process_server  # noqa: E402
from corecraft.server.spawn import spawned_http_server  # noqa: E402
from corecraft.tasks.model import Criterion, Task, ToolCall  # noqa: E402
from corecraft.tasks.store import TaskSet, load_task_set, save_task_set  # noqa: E402
from corecraft.tools import call_tool as call_tool_direct  # noqa: E402
from corecraft.tools.examples import READ_TOOLS, example_calls  # noqa: E402
from corecraft.world import ForkPool  # noqa: E402
from rl_jax.rollout import EpisodeRecord, McpClients, McpTarget, ToolCallRecord, mcp_client  # noqa: E402

CALLS_PER_EPISODE = 6
TARGET_CPU_MS = 5.0        # the budget: environment CPU per 6-call episode, grading included
TARGET_CONCURRENT = 256    # the concurrency: all graded, no episode sees another's write
REUSE_EPISODES = 32        # stamped episodes run again one by one after the concurrent phase (reused forks)
MARKER = "[bench-ep-{:04d}]"
MARKER_RE = re.compile(r"\[bench-ep-(\d{4})\]")
# mcp_first_call is apart: an SDK client lists the tools on its first call (to validate results against their
# output schemas), so with a client per episode it costs several times what a later call does
PHASES = ("start", "mcp_session", "mcp_first_call", "mcp_calls", "grade", "end")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- episodes


def result_value(result: Any) -> Any:
    """What ``run_episode`` records for a tool result: the structured content, else the JSON of the text."""
    text = result_text(result)
    data = result.structured_content
    if data is None and not result.is_error:
        with contextlib.suppress(ValueError):
            data = json.loads(text)
    return data if data is not None else text


def result_text(result: Any) -> str:
    return "\n".join(p for p in (getattr(c, "text", "") for c in (result.content or [])) if p)


@dataclass(frozen=True)
class Script:
    """One scripted episode: the task, the calls to make (in order), and the final answer."""

    task: Task
    calls: tuple[ToolCall, ...]
    response: str


def episode_script(task: Task, padding: Sequence[ToolCall], n: int = CALLS_PER_EPISODE) -> Script:
    """The task's first ``n`` oracle calls, padded with read-only calls when the oracle makes fewer."""
    calls = list(task.oracle.tool_calls[:n])
    calls += list(padding[: n - len(calls)])
    return Script(task, tuple(calls), task.oracle.response)


def padding_calls(task_set: TaskSet) -> list[ToolCall]:
    """Read-only calls that succeed on the task world (one of each read tool), for tasks with short oracles."""
    with task_set.world().reader() as reader:
        examples = example_calls(reader.conn)
    return [ToolCall(name, examples[name]) for name in READ_TOOLS if name in examples]


def record_of(script: Script, calls: Sequence[ToolCallRecord]) -> EpisodeRecord:
    # turns: one per call (the scripted policy makes one call a turn) and the answer's
    return EpisodeRecord(script.task.id, tuple(calls), script.response, len(calls) + 1, "final")


class Clock:
    """CPU time of this process split by phase (``time.process_time``: every thread, user + system)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self._last = time.process_time()

    def mark(self, phase: str) -> None:
        now = time.process_time()
        self.cpu[phase] += now - self._last
        self._last = now

    def reset(self) -> None:
        self._last = time.process_time()


async def scripted_episode(env: CoreCraftEnv, script: Script, episode_id: str, clock: Clock | None = None,
                           readback: ToolCall | None = None, grade: bool = True,
                           clients: McpClients | None = None) -> tuple[Any, str]:
    """Run one episode as a trainer does; returns (its grade or None, the read-back's text, '' without one).

    ``clock`` (sequential runs only: concurrent episodes interleave) is marked at each phase boundary;
    ``grade`` False: a server without the trainer's grading route (the episode is not graded); ``clients``:
    the shared MCP clients (None: a client of the episode's own)."""
    mark = clock.mark if clock is not None else (lambda phase: None)
    if clock is not None:
        clock.reset()
    start = await env.start(script.task.id, episode_id)
    mark("start")
    try:
        records: list[ToolCallRecord] = []
        text = ""
        async with (clients.session(start.mcp) if clients is not None else mcp_client(start.mcp)) as client:
            mark("mcp_session")
            for i, call in enumerate((*script.calls, *([readback] if readback else []))):
                args = call.to_json()["arguments"]  # plain JSON, as a policy's parsed call (a Task's are frozen)
                result = await client.call_tool(call.name, args)
                records.append(ToolCallRecord(call.name, args, result_value(result), bool(result.is_error)))
                if i == 0:
                    mark("mcp_first_call")
                if call is readback:
                    text = result_text(result)
            mark("mcp_calls")
        mark("mcp_session")
        graded = await env.grade(episode_id, record_of(script, records)) if grade else None
        mark("grade")
    finally:
        await env.end(episode_id)
        mark("end")
    return graded, text


def direct_episode(task_set: TaskSet, world: Any, script: Script, pool: ForkPool | None = None) -> bool:
    """The same episode with no MCP: fork, the tools called in process, the same grader, close (the floor);
    ``pool``: the fork from a ``ForkPool`` (as ``CoreCraftEnv`` takes it) instead of a new one."""
    fork = pool.take() if pool is not None else world.fork()
    try:
        records = []
        for call in script.calls:
            args = call.to_json()["arguments"]
            out = call_tool_direct(fork.conn, call.name, args)
            records.append(ToolCallRecord(call.name, args, out.data if out.data is not None else out.text,
                                          out.is_error))
        # what CoreCraftEnv.grade runs for a task without LLM criteria, minus the coroutine
        return grade_deterministic(script.task, fork.conn, to_trajectory(record_of(script, records))).passed
    finally:
        if pool is not None:
            pool.give(fork)
        else:
            fork.close()


# ---------------------------------------------------------------------------------------------------- HTTP server


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process from /proc (the server's share of an episode's cost)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """A server and its worker processes (``--workers N`` forks them)."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                total += cpu_seconds(int(stat.parent.name))
    return total


def trainer_grading_supported() -> bool:
    """Whether ``corecraft serve`` has the trainer-only grading route (``--trainer-token``)."""
    out = subprocess.run([sys.executable, "-m", "corecraft.server", "--help"], cwd=REPO, capture_output=True,
                         text=True, env=child_env(), timeout=120)
    return "--trainer-token" in out.stdout


def child_env() -> dict[str, str]:
    # tokens come from the command line only: a developer's exported token must not change what is measured
    env = {k: v for k, v in os.environ.items() if k not in ("CORECRAFT_SERVER_TOKEN", "CORECRAFT_TRAINER_TOKEN")}
    return {**env, "PYTHONPATH": str(REPO)}


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    fleet: HttpFleet
    grading: bool


@contextlib.contextmanager
def http_server(tasks_dir: Path, log_path: Path, workers: int) -> Iterator[Server]:
    """A ``corecraft serve --transport http`` on a free port, grading (when it can) against ``tasks_dir``."""
    agent, trainer = "agent-" + secrets.token_hex(8), "trainer-" + secrets.token_hex(8)
    grading = trainer_grading_supported()
    args = ["--token", agent, "--workers", str(workers),
            "--max-episodes", str(max(1024, 2 * TARGET_CONCURRENT))]
    if grading:
        args += ["--trainer-token", trainer, "--tasks", str(tasks_dir)]
    else:
        args += ["--db", str(tasks_dir / "world.db")]
    with spawned_http_server(args, log_path, cwd=REPO, env=child_env()) as (url, proc):
        yield Server(proc, HttpFleet(url, agent, trainer), grading)


# ---------------------------------------------------------------------------------------------------- phase 1


@dataclass
class CpuRun:
    episodes: int
    cpu_s: float
    wall_s: float
    server_cpu_s: float
    split_s: dict[str, float]
    passed: int


async def cpu_run(env: CoreCraftEnv, scripts: Sequence[Script], first: int, n: int, tag: str,
                  server_pid: int | None, grade: bool, clients: McpClients | None) -> CpuRun:
    clock = Clock()
    passed = 0
    server0 = tree_cpu_seconds(server_pid) if server_pid else 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        graded, _ = await scripted_episode(env, scripts[(first + i) % len(scripts)], f"{tag}-{first + i}", clock,
                                           grade=grade, clients=clients)
        passed += bool(graded is not None and graded.passed)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    server = (tree_cpu_seconds(server_pid) - server0) if server_pid else 0.0
    return CpuRun(n, cpu, wall, server, dict(clock.cpu), passed)


def summarize_cpu(runs: Sequence[CpuRun]) -> dict[str, Any]:
    per_ep = [(r.cpu_s + r.server_cpu_s) / r.episodes * 1e3 for r in runs]
    out: dict[str, Any] = {
        "env_cpu_ms_per_episode": round(statistics.median(per_ep), 3),
        "env_cpu_ms_runs": [round(x, 3) for x in per_ep],
        "client_cpu_ms_per_episode": round(statistics.median(r.cpu_s / r.episodes * 1e3 for r in runs), 3),
        "wall_ms_per_episode": round(statistics.median(r.wall_s / r.episodes * 1e3 for r in runs), 3),
        "split_cpu_ms": {p: round(statistics.median(r.split_s.get(p, 0.0) / r.episodes * 1e3 for r in runs), 3)
                         for p in PHASES},
        "grading_cpu_ms": round(statistics.median(r.split_s.get("grade", 0.0) / r.episodes * 1e3 for r in runs), 3),
        "sequential_episodes": sum(r.episodes for r in runs),
        "sequential_passed": sum(r.passed for r in runs),
    }
    if any(r.server_cpu_s for r in runs):
        out["server_cpu_ms_per_episode"] = round(statistics.median(r.server_cpu_s / r.episodes * 1e3
                                                                   for r in runs), 3)
    return out


def floor_cpu_ms(task_set: TaskSet, scripts: Sequence[Script], n: int, runs: int, spares: int = 0) -> float:
    """Median CPU ms of the no-MCP episode (fork + direct tool calls + grade + close); ``spares`` > 0: forks
    from a ``ForkPool`` with that many spares."""
    world = task_set.world()
    pool = ForkPool(world, spares=spares) if spares else None
    for script in scripts:  # warm, as the MCP runs are
        direct_episode(task_set, world, script, pool)
    samples = []
    for _ in range(runs):
        cpu0 = time.process_time()
        for i in range(n):
            direct_episode(task_set, world, scripts[i % len(scripts)], pool)
        samples.append((time.process_time() - cpu0) / n * 1e3)
    if pool is not None:
        pool.close()
    return round(statistics.median(samples), 3)


def start_parts_cpu_ms(task_set: TaskSet, n: int) -> dict[str, float]:
    """What ``start`` + ``end`` cost in process, apart: a new fork (and its close), a fork from a ``ForkPool``
    (and its return), and an MCP server object (what building one per episode, as before, cost)."""
    world = task_set.world()
    pool = ForkPool(world, spares=1)
    pool.give(pool.take())
    cpu0 = time.process_time()
    for _ in range(n):
        pool.give(pool.take())
    pooled_ms = (time.process_time() - cpu0) / n * 1e3
    pool.close()
    with world.fork() as fork:
        in_process_server(fork.conn)  # warm
    cpu0 = time.process_time()
    for _ in range(n):
        world.fork().close()
    fork_ms = (time.process_time() - cpu0) / n * 1e3
    with world.fork() as fork:
        cpu0 = time.process_time()
        for _ in range(n):
            in_process_server(fork.conn)
        server_ms = (time.process_time() - cpu0) / n * 1e3
    return {"fork_and_close": round(fork_ms, 3), "pooled_fork_take_and_give": round(pooled_ms, 3),
            "mcp_server_object": round(server_ms, 3)}


# ---------------------------------------------------------------------------------------------------- phase 2


@dataclass(frozen=True)
class LeakPlan:
    """The concurrent episodes' task: the base task, its writes stamped per episode, and the read-back call."""

    base: Task
    readback: ToolCall
    writes_per_episode: int  # ticket notes each episode stamps with its marker


def leak_plan(task_set: TaskSet, pool: Sequence[Task]) -> LeakPlan:
    """The first pool task whose oracle writes ticket notes; its read-back is the ticket's customer history page
    that shows the ticket (with its whole thread)."""
    for task in pool:
        notes = [c for c in task.oracle.tool_calls[:CALLS_PER_EPISODE]
                 if c.name == "updateTicketStatus" and c.arguments.get("note")]
        if not notes or len(task.criteria) > 10:
            continue
        ticket = notes[0].arguments["ticket_id"]
        with task_set.world().reader() as reader:
            row = reader.conn.execute("SELECT customer_id FROM support_tickets WHERE ticket_id = ?",
                                      (ticket,)).fetchone()
        if row is None:
            continue
        world = task_set.world()
        with world.fork() as fork:
            for page in range(1, 20):  # tickets come 10 a page, newest first: find the page that shows this one
                args = {"customer_id": row[0], "page": page}
                out = call_tool_direct(fork.conn, "getCustomerHistory", args)
                if out.is_error:
                    break
                if ticket in out.text:
                    return LeakPlan(task, ToolCall("getCustomerHistory", args), len(notes))
    raise SystemExit("no task in the pool writes a ticket note that can be read back")


def stamped_task(plan: LeakPlan, index: int) -> Script:
    """Episode ``index``'s task (the base rubric plus its own isolation criteria) and its marker-stamped calls."""
    marker = MARKER.format(index)
    calls = tuple(ToolCall(c.name, {**c.arguments, "note": f"{c.arguments['note']} {marker}"})
                  if c.name == "updateTicketStatus" and c.arguments.get("note") else c
                  for c in plan.base.oracle.tool_calls[:CALLS_PER_EPISODE])
    criteria = (*plan.base.criteria,
                Criterion("bench_own_write", "state", "completeness", "This episode's own notes are in its world",
                          "row_count", {"table": "ticket_messages", "where": [["body", "icontains", marker]],
                                        "op": "==", "value": plan.writes_per_episode}),
                Criterion("bench_no_foreign_write", "state", "constraint",
                          "No other episode's note is in this episode's world", "row_count",
                          {"table": "ticket_messages", "where": [["body", "icontains", "[bench-ep-"]],
                           "op": "==", "value": plan.writes_per_episode}))
    task = dataclasses.replace(plan.base, id=f"{plan.base.id}~bench-{index:04d}", criteria=criteria)
    return Script(task, calls, plan.base.oracle.response)


@dataclass
class LeakOutcome:
    index: int
    graded: bool = False
    passed: bool = False
    own_seen: bool = False
    foreign_seen: tuple[int, ...] = ()
    graded_foreign: bool = False
    graded_own: bool = False
    error: str = ""


def inspect(index: int, graded: Any, text: str) -> LeakOutcome:
    """What one concurrent episode saw: its read-back's markers, and its graded state's isolation verdicts."""
    seen = {int(m) for m in MARKER_RE.findall(text)}
    if graded is None:  # not graded (no grading route): the read-back alone
        return LeakOutcome(index, own_seen=index in seen, foreign_seen=tuple(sorted(seen - {index})))
    verdicts = {v["criterion_id"]: v["satisfied"] for v in graded.details.get("verdicts", [])}
    return LeakOutcome(index, graded=True, passed=bool(graded.passed), own_seen=index in seen,
                       foreign_seen=tuple(sorted(seen - {index})),
                       graded_foreign=not verdicts.get("bench_no_foreign_write", False),
                       graded_own=bool(verdicts.get("bench_own_write", False)))


async def leak_episode(env: CoreCraftEnv, plan: LeakPlan, script: Script, index: int, tag: str,
                       grade: bool = True, clients: McpClients | None = None) -> LeakOutcome:
    try:
        graded, text = await scripted_episode(env, script, f"{tag}-{index:04d}", readback=plan.readback,
                                              grade=grade, clients=clients)
        return inspect(index, graded, text)
    except Exception as exc:  # counted as not graded, with the first error reported
        return LeakOutcome(index, error=f"{type(exc).__name__}: {exc}"[:300])


async def concurrent_phase(env: CoreCraftEnv, plan: LeakPlan, scripts: Sequence[Script], tag: str,
                           server_pid: int | None, grade: bool, clients: McpClients | None) -> dict[str, Any]:
    server0 = tree_cpu_seconds(server_pid) if server_pid else 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    outcomes = await asyncio.gather(*(leak_episode(env, plan, s, i, tag, grade, clients)
                                      for i, s in enumerate(scripts)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    server = (tree_cpu_seconds(server_pid) - server0) if server_pid else 0.0
    return leak_summary(outcomes, plan, wall, cpu + server)


def leak_summary(outcomes: Sequence[LeakOutcome], plan: LeakPlan, wall_s: float, cpu_s: float) -> dict[str, Any]:
    n = len(outcomes)
    graded = [o for o in outcomes if o.graded]
    leaks = [o for o in outcomes if o.foreign_seen or o.graded_foreign]
    errors = [o.error for o in outcomes if o.error]
    return {
        "concurrent_episodes": n,
        "concurrent_task": plan.base.id,
        "concurrent_graded": len(graded),
        "concurrent_passed": sum(o.passed for o in graded),
        "cross_episode_leaks": len(leaks),
        "readback_foreign_seen": sum(bool(o.foreign_seen) for o in outcomes),
        "graded_state_foreign": sum(o.graded_foreign for o in graded),
        "own_write_missing": sum(not o.own_seen or (o.graded and not o.graded_own) for o in outcomes if not o.error),
        "concurrent_errors": len(errors),
        "first_error": errors[0] if errors else None,
        "concurrent_wall_s": round(wall_s, 3),
        "concurrent_cpu_ms_per_episode": round(cpu_s / max(n, 1) * 1e3, 3),
    }


# ---------------------------------------------------------------------------------------------------- profile


def package_of(filename: str, name: str) -> str:
    if filename == "~":  # a builtin: name it by what it belongs to
        for key in ("sqlite3", "pydantic_core", "json"):
            if key in name:
                return key
        return "builtins"
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for ours in ("corecraft", "rl_jax", "experiments"):
        if f"/{ours}/" in filename:
            return ours
    return "stdlib:" + Path(filename).stem if "/lib/python" in filename else Path(filename).name


def profile_report(profiler: cProfile.Profile, episodes: int, top: int = 15) -> dict[str, Any]:
    stats = pstats.Stats(profiler)
    raw: Mapping[Any, Any] = stats.stats  # type: ignore[attr-defined]  # (file, line, fn) -> (cc, nc, tt, ct, callers)
    total = sum(v[2] for v in raw.values()) or 1.0
    by_package: dict[str, float] = defaultdict(float)
    for (filename, _, name), (_, _, tottime, _, _) in raw.items():
        by_package[package_of(filename, name)] += tottime
    interesting = []
    for (filename, line, name), (_, _, _, cumtime, _) in raw.items():
        if filename == "~" or "asyncio" in filename or "contextlib" in filename or "bench_rollout" in filename:
            continue
        interesting.append((cumtime, f"{package_of(filename, name)}:{Path(filename).name}:{line}({name})"))
    interesting.sort(reverse=True)
    # a call path is a chain of wrappers with nearly the same cumulative time: keep the chain's first link only
    paths: list[tuple[float, str]] = []
    for cumtime, where in interesting:
        if not paths or cumtime < 0.9 * paths[-1][0]:
            paths.append((cumtime, where))
    self_time = sorted(((v[2], f"{package_of(f, n)}:{Path(f).name}:{line}({n})") for (f, line, n), v in raw.items()),
                       reverse=True)
    return {
        "profiled_episodes": episodes,
        "note": "CPU time under cProfile, which inflates every Python call: use the shares, not the absolute figures",
        "share_by_package": {k: round(v / total, 3) for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])
                             if v / total >= 0.005},
        "top_cumulative_ms_per_episode": [[where, round(ct / episodes * 1e3, 3)] for ct, where in paths[:top]],
        "top_self_ms_per_episode": [[where, round(tt / episodes * 1e3, 3)] for tt, where in self_time[:top]],
    }


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="repeats of the sequential CPU batch (median reported)")
    p.add_argument("--episodes", type=int, default=40, help="sequential episodes per run")
    p.add_argument("--warmup", type=int, default=-1,
                   help="episodes run before measuring (default: one of each pool task; their CPU is reported as "
                        "the cold figure: a task's first episode compiles its checks' patterns)")
    p.add_argument("--concurrent", type=int, default=TARGET_CONCURRENT, help="episodes at once in phase 2")
    p.add_argument("--skip-concurrent", action="store_true")
    p.add_argument("--transport", choices=("in_process", "http"), default="in_process")
    p.add_argument("--workers", type=int, default=1, help="HTTP server processes (--transport http)")
    p.add_argument("--pool", choices=("six", "all"), default="six",
                   help="six: train tasks whose oracle makes >= 6 calls; all: every train task, short oracles padded")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="profile N more sequential episodes")
    p.add_argument("--no-floor", action="store_true", help="skip the no-MCP reference episodes")
    p.add_argument("--client-per-episode", action="store_true",
                   help="in process, each episode connects an MCP client of its own (the trainer shares one)")
    p.add_argument("--spare-forks", type=int, default=16,
                   help="ended episodes' fork connections kept for reuse (CoreCraftEnv's ForkPool; 0: none)")
    args = p.parse_args(argv)
    if min(args.runs, args.episodes, args.concurrent) < 1 or args.warmup < -1 or args.workers < 1:
        p.error("--runs, --episodes, --concurrent and --workers must be >= 1; --warmup >= 0")
    if args.spare_forks < 0:
        p.error("--spare-forks must be >= 0")
    return args


def task_pool(task_set: TaskSet, env: CoreCraftEnv, which: str) -> list[Task]:
    gradable = set(env.task_ids("train"))
    # the concurrent phase's per-episode copies of a task are not drawn for the sequential runs
    tasks = [t for t in task_set.tasks if t.id in gradable and "~bench-" not in t.id]
    if which == "six":
        tasks = [t for t in tasks if len(t.oracle.tool_calls) >= CALLS_PER_EPISODE]
    if not tasks:
        raise SystemExit(f"no gradable train task in pool {which!r}")
    return tasks


async def measure(args: argparse.Namespace, task_set: TaskSet, server: Server | None) -> dict[str, Any]:
    spec = EpisodeSpec(prompt_form="signatures")
    fleet = server.fleet if server is not None else None
    pid = server.proc.pid if server is not None else None
    env = CoreCraftEnv(task_set, spec, fleet=fleet, target=McpTarget, spare_forks=args.spare_forks)
    padding = padding_calls(task_set)
    pool = task_pool(task_set, env, args.pool)
    scripts = [episode_script(t, padding) for t in pool]
    out: dict[str, Any] = {"task_pool": args.pool, "pool_tasks": len(scripts),
                           "pool_families": sorted({s.task.family for s in scripts}),
                           "mcp_client": "per_episode" if args.client_per_episode else "shared",
                           "spare_forks": args.spare_forks}
    async with env, McpClients() as shared:
        clients = None if args.client_per_episode else shared
        can_grade = server is None or server.grading
        if not can_grade:
            log("corecraft serve has no --trainer-token: the HTTP runs skip grading (start, MCP calls, end only)")
            out["http_grading"] = "skipped: corecraft serve has no --trainer-token"
        warmup = len(scripts) if args.warmup < 0 else args.warmup
        log(f"[{args.transport}] warm-up: {warmup} episodes")
        cursor = 0
        if warmup:
            cold = await cpu_run(env, scripts, cursor, warmup, "warm", pid, can_grade, clients)
            cursor += warmup
            out["warmup_episodes"] = warmup
            out["warmup_cpu_ms_per_episode"] = round((cold.cpu_s + cold.server_cpu_s) / warmup * 1e3, 3)
        runs = []
        for r in range(args.runs):
            run = await cpu_run(env, scripts, cursor, args.episodes, f"run{r}", pid, can_grade, clients)
            cursor += args.episodes
            runs.append(run)
            log(f"  run {r + 1}/{args.runs}: {(run.cpu_s + run.server_cpu_s) / run.episodes * 1e3:.2f} ms CPU/episode "
                f"({run.wall_s / run.episodes * 1e3:.2f} ms wall), {run.passed}/{run.episodes} passed, "
                f"load {os.getloadavg()[0]:.2f}")
        out.update(summarize_cpu(runs))
        if args.profile:
            log(f"profiling {args.profile} episodes")
            profiler = cProfile.Profile(time.process_time)  # CPU, not wall: a blocked socket call costs nothing
            profiler.enable()
            await cpu_run(env, scripts, cursor, args.profile, "prof", pid, can_grade, clients)
            profiler.disable()
            out["profile"] = profile_report(profiler, args.profile)
        if not args.skip_concurrent:
            plan = leak_plan(task_set, pool)
            stamped = [stamped_task(plan, i) for i in range(args.concurrent)]
            log(f"{args.concurrent} concurrent episodes of {plan.base.id} (read-back: {plan.readback.name})")
            out.update(await concurrent_phase(env, plan, stamped, "conc", pid, can_grade, clients))
            log(f"  {out['concurrent_graded']}/{args.concurrent} graded, {out['cross_episode_leaks']} leaks, "
                f"{out['concurrent_wall_s']} s wall")
            # then some of them again, one after another: each on a fork connection an earlier stamped episode
            # wrote to and gave back (in process, ForkPool), so a write that outlived its episode would be seen
            again = [await leak_episode(env, plan, script, i, "again", can_grade, clients)
                     for i, script in enumerate(stamped[:REUSE_EPISODES])]
            reuse_leaks = sum(bool(o.foreign_seen or o.graded_foreign or o.error) for o in again)
            out.update({"reuse_episodes": len(again), "reuse_leaks": reuse_leaks,
                        "cross_episode_leaks": out["cross_episode_leaks"] + reuse_leaks})
            log(f"  {len(again)} of them again one after another: {reuse_leaks} leaks")
    return out


def with_stamped_tasks(task_set: TaskSet, n: int) -> TaskSet:
    """The task set plus the concurrent phase's per-episode tasks (an environment grades only tasks it knows)."""
    env = CoreCraftEnv(task_set, EpisodeSpec(prompt_form="signatures"), target=McpTarget)
    plan = leak_plan(task_set, task_pool(task_set, env, "six"))
    return TaskSet(task_set.root, task_set.manifest, [*task_set.tasks, *(stamped_task(plan, i).task
                                                                        for i in range(n))])


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    load_start = os.getloadavg()
    started = time.perf_counter()
    base = load_task_set(None)
    task_set = with_stamped_tasks(base, 0 if args.skip_concurrent else args.concurrent)
    out: dict[str, Any] = {
        "benchmark": "bench_rollout", "transport": args.transport, "tool_calls_per_episode": CALLS_PER_EPISODE,
        "runs": args.runs, "episodes_per_run": args.episodes,
    }
    if args.transport == "in_process":
        out.update(asyncio.run(measure(args, task_set, None)))
    else:
        with tempfile.TemporaryDirectory(prefix="bench_rollout_") as tmp:
            # the server grades against its own task set: give it the one with the per-episode tasks
            tasks_dir = save_task_set(Path(tmp) / "tasks", task_set.world(), list(task_set.tasks),
                                      dict(base.manifest["build"]))
            with http_server(tasks_dir, Path(tmp) / "serve.log", args.workers) as server:
                out["http_workers"] = args.workers
                out.update(asyncio.run(measure(args, load_task_set(tasks_dir), server)))
    if not args.no_floor and args.transport == "in_process":
        log("reference: the same episodes without MCP")
        env = CoreCraftEnv(base, EpisodeSpec(prompt_form="signatures"), target=McpTarget)
        scripts = [episode_script(t, padding_calls(base)) for t in task_pool(base, env, args.pool)]
        out["no_mcp_floor_cpu_ms_per_episode"] = floor_cpu_ms(base, scripts, args.episodes, args.runs)
        if args.spare_forks:
            out["no_mcp_pooled_floor_cpu_ms_per_episode"] = floor_cpu_ms(base, scripts, args.episodes, args.runs,
                                                                         args.spare_forks)
        out["start_parts_cpu_ms"] = start_parts_cpu_ms(base, max(args.episodes, 20))
    out["target_cpu_ms"] = TARGET_CPU_MS
    out["cpu_target_met"] = out["env_cpu_ms_per_episode"] <= TARGET_CPU_MS
    if not args.skip_concurrent:
        out["target_concurrent"] = TARGET_CONCURRENT
        out["concurrency_target_met"] = (out["concurrent_episodes"] >= TARGET_CONCURRENT
                                         and out["concurrent_graded"] == out["concurrent_episodes"]
                                         and out["cross_episode_leaks"] == 0)
    out["machine"] = {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "mcp": importlib.metadata.version("mcp"),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    out["total_wall_s"] = round(time.perf_counter() - started, 1)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    result = run_benchmark(parse_args(argv))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
