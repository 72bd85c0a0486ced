"""Forks: isolated writable copies of an immutable base world, many at once, across threads."""

from __future__ import annotations

import hashlib
import pickle
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corecraft.world import World, WorldError


def email_of(conn: sqlite3.Connection, customer_id: str) -> str:
    return conn.execute("SELECT email FROM customers WHERE customer_id = ?", (customer_id,)).fetchone()[0]


def test_write_in_one_fork_is_seen_neither_in_base_nor_in_another_fork(world: World) -> None:
    before = hashlib.sha256(world.serialize()).hexdigest()
    with world.fork() as a, world.fork() as b:
        original = email_of(b.conn, "CUST-10001")
        with a.conn:
            a.conn.execute("UPDATE customers SET email = 'changed@example.com' WHERE customer_id = 'CUST-10001'")
            a.conn.execute("DELETE FROM ticket_messages")
        assert email_of(a.conn, "CUST-10001") == "changed@example.com"
        assert email_of(b.conn, "CUST-10001") == original
        assert b.conn.execute("SELECT COUNT(*) FROM ticket_messages").fetchone()[0] > 0
    with world.fork() as fresh:
        assert email_of(fresh.conn, "CUST-10001") == original
    assert hashlib.sha256(world.serialize()).hexdigest() == before


def test_forks_are_isolated_under_threads(world: World) -> None:
    customer_ids = [f"CUST-{10001 + i}" for i in range(32)]
    start = threading.Barrier(16)

    def episode(i: int) -> tuple[int, list[str]]:
        start.wait()
        with world.fork() as fork:
            mine = f"thread-{i}@example.com"
            with fork.conn:
                for cid in customer_ids:
                    fork.conn.execute("UPDATE customers SET email = ? WHERE customer_id = ?", (mine, cid))
            return i, [email_of(fork.conn, cid) for cid in customer_ids]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(episode, range(64)))
    for i, emails in results:
        assert emails == [f"thread-{i}@example.com"] * len(customer_ids)
    with world.fork() as fresh:
        assert all(not email_of(fresh.conn, cid).startswith("thread-") for cid in customer_ids)


def test_hundreds_of_forks_live_at_once(world: World) -> None:
    forks = [world.fork() for _ in range(200)]
    try:
        for i, fork in enumerate(forks[:: 20]):
            fork.conn.execute("UPDATE products SET price_cents = ? WHERE product_id = 'CPU-0001'", (i,))
        prices = [f.conn.execute("SELECT price_cents FROM products WHERE product_id = 'CPU-0001'").fetchone()[0] for f in forks[:: 20]]
        assert prices == list(range(len(prices)))
    finally:
        for fork in forks:
            fork.close()
    assert all(f.closed for f in forks)


def test_fork_grows_when_an_episode_inserts_rows(world: World) -> None:
    with world.fork() as fork:
        with fork.conn:
            fork.conn.executemany(
                "INSERT INTO audit_log (occurred_at, actor, action, entity_type, entity_id, details) VALUES (?, ?, ?, ?, ?, ?)",
                [("2026-03-16T16:00:00Z", "agent", "updateOrder", "orders", f"ORD-{i}", "x" * 200) for i in range(20_000)],
            )
        assert fork.conn.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0] == 20_000
        assert len(fork.serialize()) > world.size_bytes
    assert world.stats()["entity_types"]["orders"] == 640


def test_garbage_bytes_are_not_a_world() -> None:
    with pytest.raises(WorldError, match="not a SQLite database"):
        World.from_bytes(b"\x00" * 4096)


def test_fork_connection_enforces_foreign_keys_and_returns_rows(world: World) -> None:
    with world.fork() as fork:
        assert fork.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        row = fork.conn.execute("SELECT order_id, customer_id FROM orders LIMIT 1").fetchone()
        assert isinstance(row, sqlite3.Row) and row["order_id"].startswith("ORD-")
        with pytest.raises(sqlite3.IntegrityError):
            fork.conn.execute("UPDATE orders SET customer_id = 'CUST-NOPE' WHERE order_id = ?", (row["order_id"],))
        assert fork.today == world.today


def test_fork_connection_is_usable_from_another_thread(world: World) -> None:
    with world.fork() as fork, ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(lambda: fork.conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0]).result() > 0


def test_closed_fork_refuses_use(world: World) -> None:
    fork = world.fork()
    fork.close()
    fork.close()  # idempotent
    with pytest.raises(WorldError, match="closed"):
        _ = fork.conn


def test_reader_is_read_only(world: World) -> None:
    with world.reader() as reader, pytest.raises(sqlite3.OperationalError):
        reader.conn.execute("DELETE FROM orders")


def test_fork_serializes_its_own_state(world: World) -> None:
    with world.fork() as fork:
        with fork.conn:
            fork.conn.execute("UPDATE customers SET phone = '+1-555-000-0000' WHERE customer_id = 'CUST-10002'")
        snapshot = World.from_bytes(fork.serialize())
    with snapshot.reader() as r:
        assert r.conn.execute("SELECT phone FROM customers WHERE customer_id = 'CUST-10002'").fetchone()[0] == "+1-555-000-0000"


# Saving and opening ------------------------------------------------------------------------------------


def test_save_then_open_round_trips_bytes(world: World, tmp_path: Path) -> None:
    path = world.save(tmp_path / "world.db")
    opened = World.open(path)
    assert opened.serialize() == world.serialize()
    assert opened.seed == 0 and opened.today == world.today
    assert opened.stats() == world.stats()


def test_world_pickles_as_its_bytes(world: World) -> None:
    clone = pickle.loads(pickle.dumps(world))
    assert clone.serialize() == world.serialize() and clone.today == world.today


def test_open_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WorldError, match="no such file"):
        World.open(tmp_path / "absent.db")


def test_open_non_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("hello, not a database\n")
    with pytest.raises(WorldError, match="not a SQLite database"):
        World.open(path)


def test_open_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE things (x)")
    conn.commit()
    conn.close()
    with pytest.raises(WorldError, match="not a CoreCraft world"):
        World.open(path)


def test_open_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WorldError, match="directory"):
        World.open(tmp_path)


@pytest.mark.parametrize(("seed", "scale"), [(-1, 1.0), (0, 0.0), (0, -2.0), (0, float("nan")), (0, 1e9), ("3", 1.0), (True, 1.0)])
def test_bad_build_arguments_are_refused(seed: object, scale: object) -> None:
    with pytest.raises(WorldError):
        World.build(seed=seed, scale=scale)  # type: ignore[arg-type]


def test_a_sqlite_without_trigram_fts5_is_named_before_anything_fails(world: World, monkeypatch) -> None:
    """The search index needs FTS5's trigram tokenizer: without it, building or opening a world says so in
    one line instead of failing on the schema or on the first customer search."""
    import corecraft.world.world as world_module

    assert world_module.sqlite_has_trigram_fts5()  # this machine's SQLite has it
    monkeypatch.setattr(world_module, "sqlite_has_trigram_fts5", lambda: False)
    with pytest.raises(WorldError, match="lacks FTS5 with the trigram tokenizer"):
        World.build(seed=1)
    with pytest.raises(WorldError, match="lacks FTS5 with the trigram tokenizer"):
        World.from_bytes(world.serialize())
