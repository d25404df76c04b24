"""The one place kling-mcp touches what the mcp SDK does not make public, and why.

- Legacy (handshake-era) notifications go to a session after its request has ended. ``ServerSession`` objects are
  per-request proxies over one connection, and the SDK has no public connection identity or registry ("keep your
  own"), so a connection is keyed by the identity of the connection object the proxy wraps, and what is kept for it
  is dropped once that connection's teardown stack (``Connection.exit_stack``, public) unwinds.

tests/test_sdk_seams.py fails with a clear message if any of this changes in an SDK release.
"""

from __future__ import annotations

from collections.abc import Callable

from mcp.server.session import ServerSession


def connection_key(session: ServerSession) -> int:
    """The same number for every request proxy of one client connection, for as long as it is open."""
    connection = getattr(session, "_connection", None)
    if connection is None:
        raise RuntimeError("mcp SDK changed: ServerSession no longer wraps a connection (see kling_mcp/server/sdk.py)")
    return id(connection)


def on_close(session: ServerSession, callback: Callable[[], object]) -> None:
    """Calls ``callback`` once the session's connection closes, from the connection's own teardown stack (public:
    ``Connection.exit_stack``; only reaching the connection from a session is not)."""
    connection = getattr(session, "_connection", None)
    stack = getattr(connection, "exit_stack", None)
    if stack is None:
        raise RuntimeError("mcp SDK changed: a session's connection has no exit_stack (see kling_mcp/server/sdk.py)")
    stack.callback(callback)
