"""The registry: exactly the 23 named tools, typed schemas, and bad input answered with clear tool errors."""

from __future__ import annotations

import json
import sqlite3
from typing import Annotated

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from pydantic import Field, ValidationError

from corecraft.tools import TOOL_NAMES, TOOLS, call_tool, openai_tools, tool_schemas
from corecraft.tools.errors import ToolError
from corecraft.tools.examples import READ_TOOLS, example_calls
from corecraft.tools.registry import ToolSpec, _argument_model, describe_invalid

PAPER_TOOLS = {
    "searchOrders", "searchProducts", "searchCustomers", "searchKnowledgebase", "searchPromotions",
    "getOrderDetails", "getProductDetails", "getCustomerHistory", "getKnowledgebaseArticle", "getWarrantyPolicy",
    "getShippingStatus", "getLoyaltyTier", "createTicket", "updateTicketStatus", "updateOrder", "createCustomer",
    "updateCustomer", "processReturn", "processExchange", "applyPromotion", "calculateShipping", "checkInventory",
    "validateBuildCompatibility",
}


def test_registry_holds_exactly_the_papers_23_tools():
    assert set(TOOLS) == PAPER_TOOLS
    assert len(TOOL_NAMES) == 23


def test_openai_function_specs_carry_the_same_schemas():
    specs = openai_tools()
    assert [f["function"]["name"] for f in specs] == list(TOOL_NAMES)
    assert [f["function"]["parameters"] for f in specs] == [s["inputSchema"] for s in tool_schemas()]


def test_every_schema_is_a_closed_object_with_described_tool():
    for schema in tool_schemas():
        assert schema["inputSchema"]["type"] == "object"
        assert schema["inputSchema"]["additionalProperties"] is False
        assert len(schema["description"]) > 60, schema["name"]
        json.dumps(schema)  # JSON-serializable as listed over MCP


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_every_tool_succeeds_on_valid_input(conn, name):
    result = call_tool(conn, name, example_calls(conn)[name])
    assert not result.is_error, result.text
    assert json.loads(result.text) == result.data


def test_all_23_example_calls_succeed_in_one_episode(conn):
    calls = example_calls(conn)
    for name in TOOL_NAMES:
        result = call_tool(conn, name, calls[name])
        assert not result.is_error, (name, result.text)


def test_raw_json_arguments_are_accepted_and_malformed_json_is_a_tool_error(conn):
    order = conn.execute("SELECT order_id FROM orders LIMIT 1").fetchone()[0]
    assert not call_tool(conn, "getOrderDetails", f'{{"order_id": "{order}"}}').is_error
    bad = call_tool(conn, "getOrderDetails", '{"order_id": ')
    assert bad.is_error and bad.text.startswith("Error executing tool getOrderDetails: arguments are not valid JSON")
    listed = call_tool(conn, "getOrderDetails", "[1, 2]")
    assert listed.is_error and "arguments must be a JSON object" in listed.text


def test_unknown_tool_is_refused(conn):
    result = call_tool(conn, "dropDatabase", {})
    assert result.is_error and result.text == "Unknown tool: dropDatabase"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({}, ["order_id", "Field required"]),
        ({"order_id": 200001}, ["order_id", "valid string"]),
        ({"order_id": "ORD-200001", "orderId": "x"}, ["orderId: unknown argument (expected: order_id)"]),
        ({"order_id": "x" * 5000}, ["order_id", "at most 64 characters"]),
        ({"order_id": "ORD-1' OR '1'='1"}, ["order_id", "no order with id"]),
        ({"order_id": "顧客🙂"}, ["order_id", "no order with id"]),
    ],
)
def test_bad_input_error_names_the_argument_and_the_problem(conn, arguments, expected):
    result = call_tool(conn, "getOrderDetails", arguments)
    assert result.is_error
    assert result.text.startswith("Error executing tool getOrderDetails: ")
    for fragment in expected:
        assert fragment in result.text


def test_out_of_range_numbers_are_refused(conn):
    result = call_tool(conn, "searchOrders", {"page": 0})
    assert result.is_error and "page" in result.text and "greater than or equal to 1" in result.text
    result = call_tool(conn, "checkInventory", {"product_id": "GPU-0001", "quantity": 10**9})
    assert result.is_error and "quantity" in result.text


def test_extreme_dates_are_answered_not_crashed_on(conn):
    for args in ({"placed_before": "9999-12-31"}, {"placed_after": "0001-01-01", "placed_before": "9999-12-31"}):
        result = call_tool(conn, "searchOrders", args)
        assert not result.is_error and result.data["total_results"] == conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
    assert not call_tool(conn, "searchPromotions", {"valid_on": "9999-12-31"}).is_error


