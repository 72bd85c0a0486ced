"""A saved world on disk, and a real `corecraft serve --transport http` process per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from corecraft_serving import HttpServer, running_http_server

from corecraft.world import World


@pytest.fixture(scope="session")
def world() -> World:
    return World.build(seed=0)


@pytest.fixture(scope="session")
def world_db(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return world.save(tmp_path_factory.mktemp("world") / "world.db")


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def http_server(
    world_db: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[HttpServer]:
    """One server process with in-memory forks, and two worker processes sharing episode files: every HTTP
    test runs against both."""
    extra = ("--workers", str(request.param))
    with running_http_server(world_db, tmp_path_factory.mktemp("log") / "server.log", extra=extra) as server:
        yield server
    assert server.proc.returncode is not None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
