"""The World: an immutable, serialized CoreCraft database, and Forks: isolated writable copies per episode.

The base world holds only the database's bytes (``bytes`` are immutable), so nothing can change it and any
number of threads can fork it at once. A fork is ``sqlite3.Connection.deserialize`` of those bytes into a
private in-memory database: a fresh copy in well under a millisecond, freed when the fork closes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import math
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Self

from corecraft.world.connection import WorldConnection, forget
from corecraft.world.diff import TableChanges, diff_bytes
from corecraft.world.schema import (
    CORE_ENTITY_TYPES,
    ENTITY_TABLES,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    TABLES,
    TEXT_INDEXES,
    sqlite_has_trigram_fts5,
)

_SQLITE_MAGIC = b"SQLite format 3\x00"
# scale 100 is about 1.3 million rows and a couple of minutes; beyond that a typo would just exhaust memory.
MAX_SCALE = 100.0


def digest(data: bytes) -> str:
    """sha256 of a database's bytes with the header's writer-version field (bytes 96-99) masked.

    SQLite stamps the library version that last wrote the file there, so raw bytes differ between SQLite
    releases even when every page is the same; the digest does not. Everything else (pages, schema, rows) is
    compared as is, so a release that lays pages out differently still digests differently.
    """
    return hashlib.sha256(data[:96] + b"\x00\x00\x00\x00" + data[100:]).hexdigest()


class WorldError(Exception):
    """A world cannot be built, opened or saved; the message says why in one line."""


def _check_header(data: bytes, origin: str) -> None:
    """Refuse bytes whose SQLite header is implausible or promises more pages than the file holds.

    SQLite reads pages lazily, so a truncated or overwritten file deserializes fine and only fails on the first
    query that reaches a missing page; the header states the page size and count, which catches it up front.
    """
    if not isinstance(data, bytes) or not data.startswith(_SQLITE_MAGIC):
        raise WorldError(f"{origin} is not a SQLite database")
    if len(data) < 100:
        raise WorldError(f"{origin} is truncated ({len(data)} bytes, shorter than a SQLite header)")
    raw_page_size = int.from_bytes(data[16:18], "big")
    page_size = 65536 if raw_page_size == 1 else raw_page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise WorldError(f"{origin} is not a valid SQLite database (page size {raw_page_size} in its header)")
    pages = int.from_bytes(data[28:32], "big")
    # The in-header page count is trustworthy only when the change counter matches "version-valid-for".
    if pages and data[24:28] == data[92:96] and pages * page_size > len(data):
        raise WorldError(
            f"{origin} is truncated: its header declares {pages * page_size:,} bytes, it holds {len(data):,}"
        )
    if len(data) % page_size:
        raise WorldError(f"{origin} is truncated or damaged: {len(data):,} bytes is not a whole number of "
                         f"{page_size}-byte pages")


def _connect_bytes(data: bytes, *, readonly: bool, origin: str = "database") -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", check_same_thread=False, factory=WorldConnection)
    try:
        conn.deserialize(data)
        _set_up_fork(conn)
        if readonly:
            conn.execute("PRAGMA query_only = ON")
    except sqlite3.DatabaseError as exc:
        # Deserializing never reads the pages: a damaged file fails at the first statement, so all are guarded.
        conn.close()
        raise WorldError(f"{origin} is not a readable SQLite database ({exc})") from exc
    return conn


def _set_up_fork(conn: sqlite3.Connection) -> None:
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    # The "disk" is already memory: a page cache would hold a second copy of every page read (1.8x the
    # database per open fork with SQLite's 2 MiB default). 256 KiB keeps a fork near 1.2x at no measured
    # cost.
    conn.execute("PRAGMA cache_size = -256")


def _read_meta(conn: sqlite3.Connection, origin: str) -> dict[str, str]:
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.DatabaseError as exc:
        raise WorldError(f"{origin} is not a CoreCraft world (no readable meta table: {exc})") from exc
    try:
        meta = {str(row["key"]): str(row["value"]) for row in rows}
    except (IndexError, TypeError) as exc:  # a `meta` table of some other shape
        raise WorldError(f"{origin} is not a CoreCraft world (meta has no key/value columns)") from exc
    if meta.get("schema_name") != SCHEMA_NAME:
        raise WorldError(
            f"{origin} is not a CoreCraft world (meta.schema_name is {meta.get('schema_name')!r})"
        )
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        raise WorldError(
            f"{origin} has schema version {meta.get('schema_version')!r}; this code reads version {SCHEMA_VERSION}"
        )
    for key in ("seed", "scale", "today"):
        if key not in meta:
            raise WorldError(f"{origin} is not a CoreCraft world (meta lacks {key!r})")
    # World.seed/scale/today parse these on every use: a bad value must fail here, once, with its name.
    try:
        ok = int(meta["seed"]) >= 0
    except ValueError:
        ok = False
    if not ok:
        raise WorldError(f"{origin}: meta.seed must be a non-negative integer, got {meta['seed']!r}")
    try:
        scale = float(meta["scale"])
    except ValueError:
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        raise WorldError(f"{origin}: meta.scale must be a positive number, got {meta['scale']!r}")
    try:
        dt.date.fromisoformat(meta["today"])
    except ValueError:
        raise WorldError(f"{origin}: meta.today must be an ISO date (YYYY-MM-DD), got {meta['today']!r}") from None
    return meta


def _require_text_search(origin: str) -> None:
    if not sqlite_has_trigram_fts5():
        raise WorldError(
            f"{origin}: this Python's SQLite ({sqlite3.sqlite_version}) lacks FTS5 with the trigram tokenizer "
            "(SQLite 3.34 or later, built with FTS5), which the world's customer search index needs; use a "
            "Python whose sqlite3 has it (python.org builds and most Linux distributions' do)"
        )


def _check_tables(conn: sqlite3.Connection, origin: str) -> None:
    """Every table of the schema must be there: tools and stats read them all."""
    try:
        present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise WorldError(f"{origin} is not a readable SQLite database ({exc})") from exc
    missing = [t for t in (*TABLES, *TEXT_INDEXES) if t not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise WorldError(f"{origin} is not a CoreCraft world (missing tables: {shown})")


def _quick_check(conn: sqlite3.Connection, origin: str) -> None:
    """PRAGMA quick_check: page and b-tree structure, ~25 ms for the default world."""
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as exc:
        raise WorldError(f"{origin} is damaged ({exc})") from exc
    if problems != ["ok"]:
        # SQLite's report is multi-line and starts with a "*** in database main ***" banner: keep the first finding.
        lines = [ln for p in problems for ln in str(p).splitlines() if ln.strip() and not ln.startswith("***")]
        first = lines[0] if lines else "no result"
        raise WorldError(f"{origin} is damaged (SQLite quick_check: {first})")


class Fork:
    """One episode's private, writable copy of a world. Close it (or use ``with``) to free its memory."""

    __slots__ = ("_base", "_conn", "today")

    def __init__(self, data: bytes, today: dt.date, conn: sqlite3.Connection | None = None) -> None:
        self._base = data  # the world's immutable bytes, shared, never copied here
        # conn: a connection already holding a fresh copy of ``data`` (ForkPool's)
        self._conn: sqlite3.Connection | None = conn if conn is not None else _connect_bytes(data, readonly=False)
        self.today = today

    @property
    def conn(self) -> sqlite3.Connection:
        """The fork's connection: foreign_keys=ON, row_factory=sqlite3.Row, usable from any thread."""
        if self._conn is None:
            raise WorldError("fork is closed")
        return self._conn

    @property
    def closed(self) -> bool:
        return self._conn is None

    def serialize(self) -> bytes:
        """The fork's current database as bytes (e.g. an episode's final state for grading)."""
        return self.conn.serialize()

    def changes(self) -> dict[str, TableChanges]:
        """Rows this episode inserted, deleted or updated, per changed table (see ``corecraft.world.diff``).

        Compares committed state (tools commit each write), about 30 ms on the default world.
        """
        if self.conn.in_transaction:
            raise WorldError("fork has an open transaction: commit or roll back before reading its changes")
        return diff_bytes(self._base, self.conn.serialize())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _detach(self) -> sqlite3.Connection | None:
        """Close the fork but hand back its connection, still open (``ForkPool.give``)."""
        conn, self._conn = self._conn, None
        return conn

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ForkPool:
    """Forks of one world on reused connections: what a trainer's episodes, opened and ended by the thousand,
    fork from.

    A new fork copies the world's bytes (5.6 MB) and parses its schema (109 tables, indexes, triggers and text
    indexes) on its first statement: 1.6 ms with its close, 1.1 ms of it the parse. A pooled fork is a kept
    connection holding the world, with a transaction open on it: ``take`` begins it, the episode's tools write
    inside it (a writing tool's savepoint nests in it; nothing here commits), and ``give`` rolls it back, which
    puts back the pages the episode changed and nothing else. The connection keeps its parsed schema, its
    prepared statements and its settings.

    A commit in between (nothing in corecraft commits a fork, but a caller could) would survive the rollback:
    ``take`` also writes a marker row in the transaction (a temporary table of the connection's own, not in the
    world's schema), and a connection whose marker is still there after the rollback is closed, never reused.
    The memo of reads is emptied on each ``give``. A pooled fork is always inside that transaction
    (``conn.in_transaction``), so ``Fork.changes`` refuses it.

    A fork given back must have no user left: whoever still held its connection would read the next episode's
    world (the ``Fork`` itself is closed by ``give``). Up to ``spares`` connections are kept, each holding a
    copy of the world (about 1.2x its size), until taken again or ``close``.
    """

    _MARKER = "corecraft_fork_open"

    def __init__(self, world: World, spares: int = 8) -> None:
        if spares < 0:
            raise ValueError("spares must be >= 0")
        self.world = world
        self.spares = spares
        self._spare: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def take(self) -> Fork:
        """A fork of the world, as ``World.fork`` gives, inside the pool's transaction."""
        with self._lock:
            conn = self._spare.pop() if self._spare else None
        if conn is None:
            conn = _connect_bytes(self.world.serialize(), readonly=False)
            try:
                conn.execute(f"CREATE TEMP TABLE {self._MARKER} (open INTEGER)")
            except BaseException:
                conn.close()
                raise
        try:
            conn.execute("BEGIN")
            conn.execute(f"INSERT INTO temp.{self._MARKER} VALUES (1)")
        except BaseException:
            conn.close()
            raise
        return Fork(self.world.serialize(), self.world.today, conn)

    def give(self, fork: Fork) -> None:
        """End ``fork`` (as ``close`` does): its writes are rolled back and its connection kept for a later
        ``take`` when there is room and nothing of the episode survives the rollback."""
        conn = fork._detach()
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.rollback()
            forget(conn)
            clean = conn.execute(f"SELECT COUNT(*) FROM temp.{self._MARKER}").fetchone()[0] == 0
        except sqlite3.Error:
            clean = False
        if clean:
            with self._lock:
                if len(self._spare) < self.spares:
                    self._spare.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        """Free the kept connections (forks taken and not given back are their users' to close)."""
        with self._lock:
            spare, self._spare = self._spare, []
        for conn in spare:
            conn.close()


