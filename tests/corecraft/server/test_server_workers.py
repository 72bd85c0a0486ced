"""`corecraft serve --transport http --workers N`: worker processes on one port share every episode, and the
parent supervises them (stops on a signal, stops all when one dies, leaves no episode files behind)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx2
import pytest
from corecraft_serving import TOKEN, running_http_server

from corecraft.cli import main as corecraft_main

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _workers_line(log: Path) -> tuple[list[int], Path]:
    match = re.search(r"(\d+) workers \(pids ([\d ]+)\), episodes in (\S+)", log.read_text())
    assert match, log.read_text()
    return [int(p) for p in match.group(2).split()], Path(match.group(3))


def _call(base: str, episode: str, name: str, arguments: dict) -> dict:
    """One tools/call on a fresh connection (so the kernel may hand it to either worker)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    headers = {**AUTH, "X-CoreCraft-Episode": episode, "accept": "application/json, text/event-stream"}
    response = httpx2.post(f"{base}/mcp", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def _wait_exit(pid: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running")


def test_every_worker_serves_every_episode_and_a_signal_stops_them_all(world_db, tmp_path):
    log = tmp_path / "workers.log"
    with running_http_server(world_db, log, extra=("--workers", "2")) as server:
        pids, episodes_dir = _workers_line(log)
        assert len(pids) == 2 and episodes_dir.is_dir()
        created = _call(server.base, "spread", "createCustomer",
                        {"first_name": "Ada", "last_name": "Byte", "email": "ada.spread@example.com"})
        assert not created.get("isError"), created
        seen = set()
        for _ in range(200):  # fresh connections until both workers have answered
            found = _call(server.base, "spread", "searchCustomers", {"email": "ada.spread@example.com"})
            assert found["structuredContent"]["total_results"] == 1  # whichever worker serves it
            other = _call(server.base, "elsewhere", "searchCustomers", {"email": "ada.spread@example.com"})
            assert other["structuredContent"]["total_results"] == 0  # episodes stay isolated
            seen.add(httpx2.get(f"{server.base}/health", headers=AUTH).json()["worker_pid"])
            if seen == set(pids):
                break
        assert seen == set(pids)
        assert httpx2.get(f"{server.base}/health", headers=AUTH).json()["episodes"] == 2
        assert httpx2.delete(f"{server.base}/episodes/spread", headers=AUTH).status_code == 204
        again = _call(server.base, "spread", "searchCustomers", {"email": "ada.spread@example.com"})
        assert again["structuredContent"]["total_results"] == 0  # ended: every worker starts it afresh
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    for pid in pids:
        _wait_exit(pid)
    assert not episodes_dir.exists()


def test_a_dying_worker_stops_the_server_with_an_error(world_db, tmp_path):
    log = tmp_path / "dying.log"
    with running_http_server(world_db, log, extra=("--workers", "2")) as server:
        pids, episodes_dir = _workers_line(log)
        os.kill(pids[0], signal.SIGKILL)
        assert server.proc.wait(timeout=30) == 1
        assert f"worker {pids[0]} exited (killed by SIGKILL); stopping the others" in log.read_text()
    _wait_exit(pids[1])
    assert not episodes_dir.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--transport", "http", "--workers", "0"], "--workers must be within 1-64, got 0"),
        (["--workers", "2"], "--workers applies to --transport http"),
    ],
)
def test_serve_refuses_a_bad_worker_count_in_one_line(world_db, capsys, args, message):
    assert corecraft_main(["serve", "--db", str(world_db), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_workers_do_not_outlive_a_killed_parent_and_ctrl_c_stops_cleanly(world_db, tmp_path):
    log = tmp_path / "orphans.log"
    with running_http_server(world_db, log, extra=("--workers", "2")) as server:
        pids, orphaned_dir = _workers_line(log)
        server.proc.kill()  # SIGKILL: no chance to stop the workers itself
        server.proc.wait(timeout=10)
    for pid in pids:
        _wait_exit(pid)  # the kernel told them (PR_SET_PDEATHSIG)
    assert not orphaned_dir.exists()  # the orphaned workers deleted the episodes on their way out
    log = tmp_path / "ctrl-c.log"
    with running_http_server(world_db, log, extra=("--workers", "2")) as server:
        pids, episodes_dir = _workers_line(log)
        for pid in [server.proc.pid, *pids]:  # what a terminal's Ctrl-C does: SIGINT to the whole group
            os.kill(pid, signal.SIGINT)
        assert server.proc.wait(timeout=30) == 0
    for pid in pids:
        _wait_exit(pid)
    assert "Traceback" not in log.read_text()
    assert not episodes_dir.exists()
