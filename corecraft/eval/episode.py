"""One evaluation episode's tools: a real MCP client talking to CoreCraft's MCP server over a private fork.

Each run gets its own fork of the task world and its own in-process MCP server (the SDK's in-memory
transport: the full protocol, no sockets), so runs never see each other's writes. The fork outlives the MCP
session, because the grader reads the episode's final database after the agent is done.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Mapping
from typing import Any

from mcp import Client

from corecraft.server.app import in_process_server


def _text_of(result: Any) -> str:
    parts = [getattr(c, "text", "") for c in (result.content or [])]
    return "\n".join(p for p in parts if p)


class McpToolSession:
    """The agent's view of the tools: ``list_tools`` as MCP lists them, calls through ``call_tool``."""

    def __init__(self, client: Client):
        self._client = client

    async def list_tools(self) -> list[dict[str, Any]]:
        listed = await self._client.list_tools()
        return [{"name": t.name, "description": t.description or "",
                 "inputSchema": t.input_schema or {"type": "object", "properties": {}}}
                for t in listed.tools]

    async def call(self, name: str, arguments: Mapping[str, Any]) -> tuple[str, Any, bool]:
        result = await self._client.call_tool(name, dict(arguments))
        text = _text_of(result)
        data = result.structured_content
        if data is None and not result.is_error:
            with contextlib.suppress(json.JSONDecodeError):
                data = json.loads(text)
        return text, data, bool(result.is_error)


@contextlib.asynccontextmanager
async def mcp_episode(conn: sqlite3.Connection) -> AsyncIterator[McpToolSession]:
    """An MCP session whose every tool call runs on ``conn`` (an episode's fork)."""
    async with Client(in_process_server(conn)) as client:
        yield McpToolSession(client)
