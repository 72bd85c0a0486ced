"""`corecraft tasks build | verify | stats` on a small task set, and the store's guard against a changed world."""

import argparse
import dataclasses
import json
import re
import shutil

import pytest
from aiohttp import web
from chat_endpoint import ChatEndpoint

from corecraft.cli import CliError
from corecraft.tasks.cli import register
from corecraft.tasks.model import Criterion, dump_tasks, load_tasks
from corecraft.tasks.store import TaskStoreError, load_task_set

FAMILIES = ["order_total_lookup", "return_opened_item", "privacy_refusal", "duplicate_account_history"]


def _cli(argv):
    parser = argparse.ArgumentParser(prog="corecraft")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("taskset")
    args = ["tasks", "build", "--instances", "3", "--eval-per-family", "1", "--held-out-instances", "2",
            "--out", str(out)]
    for f in FAMILIES:
        args += ["--family", f]
    assert _cli(args) == 0
    return out


def test_verify_json_reports_oracles_and_baselines(built, capsys):
    capsys.readouterr()
    assert _cli(["tasks", "verify", "--json", "--tasks", str(built)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"] == 3 * 3 + 2 and report["oracle_pass"] == report["tasks"]
    assert report["noop_pass"] == 0 and report["polite_pass"] == 0
    # Next to them, per family: the best hostile answer's mean and max reward, without and with tool calls.
    assert report["hostile_tasks"] == report["tasks"] and report["hostile_answers"] > 10 * report["tasks"]
    assert report["hostile_gains"] == [] and report["hostile_passes"] == []
    assert set(report["families"]) == set(FAMILIES)
    for fam in report["families"].values():
        assert fam["oracle_pass"] == fam["tasks"] and fam["oracle_mean"] == 1.0
        assert fam["hostile_no_calls_max"] <= fam["noop_max"]  # no more than doing nothing
        assert fam["noop_mean"] <= fam["hostile_with_calls_mean"] <= fam["hostile_with_calls_max"] < 1.0


def test_verify_table_and_exit_status(built, capsys):
    """The human report prints one row per family with the hostile figures; --no-hostile skips them."""
    capsys.readouterr()
    assert _cli(["tasks", "verify", "--tasks", str(built), "--family", "order_total_lookup"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^order_total_lookup +3 +3 +0\.250 +0\.250 +0\.250 +0\.250 +0\.\d+ +0\.\d+$", out, re.M), out
    assert "0 beat their honest baseline on a criterion, 0 passed" in out
    assert _cli(["tasks", "verify", "--tasks", str(built), "--no-hostile", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hostile_tasks"] == 0


class LenientJudge:
    """An OpenAI-compatible judge that passes every criterion it is sent; counts requests."""

    def __init__(self):
        self.requests = 0

    async def handle(self, request):
        body = await request.json()
        self.requests += 1
        ids = re.findall(r"^- (c\d+):", body["messages"][1]["content"], flags=re.M)
        content = json.dumps({"verdicts": [{"id": i, "satisfied": True, "evidence": "ok"} for i in ids]})
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": content}}]})


def test_verify_needs_a_judge_for_free_form_criteria(built, tmp_path, capsys):
    """A task with an LLM-judged criterion is refused in one line without a judge (not graded on the rest, no
    traceback); with a judge endpoint its free-form criterion goes to the judge and the oracles pass."""
    root = tmp_path / "with_llm"
    shutil.copytree(built, root)
    tasks = load_tasks(root / "train.jsonl")
    t = tasks[0]
    tasks[0] = dataclasses.replace(t, criteria=(*t.criteria, Criterion(
        f"c{len(t.criteria) + 1}", "llm", "format", "The reply is courteous", "llm")))
    dump_tasks(tasks, root / "train.jsonl")
    with pytest.raises(CliError, match=r"^1 task\(s\) have LLM-judged criteria \(e\.g\. [\w-]+\) and no LLM judge is "
                                       r"configured \(--judge-base-url and --judge-model\)$"):
        _cli(["tasks", "verify", "--json", "--tasks", str(root)])
    with pytest.raises(CliError, match="go together"):
        _cli(["tasks", "verify", "--json", "--tasks", str(root), "--judge-model", "lenient"])
    capsys.readouterr()
    judge = LenientJudge()
    with ChatEndpoint(judge.handle) as endpoint:
        assert _cli(["tasks", "verify", "--json", "--tasks", str(root), "--judge-base-url", endpoint.url,
                     "--judge-model", "lenient"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["oracle_pass"] == report["tasks"] == 3 * 3 + 2 and report["noop_pass"] == 0
    assert judge.requests == 3  # the one task, for the oracle, the do-nothing and the polite agent


def test_stats_json_counts_by_split_category_difficulty_family(built, capsys):
    capsys.readouterr()
    assert _cli(["tasks", "stats", "--json", "--tasks", str(built)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["by_split"] == {"eval": 3 + 2, "train": 6}
    assert stats["by_family"]["duplicate_account_history"] == 2
    assert stats["eval_only_families"] == ["duplicate_account_history"]
    assert set(stats["by_difficulty"]) == {"easy", "medium", "hard"}
    assert 3 <= stats["criteria_per_task"]["min"] <= stats["criteria_per_task"]["max"] <= 12
    assert set(stats["criteria_by_axis"]) == {"completeness", "correctness", "constraint", "format"}


def test_missing_world_is_rebuilt_from_the_seed_and_a_changed_one_refused(built):
    (built / "world.db").unlink()
    world = load_task_set(built).world()  # rebuilt from the manifest's seed, byte for byte
    assert (built / "world.db").exists() and world.today.isoformat() == load_task_set(built).manifest["world_today"]
    manifest = json.loads((built / "manifest.json").read_text())
    manifest["world_digest"] = "0" * 64
    (built / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TaskStoreError, match="different bytes"):
        load_task_set(built).world()


def test_unknown_family_and_missing_task_set_are_one_line_errors(tmp_path):
    with pytest.raises(CliError, match="unknown families"):
        _cli(["tasks", "build", "--family", "nope", "--out", str(tmp_path / "x")])
    with pytest.raises(CliError, match=r"no manifest\.json"):
        _cli(["tasks", "stats", "--tasks", str(tmp_path)])


def test_families_lists_every_family_with_its_category(capsys):
    assert _cli(["tasks", "families", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 40 and {r["category"] for r in rows} == {"information_retrieval", "communication",
                                                                  "reasoning", "workflow"}
    assert all(r["summary"] for r in rows)
    assert all(r["demands"] for r in rows if r["difficulty"] == "hard")


def test_stats_prints_tables_unless_json(built, capsys):
    capsys.readouterr()
    assert _cli(["tasks", "stats", "--tasks", str(built)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"11 tasks in 4 families ({built}); criteria per task ")
    assert re.search(r"^difficulty +train +eval +all$", out, re.M)
    assert re.search(r"^duplicate_account_history \* +information_retrieval +hard +0 +2 +2$", out, re.M), out
    assert re.search(r"^order_total_lookup +information_retrieval +easy +2 +1 +3$", out, re.M), out
    assert "{" not in out  # no Python dicts


def test_list_filters_by_split_family_category_and_difficulty(built, capsys):
    tasks = load_task_set(built).tasks
    capsys.readouterr()
    assert _cli(["tasks", "list", "--tasks", str(built)]) == 0
    out = capsys.readouterr()
    assert [line.split()[0] for line in out.out.splitlines()] == [t.id for t in tasks]
    assert out.err == f"{len(tasks)} tasks\n"
    for argv, keep in [
        (["--split", "eval"], lambda t: t.split == "eval"),
        (["--family", "privacy_refusal", "--family", "order_total_lookup"],
         lambda t: t.family in ("privacy_refusal", "order_total_lookup")),
        (["--difficulty", "hard"], lambda t: t.difficulty == "hard"),
        (["--category", "information_retrieval", "--split", "train"],
         lambda t: t.category == "information_retrieval" and t.split == "train")]:
        assert _cli(["tasks", "list", "--tasks", str(built), "--json", *argv]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        want = [t for t in tasks if keep(t)]
        assert want and [r["id"] for r in rows] == [t.id for t in want], argv
        assert all("oracle" not in r and r["criteria"] == len(t.criteria) for r, t in zip(rows, want, strict=True))
    with pytest.raises(CliError, match="unknown family nope; `corecraft tasks families` lists them"):
        _cli(["tasks", "list", "--tasks", str(built), "--family", "nope"])


def test_show_prints_request_rubric_and_oracle(built, capsys):
    task = next(t for t in load_task_set(built).tasks if t.family == "order_total_lookup")
    capsys.readouterr()
    assert _cli(["tasks", "show", task.id, "--tasks", str(built)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{task.id}  ({task.split} split; order_total_lookup, information_retrieval, easy)")
    assert task.request in out and task.oracle.tool_calls[0].name in out
    for c in task.criteria:
        assert f"  {c.id} [{c.kind}, {c.axis}] {c.text}" in out
    for line in task.oracle.response.splitlines():
        assert f"  > {line}" in out
    assert _cli(["tasks", "show", task.id, "--tasks", str(built), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == task.to_json()
    with pytest.raises(CliError, match=r"no task 'order_total' .*did you mean order_total_lookup-000"):
        _cli(["tasks", "show", "order_total", "--tasks", str(built)])


def test_readme_states_the_shipped_sets_criteria_range():
    """worlds/tasks/README.md says how many criteria a task has; it must be the shipped set's range."""
    from pathlib import Path

    tasks = load_task_set().tasks
    lo, hi = min(len(t.criteria) for t in tasks), max(len(t.criteria) for t in tasks)
    readme = (Path(__file__).resolve().parents[3] / "worlds" / "tasks" / "README.md").read_text()
    stated = re.findall(r"(\d+)-(\d+) atomic criteria per task", readme)
    assert stated == [(str(lo), str(hi))]
