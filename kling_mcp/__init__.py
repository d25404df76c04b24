"""kling-mcp: an MCP server for Kling Video 3 Turbo Pro on the Pixazo gateway.

Importing this package stays light: media libraries (PyAV, Pillow) load when first used.
"""

from kling_mcp.errors import KlingError

__version__ = "0.1.0"
__all__ = ["KlingError", "__version__"]
