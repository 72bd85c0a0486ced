"""What an episode changed: rows inserted, deleted and updated between two versions of a world (pure reads).

Graders use it to check side effects ("nothing but this order changed"), and people use it to see what an
agent did. Rows are matched by primary key; tables are compared whole, which takes a few tens of
milliseconds on the default world.
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


def _tables(conn: sqlite3.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]


def _key_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
    keys = [row[1] for row in sorted(info, key=lambda r: r[5]) if row[5] > 0]
    return keys or ["rowid"]


def _rows(conn: sqlite3.Connection, table: str, keys: list[str]) -> dict[tuple[Any, ...], Row]:
    select = "rowid AS rowid, *" if keys == ["rowid"] else "*"
    cursor = conn.execute(f'SELECT {select} FROM "{table}"')
    names = [d[0] for d in cursor.description]
    out = {}
    for values in cursor:
        row = dict(zip(names, values, strict=True))
        out[tuple(row[k] for k in keys)] = row
    return out


def diff(before: sqlite3.Connection, after: sqlite3.Connection) -> dict[str, TableChanges]:
    """Changed tables only, by name. A table present on one side only counts as all inserted/deleted."""
    changes: dict[str, TableChanges] = {}
    before_tables, after_tables = set(_tables(before)), set(_tables(after))
    for table in sorted(before_tables | after_tables):
        keys = _key_columns(after if table in after_tables else before, table)
        old = _rows(before, table, keys) if table in before_tables else {}
        new = _rows(after, table, keys) if table in after_tables else {}
        inserted = tuple(new[k] for k in new.keys() - old.keys())
        deleted = tuple(old[k] for k in old.keys() - new.keys())
        updated = tuple((old[k], new[k]) for k in old.keys() & new.keys() if old[k] != new[k])
        columns = frozenset(c for b, a in updated for c in a if b.get(c) != a.get(c))
        result = TableChanges(
            inserted=tuple(sorted(inserted, key=repr)),
            deleted=tuple(sorted(deleted, key=repr)),
            updated=tuple(sorted(updated, key=repr)),
            changed_columns=columns,
        )
        if result:
            changes[table] = result
    return changes
