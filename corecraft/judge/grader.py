"""Grading a task's episode: every criterion gets a verdict with evidence; reward is the fraction satisfied.

Two modes:
- ``hybrid`` (default, the reward we train on): state, response and trajectory criteria are checked
  deterministically against the final database and the trajectory; only ``llm`` criteria go to the LLM judge.
- ``llm_all`` (the paper's setup): every criterion goes to the LLM judge; the deterministic verdicts are kept
  as ``Score.reference`` so the judge's agreement with what is verifiable can be measured.
"""

from __future__ import annotations

import sqlite3
from typing import Literal

from corecraft.episode.types import Trajectory
from corecraft.judge.checks import CheckContext, run_check
from corecraft.judge.llm import CriterionPrompt, LLMJudge
from corecraft.judge.types import Score, Verdict
from corecraft.tasks.model import Task

Mode = Literal["hybrid", "llm_all"]


class GradingError(RuntimeError):
    """The task cannot be graded as configured (e.g. it has LLM criteria and no judge was given)."""


def deterministic_verdicts(task: Task, conn: sqlite3.Connection | None, trajectory: Trajectory) -> list[Verdict]:
    """Verdicts for every non-LLM criterion, in rubric order."""
    ctx = CheckContext(conn=conn, trajectory=trajectory)
    out = []
    for c in task.criteria:
        if c.kind == "llm":
            continue
        ok, evidence = run_check(c.kind, c.check, c.params, ctx)
        out.append(Verdict(c.id, bool(ok), evidence, c.kind))
    return out


def grade_deterministic(task: Task, conn: sqlite3.Connection | None, trajectory: Trajectory) -> Score:
    """The reward without any LLM; refuses tasks that have LLM criteria rather than silently skipping them."""
    if any(c.kind == "llm" for c in task.criteria):
        raise GradingError(f"task {task.id} has LLM criteria: grade it with an LLM judge")
    return Score(tuple(deterministic_verdicts(task, conn, trajectory)))


async def grade(task: Task, conn: sqlite3.Connection | None, trajectory: Trajectory, *,
                judge: LLMJudge | None = None, mode: Mode = "hybrid") -> Score:
    det = deterministic_verdicts(task, conn, trajectory)
    if mode == "llm_all":
        if judge is None:
            raise GradingError("mode 'llm_all' needs an LLM judge")
        llm = await judge.judge(task.request, [CriterionPrompt(c.id, c.text) for c in task.criteria], trajectory)
        return Score(tuple(llm), reference=tuple(det))
    llm_criteria = [c for c in task.criteria if c.kind == "llm"]
    if llm_criteria and judge is None:
        raise GradingError(f"task {task.id} has LLM criteria: pass an LLM judge")
    llm_verdicts = {}
    if llm_criteria:
        assert judge is not None
        verdicts = await judge.judge(task.request, [CriterionPrompt(c.id, c.text) for c in llm_criteria], trajectory)
        llm_verdicts = {v.criterion_id: v for v in verdicts}
    det_by_id = {v.criterion_id: v for v in det}
    return Score(tuple(det_by_id.get(c.id) or llm_verdicts[c.id] for c in task.criteria))
