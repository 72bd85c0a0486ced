"""ForkPool: forks on reused connections are fresh copies of the world, as new forks are."""

from __future__ import annotations

import sqlite3

import pytest

from corecraft.world import ForkPool, World, WorldError
from corecraft.world.connection import memoized


def email_of(conn: sqlite3.Connection, customer_id: str) -> str:
    return conn.execute("SELECT email FROM customers WHERE customer_id = ?", (customer_id,)).fetchone()[0]


def test_a_reused_connection_holds_the_world_not_the_last_episode(world: World) -> None:
    pool = ForkPool(world, spares=1)
    first = pool.take()
    original = email_of(first.conn, "CUST-10001")
    conn = first.conn
    assert conn.in_transaction  # the episode's writes go into the pool's transaction
    conn.execute("SAVEPOINT tool")  # as a writing tool does (corecraft.tools.registry.execute)
    conn.execute("UPDATE customers SET email = 'changed@example.com' WHERE customer_id = 'CUST-10001'")
    conn.execute("DELETE FROM ticket_messages")
    conn.execute("RELEASE tool")
    assert email_of(conn, "CUST-10001") == "changed@example.com"
    pool.give(first)
    assert first.closed
    with pytest.raises(WorldError):
        first.conn  # noqa: B018  (the fork given back is closed for whoever still holds it)

    second = pool.take()
    assert second.conn is conn  # the same connection, reused
    assert email_of(second.conn, "CUST-10001") == original
    assert second.conn.execute("SELECT COUNT(*) FROM ticket_messages").fetchone()[0] > 0
    assert second.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert isinstance(second.conn.execute("SELECT 1 AS one").fetchone(), sqlite3.Row)
    pool.give(second)
    pool.close()


def test_a_reused_connection_forgets_its_memo(world: World) -> None:
    pool = ForkPool(world, spares=1)
    fork = pool.take()
    assert memoized(fork.conn, "probe", lambda c: "episode one") == "episode one"
    pool.give(fork)
    again = pool.take()
    assert memoized(again.conn, "probe", lambda c: "episode two") == "episode two"
    pool.close()


def test_spares_are_capped(world: World) -> None:
    pool = ForkPool(world, spares=1)
    a, b = pool.take(), pool.take()
    kept, dropped = a.conn, b.conn
    pool.give(a)
    pool.give(b)  # no room: closed
    with pytest.raises(sqlite3.ProgrammingError):
        dropped.execute("SELECT 1")
    assert pool.take().conn is kept
    pool.close()


def test_a_connection_whose_episode_committed_is_never_reused(world: World) -> None:
    """A commit would outlive the rollback: the pool sees its marker survive and closes the connection."""
    pool = ForkPool(world, spares=2)
    fork = pool.take()
    conn = fork.conn
    conn.execute("DELETE FROM ticket_messages")
    conn.commit()  # nothing in corecraft does this; a caller could
    pool.give(fork)
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    fresh = pool.take()
    assert fresh.conn is not conn
    assert fresh.conn.execute("SELECT COUNT(*) FROM ticket_messages").fetchone()[0] > 0
    pool.give(fresh)
    pool.close()


def test_no_spares_is_a_plain_fork(world: World) -> None:
    pool = ForkPool(world, spares=0)
    fork = pool.take()
    conn = fork.conn
    pool.give(fork)
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    with pytest.raises(ValueError):
        ForkPool(world, spares=-1)
