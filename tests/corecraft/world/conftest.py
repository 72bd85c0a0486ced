"""One default world per test session: building it takes about a second."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from corecraft.world import World


@pytest.fixture(scope="session")
def world() -> World:
    return World.build(seed=0)


@pytest.fixture
def db(world: World) -> Iterator[sqlite3.Connection]:
    """A read-only view of the default world."""
    reader = world.reader()
    try:
        yield reader.conn
    finally:
        reader.close()
