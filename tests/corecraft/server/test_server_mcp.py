"""The MCP server through the real SDK client over both transports: a stdio subprocess and streamable HTTP."""

from __future__ import annotations

import json
import subprocess

import anyio
import httpx2
import pytest
from corecraft_serving import (
    REPO,
    TOKEN,
    child_env,
    http_client,
    running_http_server,
    stdio_command,
    stdio_params,
)
from mcp import Client
from mcp.shared.exceptions import MCPError

from corecraft.cli import main as corecraft_main
from corecraft.tools import TOOL_NAMES, call_tool, tool_schemas
from corecraft.tools.examples import example_calls, returnable_lines

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def calls(world):
    with world.fork() as fork:
        return example_calls(fork.conn)


async def _check_listing(client: Client) -> None:
    listed = (await client.list_tools()).tools
    assert [t.name for t in listed] == list(TOOL_NAMES)
    expected = {s["name"]: s for s in tool_schemas()}
    for tool in listed:
        assert tool.input_schema == expected[tool.name]["inputSchema"], tool.name
        assert tool.description == expected[tool.name]["description"]


async def _check_every_tool(client: Client, calls) -> None:
    for name in TOOL_NAMES:
        result = await client.call_tool(name, calls[name])
        assert not result.is_error, (name, result.content)
        assert isinstance(result.structured_content, dict)


async def test_stdio_serves_the_23_tools_with_in_process_schemas_and_state(world_db, calls):
    async with Client(stdio_params(world_db)) as client:
        await _check_listing(client)
        await _check_every_tool(client, calls)
        # The stdio process is one episode: the ticket created above is in the customer's history.
        customer = calls["createTicket"]["customer_id"]
        history = await client.call_tool("getCustomerHistory", {"customer_id": customer})
        subjects = [t["subject"] for t in history.structured_content["tickets"]["items"]]
        assert calls["createTicket"]["subject"] in subjects
        # A 200 kB line and non-ASCII text cross the pipe intact and come back as clean tool errors.
        huge = await client.call_tool("getOrderDetails", {"order_id": "x" * 200_000})
        assert huge.is_error and "at most 64 characters" in huge.content[0].text
        odd = await client.call_tool("getOrderDetails", {"order_id": "顧客🙂"})
        assert odd.is_error and "顧客🙂" in odd.content[0].text


async def test_http_serves_the_23_tools_with_in_process_schemas(http_server, calls):
    async with http_client(http_server, "listing-and-calls") as client:
        await _check_listing(client)
        await _check_every_tool(client, calls)


async def test_http_tool_error_text_reaches_the_client_as_in_process(http_server, world):
    bad_calls = [
        ("getOrderDetails", {"order_id": "ORD-0"}),
        ("searchOrders", {"page": "two"}),
        ("processReturn", {"order_id": "ORD-200001", "items": [{"quantity": 0}], "reason": "meh", "x": 1}),
        ("calculateShipping", {"destination_state": "ZZ", "weight_grams": 10}),
    ]
    async with http_client(http_server, "errors") as client:
        result = await client.call_tool("getOrderDetails", {"order_id": "ORD-0"})
        assert result.is_error
        assert result.content[0].text == "Error executing tool getOrderDetails: order_id: no order with id 'ORD-0'"
        with world.fork() as fork:
            for name, args in bad_calls:
                over_mcp = await client.call_tool(name, args)
                in_process = call_tool(fork.conn, name, args)
                assert over_mcp.is_error and in_process.is_error
                assert over_mcp.content[0].text == in_process.text


async def test_http_state_persists_within_an_episode_and_is_isolated_between_concurrent_episodes(
    http_server, world
):
    with world.fork() as fork:
        line = returnable_lines(fork.conn, 1)[0]
    args = {"order_id": line["order_id"], "reason": "defective",
            "items": [{"product_id": line["product_id"], "condition": "defective"}]}
    outcomes: dict[str, list[bool]] = {}

    async def episode(n: int) -> None:
        async with http_client(http_server, f"iso-{n}") as client:
            first = await client.call_tool("processReturn", args)
            second = await client.call_tool("processReturn", args)  # the line is now fully returned
            details = await client.call_tool("getOrderDetails", {"order_id": line["order_id"]})
            returns = details.structured_content["returns"]
            outcomes[f"iso-{n}"] = [not first.is_error, second.is_error, len(returns) == 1]

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(episode, n)
    assert outcomes == {f"iso-{n}": [True, True, True] for n in range(8)}
    async with http_client(http_server, "iso-fresh") as client:
        details = await client.call_tool("getOrderDetails", {"order_id": line["order_id"]})
        assert details.structured_content["returns"] == []


