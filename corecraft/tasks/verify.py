"""Proof that the task set is sound: every oracle scores 100%; agents that do nothing, or only reply politely,
almost never pass.

Oracles replay their tool calls in process (``corecraft.tools.call_tool``, the same validation and code the
MCP server runs) on a fresh fork of the task world, then are graded by the deterministic checks, and free-form
(``llm``) criteria by an LLM judge, which must then be configured: such tasks are refused without one rather
than graded on their other criteria only.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tqdm import tqdm

from corecraft.judge.grader import GradingError, grade, grade_deterministic
from corecraft.judge.types import Score, ToolCallRecord, Trajectory
from corecraft.tasks.model import Task, ToolCall

if TYPE_CHECKING:
    from corecraft.judge.chat import ChatConfig
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
class VerifyReport:
    tasks: int
    oracle_pass: int
    noop_pass: int
    polite_pass: int
    oracle_failures: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"tasks": self.tasks, "oracle_pass": self.oracle_pass, "noop_pass": self.noop_pass,
                "polite_pass": self.polite_pass, "oracle_failures": list(self.oracle_failures)}


def llm_graded(tasks: Sequence[Task]) -> list[str]:
    """Ids of the tasks with free-form criteria, which only an LLM judge can grade."""
    return [t.id for t in tasks if any(c.kind == "llm" for c in t.criteria)]


async def _tally(tasks: Sequence[Task], run: Callable[[Task, Policy], Awaitable[tuple[Score, Trajectory]]],
                 progress: bool) -> VerifyReport:
    oracle = noop = polite = 0
    failures = []
    for task in tqdm(tasks, desc="verify", disable=not progress, unit="task"):
        score, traj = await run(task, oracle_policy)
        if score.passed:
            oracle += 1
        else:
            bad = [f"{v.criterion_id} ({v.evidence})" for v in score.verdicts if not v.satisfied]
            errors = [f"{c.name}: {str(c.result)[:160]}" for c in traj.tool_calls if c.is_error]
            failures.append(f"{task.id}: {'; '.join(bad)}" + (f" | tool errors: {errors}" if errors else ""))
        noop += (await run(task, noop_policy))[0].passed
        polite += (await run(task, polite_policy))[0].passed
    return VerifyReport(len(tasks), oracle, noop, polite, tuple(failures))


def verify(world: World, tasks: Sequence[Task], *, progress: bool = False,
           judge: ChatConfig | None = None) -> VerifyReport:
    """Runs the oracle, the do-nothing and the polite agent on every task. Tasks with ``llm`` criteria need
    ``judge`` (an OpenAI-compatible endpoint); without one they raise GradingError before anything runs."""
    needs_judge = llm_graded(tasks)
    if needs_judge and judge is None:
        raise GradingError(f"{len(needs_judge)} task(s) have LLM-judged criteria (e.g. {needs_judge[0]}) and no LLM "
                           "judge is configured (--judge-base-url and --judge-model)")

    async def deterministic(task: Task, policy: Policy) -> tuple[Score, Trajectory]:
        return run_policy(world, task, policy)

    if not needs_judge:
        return asyncio.run(_tally(tasks, deterministic, progress))
    assert judge is not None
    return asyncio.run(_verify_with_judge(world, tasks, judge, progress))


async def _verify_with_judge(world: World, tasks: Sequence[Task], config: ChatConfig,
                             progress: bool) -> VerifyReport:
    from corecraft.judge.chat import ChatClient
    from corecraft.judge.llm import LLMJudge

    async with ChatClient(config) as client:
        judge: LLMJudge = LLMJudge(client)

        async def judged(task: Task, policy: Policy) -> tuple[Score, Trajectory]:
            calls, response = policy(task)
            with world.fork() as fork:
                trajectory = replay(fork.conn, calls, response)
                return await grade(task, fork.conn, trajectory, judge=judge), trajectory

        return await _tally(tasks, judged, progress)
