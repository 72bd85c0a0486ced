"""`corecraft tools list|call`: the catalog, and one call on a fresh fork from the command line."""

from __future__ import annotations

import json

from corecraft.cli import main
from corecraft.tools import TOOL_NAMES


def test_tools_list_names_all_23_tools(capsys):
    assert main(["tools", "list"]) == 0
    out = capsys.readouterr().out
    for name in TOOL_NAMES:
        assert f"{name}(" in out
    assert main(["tools", "list", "--json"]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)] == list(TOOL_NAMES)


def test_tools_call_prints_the_result_and_refusals_exit_1(world, tmp_path, capsys):
    db = world.save(tmp_path / "world.db")
    assert main(["tools", "call", "getLoyaltyTier", '{"tier_id": "gold"}', "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["tiers"][0]["tier_id"] == "gold"
    assert main(["tools", "call", "getOrderDetails", '{"order_id": "ORD-0"}', "--db", str(db)]) == 1
    assert "no order with id 'ORD-0'" in capsys.readouterr().err


def test_tools_call_bad_json_and_unknown_tool_are_one_line_errors(capsys):
    assert main(["tools", "call", "getOrderDetails", "{order_id:"]) == 2
    assert main(["tools", "call", "dropTables", "{}"]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "unknown tool 'dropTables'" in err
