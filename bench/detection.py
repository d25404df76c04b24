"""Completion detection: from the gateway finishing a job to the waiting tool call returning.

    python -m bench.detection [--mode polling] [--interval 1] [--trials 20]   # from the repository root

A standalone sandbox gateway (``python -m kling_mcp.sandbox``) and the server over stdio (the SDK's client spawns
``python -m kling_mcp``, downloads off). Each trial calls ``generate_video`` with the ``[sandbox:hold]`` trigger and
a long ``wait_seconds``, so the gateway keeps the job PROCESSING and the call waits; once the server has polled it,
the benchmark sleeps a random part of an interval and ends the job with ``POST /_sandbox/jobs/{id}/finish``. The
figure is the time from the finish answer arriving (so the job had ended by then) to the tool call returning,
split at the moment the server's ledger recorded the completion (``finished_at``): *seen* is the gateway's end to
the server noticing, *delivered* is that to the client holding the result.

With polling the bound is the poll interval plus one status request and the wake-up of the waiting call.

Modes are entries of ``MODES``: each says how the gateway and the server are configured and what bounds the
latency. A webhook mode is a new entry (gateway and server settings for the callback) plus a ``--webhooks``
shorthand for ``--mode webhooks``; the trial loop does not change.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
from mcp import Client, StdioServerParameters, stdio_client

from bench._common import (
    REPO,
    base_env,
    env_line,
    free_port,
    header,
    load,
    percentile,
    start_sandbox_gateway,
    stop,
)


@dataclass(frozen=True)
class Trial:
    request_id: str
    finish_rtt: float  # the finish request's round trip: how early the job may have ended before t_finish
    seen: float  # finish answer -> the ledger's finished_at
    total: float  # finish answer -> tool call returned


@dataclass(frozen=True)
class DetectionMode:
    name: str
    description: str
    server_env: Callable[[argparse.Namespace], dict[str, str]]  # settings beyond the common ones
    gateway_args: Callable[[argparse.Namespace], list[str]]
    bound: Callable[[argparse.Namespace], float]  # seconds the latency should stay under
    bound_text: str


def _polling_env(args: argparse.Namespace) -> dict[str, str]:
    # The server divides the poll interval by the sandbox time scale; at scale 1 it is --interval seconds.
    return {"KLING_MCP_SANDBOX_TIME_SCALE": "1", "KLING_MCP_POLL_INTERVAL": f"{args.interval:g}"}


MODES: dict[str, DetectionMode] = {
    "polling": DetectionMode(
        name="polling",
        description="the engine polls the gateway's status route every interval",
        server_env=_polling_env,
        gateway_args=lambda args: [],
        bound=lambda args: float(args.interval) + 0.05,
        bound_text="poll interval + 50 ms",
    ),
}


def _finished_at(ledger: Path, request_id: str) -> float | None:
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=30)
    with closing(conn):
        row = conn.execute("SELECT finished_at FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


async def _new_request_id(http: httpx2.AsyncClient, gateway: str, known: set[str]) -> str:
    with anyio.fail_after(30):
        while True:
            stats = (await http.get(gateway + "/_sandbox/stats")).json()
            fresh = set(stats["status_requests"]) - known
            if fresh:
                (rid,) = fresh
                return str(rid)
            await anyio.sleep(0.01)


async def _wait_polled(http: httpx2.AsyncClient, gateway: str, request_id: str) -> None:
    """Until the server has polled the job once: from then on its poll phase is fixed."""
    with anyio.fail_after(60):
        while True:
            if (await http.get(f"{gateway}/_sandbox/jobs/{request_id}")).json()["status_requests"] >= 1:
                return
            await anyio.sleep(0.01)


async def _run(args: argparse.Namespace, mode: DetectionMode, gateway: str, work: Path) -> list[Trial]:
    env = base_env(
        work / "home",
        KLING_MCP_MODE="sandbox",
        PIXAZO_BASE_URL=gateway,
        KLING_MCP_DOWNLOAD="0",
        KLING_MCP_DEDUPE_SECONDS="0",
        KLING_MCP_STATE_DIR=str(work / "state"),
        KLING_MCP_OUTPUT_DIR=str(work / "out"),
        **mode.server_env(args),
    )
    print(f"# server: {env_line(env)} {args.server_command or 'python -m kling_mcp'} (stdio)")
    ledger = work / "state" / "ledger.sqlite3"
    program = shlex.split(args.server_command) if args.server_command else [sys.executable, "-m", "kling_mcp"]
    params = StdioServerParameters(command=program[0], args=program[1:], env=env, cwd=str(REPO))
    rng = random.Random(args.seed)
    trials: list[Trial] = []
    with (work / "server.log").open("w") as errlog:
        async with (
            httpx2.AsyncClient(timeout=30, trust_env=False) as http,
            Client(stdio_client(params, errlog=errlog), mode="legacy") as client,
        ):
            for i in range(args.trials + 1):  # trial 0 warms up the server and is not counted
                known = set((await http.get(gateway + "/_sandbox/stats")).json()["status_requests"])
                returned: list[float] = []
                outcome: list[str] = []

                async def call(i: int = i, returned: list[float] = returned, outcome: list[str] = outcome) -> None:
                    result = await client.call_tool(
                        "generate_video",
                        {"prompt": f"Detection trial {i} [sandbox:hold]", "duration": 3, "wait_seconds": 50},
                    )
                    returned.append(time.perf_counter())
                    outcome.append(str((result.structured_content or {}).get("status")))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    request_id = await _new_request_id(http, gateway, known)
                    await _wait_polled(http, gateway, request_id)
                    await anyio.sleep(rng.uniform(0.0, args.interval))
                    sent = time.perf_counter()
                    answer = await http.post(f"{gateway}/_sandbox/jobs/{request_id}/finish", json={})
                    finished = time.perf_counter()
                    finished_wall = time.time()
                    answer.raise_for_status()
                if outcome != ["completed"]:
                    raise RuntimeError(f"trial {i}: the call ended {outcome}")
                seen_at = _finished_at(ledger, request_id)
                if i == 0:
                    continue
                trials.append(
                    Trial(
                        request_id=request_id,
                        finish_rtt=finished - sent,
                        seen=(seen_at - finished_wall) if seen_at is not None else float("nan"),
                        total=returned[0] - finished,
                    )
                )
    return trials


def _row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:<10} {statistics.median(ms):8.0f} {statistics.mean(ms):8.0f} {percentile(ms, 90):8.0f} "
        f"{min(ms):8.0f} {max(ms):8.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="polling")
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds (default: 1)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument(
        "--gateway-command",
        help="run this instead of python -m kling_mcp.sandbox (split by shlex; the gateway flags are appended)",
    )
    parser.add_argument(
        "--server-command",
        help="run this instead of python -m kling_mcp (split by shlex), e.g. to compare a patched build",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the random finish moments")
    args = parser.parse_args(argv)
    mode = MODES[args.mode]

    header()
    print(f"# mode {mode.name}: {mode.description}; {args.trials} trials after 1 warm-up")
    if args.gateway_command:
        print(f"# gateway: {args.gateway_command}")
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        work = Path(tmp)
        port = free_port()
        # A fast gateway clock ends the queueing phase at once; [sandbox:hold] keeps each job PROCESSING until told.
        gw = start_sandbox_gateway(
            port,
            work / "gateway.log",
            time_scale=1000,
            render_size="64x36",
            fps=2,
            extra=mode.gateway_args(args),
            program=shlex.split(args.gateway_command) if args.gateway_command else None,
        )
        try:
            trials = anyio.run(_run, args, mode, f"http://127.0.0.1:{port}", work)
        finally:
            stop(gw)
    print(f"# {load()} at end")
    print(f"{'ms':<10} {'median':>8} {'mean':>8} {'p90':>8} {'min':>8} {'max':>8}")
    print(_row("seen", [t.seen for t in trials]))
    print(_row("delivered", [t.total - t.seen for t in trials]))
    print(_row("total", [t.total for t in trials]))
    print(_row("finish rtt", [t.finish_rtt for t in trials]))
    bound = mode.bound(args)
    over = sum(t.total > bound for t in trials)
    print(
        f"bound: {mode.bound_text} = {bound * 1000:.0f} ms; trials over it: {over} of {len(trials)} "
        f"({'meets' if over == 0 else 'misses'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