async def test_http_ended_episode_is_freed_and_starts_fresh(http_server, calls):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with http_client(http_server, "to-end") as client:
        created = await client.call_tool("createCustomer", calls["createCustomer"])
        new_id = created.structured_content["customer"]["customer_id"]
        assert not (await client.call_tool("getCustomerHistory", {"customer_id": new_id})).is_error
        async with httpx2.AsyncClient(headers=headers) as http:
            assert (await http.delete(f"{http_server.base}/episodes/to-end")).status_code == 204
            assert (await http.delete(f"{http_server.base}/episodes/to-end")).status_code == 404
        again = await client.call_tool("getCustomerHistory", {"customer_id": new_id})
        assert again.is_error and "no customer with id" in again.content[0].text


async def test_http_malformed_episode_header_is_a_tool_error(http_server):
    async with http_client(http_server, "bad id with spaces") as client:
        result = await client.call_tool("getLoyaltyTier", {})
        assert result.is_error and "X-CoreCraft-Episode" in result.content[0].text


async def test_http_without_the_token_is_refused(http_server):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx2.AsyncClient() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = await http.post(http_server.url, json=body, headers=headers)
            assert response.status_code == 401
        assert (await http.get(f"{http_server.base}/health")).status_code == 401
        assert (await http.delete(f"{http_server.base}/episodes/errors")).status_code == 401
        ok = await http.get(f"{http_server.base}/health", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["tools"] == 23
    with pytest.raises(ExceptionGroup) as refused:  # the SDK client surfaces the 401 as an MCPError
        async with http_client(http_server, "no-token", token=None) as client:
            await client.list_tools()
    assert refused.group_contains(MCPError, match="error response")


async def test_http_without_a_token_configured_serves_anyone(world_db, tmp_path):
    with running_http_server(world_db, tmp_path / "open.log", token=None) as server:
        async with http_client(server, None) as client:  # no episode header: the default episode
            assert len((await client.list_tools()).tools) == 23


def test_serve_refuses_a_public_address_without_a_token(world_db, capsys):
    code = corecraft_main(["serve", "--transport", "http", "--host", "0.0.0.0", "--db", str(world_db)])
    assert code == 2
    assert "without --token" in capsys.readouterr().err


def test_serve_reports_a_missing_world_file_in_one_line(tmp_path, capsys):
    code = corecraft_main(["serve", "--db", str(tmp_path / "missing.db")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no such file" in err and err.count("\n") == 1


async def test_http_idle_episodes_are_freed_by_the_running_server(world_db, tmp_path):
    log = tmp_path / "idle.log"
    with running_http_server(world_db, log, token=None, extra=("--idle-timeout", "3")) as server:
        async with httpx2.AsyncClient() as http:
            async with http_client(server, "short-lived") as client:
                assert not (await client.call_tool("getLoyaltyTier", {})).is_error
                assert (await http.get(f"{server.base}/health")).json()["episodes"] == 1
            for _ in range(300):  # the sweeper runs every half timeout; allow a slow machine
                await anyio.sleep(0.1)
                if (await http.get(f"{server.base}/health")).json()["episodes"] == 0:
                    break
            assert (await http.get(f"{server.base}/health")).json()["episodes"] == 0


async def test_older_protocol_clients_with_the_initialize_handshake_work_on_both_transports(http_server, world_db):
    async with http_client(http_server, "legacy", mode="legacy") as client:
        assert len((await client.list_tools()).tools) == 23
        created = await client.call_tool("createCustomer", {"first_name": "Ada", "last_name": "Byte",
                                                            "email": "ada.byte@example.com"})
        assert not created.is_error
        found = await client.call_tool("searchCustomers", {"email": "ada.byte@example.com"})
        assert found.structured_content["total_results"] == 1  # the episode's state persists
    async with Client(stdio_params(world_db), mode="legacy") as client:
        assert len((await client.list_tools()).tools) == 23
        assert not (await client.call_tool("getLoyaltyTier", {"tier_id": "gold"})).is_error


def test_serve_reports_a_taken_port_in_one_line(http_server, world_db, capsys):
    port = http_server.base.rsplit(":", 1)[1]
    code = corecraft_main(["serve", "--transport", "http", "--port", port, "--db", str(world_db)])
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_stdio_answers_every_request_even_when_stdin_closes_right_after(world_db):
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "pipe", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "getLoyaltyTier", "arguments": {"tier_id": "gold"}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "getOrderDetails", "arguments": {"order_id": "ORD-0"}}},
    ]
    done = subprocess.run(stdio_command(world_db), input="".join(json.dumps(x) + "\n" for x in lines),
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=child_env())
    replies = {r["id"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert done.returncode == 0 and sorted(replies) == [1, 2, 3]
    assert replies[2]["result"]["structuredContent"]["tiers"][0]["tier_id"] == "gold"
    assert replies[3]["result"]["isError"] is True
