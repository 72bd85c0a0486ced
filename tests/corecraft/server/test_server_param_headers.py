"""``Mcp-Param-*`` headers over real streamable HTTP: checked exactly where a tool's schema declares one.

The server hands the SDK's header check only the schemas that carry an ``x-mcp-header`` annotation (the check
walks the schema on every call, and an unannotated schema can reject nothing). These tests pin both halves: a
declared header is still enforced, and the CoreCraft tools (none declares one) answer as before.
"""

from __future__ import annotations

from typing import Annotated

import anyio
import httpx2
import pytest
from pydantic import Field

from corecraft.server.app import HttpConfig, build_server, serve_http
from corecraft.server.episodes import EPISODE_HEADER, EpisodeManager
from corecraft.tools import TOOL_NAMES

pytestmark = pytest.mark.anyio

PROTOCOL = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": PROTOCOL,
    "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def echo_region(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
    """Echo the region (routed by a gateway on its Mcp-Param-Region header)."""
    return region


async def _post(http: httpx2.AsyncClient, url: str, name: str, arguments: dict, headers: dict) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": arguments, "_meta": META}}
    return await http.post(url, json=body, headers={
        "accept": "application/json, text/event-stream", "mcp-protocol-version": PROTOCOL,
        "mcp-method": "tools/call", "mcp-name": name, **headers})


async def test_a_declared_param_header_is_enforced_and_undeclared_ones_change_nothing(world):
    server = build_server(EpisodeManager(world.fork, max_episodes=4))
    server.add_tool(echo_region, name="echoRegion")
    # white-box: the SDK's hook is ours (an SDK that renamed it would silently walk every schema again), and
    # the 23 CoreCraft schemas skip the walk while the annotated one does not
    hook = server._lowlevel_server.get_tool_input_schema
    assert getattr(hook, "__func__", None) is type(server)._tool_input_schema
    assert all(server._tool_input_schema(name) is None for name in TOOL_NAMES)
    assert server._tool_input_schema("echoRegion") is not None

    ports: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_http(server, HttpConfig(port=0), ready=ports.append))
        with anyio.fail_after(30):
            while not ports:
                await anyio.sleep(0.01)
        url = f"http://127.0.0.1:{ports[0]}/mcp"
        async with httpx2.AsyncClient(timeout=30) as http:
            ok = await _post(http, url, "echoRegion", {"region": "eu-west"}, {"mcp-param-region": "eu-west"})
            assert ok.status_code == 200 and ok.json()["result"]["content"][0]["text"] == "eu-west"

            wrong = await _post(http, url, "echoRegion", {"region": "eu-west"}, {"mcp-param-region": "us-east"})
            assert wrong.status_code == 400
            assert "Mcp-Param-Region header does not match" in wrong.json()["error"]["message"]

            missing = await _post(http, url, "echoRegion", {"region": "eu-west"}, {})
            assert missing.status_code == 400 and "is missing" in missing.json()["error"]["message"]

            # A CoreCraft tool declares no header: a stray one is ignored, as the SDK's own check would.
            tool = await _post(http, url, "getLoyaltyTier", {"tier_id": "gold"},
                               {EPISODE_HEADER: "headers-1", "mcp-param-tier_id": "silver"})
            assert tool.status_code == 200
            result = tool.json()["result"]
            assert not result.get("isError") and result["structuredContent"]["tiers"][0]["tier_id"] == "gold"
        tg.cancel_scope.cancel()
