"""The cold-start floor: a bare mcp 2.3 ``MCPServer`` with one trivial tool, served over stdio.

python -m bench.floor_server      # what bench.cold_start spawns next to kling-mcp
"""

from mcp.server.mcpserver import MCPServer

server = MCPServer("floor")


@server.tool()
def echo(text: str) -> str:
    """Returns the text."""
    return text


if __name__ == "__main__":
    server.run()
