"""What the tool schemas show a model: examples it may copy, and bounds a server's grammar engine must compile.

Weak models copy the ids in schema examples verbatim; an id that does not exist wastes their turns. And
servers that constrain decoding with a grammar (llama.cpp, llama-cpp-python) unroll ``maxLength: N`` into N
nested rules, which crashed llama-cpp-python's server at N = 2000-4000.
"""

from __future__ import annotations

import json
import re

import pytest

from corecraft.tasks.store import load_task_set
from corecraft.tools import call_tool, tool_schemas
from corecraft.tools.common import SCHEMA_MAX_LENGTH


def _quoted_examples() -> list[str]:
    """Every value a schema quotes as an example: 'ORD-200001', 'asus', 'AM5', ..."""
    return sorted(set(re.findall(r"'([^'\s]{2,40})'", json.dumps(tool_schemas()))))


def _bounds(schema, path=""):
    if isinstance(schema, dict):
        if "maxLength" in schema:
            yield path, schema["maxLength"]
        for key, value in schema.items():
            yield from _bounds(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _bounds(value, f"{path}[{i}]")


@pytest.fixture(scope="module")
def task_world_values():
    """Every text value in the shipped task world (what tasks and tools refer to)."""
    world = load_task_set().world()
    values: set[str] = set()
    with world.reader() as reader:
        conn = reader.conn
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                              "AND name NOT LIKE '%_text%' AND name NOT LIKE 'sqlite_%'")]
        for table in tables:
            for col in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
                values.update(v for (v,) in conn.execute(f'SELECT DISTINCT "{col[1]}" FROM "{table}"')
                              if isinstance(v, str) and len(v) <= 40)
    return values


def test_every_example_in_the_schemas_exists_in_the_task_world(task_world_values):
    examples = _quoted_examples()
    assert len(examples) >= 30 and "ORD-200001" in examples  # the scan reads the descriptions
    missing = [e for e in examples if e not in task_world_values]
    assert missing == [], f"schema examples that name nothing in the task world: {missing}"


def test_id_examples_are_real_records():
    """The id examples, checked where a model would use them: the tool that takes them finds the record."""
    world = load_task_set().world()
    with world.fork() as fork:
        for tool, arguments in [("getOrderDetails", {"order_id": "ORD-200001"}),
                                ("getCustomerHistory", {"customer_id": "CUST-10001"}),
                                ("getProductDetails", {"product_id": "GPU-0001"}),
                                ("getKnowledgebaseArticle", {"article_id": "KB-1001"}),
                                ("getKnowledgebaseArticle", {"article_id": "POL-RETURNS-v3"})]:
            result = call_tool(fork.conn, tool, arguments)
            assert not result.is_error, (tool, arguments, result.text)


def test_no_schema_advertises_a_length_bound_a_grammar_engine_chokes_on():
    bounds = [(tool["name"], path, n) for tool in tool_schemas() for path, n in _bounds(tool["inputSchema"])]
    assert bounds and max(n for _, _, n in bounds) <= SCHEMA_MAX_LENGTH, \
        [b for b in bounds if b[2] > SCHEMA_MAX_LENGTH]


@pytest.mark.parametrize(("tool", "arguments", "field", "limit"), [
    ("updateTicketStatus", {"ticket_id": "TKT-50001", "status": "open", "note": "x" * 4001}, "note", 4000),
    ("updateOrder", {"order_id": "ORD-200001", "note": "x" * 2001}, "note", 2000),
])
def test_free_text_limits_still_hold_and_are_stated(tool, arguments, field, limit):
    """Not advertised as maxLength, the limit is checked by the tool (same error as before) and stated in the
    argument's description."""
    world = load_task_set().world()
    with world.fork() as fork:
        result = call_tool(fork.conn, tool, arguments)
        assert result.is_error and f"{field}: String should have at most {limit} characters" in result.text
        ok = call_tool(fork.conn, tool, dict(arguments, **{field: "x" * limit}))
        assert not (ok.is_error and "at most" in ok.text), ok.text
    schema = next(t for t in tool_schemas() if t["name"] == tool)["inputSchema"]
    assert f"at most {limit} characters" in json.dumps(schema["properties"][field])
