"""What every handler reaches: the settings, the notifier and, once started, the running core.

The core (ledger, gateway client, engine, and in sandbox mode the built-in gateway) starts beside the server
rather than before it, so a client's first requests (initialize, tools/list) never wait for it; a handler that
needs the core waits for it instead. It starts once the client's handshake is answered (the first request after
``initialize``), when a handler needs it, or ``START_GRACE_S`` after the server started, whichever comes first: a
core starting while the handshake is answered would share the interpreter with it and delay the first answers,
and a server nobody talks to still resumes its unfinished jobs.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import httpx2
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from kling_mcp.config import Settings
from kling_mcp.errors import LedgerUnavailableError
from kling_mcp.server.notify import Notifier
from kling_mcp.server.owners import owner_of
from kling_mcp.server.results import REMOTE_CALLER

if TYPE_CHECKING:
    from kling_mcp.runtime import Runtime

log = logging.getLogger("kling_mcp")

STARTUP_WAIT_S = 120.0  # a handler waits at most this long for the core to start
START_GRACE_S = 1.0  # the core starts at the latest this long after the server, with or without a client
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 30.0  # a ledger that does not answer yet: the next start, doubling up to the cap


def freeze_heap() -> None:
    """Moves what the process holds so far (modules, schemas, the server) out of the collector's reach.

    A full collection walks every tracked object and stops the event loop while it does: with 1,000 jobs in flight
    those pauses were 90-170 ms, most of the walk over start-up objects that live as long as the process. Frozen,
    they are never walked again (a cycle already garbage now is kept, once; nothing frozen was going to be freed).
    Called by the process that serves (``kling-mcp serve``), not by tests that build servers in one interpreter.
    """
    gc.freeze()


@dataclass
class Startup:
    """The core's lifetime, run as a task beside the server."""

    grace: float = START_GRACE_S
    retry_first: float = RETRY_FIRST_S
    _wanted: anyio.Event = field(default_factory=anyio.Event)
    _done: anyio.Event = field(default_factory=anyio.Event)
    _stop: anyio.Event = field(default_factory=anyio.Event)
    _again: anyio.Event = field(default_factory=anyio.Event)  # try a failed start again before its backoff ends
    _runtime: Runtime | None = None
    _failure: str | None = None
    _retrying: bool = False

    async def run(self, settings: Settings, notifier: Notifier, transport: httpx2.AsyncBaseTransport | None) -> None:
        with anyio.move_on_after(self.grace):
            await self._wanted.wait()
        # Imported here, not at the top: the core's modules are not needed to answer the handshake.
        from kling_mcp.runtime import open_runtime

        delay = self.retry_first
        while not self._stop.is_set():
            try:
                async with open_runtime(settings, transport=transport, listeners=[notifier.on_job]) as runtime:
                    self._runtime, self._failure, self._retrying = runtime, None, False
                    if gc.get_freeze_count():
                        freeze_heap()  # the process froze its start-up heap: the core's modules and objects join it
                    self._done.set()
                    await self._stop.wait()
            except LedgerUnavailableError as exc:  # a database still starting, or briefly away: it may come back
                log.warning("the core cannot start yet (%s); trying again in %.0f s", exc.message, delay)
                self._failure, self._retrying = f"{type(exc).__name__}: {exc}", True
            except Exception as exc:  # the server keeps answering, and says why it cannot work
                log.exception("the core failed")
                self._failure, self._retrying = f"{type(exc).__name__}: {exc}", False
                return
            finally:
                self._runtime = None
                self._done.set()  # handlers hear at once why there is no core, not after their wait
            self._again = anyio.Event()
            if self._stop.is_set():
                break
            with anyio.move_on_after(delay):
                await self._again.wait()  # the backoff, or sooner: a handler wants the core, or the server stops
            delay = min(2 * delay, RETRY_MAX_S)
            if self._done.is_set():
                self._done = anyio.Event()  # handlers that come during the next attempt wait for its outcome

    def want(self) -> None:
        """Starts the core now if it has not started yet; while a ledger that did not answer is awaited, tries again
        now, and the caller waits for that attempt."""
        self._wanted.set()
        if self._retrying and self._done.is_set() and not self._again.is_set():
            self._done = anyio.Event()
            self._again.set()

    def stop(self) -> None:
        self._wanted.set()
        self._stop.set()
        self._again.set()

    @property
    def ready(self) -> bool:
        return self._runtime is not None

    async def runtime(self, *, start: bool = True) -> Runtime:
        """The running core; ``start=False`` waits for it without hurrying its start."""
        if start:
            self.want()
        with anyio.fail_after(STARTUP_WAIT_S):
            await self._done.wait()
        if self._runtime is None:
            # A remote caller is not told the failure itself: it may name the server's folders or its database.
            remote = self._failure is not None and REMOTE_CALLER.get()
            if self._retrying:
                reason = "its ledger does not answer" if remote else self._failure
                raise ToolError(
                    f"The server's core is not running yet ({reason}); it starts by itself once its ledger "
                    "answers. Try again in a minute; nothing was sent to the gateway."
                )
            reason = "it failed to start" if remote else self._failure
            reason = reason or "it is stopping"
            raise ToolError(f"The server's core is not running ({reason}); check the server's log and restart it.")
        return self._runtime


@dataclass(frozen=True, kw_only=True)
class AppState:
    settings: Settings
    notifier: Notifier
    startup: Startup

    async def runtime(self) -> Runtime:
        return await self.startup.runtime()


@dataclass
class StateRef:
    """The server's state, for handlers the SDK calls without a request context (static resources, completion)."""

    current: AppState | None = None

    async def runtime(self) -> Runtime:
        if self.current is None:
            raise ToolError("The server is starting or stopping; try again.")
        return await self.current.runtime()


async def runtime_of(ctx: Context[AppState]) -> Runtime:
    """The core, for a handler; remembers a legacy caller's session so it can be notified later."""
    state = ctx.request_context.lifespan_context
    state.notifier.remember(ctx.session, owner_of(ctx))
    return await state.runtime()
