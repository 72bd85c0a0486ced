"""What an episode changed: rows inserted, deleted and updated between two versions of a world (pure reads).

Graders use it to check side effects ("nothing but this order changed"), and people use it to see what an
agent did. Rows are matched by primary key.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]


@dataclass(frozen=True)
class TableChanges:
    inserted: tuple[Row, ...] = ()
    deleted: tuple[Row, ...] = ()
    updated: tuple[tuple[Row, Row], ...] = ()  # (before, after)
    changed_columns: frozenset[str] = field(default_factory=frozenset)

    def __bool__(self) -> bool:
        return bool(self.inserted or self.deleted or self.updated)


def _tables(conn: sqlite3.Connection, schema: str) -> list[str]:
    """The data tables. Virtual tables (the world's FTS5 search indexes) and their shadow tables hold only what
    triggers derive from the data tables: a change to them is already a change to a data table."""
    rows = conn.execute(
        f"SELECT name, sql FROM {schema}.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()
    virtual = [name for name, sql in rows if (sql or "").upper().startswith("CREATE VIRTUAL TABLE")]
    return [name for name, _ in rows if not any(name == v or name.startswith(v + "_") for v in virtual)]


def _key_columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    info = conn.execute(f'PRAGMA {schema}.table_info("{table}")').fetchall()
    keys = [row[1] for row in sorted(info, key=lambda r: r[5]) if row[5] > 0]
    return keys or ["rowid"]


def _rows(conn: sqlite3.Connection, sql: str, keys: list[str]) -> dict[tuple[Any, ...], Row]:
    cursor = conn.execute(sql)
    names = [d[0] for d in cursor.description]
    out = {}
    for values in cursor:
        row = dict(zip(names, values, strict=True))
        out[tuple(row[k] for k in keys)] = row
    return out


def diff_bytes(before: bytes, after: bytes) -> dict[str, TableChanges]:
    """Changed tables only, by name, between two serialized databases.

    Both go into one scratch connection (schemas ``a`` and ``b``) so SQLite's EXCEPT finds the differing rows
    in C; only those few rows are matched by primary key in Python.
    """
    conn = sqlite3.connect(":memory:")
    try:
        for schema, data in (("a", before), ("b", after)):
            conn.execute(f"ATTACH DATABASE ':memory:' AS {schema}")
            conn.deserialize(data, name=schema)
        changes: dict[str, TableChanges] = {}
        tables_a = set(_tables(conn, "a"))
        tables_b = set(_tables(conn, "b"))
        for table in sorted(tables_a | tables_b):
            keys = _key_columns(conn, "b" if table in tables_b else "a", table)
            cols = "rowid AS rowid, *" if keys == ["rowid"] else "*"
            if table in tables_a and table in tables_b:
                old = _rows(
                    conn, f'SELECT {cols} FROM a."{table}" EXCEPT SELECT {cols} FROM b."{table}"', keys
                )
                new = _rows(
                    conn, f'SELECT {cols} FROM b."{table}" EXCEPT SELECT {cols} FROM a."{table}"', keys
                )
            else:
                old = _rows(conn, f'SELECT {cols} FROM a."{table}"', keys) if table in tables_a else {}
                new = _rows(conn, f'SELECT {cols} FROM b."{table}"', keys) if table in tables_b else {}
            updated = tuple((old[k], new[k]) for k in old.keys() & new.keys())
            result = TableChanges(
                inserted=tuple(sorted((new[k] for k in new.keys() - old.keys()), key=repr)),
                deleted=tuple(sorted((old[k] for k in old.keys() - new.keys()), key=repr)),
                updated=tuple(sorted(updated, key=repr)),
                changed_columns=frozenset(c for b, a in updated for c in a if b.get(c) != a.get(c)),
            )
            if result:
                changes[table] = result
        return changes
    finally:
        conn.close()


def diff(before: sqlite3.Connection, after: sqlite3.Connection) -> dict[str, TableChanges]:
    """Changed tables only, by name, between two open databases (their main schemas)."""
    return diff_bytes(before.serialize(), after.serialize())
