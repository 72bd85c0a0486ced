"""Several HTTP server processes on one port, sharing the episodes (``corecraft serve --workers N``).

A Python process serves MCP calls on one core, and most of a call's CPU is the SDK's request handling, not the
tool. The parent binds the port, creates the shared episode directory and forks N workers that accept on the
same listening socket: the kernel hands each new connection to one of them. Episodes live as SQLite files
(``SharedEpisodeStore``), so any worker can serve any call of any episode and no request needs routing. The
parent only supervises: it forwards SIGINT/SIGTERM, stops every worker when one dies, and deletes the episode
files when it exits.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from types import FrameType

from mcp.server import MCPServer

from corecraft.server.app import HttpConfig, bind, serve_http
from corecraft.server.episodes import Episodes, SharedEpisodeStore, shared_episode_dir

MAX_WORKERS = 64
_BACKLOG = 2048


def serve_http_workers(
    make_server: Callable[[Episodes], MCPServer],
    config: HttpConfig,
    workers: int,
    world_bytes: bytes,
    *,
    idle_timeout_s: float,
    max_episodes: int,
    run: Callable[[Callable[[], Awaitable[None]]], None],
    ready: Callable[[int], None] | None = None,
) -> int:
    """Serve with ``workers`` processes until SIGINT/SIGTERM or a worker's death; the exit code (0: stopped
    on request). ``run`` runs a worker's event loop (the CLI's, with uvloop when installed). Raises ``OSError``
    when the port cannot be bound, before any worker starts."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be within 1-{MAX_WORKERS}, got {workers}")
    sock = bind(config.host, config.port)
    directory = shared_episode_dir()
    children: list[int] = []
    try:
        sock.listen(_BACKLOG)  # clients that connect before a worker is up wait in the backlog
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:  # the worker: never returns into the parent's code
                code = 1
                try:
                    store = SharedEpisodeStore(
                        directory, world_bytes, idle_timeout_s=idle_timeout_s, max_episodes=max_episodes
                    )
                    server = make_server(store)
                    gc.collect()
                    gc.freeze()  # as the one-process server does: keep long-lived objects out of GC scans
                    run(lambda server=server: serve_http(server, config, sock=sock))
                    code = 0
                except BaseException:  # a worker reports its crash and exits non-zero
                    traceback.print_exc()
                finally:
                    os._exit(code)
            children.append(pid)
        print(f"corecraft serve: {workers} workers (pids {' '.join(map(str, children))}), episodes in {directory}",
              file=sys.stderr, flush=True)
        if ready is not None:
            ready(sock.getsockname()[1])
        return _supervise(children)
    finally:
        _stop(children)
        shutil.rmtree(directory, ignore_errors=True)
        sock.close()


def _supervise(children: list[int]) -> int:
    """Wait for the workers. A signal stops them all (code 0); a worker dying on its own stops the rest (1)."""
    alive = set(children)
    requested = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal requested
        requested = True
        _signal_all(alive, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    failed = False
    try:
        while alive:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            alive.discard(pid)
            if not requested and not failed:
                failed = True
                print(f"corecraft serve: worker {pid} exited ({_describe(status)}); stopping the others",
                      file=sys.stderr, flush=True)
                _signal_all(alive, signal.SIGTERM)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 1 if failed else 0


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _signal_all(pids: set[int] | list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _stop(children: list[int], grace_s: float = 10.0) -> None:
    """Terminate and reap whatever workers are left: SIGTERM, then SIGKILL after ``grace_s``."""
    left = []
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                left.append(pid)
    _signal_all(left, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if _still_running(pid)]
        if left:
            time.sleep(0.05)
    _signal_all(left, signal.SIGKILL)
    for pid in left:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _still_running(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False
