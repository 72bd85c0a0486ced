"""Proof that the task set is sound: every oracle scores 100%; agents that do nothing, or only reply politely,
never pass; hostile answers (``corecraft.tasks.hostile``) earn nothing beyond their honest baseline.

Oracles replay their tool calls in process (``corecraft.tools.call_tool``, the same validation and code the
MCP server runs) on a fresh fork of the task world, then are graded by the deterministic checks, and free-form
(``llm``) criteria by an LLM judge, which must then be configured: such tasks are refused without one rather
than graded on their other criteria only.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tqdm import tqdm

from corecraft.episode.types import ToolCallRecord, Trajectory
from corecraft.judge.grader import GradingError, grade, grade_deterministic
from corecraft.judge.types import Score
from corecraft.tasks.hostile import HostileAnswer, family_pools, gained, hostile_answers
from corecraft.tasks.model import Task, ToolCall

if TYPE_CHECKING:
    from corecraft.episode.chat import ChatConfig
    from corecraft.judge.llm import LLMJudge
    from corecraft.world.world import World

Policy = Callable[[Task], tuple[Sequence[ToolCall], str]]

POLITE_REPLY = ("Thank you for reaching out, and I'm sorry for any inconvenience! I completely understand how "
                "important this is. I've looked into your request and everything has been taken care of. "
                "Please let me know if there is anything else I can help you with.")


def replay(conn: sqlite3.Connection, calls: Iterable[ToolCall], response: str) -> Trajectory:
    """Runs the calls on ``conn`` (a fork) through the in-process tool path; returns the trajectory."""
    from corecraft.tools import call_tool

    records = []
    for c in calls:
        arguments = c.to_json()["arguments"]  # plain JSON values, as a model would send them
        result = call_tool(conn, c.name, arguments)
        records.append(ToolCallRecord(c.name, arguments, result.data if result.data is not None else result.text,
                                      result.is_error))
    return Trajectory(tuple(records), response, turns=len(records) + 1)


def run_policy(world: World, task: Task, policy: Policy) -> tuple[Score, Trajectory]:
    calls, response = policy(task)
    with world.fork() as fork:
        trajectory = replay(fork.conn, calls, response)
        return grade_deterministic(task, fork.conn, trajectory), trajectory


def oracle_policy(task: Task) -> tuple[Sequence[ToolCall], str]:
    return task.oracle.tool_calls, task.oracle.response


def noop_policy(task: Task) -> tuple[Sequence[ToolCall], str]:
    return (), ""


def polite_policy(task: Task) -> tuple[Sequence[ToolCall], str]:
    return (), POLITE_REPLY


@dataclass(frozen=True)
class FamilyFigures:
    """One family's figures: oracle passes and mean reward, the do-nothing agent's mean and max reward, and the
    best hostile answer's (per task, the highest-scoring one) mean and max reward, without tool calls and on top
    of the oracle's tool calls."""

    tasks: int
    oracle_pass: int
    oracle_mean: float
    noop_mean: float
    noop_max: float
    hostile_no_calls_mean: float | None = None
    hostile_no_calls_max: float | None = None
    hostile_with_calls_mean: float | None = None
    hostile_with_calls_max: float | None = None

    def to_json(self) -> dict[str, object]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class VerifyReport:
    tasks: int
    oracle_pass: int
    noop_pass: int
    polite_pass: int
    oracle_failures: tuple[str, ...]
    families: dict[str, FamilyFigures] = field(default_factory=dict)
    hostile_tasks: int = 0          # tasks the hostile answers were tried on (those without LLM criteria)
    hostile_answers: int = 0        # hostile answers graded, both settings together
    hostile_gains: tuple[str, ...] = ()   # "task answer (setting): criteria" that beat their honest baseline
    hostile_passes: tuple[str, ...] = ()  # "task answer" that passed on top of the oracle's tool calls

    def to_json(self) -> dict[str, object]:
        return {"tasks": self.tasks, "oracle_pass": self.oracle_pass, "noop_pass": self.noop_pass,
                "polite_pass": self.polite_pass, "oracle_failures": list(self.oracle_failures),
                "hostile_tasks": self.hostile_tasks, "hostile_answers": self.hostile_answers,
                "hostile_gains": list(self.hostile_gains), "hostile_passes": list(self.hostile_passes),
                "families": {f: v.to_json() for f, v in sorted(self.families.items())}}


