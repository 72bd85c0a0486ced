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


def test_tools_call_defaults_to_the_task_world_where_tasks_records_are(capsys):
    """The ids a shipped task names exist in the world `tools call` uses by default; a base world (--seed) has
    none of a task's planted records."""
    from corecraft.tasks.store import load_task_set

    task = next(t for t in load_task_set().tasks if t.family == "order_total_lookup")
    call = task.oracle.tool_calls[0]
    arguments = json.dumps(call.to_json()["arguments"])
    assert main(["tools", "call", call.name, arguments]) == 0
    assert json.loads(capsys.readouterr().out)["order"]["order_id"] == call.arguments["order_id"]
    assert main(["tools", "call", call.name, arguments, "--seed", "0"]) == 1
    assert "no order with id" in capsys.readouterr().err
