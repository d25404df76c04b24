"""The MCP skin over the core: one module per concern.

- ``app``: ``build_server`` and the lifespan that starts the core (``kling_mcp.runtime``)
- ``tools``: the seven tools, each a top-level function
- ``results``: result models (the tools' outputSchema) and the text a model reads
- ``resources``: ``kling://jobs`` and each job's JSON, images and video
- ``notify``: job changes to clients of both protocol eras
- ``confirm``: spend confirmation
- ``schema``: how tool schemas are listed, and argument errors explained
- ``protocol``: legacy protocol methods and completion
- ``http``: bearer auth, DNS-rebinding protection, webhook and health routes
- ``logs``: the stderr log, with webhook tokens redacted
- ``sdk``: the one adapter for what the SDK does not make public
"""

from kling_mcp.server.app import build_server
from kling_mcp.server.http import LOOPBACK_HOSTS, http_security
from kling_mcp.server.logs import log_to_stderr, uvicorn_log_config
from kling_mcp.server.state import freeze_heap

__all__ = ["LOOPBACK_HOSTS", "build_server", "freeze_heap", "http_security", "log_to_stderr", "uvicorn_log_config"]