def test_sql_in_free_text_is_only_ever_matched_as_text(conn):
    before = conn.execute("SELECT COUNT(*) FROM customers").fetchone()[0]
    result = call_tool(conn, "searchCustomers", {"query": "'; DELETE FROM customers; --"})
    assert not result.is_error and result.data["total_results"] == 0
    result = call_tool(conn, "searchCustomers", {"query": "%"})
    assert not result.is_error and result.data["total_results"] == 0  # '%' is a literal, not a wildcard
    assert conn.execute("SELECT COUNT(*) FROM customers").fetchone()[0] == before


_JSONISH = st.sampled_from(
    ["[1, 2]", ' {"product_id": "CPU-0001"}', "null", " \n null", "nope", "5", "2.5", '"quoted"', "true",
     "[", "{bad", "  [\"x\"]", "ORD-200001", "", "NaN", "-Infinity"]
)
_VALUES = st.one_of(_JSONISH, st.text(max_size=12), st.integers(-3, 12), st.booleans(), st.none(),
                    st.lists(st.integers(0, 3), max_size=2))


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(sorted(TOOLS)), data=st.data())
def test_validation_equals_the_sdks_own_pre_parsing_path(name, data):
    """ToolSpec.validate skips the SDK's JSON-in-a-string pre-parsing where it could change nothing; on any
    input it must give what the SDK's FuncMetadata.validate_arguments gives (the values or the same error)."""
    spec = TOOLS[name]
    fields = list(spec.metadata.arg_model.model_fields)
    keys = data.draw(st.lists(st.sampled_from([*fields, "unknown_arg"]), max_size=4, unique=True))
    arguments = {key: data.draw(_VALUES) for key in keys}
    try:
        expected = spec.metadata.validate_arguments(dict(arguments))
    except ValidationError as exc:
        with pytest.raises(ToolError) as raised:
            spec.validate(arguments)
        assert str(raised.value) == describe_invalid(exc, spec.metadata.arg_model.model_fields)
    else:
        assert spec.validate(arguments) == expected


def _aliased(conn: sqlite3.Connection, *, from_: Annotated[str, Field(alias="from", max_length=8)],
             page: int = 1) -> dict:
    """A tool whose argument is a Python keyword, so it is aliased."""
    return {}


def test_an_aliased_argument_is_passed_under_its_alias_as_the_sdk_passes_it():
    """No CoreCraft tool aliases an argument today; ``validate``'s fast path copies a model's fields, which would
    drop the alias, so an aliased tool takes the SDK's renaming path."""
    metadata = FuncMetadata(arg_model=_argument_model("aliased", _aliased))
    spec = ToolSpec("aliased", _aliased, "doc", False, metadata, "{}", frozenset({"from", "page"}), aliased=True)
    assert spec.validate({"from": "here"}) == metadata.validate_arguments({"from": "here"}) == {"from": "here",
                                                                                                  "page": 1}
    assert not any(s.aliased for s in TOOLS.values())


TEXT_SEARCHES = [
    ("searchCustomers", {"query": "Gonzalez"}), ("searchCustomers", {"name": "ann", "phone": "555-0100 22"}),
    ("searchOrders", {"query": "ORD-2000"}), ("searchProducts", {"query": "ryzen", "socket": "AM5"}),
    ("searchKnowledgebase", {"query": "return"}), ("searchPromotions", {"query": "spring"}),
]


@pytest.mark.parametrize("name, arguments", TEXT_SEARCHES + [(n, None) for n in READ_TOOLS])
def test_a_repeated_read_call_reuses_its_prepared_statements(conn, name, arguments):
    """SQLite asks the authorizer about every statement it compiles. Once a call's statements are prepared and
    cached, the same call must compile none again: a bare ``LIKE ?`` pattern would (SQLite recompiles on
    every new binding of it), doubling the cost of every text search."""
    arguments = arguments or example_calls(conn)[name]
    compiled: list[tuple] = []

    def authorizer(*action) -> int:
        compiled.append(action)
        return sqlite3.SQLITE_OK

    conn.set_authorizer(authorizer)  # expires the statement cache: the first call below compiles afresh
    try:
        first = call_tool(conn, name, arguments)
        assert not first.is_error, first.text
        assert compiled, "the first call compiled nothing: the authorizer is not watching"
        compiled.clear()
        again = call_tool(conn, name, arguments)
    finally:
        conn.set_authorizer(None)
    assert again.text == first.text
    assert compiled == [], f"{name} compiled SQL again on a repeated call"