class World:
    """An immutable CoreCraft world. Build one from a seed, or open a saved one; fork it per episode."""

    __slots__ = ("_data", "_meta", "_stats", "_stats_lock")

    def __init__(self, data: bytes, *, origin: str = "database", verify: bool = False) -> None:
        """Wrap a world's bytes. ``verify`` also checks every page (PRAGMA quick_check): for files read from
        disk, which can be truncated or damaged anywhere; bytes this process generated are trusted."""
        _check_header(data, origin)
        _require_text_search(origin)
        conn = _connect_bytes(data, readonly=True, origin=origin)
        try:
            if verify:
                _quick_check(conn, origin)
            meta = _read_meta(conn, origin)
            _check_tables(conn, origin)
        finally:
            conn.close()
        self._data = data
        self._meta: Mapping[str, str] = MappingProxyType(meta)
        self._stats: dict[str, Any] | None = None
        self._stats_lock = threading.Lock()

    # Construction ------------------------------------------------------------------------------------
    @classmethod
    def build(cls, seed: int = 0, scale: float = 1.0, progress: Callable[[str], None] | None = None) -> World:
        """Generate the world for ``seed`` at ``scale`` (1.0 = the default world, ~14k rows).

        ``progress``, if given, is called with each generation step's name as it starts.
        """
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise WorldError(f"seed must be a non-negative integer, got {seed!r}")
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not math.isfinite(scale)
            or scale <= 0
        ):
            raise WorldError(f"scale must be a positive number, got {scale!r}")
        if scale > MAX_SCALE:
            raise WorldError(f"scale must be at most {MAX_SCALE:g}, got {scale!r}")
        _require_text_search(f"building world (seed {seed})")
        from corecraft.world.generate import generate  # heavy data loading only when building

        data = generate(seed=seed, scale=float(scale), progress=progress)
        return cls(data, origin=f"generated world (seed {seed})")

    @classmethod
    def open(cls, path: str | Path) -> World:
        """Load a saved world; raises WorldError if ``path`` is missing or not a CoreCraft database."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise WorldError(f"{path}: no such file") from exc
        except IsADirectoryError as exc:
            raise WorldError(f"{path} is a directory, not a CoreCraft database") from exc
        except OSError as exc:
            raise WorldError(f"{path}: cannot read ({exc.strerror})") from exc
        return cls(data, origin=str(path), verify=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> World:
        return cls(bytes(data), origin="serialized world")

    # Persistence ---------------------------------------------------------------------------------------
    def serialize(self) -> bytes:
        return self._data

    def save(self, path: str | Path) -> Path:
        """Write the database file atomically (a temporary file renamed into place)."""
        path = Path(path)
        if path.is_dir():
            raise WorldError(f"{path} is a directory; give a file path such as {path / 'world.db'}")
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_bytes(self._data)
            tmp.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise WorldError(f"cannot write {path} ({exc.strerror})") from exc
        return path

    # Facts -----------------------------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, str]:
        return dict(self._meta)

    @property
    def seed(self) -> int:
        return int(self._meta["seed"])

    @property
    def scale(self) -> float:
        return float(self._meta["scale"])

    @property
    def today(self) -> dt.date:
        """The world's current date: tools and tasks treat it as 'today'."""
        return dt.date.fromisoformat(self._meta["today"])

    @property
    def digest(self) -> str:
        """A fingerprint of this world, stable across SQLite versions (see ``digest``)."""
        return digest(self._data)

    @property
    def size_bytes(self) -> int:
        return len(self._data)

    def stats(self) -> dict[str, Any]:
        """Entity counts: ``{"entity_types": {type: rows}, "total": N, "seed": N, "tables": {table: rows}}``.

        ``entity_types`` holds the 14 core entity types (``CORE_ENTITY_TYPES``), each counted in its main table,
        and ``total`` is their sum; ``tables`` counts every data table (order lines, tracking events, messages,
        ...), which are parts of those entities rather than entities of their own.
        """
        with self._stats_lock:
            if self._stats is None:
                conn = _connect_bytes(self._data, readonly=True)
                try:
                    # Table names are our own constants, never input: formatting them in is safe.
                    tables = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ENTITY_TABLES}
                except sqlite3.DatabaseError as exc:
                    raise WorldError(f"world (seed {self.seed}) is damaged ({exc})") from exc
                finally:
                    conn.close()
                types = {kind: tables[table] for kind, table in CORE_ENTITY_TYPES.items()}
                self._stats = {"entity_types": types, "total": sum(types.values()), "seed": self.seed,
                               "tables": tables}
            return {
                "entity_types": dict(self._stats["entity_types"]),
                "total": self._stats["total"],
                "seed": self._stats["seed"],
                "tables": dict(self._stats["tables"]),
            }

    # Episodes ----------------------------------------------------------------------------------------------
    def fork(self) -> Fork:
        """A private writable copy of this world; the base never changes."""
        return Fork(self._data, self.today)

    def reader(self) -> Fork:
        """A read-only copy (PRAGMA query_only) for inspection; close it when done."""
        fork = Fork(self._data, self.today)
        fork.conn.execute("PRAGMA query_only = ON")
        return fork

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable as its bytes, so a world can be handed to worker processes.
        return (World.from_bytes, (self._data,))

    def __repr__(self) -> str:
        return f"World(seed={self.seed}, scale={self.scale:g}, today={self.today}, bytes={len(self._data)})"