def llm_graded(tasks: Sequence[Task]) -> list[str]:
    """Ids of the tasks with free-form criteria, which only an LLM judge can grade."""
    return [t.id for t in tasks if any(c.kind == "llm" for c in t.criteria)]


@dataclass(frozen=True)
class HostileOutcome:
    """The hostile answers' results on one task."""

    best_no_calls: float
    best_with_calls: float
    answers: int
    gains: tuple[str, ...]
    passes: tuple[str, ...]


def _satisfied(score: Score) -> list[bool]:
    return [v.satisfied for v in score.verdicts]


@dataclass(frozen=True)
class HostileGrades:
    """Per-criterion verdicts (satisfied or not, in rubric order) of one task's hostile answers and their honest
    baselines, in both settings: without tool calls, and on top of the oracle's tool calls."""

    answers: tuple[HostileAnswer, ...]
    empty_no_calls: tuple[bool, ...]
    no_calls: tuple[tuple[bool, ...], ...]        # one per answer
    oracle: tuple[bool, ...]                      # the oracle's own answer, on its calls
    empty_with_calls: tuple[bool, ...]            # an empty answer on the oracle's calls
    with_calls: tuple[tuple[bool, ...], ...]      # one per answer


def grade_hostile(world: World, task: Task, answers: Sequence[HostileAnswer]) -> HostileGrades:
    """Grades every hostile answer on real forks of the task world, once per setting (grading only reads, so a
    setting's answers share one fork)."""
    def sat(conn: sqlite3.Connection, calls: Sequence[ToolCallRecord], text: str) -> tuple[bool, ...]:
        return tuple(_satisfied(grade_deterministic(task, conn, Trajectory(tuple(calls), text))))

    with world.fork() as fork:
        empty0 = sat(fork.conn, (), "")
        none = tuple(sat(fork.conn, (), a.text) for a in answers)
    with world.fork() as fork:
        seen = replay(fork.conn, task.oracle.tool_calls, "").tool_calls
        oracle = sat(fork.conn, seen, task.oracle.response)
        empty1 = sat(fork.conn, seen, "")
        calls = tuple(sat(fork.conn, seen, a.text) for a in answers)
    return HostileGrades(tuple(answers), empty0, none, oracle, empty1, calls)


def try_hostile(world: World, task: Task, answers: Sequence[HostileAnswer]) -> HostileOutcome:
    """The verdict on a task's hostile answers: a gain is a criterion a hostile answer satisfies and its honest
    baseline does not (an empty answer without tool calls; the oracle's own answer on its calls); a pass on top
    of the oracle's calls is a failure too, unless the answer is simply right (a lucky constant)."""
    g = grade_hostile(world, task, answers)
    ids = [c.id for c in task.criteria]
    gains: list[str] = []
    passes: list[str] = []
    best = [0.0, 0.0]
    for a, none, calls in zip(g.answers, g.no_calls, g.with_calls, strict=True):
        for k, (setting, base, got) in enumerate((("no calls", g.empty_no_calls, none),
                                                  ("oracle calls", g.oracle, calls))):
            won = gained(base, got)
            if won:
                gains.append(f"{task.id} {a.name} ({setting}): " + ", ".join(ids[i] for i in won))
            if not a.all_true:  # a constant that happens to be right everywhere is the right answer
                best[k] = max(best[k], sum(got) / len(got))
        if all(calls) and not a.all_true:
            passes.append(f"{task.id} {a.name}")
    return HostileOutcome(best[0], best[1], 2 * len(answers), tuple(gains), tuple(passes))


