"""Running an ASGI app on a real loopback socket inside the current event loop, with uvicorn."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import httpx2

from kling_mcp.sandbox.app import create_app
from kling_mcp.sandbox.gateway import SandboxGateway
from kling_mcp.sandbox.settings import SandboxConfig

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["RunningSandbox", "serve_asgi", "serve_sandbox"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunningSandbox:
    base_url: str
    gateway: SandboxGateway
    app: Starlette


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@asynccontextmanager
async def serve_asgi(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 10.0
) -> AsyncIterator[str]:
    """Serves ``app`` until the block ends and yields its base URL (``http://127.0.0.1:PORT``).

    The socket is bound here so that port 0 works and the port is known before uvicorn starts. Uvicorn does not
    configure logging (nothing goes to stdout) and does not take over the process's signal handlers.
    """
    import uvicorn

    class EmbeddedServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # The host process owns SIGINT/SIGTERM; uvicorn would swallow them and re-raise after shutdown.
            yield

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only then
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="on",
            log_config=None,
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=3,
        )
        server = EmbeddedServer(config)
        stopped = anyio.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            try:
                await server.serve(sockets=[sock])
            except SystemExit as exc:  # uvicorn exits the process when the app's startup fails
                failure.append(exc)
            finally:
                stopped.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            with anyio.fail_after(startup_timeout):
                while not server.started:
                    if stopped.is_set():
                        raise RuntimeError(f"the server on {host}:{bound_port} stopped during startup: {failure}")
                    await anyio.sleep(0.01)
            base_url = f"http://{_url_host(host)}:{bound_port}"
            log.info("serving on %s", base_url)
            try:
                yield base_url
            finally:
                server.should_exit = True
    finally:
        sock.close()


@asynccontextmanager
async def serve_sandbox(
    config: SandboxConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    outbound: httpx2.AsyncBaseTransport | None = None,
) -> AsyncIterator[RunningSandbox]:
    """Runs a sandbox gateway on a real socket; yields ``.base_url`` and ``.gateway``; stops it on exit."""
    app = create_app(config, outbound=outbound)
    async with serve_asgi(app, host, port) as base_url:
        yield RunningSandbox(base_url=base_url, gateway=app.state.gateway, app=app)
