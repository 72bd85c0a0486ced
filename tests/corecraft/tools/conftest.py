"""A real generated world for the tool tests (built once per session) and a fresh fork per test."""

from __future__ import annotations

import pytest

from corecraft.world import World


@pytest.fixture(scope="session")
def world() -> World:
    return World.build(seed=0)


@pytest.fixture
def fork(world: World):
    with world.fork() as f:
        yield f


@pytest.fixture
def conn(fork):
    return fork.conn
