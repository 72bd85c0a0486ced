"""The 23 CoreCraft tools: pure functions over an episode's SQLite connection.

In process (the trainer's path, no transport)::

    from corecraft.tools import call_tool, tool_schemas
    result = call_tool(fork.conn, "searchOrders", {"customer_id": "CUST-10001"})
    result.is_error, result.text, result.data
    openai_tools()  # the 23 tools as OpenAI function specs, for a chat template

``corecraft.server`` serves exactly these tools, with the same schemas and the same texts, over MCP.
"""

from __future__ import annotations

import sqlite3
from typing import Any

# Importing the domain modules registers their tools.
from corecraft.tools import customers, knowledge, orders, products, promotions, returns, shipping, tickets  # noqa: F401
from corecraft.tools.errors import ToolError
from corecraft.tools.registry import ToolResult, ToolSpec, call, registered

TOOL_NAMES: tuple[str, ...] = (
    # search
    "searchOrders", "searchProducts", "searchCustomers", "searchKnowledgebase", "searchPromotions",
    # read
    "getOrderDetails", "getProductDetails", "getCustomerHistory", "getKnowledgebaseArticle", "getWarrantyPolicy",
    "getShippingStatus", "getLoyaltyTier",
    # write
    "createTicket", "updateTicketStatus", "updateOrder", "createCustomer", "updateCustomer",
    # actions
    "processReturn", "processExchange", "applyPromotion", "calculateShipping", "checkInventory",
    "validateBuildCompatibility",
)

_registered = registered()
if set(_registered) != set(TOOL_NAMES):
    raise ImportError(f"tool registry mismatch: {sorted(set(_registered) ^ set(TOOL_NAMES))}")

TOOLS: dict[str, ToolSpec] = {name: _registered[name] for name in TOOL_NAMES}


def call_tool(conn: sqlite3.Connection, name: str, arguments: Any = None) -> ToolResult:
    """Run a tool in process exactly as the MCP server would; never raises for bad input. ``arguments`` is a
    mapping, or the JSON text a model produced (malformed JSON comes back as a tool error)."""
    return call(TOOLS, conn, name, arguments)


def tool_schemas() -> list[dict[str, Any]]:
    """Name, description and JSON input schema of every tool, as an MCP client lists them."""
    return [{"name": s.name, "description": s.description, "inputSchema": s.input_schema} for s in TOOLS.values()]


def openai_tools() -> list[dict[str, Any]]:
    """The same tools in the OpenAI function-calling format chat templates take (for in-process rollouts)."""
    return [{"type": "function", "function": {"name": s.name, "description": s.description,
                                              "parameters": s.input_schema}} for s in TOOLS.values()]


__all__ = ["TOOLS", "TOOL_NAMES", "ToolError", "ToolResult", "ToolSpec", "call_tool", "openai_tools", "tool_schemas"]