async def _tally(tasks: Sequence[Task], run: Callable[[Task, Policy], Awaitable[tuple[Score, Trajectory]]],
                 progress: bool, hostile: Callable[[Task], HostileOutcome | None] | None = None) -> VerifyReport:
    oracle = noop = polite = 0
    failures = []
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    gains: list[str] = []
    passes: list[str] = []
    hostile_tasks = hostile_answers_n = 0
    for task in tqdm(tasks, desc="verify", disable=not progress, unit="task"):
        row = rows[task.family]
        score, traj = await run(task, oracle_policy)
        row["oracle"].append(score.reward)
        row["oracle_pass"].append(float(score.passed))
        if score.passed:
            oracle += 1
        else:
            bad = [f"{v.criterion_id} ({v.evidence})" for v in score.verdicts if not v.satisfied]
            errors = [f"{c.name}: {str(c.result)[:160]}" for c in traj.tool_calls if c.is_error]
            failures.append(f"{task.id}: {'; '.join(bad)}" + (f" | tool errors: {errors}" if errors else ""))
        nothing = (await run(task, noop_policy))[0]
        row["noop"].append(nothing.reward)
        noop += nothing.passed
        polite += (await run(task, polite_policy))[0].passed
        outcome = hostile(task) if hostile else None
        if outcome is not None:
            hostile_tasks += 1
            hostile_answers_n += outcome.answers
            row["hostile_no_calls"].append(outcome.best_no_calls)
            row["hostile_with_calls"].append(outcome.best_with_calls)
            gains += outcome.gains
            passes += outcome.passes
    families = {}
    for fam, row in rows.items():
        h0, h1 = row.get("hostile_no_calls"), row.get("hostile_with_calls")
        families[fam] = FamilyFigures(
            len(row["oracle"]), int(sum(row["oracle_pass"])), _mean(row["oracle"]), _mean(row["noop"]),
            max(row["noop"]), _mean(h0) if h0 else None, max(h0) if h0 else None, _mean(h1) if h1 else None,
            max(h1) if h1 else None)
    return VerifyReport(len(tasks), oracle, noop, polite, tuple(failures), families, hostile_tasks,
                        hostile_answers_n, tuple(gains), tuple(passes))


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def verify(world: World, tasks: Sequence[Task], *, progress: bool = False,
           judge: ChatConfig | None = None, hostile: bool = True,
           pool_tasks: Sequence[Task] | None = None) -> VerifyReport:
    """Runs the oracle, the do-nothing and the polite agent on every task, and (``hostile``) every hostile
    answer of ``corecraft.tasks.hostile`` on the tasks graded deterministically, drawn from ``pool_tasks``
    (default: ``tasks``; pass the whole task set when verifying a part of it). Tasks with ``llm`` criteria need
    ``judge`` (an OpenAI-compatible endpoint); without one they raise GradingError before anything runs."""
    needs_judge = llm_graded(tasks)
    if needs_judge and judge is None:
        raise GradingError(f"{len(needs_judge)} task(s) have LLM-judged criteria (e.g. {needs_judge[0]}) and no LLM "
                           "judge is configured (--judge-base-url and --judge-model)")

    async def deterministic(task: Task, policy: Policy) -> tuple[Score, Trajectory]:
        return run_policy(world, task, policy)

    pools = family_pools(pool_tasks if pool_tasks is not None else tasks)

    def adversary(task: Task) -> HostileOutcome | None:
        if not hostile or any(c.kind == "llm" for c in task.criteria):
            return None
        return try_hostile(world, task, hostile_answers(task, pools[task.family]))

    if not needs_judge:
        return asyncio.run(_tally(tasks, deterministic, progress, adversary))
    assert judge is not None
    return asyncio.run(_verify_with_judge(world, tasks, judge, progress, adversary))


async def _verify_with_judge(world: World, tasks: Sequence[Task], config: ChatConfig, progress: bool,
                             adversary: Callable[[Task], HostileOutcome | None]) -> VerifyReport:
    from corecraft.episode.chat import ChatClient
    from corecraft.judge.llm import LLMJudge

    async with ChatClient(config) as client:
        judge: LLMJudge = LLMJudge(client)

        async def judged(task: Task, policy: Policy) -> tuple[Score, Trajectory]:
            calls, response = policy(task)
            with world.fork() as fork:
                trajectory = replay(fork.conn, calls, response)
                return await grade(task, fork.conn, trajectory, judge=judge), trajectory

        return await _tally(tasks, judged, progress, adversary)
