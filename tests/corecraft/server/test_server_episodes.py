"""Episodes on real world forks: created on first use, reused, freed on end, on idle timeout, and capped.

Both stores pass the same tests: in-memory forks (one server process) and episode files shared by several
worker processes (here: several store instances on one directory, as the workers hold them).
"""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from corecraft.server.episodes import (
    DEFAULT_EPISODE,
    EpisodeBusy,
    EpisodeError,
    EpisodeManager,
    SharedEpisodeStore,
    episode_from_headers,
)
from corecraft.tools.errors import ToolError
from corecraft.tools.registry import execute, registered


@pytest.fixture(params=["memory", "shared"])
def make_store(request, world, tmp_path):
    """A factory of stores of one kind; shared stores made by one factory share one directory."""
    made = []

    def make(**kwargs):
        if request.param == "memory":
            store = EpisodeManager(world.fork, **kwargs)
        else:
            store = SharedEpisodeStore(tmp_path, world.serialize(), **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close_all()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_first_use_forks_and_later_calls_reuse_the_same_fork(make_store):
    episodes = make_store()
    a = episodes.conn("a")
    a.execute("UPDATE customers SET first_name = 'Changed' WHERE rowid = 1")
    a.commit()
    assert episodes.conn("a") is a
    b = episodes.conn("b")
    assert b.execute("SELECT first_name FROM customers WHERE rowid = 1").fetchone()[0] != "Changed"
    assert episodes.ids() == ["a", "b"]
    episodes.close_all()


def test_ending_an_episode_closes_its_fork(make_store):
    episodes = make_store()
    conn = episodes.conn("a")
    assert episodes.end("a") is True
    assert episodes.end("a") is False
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    assert len(episodes) == 0


def test_idle_episodes_are_freed_by_the_sweep(make_store):
    clock = Clock()
    episodes = make_store(idle_timeout_s=60, clock=clock)
    episodes.conn("old")
    clock.now = 50
    episodes.conn("young")
    clock.now = 100
    assert episodes.sweep() == ["old"]
    assert episodes.ids() == ["young"]
    episodes.close_all()


def test_episode_cap_refuses_new_episodes_until_idle_ones_go(make_store):
    clock = Clock()
    episodes = make_store(idle_timeout_s=10, max_episodes=2, clock=clock)
    episodes.conn("a")
    episodes.conn("b")
    with pytest.raises(EpisodeError, match="too many open episodes"):
        episodes.conn("c")
    clock.now = 11
    episodes.conn("c")  # a and b were idle: swept to make room
    assert episodes.ids() == ["c"]
    episodes.close_all()


def test_episode_header_is_read_and_validated():
    assert episode_from_headers(None) == DEFAULT_EPISODE
    assert episode_from_headers({}) == DEFAULT_EPISODE
    assert episode_from_headers({"x-corecraft-episode": "run-7:sample.3"}) == "run-7:sample.3"
    for bad in ("", "has space", "x" * 129, "../etc", "ünïcode"):
        with pytest.raises(EpisodeError, match="malformed"):
            episode_from_headers({"x-corecraft-episode": bad})


def _create_customer(conn: sqlite3.Connection, email: str) -> dict:
    return execute(registered()["createCustomer"], conn,
                   registered()["createCustomer"].validate({"first_name": "Ada", "last_name": "Byte", "email": email}))


def _has_customer(conn: sqlite3.Connection, email: str) -> bool:
    return conn.execute("SELECT COUNT(*) FROM customers WHERE email = ?", (email,)).fetchone()[0] == 1


def test_shared_episodes_are_one_state_for_every_worker_and_isolated_from_each_other(world, tmp_path):
    worker_a = SharedEpisodeStore(tmp_path, world.serialize())
    worker_b = SharedEpisodeStore(tmp_path, world.serialize())
    with worker_a.session("ep-1", writes=True) as conn:
        _create_customer(conn, "ada@example.com")
    with worker_b.session("ep-1", writes=False) as conn:  # the other worker serves the episode's next call
        assert _has_customer(conn, "ada@example.com")
    with worker_b.session("ep-2", writes=False) as conn:  # another episode: the world as built
        assert not _has_customer(conn, "ada@example.com")
    assert worker_a.ids() == worker_b.ids() == ["ep-1", "ep-2"]
    # Ending in one worker restarts the episode for all: the other's open connection is replaced.
    assert worker_a.end("ep-1") is True
    assert worker_b.end("ep-1") is False
    with worker_b.session("ep-1", writes=False) as conn:
        assert not _has_customer(conn, "ada@example.com")
    # A worker that finds the episode's file already there (it lost the race to create it) uses that file.
    with worker_a.session("ep-2", writes=True) as conn:
        _create_customer(conn, "late@example.com")
    worker_b._create(tmp_path / "ep-2.db", 0.0)
    with worker_b.session("ep-2", writes=False) as conn:
        assert _has_customer(conn, "late@example.com")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep-1.db", "ep-2.db"]  # no temporaries left
    worker_a.close_all()
    worker_b.close_all()


def test_a_failing_write_on_a_shared_episode_changes_nothing(world, tmp_path):
    store = SharedEpisodeStore(tmp_path, world.serialize())
    with pytest.raises(ToolError), store.session("ep", writes=True) as conn:
        _create_customer(conn, "first@example.com")
        raise ToolError("a later step of the same call failed")
    with store.session("ep", writes=False) as conn:
        assert not _has_customer(conn, "first@example.com")
    store.close_all()


def test_concurrent_writers_on_one_shared_episode_queue_instead_of_failing(world, tmp_path):
    """Two workers writing the same episode at once: BEGIN IMMEDIATE takes the write lock up front, so the
    second waits for the first (busy timeout) instead of both deadlocking on a lock upgrade."""
    stores = [SharedEpisodeStore(tmp_path, world.serialize()) for _ in range(2)]
    stores[0].conn("ep")  # created before the race, so both open the same file
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def writer(n: int) -> None:
        try:
            barrier.wait()
            for i in range(20):
                with stores[n].session("ep", writes=True) as conn:
                    _create_customer(conn, f"w{n}-{i}@example.com")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with stores[1].session("ep", writes=False) as conn:
        assert conn.execute("SELECT COUNT(*) FROM customers WHERE email LIKE 'w_-%'").fetchone()[0] == 40
    for store in stores:
        store.close_all()


def test_shared_episode_files_are_swept_by_any_worker_and_ids_are_checked(world, tmp_path):
    clock = Clock()
    a = SharedEpisodeStore(tmp_path, world.serialize(), idle_timeout_s=60, clock=clock)
    b = SharedEpisodeStore(tmp_path, world.serialize(), idle_timeout_s=60, clock=clock)
    old = a.conn("old")
    clock.now = 50
    b.conn("young")
    clock.now = 100
    assert b.sweep() == ["old"]  # b never served "old": the file's mtime is the shared last use
    assert a.ids() == ["young"]
    a.sweep()  # a closes its connection to the deleted file
    with pytest.raises(sqlite3.ProgrammingError):
        old.execute("SELECT 1")
    with pytest.raises(EpisodeError, match="malformed"):
        a.conn("../escape")
    assert not os.path.exists(tmp_path.parent / "escape.db")
    a.close_all()
    b.close_all()


def test_a_commit_refused_by_a_lock_leaves_no_transaction_open(world, tmp_path):
    """Another worker reading the episode holds its lock past this writer's busy timeout: the COMMIT fails,
    the call's writes are rolled back, and the episode's next call works (no transaction left open)."""
    reader = SharedEpisodeStore(tmp_path, world.serialize())
    writer = SharedEpisodeStore(tmp_path, world.serialize(), busy_timeout_ms=50)
    with reader.session("ep", writes=False) as held:
        held.execute("SELECT COUNT(*) FROM customers").fetchone()  # a shared lock until the session ends
        with pytest.raises(sqlite3.OperationalError, match="locked"), writer.session("ep", writes=True) as conn:
            _create_customer(conn, "blocked@example.com")
        assert not writer.conn("ep").in_transaction
    with writer.session("ep", writes=True) as conn:
        _create_customer(conn, "later@example.com")
    with reader.session("ep", writes=False) as conn:
        assert _has_customer(conn, "later@example.com") and not _has_customer(conn, "blocked@example.com")
    reader.close_all()
    writer.close_all()


def test_a_shared_episode_deleted_under_a_worker_is_never_reopened_as_an_empty_database(world, tmp_path):
    store = SharedEpisodeStore(tmp_path, world.serialize())
    with pytest.raises(sqlite3.OperationalError):
        store._open(str(tmp_path / "gone.db"))
    assert not (tmp_path / "gone.db").exists()
    conn = store.conn("ep")
    os.unlink(tmp_path / "ep.db")  # another worker ended it
    with store.session("ep", writes=False) as fresh:  # started afresh from the world, with all its tables
        assert fresh is not conn
        assert fresh.execute("SELECT COUNT(*) FROM customers").fetchone()[0] > 0
    store.close_all()


def test_a_snapshot_is_a_private_read_only_copy_that_creates_and_touches_nothing(make_store):
    clock = Clock()
    episodes = make_store(idle_timeout_s=60, clock=clock)
    assert episodes.snapshot("never") is None and episodes.ids() == []  # looked, created nothing
    with episodes.session("a", writes=True) as conn:
        conn.execute("UPDATE customers SET first_name = 'Graded' WHERE rowid = 1")
    episodes.conn("a").commit()  # as a tool does (a shared store's session has committed already: a no-op)
    copy = episodes.snapshot("a")
    assert copy is not None
    try:
        row = copy.execute("SELECT first_name FROM customers WHERE rowid = 1").fetchone()
        assert row["first_name"] == "Graded"  # the episode's writes, rows by name as on a fork
        with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database"):
            copy.execute("UPDATE customers SET first_name = 'Tampered' WHERE rowid = 1")
        with episodes.session("a", writes=True) as conn:  # the episode goes on; the copy stays as it was
            conn.execute("UPDATE customers SET first_name = 'Later' WHERE rowid = 1")
        episodes.conn("a").commit()
        assert copy.execute("SELECT first_name FROM customers WHERE rowid = 1").fetchone()[0] == "Graded"
        # usable from another thread (grading runs on one of its own)
        seen: list[str] = []
        thread = threading.Thread(target=lambda: seen.append(
            copy.execute("SELECT first_name FROM customers WHERE rowid = 1").fetchone()[0]))
        thread.start()
        thread.join()
        assert seen == ["Graded"]
    finally:
        copy.close()
    # a snapshot is no use: the episode is freed when idle as if nobody had looked
    clock.now = 50
    episodes.snapshot("a")
    clock.now = 61 if isinstance(episodes, EpisodeManager) else os.stat(episodes.directory / "a.db").st_mtime + 61
    assert episodes.sweep() == ["a"]
    assert episodes.snapshot("a") is None  # ended


def test_a_snapshot_of_an_episode_mid_call_is_refused_never_waited_for_forever(make_store):
    episodes = make_store()
    conn = episodes.conn("a")
    if isinstance(episodes, EpisodeManager):
        # a fork mid-transaction (a tool call in progress): SQLite could not copy it, and Python's backup would
        # retry that forever
        conn.execute("UPDATE customers SET first_name = 'Half' WHERE rowid = 1")
        with pytest.raises(EpisodeBusy, match="tool call in progress"):
            episodes.snapshot("a")
        conn.rollback()
    else:
        # another worker holding the file's exclusive lock past the busy timeout
        other = SharedEpisodeStore(episodes.directory, b"", busy_timeout_ms=100)
        shared = SharedEpisodeStore(episodes.directory, b"", busy_timeout_ms=100)
        writer = other.conn("a")
        writer.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(EpisodeBusy, match="stayed locked"):
                shared.snapshot("a")
            # a writer that has not reached its commit (RESERVED lock) holds no reader up: the copy is the state
            # before its transaction
            writer.execute("ROLLBACK")
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("UPDATE customers SET first_name = 'Uncommitted' WHERE rowid = 1")
            copy = shared.snapshot("a")
            assert copy is not None
            assert copy.execute("SELECT first_name FROM customers WHERE rowid = 1").fetchone()[0] != "Uncommitted"
            copy.close()
        finally:
            writer.execute("ROLLBACK")
            other.close_all()
    copy = episodes.snapshot("a")
    assert copy is not None
    copy.close()
