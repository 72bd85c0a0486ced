"""Pass@k / Pass^k estimators and grouped summaries."""

import itertools

import pytest

from corecraft.eval.metrics import pass_at_k, pass_hat_k, summarize, summarize_runs


def brute(n, c, k, every):
    """Exact expectation over all k-subsets of the n runs (what the unbiased estimators must equal)."""
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(outcomes, k))
    hit = [all(s) if every else any(s) for s in subsets]
    return sum(hit) / len(subsets)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 0, 1), (5, 2, 3), (5, 5, 2), (8, 3, 4), (3, 1, 3), (10, 7, 1)])
def test_estimators_equal_subset_expectations(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(brute(n, c, k, every=False))
    assert pass_hat_k(n, c, k) == pytest.approx(brute(n, c, k, every=True))


def test_estimators_reject_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_hat_k(3, 1, 4)


def rec(task, passed, reward, cat="workflow", diff="hard"):
    return {"task_id": task, "passed": passed, "reward": reward, "category": cat, "difficulty": diff,
            "family": "f", "n_tool_calls": 4, "turns": 2}


def test_summary_pass_at_k_and_pass_hat_k_per_task_then_averaged():
    runs = [rec("a", True, 1.0), rec("a", False, 0.5), rec("a", True, 1.0),
            rec("b", False, 0.0), rec("b", False, 0.25), rec("b", False, 0.5)]
    s = summarize_runs(runs, k=3)
    assert s["tasks"] == 2 and s["runs"] == 6 and s["k"] == 3
    assert s["pass_rate"] == pytest.approx(2 / 6)
    assert s["pass@1"] == pytest.approx((2 / 3 + 0) / 2)
    assert s["pass@3"] == pytest.approx(0.5)   # task a always has a pass among its 3 runs; b never
    assert s["pass^3"] == pytest.approx(0.0)   # no task passes all 3
    assert s["mean_score"] == pytest.approx(3.25 / 6)
    assert s["tool_calls_per_run"] == 4


def test_summary_groups_by_category_and_difficulty():
    runs = [rec("a", True, 1.0, "reasoning", "easy"), rec("b", False, 0.0, "workflow", "hard")]
    s = summarize(runs, k=1)
    assert s["by_category"]["reasoning"]["pass_rate"] == 1.0
    assert s["by_difficulty"]["hard"]["pass_rate"] == 0.0
    assert s["overall"]["pass@1"] == 0.5


def test_criterion_pass_rates_by_axis_and_kind():
    def run(verdicts):
        return {"task_id": "t", "passed": False, "reward": 0.5,
                "criteria": [{"id": i, "axis": axis, "kind": kind} for i, _, axis, kind in verdicts],
                "score": {"verdicts": [{"criterion_id": i, "satisfied": ok} for i, ok, _, _ in verdicts]}}

    runs = [run([("c1", True, "correctness", "state"), ("c2", False, "constraint", "response")]),
            run([("c1", False, "correctness", "state"), ("c2", False, "constraint", "response")])]
    rates = summarize(runs, k=1)["criteria"]
    assert rates["axis"] == {"constraint": 0.0, "correctness": 0.5}
    assert rates["kind"] == {"response": 0.0, "state": 0.5}


def test_pass_at_k_leaves_out_tasks_with_fewer_than_k_runs_and_says_how_many():
    """A task with 1 run of k=3 (its other runs failed at the endpoint) is not scored at a smaller k."""
    runs = [rec("a", True, 1.0), rec("a", False, 0.0), rec("a", False, 0.0), rec("b", True, 1.0)]
    s = summarize_runs(runs, k=3)
    assert s["k"] == 3 and s["tasks_below_k"] == 1 and s["tasks"] == 2
    assert s["pass@3"] == pytest.approx(pass_at_k(3, 1, 3)) == 1.0   # task a alone
    assert s["pass^3"] == 0.0                                          # (b's single pass would make it 0.5)
    assert s["pass@1"] == pytest.approx((1 / 3 + 1) / 2)               # Pass@1 still counts every task
    assert "pass@1" in s and "pass@2" not in s and "pass^2" not in s


def test_metric_keys_are_the_same_in_every_group_whatever_its_run_counts():
    runs = [rec("a", True, 1.0, "reasoning"), rec("a", True, 1.0, "reasoning"),
            rec("b", False, 0.0, "workflow")]
    s = summarize(runs, k=2)
    groups = [s["overall"], *s["by_category"].values()]
    assert len({frozenset(g) for g in groups}) == 1
    assert s["by_category"]["reasoning"]["pass^2"] == 1.0
    assert s["by_category"]["workflow"]["pass@2"] is None and s["by_category"]["workflow"]["tasks_below_k"] == 1
    assert s["overall"]["pass@2"] == 1.0 and s["overall"]["tasks_below_k"] == 1
