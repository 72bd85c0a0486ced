"""`corecraft judge agreement`: an LLM judge (a real local HTTP endpoint) re-grades recorded runs and its
disagreements with the deterministic checks are counted in the right direction."""

import argparse
import json
import re

import pytest
from aiohttp import web
from chat_endpoint import ChatEndpoint

from corecraft.cli import CliError
from corecraft.episode.types import ToolCallRecord, Trajectory
from corecraft.judge.agreement import agreement_stats, reference_verdicts
from corecraft.judge.cli import register
from corecraft.judge.types import Score, Verdict


def run_record(task_id, verdicts):
    score = Score(tuple(Verdict(cid, ok, "checked", kind) for cid, ok, kind in verdicts))
    traj = Trajectory((ToolCallRecord("getOrderDetails", {"order_id": "ORD-1"}, {"total_usd": 5.0}),), "Total: $5.00")
    return {"task_id": task_id, "sample": 0, "request": "What did I pay?", "reward": score.reward,
            "passed": score.passed, "score": score.to_json(), "trajectory": traj.to_json(),
            "criteria": [{"id": cid, "kind": kind, "axis": "correctness", "text": f"criterion {cid}"}
                         for cid, _, kind in verdicts]}


RUNS = [run_record("a", [("c1", True, "response"), ("c2", False, "state")]),
        run_record("b", [("c1", True, "response"), ("c2", True, "state"), ("c3", True, "trajectory")])]


class Judge:
    """Says every criterion is satisfied (a lenient judge). While ``broken``, it answers garbage to prompts that
    hold criterion c3 (run b), so that run cannot be graded. Counts requests."""

    def __init__(self):
        self.requests = 0
        self.broken = False

    async def handle(self, request):
        body = await request.json()
        self.requests += 1
        ids = re.findall(r"^- (c\d+):", body["messages"][1]["content"], flags=re.M)
        content = json.dumps({"verdicts": [{"id": i, "satisfied": True, "evidence": "ok"} for i in ids]})
        if self.broken and "c3" in ids:
            content = "I cannot decide."
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": content}}]})


def serve(fn, judge=None):
    with ChatEndpoint((judge or Judge()).handle) as endpoint:
        return fn(endpoint.url)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="corecraft")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_lenient_judge_is_caught_passing_unmet_criteria(tmp_path, capsys):
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RUNS))
    assert serve(lambda url: _cli(["judge", "agreement", str(tmp_path), "--judge-base-url", url,
                                   "--judge-model", "lenient"])) == 0
    stats = json.loads((tmp_path / "judge_agreement.json").read_text())
    assert stats["runs"] == 2 and stats["criteria"] == 5
    assert stats["criterion_agreement"] == pytest.approx(4 / 5)
    assert stats["pass_agreement"] == pytest.approx(1 / 2)   # run a fails deterministically, the judge passes it
    assert stats["judge_passed_unmet_criteria"] == 1 and stats["judge_failed_met_criteria"] == 0
    assert stats["by_group"]["kind:state"] == pytest.approx(1 / 2)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["judge_model"] == "lenient"


def test_reference_verdicts_of_an_llm_all_run_are_its_deterministic_ones():
    llm = Score((Verdict("c1", True, "", "llm"),), reference=(Verdict("c1", False, "", "state"),))
    assert reference_verdicts({"score": llm.to_json()}) == {"c1": False}


def test_runs_the_judge_could_not_grade_are_counted_not_scored():
    stats = agreement_stats([{"error": "no valid verdicts", "criteria": [], "reference": {}}])
    assert stats["runs"] == 0 and stats["runs_failed_to_grade"] == 1 and stats["criterion_agreement"] is None


def test_agreement_needs_recorded_runs(tmp_path):
    with pytest.raises(CliError, match="no runs"):
        _cli(["judge", "agreement", str(tmp_path), "--judge-base-url", "http://127.0.0.1:9/v1", "--judge-model", "m"])


def _agreement(url, path, *extra):
    return _cli(["judge", "agreement", str(path), "--judge-base-url", url, "--judge-model", "lenient", *extra])


def test_agreement_shows_progress_and_resumes_from_its_jsonl(tmp_path, capsys):
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RUNS))
    judge = Judge()
    results = tmp_path / "judge_agreement.jsonl"

    def go(url):
        judge.broken = True  # run b cannot be graded this time: recorded with its error
        assert _agreement(url, tmp_path) == 0
        first = capsys.readouterr()
        assert "judge lenient" in first.err and "2/2" in first.err  # the progress bar, on stderr
        stats = json.loads(first.out.strip().splitlines()[-1])
        assert stats["runs"] == 1 and stats["runs_failed_to_grade"] == 1
        assert len(results.read_text().splitlines()) == 2
        asked = judge.requests

        judge.broken = False  # a rerun grades only what is missing: run b
        assert _agreement(url, tmp_path, "--no-progress") == 0
        assert judge.requests == asked + 1
        stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert stats["runs"] == 2 and stats["runs_failed_to_grade"] == 0 and stats["regraded_now"] == 1
        assert stats["criterion_agreement"] == pytest.approx(4 / 5)

        assert _agreement(url, tmp_path, "--no-progress") == 0  # nothing left to do
        assert judge.requests == asked + 1

        # An interruption that cut the last line off: that run alone is graded again.
        lines = results.read_text().splitlines()
        results.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:30])
        assert _agreement(url, tmp_path, "--no-progress") == 0
        assert judge.requests == asked + 2
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"] == 2

        # Another judge model does not mix its verdicts with these, unless told to start over.
        with pytest.raises(CliError, match="another judge"):
            _cli(["judge", "agreement", str(tmp_path), "--judge-base-url", url, "--judge-model", "strict",
                  "--no-progress"])
        assert _cli(["judge", "agreement", str(tmp_path), "--judge-base-url", url, "--judge-model", "strict",
                     "--no-progress", "--fresh"]) == 0
        assert judge.requests == asked + 4

    serve(go, judge)
