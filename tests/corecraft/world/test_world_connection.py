"""The connection memo: settled reads served again, and re-read after any write by anyone."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata

from corecraft.tools.common import policy_params
from corecraft.tools.errors import ToolError
from corecraft.tools.registry import ToolSpec, _argument_model, execute
from corecraft.world.connection import WorldConnection, memoized

WINDOW = ("SELECT pp.param_value FROM policy_parameters pp JOIN company_policies cp ON cp.policy_id = pp.policy_id "
          "WHERE cp.policy_area = 'returns' AND cp.status = 'active' AND pp.param_key = 'window_days'")
SET_WINDOW = ("UPDATE policy_parameters SET param_value = ? WHERE param_key = 'window_days' AND policy_id = "
              "(SELECT policy_id FROM company_policies WHERE policy_area = 'returns' AND status = 'active')")


class Counting:
    """A read that counts how often it really ran."""

    def __init__(self, sql: str) -> None:
        self.sql, self.runs = sql, 0

    def __call__(self, conn: sqlite3.Connection) -> Any:
        self.runs += 1
        return conn.execute(self.sql).fetchone()[0]


def test_a_fork_serves_a_settled_read_again_and_reads_afresh_after_any_write(world):
    with world.fork() as fork:
        assert isinstance(fork.conn, WorldConnection)
        read = Counting(WINDOW)
        first = memoized(fork.conn, "window", read)
        assert memoized(fork.conn, "window", read) == first and read.runs == 1
        fork.conn.execute(SET_WINDOW, (str(int(first) + 7),))  # e.g. a task planting a policy change
        assert memoized(fork.conn, "window", read) == str(int(first) + 7) and read.runs == 2
        assert policy_params(fork.conn, "returns")["window_days"] == int(first) + 7
        # an unrelated write also empties the memo: no table-level bookkeeping to get wrong
        fork.conn.execute("UPDATE customers SET phone = phone WHERE customer_id = "
                          "(SELECT MIN(customer_id) FROM customers)")
        memoized(fork.conn, "window", read)
        assert read.runs == 3


def test_a_plain_connection_always_reads(world, tmp_path):
    conn = sqlite3.connect(world.save(tmp_path / "w.db"))
    try:
        read = Counting(WINDOW)
        memoized(conn, "window", read)
        memoized(conn, "window", read)
        assert read.runs == 2
    finally:
        conn.close()


def test_a_shared_file_sees_what_another_connection_commits(world, tmp_path):
    path = world.save(tmp_path / "episode.db")
    mine = sqlite3.connect(path, factory=WorldConnection)
    other = sqlite3.connect(path)
    try:
        mine.shared = True
        read = Counting(WINDOW)
        before = memoized(mine, "window", read)
        memoized(mine, "window", read)
        assert read.runs == 1
        with other:
            other.execute(SET_WINDOW, ("99",))
        assert memoized(mine, "window", read) == "99" != before and read.runs == 2
    finally:
        mine.close()
        other.close()


def _plants_then_fails(conn: sqlite3.Connection, *, days: int = 1) -> dict:
    """Changes the returns window, reads it through the memo, then fails: the write is rolled back."""
    conn.execute(SET_WINDOW, (str(days),))
    assert policy_params(conn, "returns")["window_days"] == days
    raise ToolError("refused after the write", argument="days")


def test_a_rolled_back_write_tool_leaves_no_memoized_read_of_its_undone_changes(world):
    spec = ToolSpec("plantsThenFails", _plants_then_fails, "doc", True,
                    FuncMetadata(arg_model=_argument_model("plantsThenFails", _plants_then_fails)), "{}")
    with world.fork() as fork:
        original = policy_params(fork.conn, "returns")["window_days"]
        with pytest.raises(ToolError):
            execute(spec, fork.conn, {"days": original + 3})
        assert fork.conn.execute(WINDOW).fetchone()[0] == str(original)  # the savepoint undid the write
        assert policy_params(fork.conn, "returns")["window_days"] == original


def test_memoized_values_are_read_only(world):
    with world.fork() as fork:
        params = policy_params(fork.conn, "returns")
        with pytest.raises(TypeError):
            params["window_days"] = 1  # type: ignore[index]
