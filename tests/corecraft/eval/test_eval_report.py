"""The HTML report: self-contained, escapes agent text, loads in headless Chromium with no console errors."""

import argparse
import asyncio
import json
import shutil
import subprocess
import time

import aiohttp
import pytest

from corecraft.cli import CliError
from corecraft.episode.types import ToolCallRecord, Trajectory
from corecraft.eval.cli import register
from corecraft.eval.report import bar_chart, render_report
from corecraft.judge.types import Score, Verdict

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
XSS = "<script>console.error('agent text executed')</script><img src=x onerror=\"console.error('img')\">"


def make_runs():
    runs = []
    for i, (cat, diff, passed) in enumerate([("information_retrieval", "easy", True), ("workflow", "hard", False),
                                              ("communication", "medium", True), ("reasoning", "hard", False)]):
        traj = Trajectory((ToolCallRecord("getOrderDetails", {"order_id": f"ORD-{i}"}, {"total_usd": 12.5}),
                           ToolCallRecord("processReturn", {"order_id": f"ORD-{i}"}, "Error: window closed", True)),
                          f"Answer {i}. {XSS}", turns=3)
        score = Score((Verdict("c1", passed, "states $12.50", "response"),
                       Verdict("c2", passed, f"evidence {XSS}", "state")))
        runs.append({"task_id": f"t{i}", "sample": 0, "family": f"fam{i % 2}", "category": cat, "difficulty": diff,
                     "split": "eval", "request": f"Please help {XSS}",
                     "criteria": [{"id": "c1", "kind": "response", "axis": "correctness", "text": "States it"},
                                  {"id": "c2", "kind": "state", "axis": "completeness", "text": "Did it"}],
                     "reward": score.reward, "passed": score.passed, "score": score.to_json(), "n_tool_calls": 2,
                     "turns": 3, "stop_reason": "final", "trajectory": traj.to_json(), "elapsed_s": 0.1})
    return runs


def test_report_escapes_agent_text_and_fetches_nothing():
    html = render_report(make_runs(), {"model": "m", "k": 1})
    assert "<script>console.error" not in html and "&lt;script&gt;" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert html.count('<details class="run"') == 4 and html.count("<svg") == 5


def test_bar_chart_scales_bars_to_values():
    svg = bar_chart({"a": 1.0, "b": 0.5}, width=360)
    widths = [float(x.split('"')[0]) for x in svg.split('<rect x="150" y="')[1:] for x in [x.split('width="')[1]]]
    assert widths[0] == pytest.approx(2 * widths[1])


def _cli(argv):
    # Only this area's commands: the test does not depend on other areas' CLIs importing cleanly.
    parser = argparse.ArgumentParser(prog="corecraft")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_report_command_writes_page(tmp_path, capsys):
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_runs()))
    assert _cli(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(CliError, match="not a directory"):
        _cli(["report", str(tmp_path / "missing")])


async def _load_in_chromium(url, profile):
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                pages = [t for t in await resp.json() if t["type"] == "page"]
            async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                problems, next_id = [], 0

                async def send(method, **params):
                    nonlocal next_id
                    next_id += 1
                    my_id = next_id
                    await ws.send_json({"id": my_id, "method": method, "params": params})
                    while True:
                        msg = await asyncio.wait_for(ws.receive_json(), 60)
                        if msg.get("id") == my_id:
                            return msg.get("result", {})
                        _note(msg)

                def _note(msg):
                    method = msg.get("method")
                    if (method == "Runtime.consoleAPICalled" and msg["params"]["type"] in ("error", "warning", "assert")) or method == "Runtime.exceptionThrown":
                        problems.append(msg["params"])
                    elif method == "Log.entryAdded" and msg["params"]["entry"]["level"] == "error":
                        problems.append(msg["params"]["entry"])
                    return method

                for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
                    await send(domain)
                await send("Page.navigate", url=url)
                while _note(await asyncio.wait_for(ws.receive_json(), 60)) != "Page.loadEventFired":
                    pass
                expr = ("[document.querySelectorAll('details.run').length, document.getElementById('shown').textContent,"
                        " (document.getElementById('only-failed').click(), document.getElementById('shown').textContent)]")
                result = await send("Runtime.evaluate", expression=expr, returnByValue=True)
                await send("Runtime.evaluate", expression="1")  # drain late console events
                return result["result"]["value"], problems
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package: chromium)")
def test_report_loads_in_headless_chromium_without_console_errors(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_report(make_runs(), {"model": "m", "k": 1}))
    profile = tmp_path / "profile"
    profile.mkdir()
    value, problems = asyncio.run(_load_in_chromium(page.as_uri(), profile))
    assert problems == []
    assert value == [4, "4 of 4 runs shown", "2 of 4 runs shown"]
