"""How reliable is an LLM judge? Re-grade recorded runs with it and compare against the deterministic checks.

An evaluation's ``runs.jsonl`` keeps, per run, the trajectory, the criteria and the deterministic verdicts.
``regrade`` sends every criterion of every run to the LLM judge (as the paper grades) and ``agreement_stats``
counts where the two disagree: by criterion kind and axis, and in which direction (the judge passing what
the world shows undone is the costly error for RL rewards).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from corecraft.episode.types import Trajectory
from corecraft.judge.llm import CriterionPrompt, JudgeError, LLMJudge


def reference_verdicts(run: Mapping[str, Any]) -> dict[str, bool]:
    """The deterministic verdicts recorded for a run (from an llm_all run: its reference verdicts)."""
    score = run.get("score") or {}
    verdicts = score.get("reference") or [v for v in score.get("verdicts", []) if v.get("source") != "llm"]
    return {v["criterion_id"]: bool(v["satisfied"]) for v in verdicts}


async def regrade(runs: Sequence[Mapping[str, Any]], judge: LLMJudge,
                  on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """LLM verdicts for every criterion that has a deterministic reference; runs the judge concurrently (the
    judge's client bounds concurrency). A run the judge cannot grade is reported with its error. ``on_result``
    sees each result as soon as it is in (to record it, so an interrupted re-grading can resume)."""

    async def one(run: Mapping[str, Any]) -> dict[str, Any]:
        ref = reference_verdicts(run)
        criteria = [c for c in run.get("criteria", []) if c["id"] in ref]
        base = {"task_id": run["task_id"], "sample": run.get("sample", 0), "criteria": criteria, "reference": ref}
        try:
            verdicts = await judge.judge(run["request"], [CriterionPrompt(c["id"], c["text"]) for c in criteria],
                                         Trajectory.from_json(run["trajectory"]))
        except JudgeError as exc:
            result = base | {"error": str(exc)}
        else:
            result = base | {"llm": {v.criterion_id: v.satisfied for v in verdicts}}
        if on_result is not None:
            on_result(result)
        return result

    return list(await asyncio.gather(*(one(r) for r in runs)))


def agreement_stats(graded: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Agreement of LLM verdicts with deterministic ones, overall, per kind and axis, and per run's pass/fail."""
    same = total = false_pass = false_fail = pass_same = runs = 0
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for g in graded:
        if "llm" not in g:
            continue
        runs += 1
        llm, ref = g["llm"], g["reference"]
        for c in g["criteria"]:
            a, b = llm[c["id"]], ref[c["id"]]
            same += a == b
            total += 1
            false_pass += a and not b
            false_fail += b and not a
            for key in (f"kind:{c.get('kind', '?')}", f"axis:{c.get('axis', '?')}"):
                groups[key][0] += a == b
                groups[key][1] += 1
        pass_same += all(llm[c["id"]] for c in g["criteria"]) == all(ref[c["id"]] for c in g["criteria"])
    return {
        "runs": runs,
        "runs_failed_to_grade": sum(1 for g in graded if "error" in g),
        "criteria": total,
        "criterion_agreement": same / total if total else None,
        "pass_agreement": pass_same / runs if runs else None,
        "judge_passed_unmet_criteria": false_pass,
        "judge_failed_met_criteria": false_fail,
        "by_group": {k: v[0] / v[1] for k, v in sorted(groups.items())},
    }
