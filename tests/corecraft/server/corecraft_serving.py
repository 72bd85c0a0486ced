"""Start and stop real `corecraft serve` processes, and connect real MCP clients to them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from corecraft.server.spawn import spawned_http_server

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
    args = [*(["--db", str(db)] if db else []), *extra] + (["--token", token] if token else [])
    with spawned_http_server(args, log, cwd=REPO, env=child_env(env), start_timeout_s=90) as (url, proc):
        yield HttpServer(url=url, base=url.rsplit("/", 1)[0], token=token, proc=proc)


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
