"""The SQLite connection of a world or an episode: ``sqlite3.Connection`` plus a memo of settled reads.

Tools read a few small tables on most calls that no tool ever writes (the active policies' numbers, the
compatibility rules, the loyalty tiers, the world's date). ``memoized`` keeps such a read per connection and
serves it again while the database is provably unchanged: the connection's own ``total_changes`` has not moved
and, for a database that other connections can write too (an episode file shared by server workers),
neither has ``PRAGMA data_version``. Any write, by anyone, empties the memo; so does a rolled-back write tool
(``forget``), whose reads may have seen its undone changes. An in-memory fork is private to its connection,
so there the check is one integer comparison.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class WorldConnection(sqlite3.Connection):
    """Pass as ``sqlite3.connect(..., factory=WorldConnection)``; set ``shared`` when other connections may
    write the same database."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shared = False
        self._memo: dict[Hashable, Any] = {}
        self._memo_version: tuple[int, int] | None = None

    def _version(self) -> tuple[int, int]:
        data_version = self.execute("PRAGMA data_version").fetchone()[0] if self.shared else 0
        return self.total_changes, data_version

    def memo(self, key: Hashable, read: Callable[[sqlite3.Connection], T]) -> T:
        version = self._version()
        if version != self._memo_version:
            self._memo.clear()
            self._memo_version = version
        try:
            return self._memo[key]
        except KeyError:
            value = self._memo[key] = read(self)
            return value

    def forget(self) -> None:
        self._memo.clear()
        self._memo_version = None


def memoized(conn: sqlite3.Connection, key: Hashable, read: Callable[[sqlite3.Connection], T]) -> T:
    """``read(conn)``, served from the connection's memo while its database is unchanged (see the module
    docstring). Only for reads of tables no tool writes, returning values nobody mutates (tuples, rows,
    frozen mappings): the same object is handed to every caller. Any other connection just reads."""
    if isinstance(conn, WorldConnection):
        return conn.memo(key, read)
    return read(conn)


def forget(conn: sqlite3.Connection) -> None:
    """Empty the memo: after rolling back a write, whose reads may have seen the undone changes."""
    if isinstance(conn, WorldConnection):
        conn.forget()
