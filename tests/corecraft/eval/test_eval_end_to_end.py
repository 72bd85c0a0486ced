"""`corecraft eval` end to end: a real OpenAI-compatible HTTP server (started here) replays each task's oracle
as tool calls; the harness runs them through the real MCP server on per-run forks, grades, resumes."""

import argparse
import asyncio
import json
import re
from dataclasses import asdict

import pytest
from aiohttp import web
from chat_endpoint import ChatEndpoint

from corecraft.cli import CliError
from corecraft.eval.cli import register
from corecraft.eval.report import write_report
from corecraft.tasks.build import BuildConfig, build_task_set
from corecraft.tasks.store import load_task_set, save_task_set

FAMILIES = ("order_total_lookup", "change_shipping_address", "reply_with_tracking", "damaged_in_transit_past_window",
            "yearly_spend_paginated")


class ReplayModel:
    """An OpenAI-compatible chat endpoint whose 'model' replays the oracle of the task in the user turn.

    Two tool calls per turn; for one task it first makes mistakes a real model makes (an unknown tool, arguments
    that are not JSON), which the harness must turn into tool errors and carry on.
    """

    def __init__(self, tasks, polite=False):
        self.by_request = {t.request: t for t in tasks}
        self.polite = polite
        self.requests = 0
        self.tool_counts = []
        self.clumsy = tasks[0].request
        self.judge_calls = 0
        self.judge_delay_s = 0.0

    async def handle(self, request):
        body = await request.json()
        self.requests += 1
        self.tool_counts.append(len(body.get("tools", [])))
        msgs = body["messages"]
        if "tools" not in body and "CRITERIA (trusted)" in msgs[-1]["content"]:
            await asyncio.sleep(self.judge_delay_s)
            return web.json_response(self._judge(msgs[-1]["content"]))
        user = next(m["content"] for m in msgs if m["role"] == "user")
        task = self.by_request[user]
        done = sum(1 for m in msgs if m["role"] == "tool")
        if self.polite:
            return web.json_response(self._reply({"role": "assistant", "content": "Happy to help! All sorted."}))
        calls = [{"name": c.name, "arguments": json.dumps(_plain(c.arguments))} for c in task.oracle.tool_calls]
        if user == self.clumsy:
            calls = [{"name": "noSuchTool", "arguments": "{}"}, {"name": "getOrderDetails", "arguments": "{oops"},
                     *calls]
        if done < len(calls):
            batch = calls[done:done + 2]
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{done + j}", "type": "function", "function": c} for j, c in enumerate(batch)]}
        else:
            message = {"role": "assistant", "content": task.oracle.response}
        return web.json_response(self._reply(message))

    def _judge(self, prompt):
        """As the LLM judge: fails c1, passes the rest (a judge that disagrees with one deterministic check)."""
        self.judge_calls += 1
        ids = re.findall(r"^- (c\d+):", prompt, flags=re.M)
        verdicts = [{"id": i, "satisfied": i != "c1", "evidence": "replayed judge"} for i in ids]
        return self._reply({"role": "assistant", "content": json.dumps({"verdicts": verdicts})})

    @staticmethod
    def _reply(message):
        return {"id": "r", "object": "chat.completion", "model": "replay",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v


def _cli(argv):
    parser = argparse.ArgumentParser(prog="corecraft")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    cfg = BuildConfig(instances=2, eval_per_family=1, families=FAMILIES)
    world, tasks = build_task_set(cfg)
    build = asdict(cfg)
    build["families"] = list(FAMILIES)
    root = tmp_path_factory.mktemp("tasks")
    save_task_set(root, world, tasks, build)
    return root


def _eval(url, task_dir, out, k=2, *extra):
    return _cli(["eval", "--base-url", url, "--model", "replay", "--tasks", str(task_dir), "--split", "eval",
                 "--k", str(k), "--concurrency", "3", "--max-steps", "20", "--out", str(out), "--no-progress",
                 *extra])


def test_eval_replaying_oracles_passes_everything_and_resumes(task_dir, tmp_path, capsys):
    tasks = [t for t in load_task_set(task_dir).tasks if t.split == "eval"]
    model = ReplayModel(tasks)
    out = tmp_path / "run"
    with ChatEndpoint(model.handle) as server:
        assert _eval(server.url, task_dir, out) == 0
        summary = json.loads((out / "summary.json").read_text())
        runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
        assert summary["overall"]["runs"] == 2 * len(tasks) == len(runs)
        assert summary["overall"]["pass_rate"] == 1.0 and summary["overall"]["pass^2"] == 1.0
        assert set(summary["by_category"]) == {t.category for t in tasks}
        assert set(model.tool_counts) == {23}  # the MCP server's tools, listed to the model
        clumsy = [r for r in runs if r["request"] == model.clumsy]
        assert all(r["trajectory"]["tool_calls"][0]["is_error"] and r["trajectory"]["tool_calls"][1]["is_error"]
                   for r in clumsy)
        # each run had its own fork: a write in one run is not seen by the other run of the same task
        writes = [r for r in runs if r["family"] == "change_shipping_address"]
        assert len(writes) == 2 and all(r["passed"] for r in writes)

        # finished runs are not redone
        before = model.requests
        assert _eval(server.url, task_dir, out) == 0
        assert model.requests == before

        # an interrupted run (its line cut off) is redone, and only that one
        lines = (out / "runs.jsonl").read_text().splitlines()
        (out / "runs.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
        assert _eval(server.url, task_dir, out) == 0
        redone = model.requests - before
        assert 1 <= redone <= max(r["turns"] for r in runs)
        assert json.loads((out / "summary.json").read_text())["overall"]["runs"] == 2 * len(tasks)
    html = write_report(out).read_text()
    assert html.count('<details class="run"') >= 2 * len(tasks)


def test_eval_of_a_polite_model_fails_every_task(task_dir, tmp_path, capsys):
    tasks = [t for t in load_task_set(task_dir).tasks if t.split == "eval"]
    with ChatEndpoint(ReplayModel(tasks, polite=True).handle) as server:
        assert _eval(server.url, task_dir, tmp_path / "polite", k=1) == 0
    summary = json.loads((tmp_path / "polite" / "summary.json").read_text())
    assert summary["overall"]["pass_rate"] == 0.0 and summary["overall"]["tool_calls_per_run"] == 0


def test_eval_of_chosen_tasks_only(task_dir, tmp_path, capsys):
    task_set = load_task_set(task_dir)
    train = next(t for t in task_set.tasks if t.split == "train")
    with ChatEndpoint(ReplayModel(task_set.tasks).handle) as server:
        assert _eval(server.url, task_dir, tmp_path / "one", 1, "--task", train.id) == 0
        with pytest.raises(CliError, match="unknown task ids: nope"):
            _eval(server.url, task_dir, tmp_path / "none", 1, "--task", "nope")
    runs = [json.loads(x) for x in (tmp_path / "one" / "runs.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["passed"]) for r in runs] == [(train.id, True)]


def test_eval_with_every_criterion_sent_to_an_llm_judge_reports_agreement(task_dir, tmp_path, capsys):
    tasks = [t for t in load_task_set(task_dir).tasks if t.split == "eval"]
    model = ReplayModel(tasks)
    with ChatEndpoint(model.handle) as server:
        assert _eval(server.url, task_dir, tmp_path / "llm", 1, "--judge-base-url", server.url, "--judge-model",
                     "judge", "--judge-mode", "llm_all") == 0
    overall = json.loads((tmp_path / "llm" / "summary.json").read_text())["overall"]
    assert model.judge_calls == len(tasks)
    assert overall["pass_rate"] == 0.0            # the judge failed c1 everywhere...
    assert overall["judge_pass_agreement"] == 0.0  # ...while the deterministic checks pass every oracle run
    assert 0.5 < overall["judge_criterion_agreement"] < 1.0


def test_eval_against_a_dead_endpoint_stops_with_one_line_error(task_dir, tmp_path):
    with pytest.raises(CliError, match="in a row failed"):
        _cli(["eval", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--tasks", str(task_dir), "--k", "3",
              "--retries", "0", "--concurrency", "1", "--out", str(tmp_path / "dead"), "--no-progress"])
    assert not (tmp_path / "dead" / "runs.jsonl").exists()


@pytest.mark.parametrize(("change", "key"), [
    (["--model", "other"], "model"), (["--max-steps", "7"], "max_steps"), (["--temperature", "0.5"], "temperature"),
    (["--split", "train"], "split"), (["--judge-mode", "llm_all"], "judge_mode"),
    (["--no-policy-in-context"], "policy_in_context")])
def test_resuming_with_a_different_configuration_is_refused(task_dir, tmp_path, change, key):
    """Runs of two setups must not be mixed in one summary: a rerun into the same --out must ask for the same
    evaluation (more samples are fine), or it stops with one line and leaves the directory as it was."""
    tasks = [t for t in load_task_set(task_dir).tasks if t.split == "eval"]
    model = ReplayModel(tasks)
    out = tmp_path / "run"
    with ChatEndpoint(model.handle) as server:
        base = ["eval", "--base-url", server.url, "--model", "replay", "--tasks", str(task_dir), "--k", "1",
                "--max-steps", "20", "--out", str(out), "--no-progress", "--limit", "2"]
        assert _cli(base) == 0
        more = list(base)
        more[more.index("--k") + 1] = "2"
        assert _cli(more) == 0  # more samples of the same evaluation: fine
        before = ((out / "runs.jsonl").read_text(), (out / "config.json").read_text(), model.requests)
        argv = list(base)
        if change[0] in argv:
            argv[argv.index(change[0]) + 1] = change[1]
        else:
            argv += change
        if change[0] == "--judge-mode":
            argv += ["--judge-base-url", server.url, "--judge-model", "judge"]
        with pytest.raises(CliError, match=r"holds runs of a different evaluation .*use a new --out") as err:
            _cli(argv)
        assert "\n" not in str(err.value) and f"({key} " in str(err.value)
        assert ((out / "runs.jsonl").read_text(), (out / "config.json").read_text(), model.requests) == before


def test_runs_without_a_recorded_configuration_are_not_resumed(task_dir, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "runs.jsonl").write_text(json.dumps({"task_id": "x", "sample": 0}) + "\n")
    with pytest.raises(CliError, match=r"no config\.json"):
        _cli(["eval", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--tasks", str(task_dir),
              "--out", str(out), "--no-progress"])


@pytest.mark.parametrize("given", [["--judge-base-url", "http://127.0.0.1:9/v1"], ["--judge-model", "judge"]])
def test_judge_endpoint_and_model_go_together(task_dir, tmp_path, given):
    with pytest.raises(CliError, match=r"needs --judge-(model|base-url) too"):
        _cli(["eval", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--tasks", str(task_dir),
              "--out", str(tmp_path / "x"), "--no-progress", *given])
    assert not (tmp_path / "x").exists()


def test_judge_timeout_bounds_each_judge_request(task_dir, tmp_path):
    """A judge slower than --judge-timeout fails those runs (not recorded, so a rerun retries them); with the
    default timeout the same judge grades them."""
    tasks = [t for t in load_task_set(task_dir).tasks if t.split == "eval"]
    model = ReplayModel(tasks)
    model.judge_delay_s = 0.5
    judge = ["--judge-base-url", "", "--judge-model", "judge", "--judge-mode", "llm_all", "--retries", "0"]
    with ChatEndpoint(model.handle) as server:
        judge[1] = server.url
        assert _eval(server.url, task_dir, tmp_path / "slow", 1, *judge, "--judge-timeout", "0.1") == 1
        summary = json.loads((tmp_path / "slow" / "summary.json").read_text())
        assert summary["incomplete_runs"] == len(tasks)
        assert all("judge endpoint failed" in f and "no answer within 0.1 s" in f for f in summary["endpoint_failures"])
        assert _eval(server.url, task_dir, tmp_path / "slow", 1, *judge) == 0
    assert json.loads((tmp_path / "slow" / "summary.json").read_text())["overall"]["runs"] == len(tasks)
