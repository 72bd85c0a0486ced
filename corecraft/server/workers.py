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
import ctypes
import gc
import math
import os
import resource
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn

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
    directory = shared_episode_dir(room_bytes=max_episodes * len(world_bytes))
    children: list[int] = []
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    try:
        sock.listen(_BACKLOG)  # clients that connect before a worker is up wait in the backlog
        # A stop signal arriving while workers are forked waits (blocked) until the parent can forward it.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        parent = os.getpid()
        try:
            for _ in range(workers):
                pid = os.fork()
                if pid == 0:  # the worker: never returns into the parent's code
                    _worker(parent, make_server, config, sock, directory, world_bytes, idle_timeout_s, max_episodes, run)
                children.append(pid)
            print(f"corecraft serve: {workers} workers (pids {' '.join(map(str, children))}), episodes in "
                  f"{directory}", file=sys.stderr, flush=True)
            if ready is not None:
                ready(sock.getsockname()[1])
            return _supervise(children, stop_signals)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    finally:
        _stop(children)
        shutil.rmtree(directory, ignore_errors=True)
        sock.close()


def _worker(
    parent: int,
    make_server: Callable[[Episodes], MCPServer],
    config: HttpConfig,
    sock: socket.socket,
    directory: Path,
    world_bytes: bytes,
    idle_timeout_s: float,
    max_episodes: int,
    run: Callable[[Callable[[], Awaitable[None]]], None],
) -> NoReturn:
    code = 1
    try:
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before the line above took effect
            return
        # SIGTERM (from the parent) stops a worker; SIGINT from a terminal's Ctrl-C reaches the whole process
        # group, and the parent turns it into SIGTERM for each worker, so workers ignore their own copy
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # uvicorn stops gracefully on SIGTERM, then re-raises it to the handler it found: this one, which
        # leaves through the same cleanup as below. It exits from within the handler rather than raising
        # SystemExit: a handler can run inside a callback (a weakref's, during an import), where an exception
        # is printed as "ignored" and the worker would carry on.
        signal.signal(signal.SIGTERM, lambda _signum, _frame: _leave(parent, directory, 0))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        _raise_open_file_limit()  # a connection (file descriptor) per episode served
        store = SharedEpisodeStore(directory, world_bytes, idle_timeout_s=idle_timeout_s, max_episodes=max_episodes)
        server = make_server(store)
        gc.collect()
        gc.freeze()  # as the one-process server does: keep long-lived objects out of GC scans
        run(lambda: serve_http(server, config, sock=sock))
        code = 0
    except SystemExit as exc:  # uvicorn exits this way when it cannot start
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # a worker reports its crash and exits non-zero
        traceback.print_exc()
    finally:
        _leave(parent, directory, code)


def _leave(parent: int, directory: Path, code: int) -> NoReturn:
    if os.getppid() != parent:  # orphaned (the parent was killed): nobody else will delete the episodes
        shutil.rmtree(directory, ignore_errors=True)
    os._exit(code)


def _die_with_parent() -> None:
    """Linux: the kernel sends this worker SIGTERM if the parent dies (even by SIGKILL), so no worker outlives
    it holding the port."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _raise_open_file_limit() -> None:
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


def _supervise(children: list[int], stop_signals: set[signal.Signals], grace_s: float = 8.0) -> int:
    """Wait for the workers. A signal stops them all (code 0); a worker dying on its own stops the rest (1).
    Workers still running ``grace_s`` after being told to stop are killed."""
    alive = set(children)
    stop_by = math.inf
    requested = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal requested, stop_by
        requested = True
        stop_by = min(stop_by, time.monotonic() + grace_s)
        _signal_all(alive, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in stop_signals}
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)  # a signal that came during the forks runs now
    failed = False
    try:
        while alive:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if time.monotonic() > stop_by:
                    _signal_all(alive, signal.SIGKILL)
                time.sleep(0.05)
                continue
            alive.discard(pid)
            if not requested and not failed:
                failed = True
                stop_by = time.monotonic() + grace_s
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
