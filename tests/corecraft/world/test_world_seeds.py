"""Invariants that hold for any seed, checked on small worlds drawn by hypothesis."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corecraft.world import World


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**31 - 1), scale=st.sampled_from([0.05, 0.1, 0.2]))
def test_any_seed_gives_a_consistent_world(seed: int, scale: float) -> None:
    world = World.build(seed=seed, scale=scale)
    assert world.seed == seed
    with world.reader() as r:
        db = r.conn

        def scalar(sql: str, *params: object) -> object:
            return db.execute(sql, params).fetchone()[0]

        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert scalar("SELECT COUNT(*) FROM orders WHERE total_cents != subtotal_cents - discount_cents + shipping_cents + tax_cents") == 0
        assert scalar("SELECT COUNT(*) FROM order_lines WHERE line_total_cents != quantity * unit_price_cents - discount_cents") == 0
        now = world.meta["now"]
        assert scalar("SELECT COUNT(*) FROM shipment_events WHERE occurred_at > ?", now) == 0
        assert scalar("SELECT COUNT(*) FROM ticket_messages WHERE sent_at > ?", now) == 0
        assert scalar("SELECT COUNT(*) FROM returns WHERE requested_at > ?", now) == 0
        placed = [row[0] for row in db.execute("SELECT placed_at FROM orders ORDER BY order_id")]
        assert placed == sorted(placed)
        # A ticket's thread starts with the customer's message, at the ticket's creation time.
        mismatched = scalar(
            """SELECT COUNT(*) FROM support_tickets t WHERE t.created_at != (SELECT MIN(sent_at) FROM ticket_messages m
               WHERE m.ticket_id = t.ticket_id)"""
        )
        assert mismatched == 0
    assert World.build(seed=seed, scale=scale).serialize() == world.serialize()
