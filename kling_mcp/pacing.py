"""Pacing: the engine's status polls leave at evenly spaced moments, at most ``rate`` a second. MCP-agnostic.

Jobs submitted together would otherwise poll in bursts, every interval, and a tool call arriving during a burst waits
behind a hundred poll callbacks on the event loop. Spaced out, the same polls leave the loop idle between them.
"""

from __future__ import annotations

import anyio


class Pacer:
    def __init__(self, rate: float) -> None:
        self._gap = 1.0 / rate
        self._next = 0.0  # anyio's clock: when the next slot opens

    async def slot(self) -> None:
        """Waits for this caller's slot; slots are handed out in call order, ``1 / rate`` apart."""
        now = anyio.current_time()
        at = max(now, self._next)
        self._next = at + self._gap
        if at > now:
            await anyio.sleep(at - now)
