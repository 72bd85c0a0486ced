"""Start and stop real `corecraft serve` processes, and connect real MCP clients to them."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "corecraft" / "tools"))  # corecraft_fuzz strategies

TOKEN = "test-token-5f1c"


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "corecraft.server", *args]


# Tokens a test server takes from its environment: only the ones a test passes on purpose (a developer's shell
# that exports them must not change what the tests see).
TOKEN_VARIABLES = ("CORECRAFT_SERVER_TOKEN", "CORECRAFT_TRAINER_TOKEN")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TOKEN_VARIABLES}
    return {**env, "PYTHONPATH": str(REPO), **(extra or {})}


@dataclass(frozen=True)
class HttpServer:
    url: str
    base: str
    token: str | None
    proc: subprocess.Popen


@contextlib.contextmanager
def running_http_server(db: Path | None, log: Path, token: str | None = TOKEN, extra: tuple[str, ...] = (),
                        env: Mapping[str, str] | None = None) -> Iterator[HttpServer]:
    """``db`` None: the server's own default world (the task set's, when it grades)."""
    args = ["--transport", "http", "--port", "0", *(["--db", str(db)] if db else []), *extra]
    args += ["--token", token] if token else []
    with log.open("w") as err:
        proc = subprocess.Popen(serve_command(*args), cwd=REPO, env=child_env(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 90
        while True:
            match = re.search(r"listening on (http://[\d.]+:(\d+))(/mcp)", log.read_text())
            if match:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield HttpServer(url=match.group(1) + match.group(3), base=match.group(1), token=token, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def http_client(server: HttpServer, episode: str | None, token: str | None = "default",
                      mode: str = "auto") -> AsyncIterator[Client]:
    headers = {}
    if episode is not None:
        headers["X-CoreCraft-Episode"] = episode
    token = server.token if token == "default" else token
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http, \
            Client(streamable_http_client(server.url, http_client=http), mode=mode) as client:
        yield client


def stdio_command(db: Path) -> list[str]:
    return serve_command("--db", str(db))


def stdio_params(db: Path) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "corecraft.server", "--db", str(db)],
                                 cwd=str(REPO), env=child_env())
