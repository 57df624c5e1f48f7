"""A small MCP server on the official Python MCP SDK (`mcp`, pinned in tests/common/python.rs;
`MCPServer` is what mcp 1.x called FastMCP): a shop's weather and order tools, over Streamable
HTTP on 127.0.0.1 (`python shop_mcp.py PORT`). Used by tests/mcp_realtime.rs (voxd as its MCP
client, from a spoken turn) and tests/python/agents_mcp.py (the Agents SDK as its client).
"""

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("shop")


@server.tool()
def weather(city: str) -> str:
    """Gets today's weather for a city."""
    return f"In {city} today it is sunny and 24 degrees."


@server.tool()
def order_status(order_id: str) -> str:
    """Looks up where a delivery order is, by its order id."""
    return f"Order {order_id} has shipped; it arrives on Friday."


if __name__ == "__main__":
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
