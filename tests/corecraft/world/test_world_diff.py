"""An episode's changes, row by row: what graders read to check side effects."""

from __future__ import annotations

import pytest

from corecraft.world import World, WorldError
from corecraft.world.diff import diff


def test_untouched_fork_has_no_changes(world: World) -> None:
    with world.fork() as fork:
        fork.conn.execute("SELECT * FROM orders").fetchall()
        assert fork.changes() == {}


def test_changes_name_inserted_updated_and_deleted_rows(world: World) -> None:
    with world.fork() as fork:
        conn = fork.conn
        with conn:
            conn.execute("UPDATE orders SET status = 'cancelled', notes = 'by agent' WHERE order_id = 'ORD-200640'")
            conn.execute(
                "INSERT INTO audit_log (occurred_at, actor, action, entity_type, entity_id) "
                "VALUES ('2026-03-16T16:00:00Z', 'agent', 'updateOrder', 'orders', 'ORD-200640')"
            )
            message = conn.execute("SELECT message_id FROM ops_chat_messages WHERE thread_parent_id IS NULL "
                                   "AND message_id NOT IN (SELECT thread_parent_id FROM ops_chat_messages "
                                   "WHERE thread_parent_id IS NOT NULL) LIMIT 1").fetchone()[0]
            conn.execute("DELETE FROM ops_chat_messages WHERE message_id = ?", (message,))
        changes = fork.changes()
    assert set(changes) == {"orders", "audit_log", "ops_chat_messages"}
    (before, after), = changes["orders"].updated
    assert after["order_id"] == "ORD-200640" and after["status"] == "cancelled"
    assert before["status"] != "cancelled"
    assert changes["orders"].changed_columns == {"status", "notes"}
    assert [row["entity_id"] for row in changes["audit_log"].inserted] == ["ORD-200640"]
    assert [row["message_id"] for row in changes["ops_chat_messages"].deleted] == [message]


def test_composite_keys_match_rows(world: World) -> None:
    with world.fork() as fork:
        with fork.conn:
            fork.conn.execute(
                "UPDATE inventory SET quantity_on_hand = quantity_on_hand + 5 "
                "WHERE warehouse_id = 'WH-DFW' AND product_id = 'GPU-0001'"
            )
        with world.reader() as base:
            changes = diff(base.conn, fork.conn)
    (before, after), = changes["inventory"].updated
    assert after["quantity_on_hand"] == before["quantity_on_hand"] + 5
    assert not changes["inventory"].inserted and not changes["inventory"].deleted


def test_changes_refuse_an_open_transaction(world: World) -> None:
    with world.fork() as fork:
        fork.conn.execute("UPDATE orders SET status = 'cancelled' WHERE order_id = 'ORD-200001'")
        with pytest.raises(WorldError, match="open transaction"):
            fork.changes()
        fork.conn.commit()
        assert set(fork.changes()) == {"orders"}
