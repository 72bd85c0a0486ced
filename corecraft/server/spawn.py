"""``corecraft serve --transport http`` as a child process: started on a free loopback port, waited for until it
listens, and stopped (terminated, then killed) when the block ends. For trainers that start their own tool
fleet, benchmarks and tests."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

_LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)(/mcp)")


@contextlib.contextmanager
def spawned_http_server(args: Sequence[str], log: Path, *, cwd: Path | None = None,
                        env: Mapping[str, str] | None = None, start_timeout_s: float = 120.0,
                        ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yields ``(MCP URL, process)``; ``args`` are the server's options beside ``--transport http --port 0``.
    Its stderr (the startup line, warnings) goes to ``log``; a server that exits or does not listen within
    ``start_timeout_s`` raises with that log."""
    command = [sys.executable, "-m", "corecraft.server", "--transport", "http", "--port", "0", *args]
    with log.open("w") as err:
        proc = subprocess.Popen(command, cwd=cwd, env=None if env is None else dict(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not (match := _LISTENING.search(log.read_text())):
            if proc.poll() is not None:
                raise RuntimeError(f"corecraft serve exited early:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"corecraft serve did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield match.group(1) + match.group(2), proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
