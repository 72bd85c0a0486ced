"""Benchmark metrics over run records: pass rate, mean score, Pass@k, Pass^k, effort; grouped.

With n runs of a task of which c pass, the unbiased estimators are
  Pass@k = 1 - C(n-c, k) / C(n, k)   (at least one of k runs passes; Chen et al. 2021)
  Pass^k = C(c, k) / C(n, k)         (all k runs pass; tau-bench)
averaged over tasks. Pass@1 = Pass^1 = the mean per-task pass rate. Pure functions.

Pass@k and Pass^k are averaged over the tasks with at least k runs; tasks with fewer (an interrupted or partly
failed evaluation) are left out and counted (``tasks_below_k``), never silently scored at a smaller k. The
keys are always ``pass@{k}`` / ``pass^{k}`` for the k asked, so every group of a report has the same columns
(None where no task of the group has k runs).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from math import comb
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    return comb(c, k) / comb(n, k)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _mean_known(xs: Sequence[Any]) -> float | None:
    """The mean of the numbers among ``xs`` (servers that report no token usage leave None), None if none."""
    known = [float(x) for x in xs if isinstance(x, int | float)]
    return _mean(known) if known else None


def summarize_runs(records: Sequence[Mapping[str, Any]], k: int) -> dict[str, Any]:
    """Metrics over run records (each with task_id, passed, reward, n_tool_calls, turns)."""
    by_task: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_task[r["task_id"]].append(r)
    if not by_task:
        return {"tasks": 0, "runs": 0}
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    pk, phk, p1 = [], [], []
    below_k = 0
    for rs in by_task.values():
        n, c = len(rs), sum(bool(r["passed"]) for r in rs)
        p1.append(c / n)
        if n < k:
            below_k += 1
            continue
        pk.append(pass_at_k(n, c, k))
        phk.append(pass_hat_k(n, c, k))
    return {
        "tasks": len(by_task),
        "runs": len(records),
        "k": k,
        "tasks_below_k": below_k,
        "pass_rate": _mean([float(bool(r["passed"])) for r in records]),
        "mean_score": _mean([float(r["reward"]) for r in records]),
        "pass@1": _mean(p1),
        f"pass@{k}": _mean(pk) if pk else None,
        f"pass^{k}": _mean(phk) if phk else None,
        # made by the model / executed by a tool / refused by the harness (unknown tool, arguments not JSON);
        # records from before the split counted every call as executed
        "tool_calls_per_run": _mean([float(r.get("n_tool_calls", 0)) for r in records]),
        "executed_tool_calls_per_run": _mean([float(r.get("n_tool_calls_executed", r.get("n_tool_calls", 0)))
                                              for r in records]),
        "refused_tool_calls_per_run": _mean([float(r.get("n_tool_calls_refused", 0)) for r in records]),
        "turns_per_run": _mean([float(r.get("turns", 0)) for r in records]),
        "stop_reasons": dict(sorted(Counter(str(r.get("stop_reason", "?")) for r in records).items())),
        "prompt_tokens": _mean_known([r.get("prompt_tokens") for r in records]),
        "max_prompt_tokens": max((int(r["max_prompt_tokens"]) for r in records
                                  if isinstance(r.get("max_prompt_tokens"), int | float)), default=None),
        "errors": sum(1 for r in records if r.get("error")),
        **_agreement(records),
    }


def _agreement(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """In the all-LLM judge mode: how often the LLM's verdict matches the deterministic check, per criterion,
    and how often it gets the task's pass/fail right."""
    same = total = pass_same = runs = 0
    for r in records:
        score = r.get("score") or {}
        reference = score.get("reference")
        if not reference:
            continue
        llm = {v["criterion_id"]: v["satisfied"] for v in score.get("verdicts", [])}
        same += sum(llm.get(v["criterion_id"]) == v["satisfied"] for v in reference)
        total += len(reference)
        runs += 1
        pass_same += all(v["satisfied"] for v in reference) == bool(r["passed"])
    if not total:
        return {}
    return {"judge_criterion_agreement": same / total, "judge_pass_agreement": pass_same / runs}


def criterion_pass_rates(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """How often criteria hold, by rubric axis and by criterion kind: where agents fall short (completeness?
    policy constraints? facts?), across all runs."""
    tallies: dict[str, dict[str, list[int]]] = {"axis": defaultdict(lambda: [0, 0]),
                                                 "kind": defaultdict(lambda: [0, 0])}
    for r in records:
        meta = {c["id"]: c for c in r.get("criteria", [])}
        for v in (r.get("score") or {}).get("verdicts", []):
            c = meta.get(v["criterion_id"], {})
            for key in ("axis", "kind"):
                t = tallies[key][c.get(key, "?")]
                t[0] += bool(v["satisfied"])
                t[1] += 1
    return {key: {name: ok / n for name, (ok, n) in sorted(groups.items())} for key, groups in tallies.items()}


def summarize(records: Iterable[Mapping[str, Any]], k: int) -> dict[str, Any]:
    """Overall metrics plus the same metrics by category, difficulty and family, and criterion pass rates."""
    records = list(records)
    out: dict[str, Any] = {"overall": summarize_runs(records, k), "criteria": criterion_pass_rates(records)}
    for key in ("category", "difficulty", "family"):
        groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in records:
            groups[str(r.get(key, "?"))].append(r)
        out[f"by_{key}"] = {g: summarize_runs(rs, k) for g, rs in sorted(groups.items())}
    return out
