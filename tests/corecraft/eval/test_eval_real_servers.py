"""`corecraft eval` against endpoints that behave like real OpenAI-compatible servers (llama-cpp-python, vLLM,
llama.cpp): a scripted model on a real aiohttp server that drops the tools unless `tool_choice` is sent, writes
raw newlines inside argument strings, answers `context_length_exceeded`, and fails in the ways servers fail.
Each case must end as a user expects and be counted truthfully."""

import argparse
import json
import re
from dataclasses import asdict

import pytest
from aiohttp import web
from chat_endpoint import LLAMA_CPP_CONTEXT_ERROR, ChatEndpoint, completion

from corecraft.cli import CliError
from corecraft.episode.chat import is_context_overflow
from corecraft.eval.agent import parse_arguments
from corecraft.eval.cli import register
from corecraft.tasks.build import BuildConfig, build_task_set
from corecraft.tasks.store import load_task_set, save_task_set

FAMILIES = ("order_total_lookup", "change_shipping_address", "reply_with_tracking", "damaged_in_transit_past_window",
            "yearly_spend_paginated")


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v


class ScriptedServer:
    """A model that replays each task's oracle, as a strict local server would serve it.

    - Without ``tool_choice`` in the request it answers in text (llama-cpp-python's function-calling chat formats
      drop the tools then).
    - Before the oracle it makes three calls a grammar-constrained model makes: one whose free-text argument holds
      raw newlines (valid with ``strict=False``), one with arguments that are not JSON, one to an unknown tool.
    - ``overflow_after[request] = n``: the n-th request of that task's episode is answered like llama-cpp-python
      answers a prompt past the context (HTTP 400, ``context_length_exceeded``); n=0 refuses the opening prompt.
    - ``broken``: requests of these tasks get HTTP 500 (a crashing server).
    - Every answer reports ``usage``; the opening prompt counts ``len(body) // 4`` tokens.
    """

    def __init__(self, tasks):
        self.by_request = {t.request: t for t in tasks}
        self.bodies = []
        self.overflow_after: dict[str, int] = {}
        self.broken: set[str] = set()

    async def handle(self, request):
        body = await request.json()
        self.bodies.append(body)
        msgs = body["messages"]
        user = next(m["content"] for m in msgs if m["role"] == "user")
        task = self.by_request[user]
        turn = sum(1 for m in msgs if m["role"] == "assistant")
        if user in self.broken:
            return web.Response(status=500, text="llama_decode returned -1")
        if user in self.overflow_after and turn >= self.overflow_after[user]:
            return web.json_response(LLAMA_CPP_CONTEXT_ERROR, status=400)
        usage = {"prompt_tokens": len(json.dumps(body)) // 4, "completion_tokens": 7, "total_tokens": 0}
        if "tool_choice" not in body or body["tool_choice"] == "none":
            return web.json_response(completion({"role": "assistant", "content": "I cannot look that up."}, usage))
        calls = [
            ("searchKnowledgebase", '{"query": "damaged\nshipment\tpolicy", "kind": "policy"}'),
            ("getOrderDetails", '{"order_id": '),
            ("lookUpEverything", "{}"),
            *((c.name, json.dumps(_plain(c.arguments))) for c in task.oracle.tool_calls)]
        if turn < len(calls):
            name, arguments = calls[turn]
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{turn}", "type": "function", "function": {"name": name, "arguments": arguments}}]}
        else:
            message = {"role": "assistant", "content": task.oracle.response}
        return web.json_response(completion(message, usage))


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


@pytest.fixture(scope="module")
def eval_tasks(task_dir):
    return [t for t in load_task_set(task_dir).tasks if t.split == "eval"]


def _eval(url, task_dir, out, *extra, k=1, concurrency=2):
    return _cli(["eval", "--base-url", url, "--model", "scripted", "--tasks", str(task_dir), "--split", "eval",
                 "--k", str(k), "--concurrency", str(concurrency), "--max-steps", "12", "--retries", "0",
                 "--out", str(out), "--no-progress", *extra])


def _runs(out):
    return [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]


def test_tool_choice_is_sent_and_calls_are_counted_made_executed_refused(task_dir, eval_tasks, tmp_path, capsys):
    server = ScriptedServer(eval_tasks)
    out = tmp_path / "auto"
    with ChatEndpoint(server.handle) as endpoint:
        assert _eval(endpoint.url, task_dir, out, "--max-tokens", "256") == 0
    assert {b["tool_choice"] for b in server.bodies} == {"auto"}
    assert {b["max_tokens"] for b in server.bodies} == {256}
    runs = _runs(out)
    assert len(runs) == len(eval_tasks) and all(r["passed"] and r["stop_reason"] == "final" for r in runs)
    for r in runs:
        oracle = len(next(t for t in eval_tasks if t.id == r["task_id"]).oracle.tool_calls)
        calls = r["trajectory"]["tool_calls"]
        # raw newline and tab inside a JSON string: executed, the tool got the text as sent
        assert not calls[0]["is_error"] and calls[0]["arguments"]["query"] == "damaged\nshipment\tpolicy"
        assert calls[1].get("refused") and calls[2].get("refused")
        assert (r["n_tool_calls"], r["n_tool_calls_executed"], r["n_tool_calls_refused"]) == (oracle + 3, oracle + 1, 2)
        assert r["n_tool_errors"] == 0
        replies = [m["content"] for m in r["trajectory"]["messages"] if m["role"] == "tool"]
        assert replies[1].startswith("Error: getOrderDetails: the arguments are not valid JSON (")
        assert "send one JSON object" in replies[1]
        assert replies[2].startswith("Error: unknown tool 'lookUpEverything'; the tools are: ")
        first = next(b for b in server.bodies if b["messages"][1]["content"] == r["request"]
                     and len(b["messages"]) == 2)
        assert r["prompt_tokens"] == len(json.dumps(first)) // 4
        assert r["max_prompt_tokens"] > r["prompt_tokens"] and r["completion_tokens"] == 7 * r["turns"]
    overall = json.loads((out / "summary.json").read_text())["overall"]
    n = len(runs)
    assert overall["tool_calls_per_run"] == sum(r["n_tool_calls"] for r in runs) / n
    assert overall["executed_tool_calls_per_run"] == pytest.approx(overall["tool_calls_per_run"] - 2)
    assert overall["refused_tool_calls_per_run"] == 2
    assert overall["stop_reasons"] == {"final": n}
    assert overall["prompt_tokens"] == sum(r["prompt_tokens"] for r in runs) / n


def test_without_tool_choice_a_strict_server_drops_the_tools(task_dir, eval_tasks, tmp_path, capsys):
    """`--tool-choice omit` reproduces the old harness: the server answers in text, nothing is executed."""
    server = ScriptedServer(eval_tasks)
    with ChatEndpoint(server.handle) as endpoint:
        assert _eval(endpoint.url, task_dir, tmp_path / "omit", "--tool-choice", "omit") == 0
        assert _eval(endpoint.url, task_dir, tmp_path / "required", "--tool-choice", "required",
                     "--limit", "1") == 0
    assert all("tool_choice" not in b for b in server.bodies[:len(eval_tasks)])
    assert {b["tool_choice"] for b in server.bodies[len(eval_tasks):]} == {"required"}
    overall = json.loads((tmp_path / "omit" / "summary.json").read_text())["overall"]
    assert overall["pass_rate"] == 0.0 and overall["tool_calls_per_run"] == 0
    assert json.loads((tmp_path / "required" / "config.json").read_text())["tool_choice"] == "required"


def test_context_overflow_is_a_scored_failed_run_never_retried(task_dir, eval_tasks, tmp_path, capsys):
    server = ScriptedServer(eval_tasks)
    late, early = eval_tasks[0], eval_tasks[1]
    server.overflow_after = {late.request: 2, early.request: 0}
    out = tmp_path / "ctx"
    with ChatEndpoint(server.handle) as endpoint:
        assert _eval(endpoint.url, task_dir, out) == 0
        err = capsys.readouterr().err
        runs = {r["task_id"]: r for r in _runs(out)}
        assert set(runs) == {t.id for t in eval_tasks}  # none dropped
        for task, turns in ((late, 2), (early, 0)):
            r = runs[task.id]
            assert (r["stop_reason"], r["turns"], r["passed"]) == ("context", turns, False)
            assert "context_length_exceeded" in r["stop_detail"]
            assert f"run stopped at the model's context (graded, failed): {task.id}#0 after {turns} turns" in err
        assert runs[early.id]["prompt_tokens"] is None  # the server never answered that episode
        summary = json.loads((out / "summary.json").read_text())
        assert summary["overall"]["runs"] == len(eval_tasks) and summary["incomplete_runs"] == 0
        assert summary["overall"]["stop_reasons"] == {"context": 2, "final": len(eval_tasks) - 2}
        assert summary["overall"]["pass_rate"] == (len(eval_tasks) - 2) / len(eval_tasks)
        assert "2 runs stopped at the model's context window" in err
        before = len(server.bodies)
        assert _eval(endpoint.url, task_dir, out) == 0  # resume: nothing to redo
        assert len(server.bodies) == before


def test_endpoint_failures_are_printed_as_they_happen_and_summarised(task_dir, eval_tasks, tmp_path, capsys):
    server = ScriptedServer(eval_tasks)
    server.broken = {eval_tasks[0].request, eval_tasks[2].request}
    out = tmp_path / "broken"
    with ChatEndpoint(server.handle) as endpoint:
        assert _eval(endpoint.url, task_dir, out) == 1
        err = capsys.readouterr().err
        for t in (eval_tasks[0], eval_tasks[2]):
            assert f"run failed (not recorded; a rerun retries it): {t.id}#0: " in err
        assert "2 runs failed at the model or judge endpoint" in err
        assert "  2 x " in err and "HTTP 500: llama_decode returned -1" in err
        assert "in a row" not in err
        summary = json.loads((out / "summary.json").read_text())
        assert summary["incomplete_runs"] == 2 and summary["overall"]["runs"] == len(eval_tasks) - 2
        reason, = summary["failure_reasons"]
        assert summary["failure_reasons"][reason] == 2 and "HTTP 500" in reason
        server.broken = set()
        assert _eval(endpoint.url, task_dir, out) == 0  # the rerun retries exactly the two
        assert json.loads((out / "summary.json").read_text())["overall"]["runs"] == len(eval_tasks)


def test_progress_bar_counts_failures_as_they_happen(task_dir, eval_tasks, tmp_path, capsys):
    server = ScriptedServer(eval_tasks)
    server.broken = {t.request for t in eval_tasks[1:]}
    with ChatEndpoint(server.handle) as endpoint:
        argv = ["eval", "--base-url", endpoint.url, "--model", "scripted", "--tasks", str(task_dir), "--k", "1",
                "--concurrency", "1", "--retries", "0", "--max-steps", "12", "--out", str(tmp_path / "bar")]
        assert _cli(argv) == 1
    err = capsys.readouterr().err
    n = len(eval_tasks) - 1
    # the first run passes and the rest fail: the bar's last state counts every failure
    bar = [line for line in re.split(r"[\r\n]", err) if "failed_endpoint=" in line][-1]
    assert f"failed_endpoint={n}," in bar and "passed=1]" in bar and f"{len(eval_tasks)}/{len(eval_tasks)}" in bar


def test_all_runs_tried_is_not_called_stopping(task_dir, eval_tasks, tmp_path, capsys):
    """Every run failing is reported as that (exit 1, a summary); 'stopped after N in a row' is said only when
    runs were left unstarted, with how many."""
    with pytest.raises(CliError, match=r"stopped after 5 runs in a row failed .* with 5 of 10 runs not started"):
        _eval("http://127.0.0.1:9/v1", task_dir, tmp_path / "dead", k=2, concurrency=1)
    assert _eval("http://127.0.0.1:9/v1", task_dir, tmp_path / "few", k=1, concurrency=1) == 1
    err = capsys.readouterr().err
    assert f"{len(eval_tasks)} runs failed at the model or judge endpoint" in err and "in a row" not in err


def test_a_wrong_base_url_is_fixed_on_a_folder_with_no_recorded_runs(task_dir, eval_tasks, tmp_path, capsys):
    out = tmp_path / "fix"
    assert _eval("http://127.0.0.1:9/v1", task_dir, out) == 1
    assert not (out / "runs.jsonl").exists()
    with ChatEndpoint(ScriptedServer(eval_tasks).handle) as endpoint:
        assert _eval(endpoint.url, task_dir, out) == 0
        assert json.loads((out / "config.json").read_text())["base_url"] == endpoint.url
        with pytest.raises(CliError, match=r"\(tool_choice 'auto' -> 'required'\)"):
            _eval(endpoint.url, task_dir, out, "--tool-choice", "required")


def test_max_tokens_must_be_positive(task_dir, tmp_path):
    with pytest.raises(CliError, match="--max-tokens must be at least 1"):
        _eval("http://127.0.0.1:9/v1", task_dir, tmp_path / "x", "--max-tokens", "0")


@pytest.mark.parametrize(("raw", "expected"), [
    ('{"note": "line one\nline two"}', {"note": "line one\nline two"}),
    ('{"a": 1}', {"a": 1}), ("", {}), (None, {}), ({"a": 1}, {"a": 1}), ("  ", {})])
def test_arguments_are_read_leniently(raw, expected):
    assert parse_arguments(raw) == (expected, "")


@pytest.mark.parametrize(("raw", "problem"), [
    ('{"a": ', "not valid JSON (Expecting value at line 1 column 7)"), ("[1, 2]", "not a JSON list"),
    ('"text"', "not a JSON str"), (7, "not int")])
def test_arguments_that_are_not_one_object_are_refused_with_a_reason(raw, problem):
    value, why = parse_arguments(raw)
    assert value is None and problem in why


@pytest.mark.parametrize(("body", "overflow"), [
    (json.dumps(LLAMA_CPP_CONTEXT_ERROR), True),
    ('{"error": {"message": "the request exceeds the available context size, try increasing it", '
     '"type": "exceed_context_size_error"}}', True),  # llama.cpp's server
    ('{"object": "error", "message": "This model\'s maximum context length is 2048 tokens. However, you '
     'requested 3000 tokens"}', True),  # vLLM
    ("Requested tokens (9000) exceed context window of 8192", True),
    ('{"error": {"message": "model not found"}}', False), ("tool_choice must be one of auto", False)])
def test_context_overflow_is_recognised_as_servers_spell_it(body, overflow):
    assert is_context_overflow(body) is overflow


def test_difficulty_selects_tasks(task_dir, eval_tasks, tmp_path, capsys):
    easy = [t for t in eval_tasks if t.difficulty == "easy"]
    assert 0 < len(easy) < len(eval_tasks)
    with ChatEndpoint(ScriptedServer(eval_tasks).handle) as endpoint:
        assert _eval(endpoint.url, task_dir, tmp_path / "easy", "--difficulty", "easy") == 0
    assert sorted(r["task_id"] for r in _runs(tmp_path / "easy")) == sorted(t.id for t in easy)


def test_the_report_shows_refused_calls_and_prompt_tokens(task_dir, eval_tasks, tmp_path, capsys):
    from corecraft.eval.report import write_report

    out = tmp_path / "report"
    with ChatEndpoint(ScriptedServer(eval_tasks).handle) as endpoint:
        assert _eval(endpoint.url, task_dir, out, "--limit", "2") == 0
    html = write_report(out).read_text()
    assert html.count("(2 refused)") == 2
    assert "refused_tool_calls_per_run" in html and "prompt_tokens" in html
