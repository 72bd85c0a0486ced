"""Generate a CoreCraft world: run the sections in order, insert their rows with sqlite-utils, return bytes.

Same (seed, scale, data files) -> byte-identical database: sections draw only from seeded ``random.Random``
streams and the world's fixed ``today``; tables are inserted in the schema's order and the file is VACUUMed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import sqlite_utils

from corecraft.world.data import WorldData, load
from corecraft.world.generator import GENERATOR_VERSION, Generator, Row, ts
from corecraft.world.schema import DDL, SCHEMA_NAME, SCHEMA_VERSION, TABLES, optimize_text_indexes
from corecraft.world.sections import catalog, customers, knowledge, orders, reference, support

# Order matters: each section reads what the ones before it built.
PIPELINE: tuple[Callable[[Generator], None], ...] = (
    reference.reference_data,
    catalog.catalog,
    catalog.inventory,
    knowledge.policies,
    knowledge.knowledge_base,
    knowledge.compatibility_rules,
    knowledge.warranty_policies,
    knowledge.promotions,
    customers.customers,
    customers.builds,
    orders.orders,
    support.support_tickets,
    support.returns_and_refunds,
    support.warranty_claims,
    support.ops_chat,
    customers.finalize_customers,
)


Progress = Callable[[str], None]  # called with the name of each step as it starts


def generate_rows(
    seed: int, scale: float, data: WorldData | None = None, progress: Progress | None = None
) -> dict[str, list[Row]]:
    """Every table's rows for (seed, scale), in memory."""
    g = Generator(seed, scale, data or load())
    for section in PIPELINE:
        if progress:
            progress(section.__name__)
        section(g)
    g.t["meta"] = [
        {"key": "schema_name", "value": SCHEMA_NAME},
        {"key": "schema_version", "value": str(SCHEMA_VERSION)},
        {"key": "generator_version", "value": GENERATOR_VERSION},
        {"key": "seed", "value": str(seed)},
        {"key": "scale", "value": repr(scale)},
        {"key": "today", "value": g.today.isoformat()},
        {"key": "now", "value": ts(g.now)},
        {"key": "currency", "value": "USD"},
    ]
    return g.t


def generate(
    seed: int, scale: float, data: WorldData | None = None, progress: Progress | None = None
) -> bytes:
    """Build the world for (seed, scale) and return the SQLite database as bytes."""
    tables = generate_rows(seed, scale, data, progress)
    if progress:
        progress("insert")
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(DDL)
        db = sqlite_utils.Database(conn)
        with conn:
            for table in TABLES:
                rows = tables.get(table, [])
                if rows:
                    db[table].insert_all(rows, batch_size=500)  # type: ignore[union-attr]
            optimize_text_indexes(conn)
        problems = conn.execute("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise RuntimeError(f"generator produced dangling references: {problems[:5]}")
        conn.execute("VACUUM")
        return conn.serialize()
    finally:
        conn.close()
