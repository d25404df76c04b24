"""1,000 concurrent jobs in one kling-mcp process: peak memory, CPU per job, polls per job, check_status latency.

    python -m bench.scale [--jobs 1000] [--poll 1] [--time-scale 1] [--duration 15]   # from the repository root

Three processes: a standalone sandbox gateway (``python -m kling_mcp.sandbox``, tiny renders), the server under
test (``kling-mcp serve --transport http``, KLING_MCP_MODE=sandbox, PIXAZO_BASE_URL at that gateway, downloads off,
dedupe off, KLING_MCP_MAX_ACTIVE_JOBS=2000) and this client, which speaks JSON-RPC over streamable HTTP with as little
work of its own as it can (``bench._common.RawSession``).

Phases: (1) one job, then ``--idle-calls`` ``check_status`` calls on it (the idle baseline); (2) the other jobs
submitted with ``wait_seconds=0``, ``--concurrency`` calls in flight; (3) for ``--latency-seconds``, ``check_status``
calls on random jobs while all jobs poll (the loaded figure). Latency probes are paced at ``--probe-rate`` calls a
second, one at a time, so that the probe measures the load rather than adding its own (a check_status costs the
server a few ms of CPU); (4) wait until the ledger holds every
job final. The server's memory and CPU come from /proc, its ledger is read (read-only) for job timings, and the
gateway's ``/_sandbox/stats`` gives the status requests it received per job.

Targets: peak RSS <= 150 MB; at most one status request per poll interval per job; check_status p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2

from bench._common import (
    RawSession,
    base_env,
    cpu_seconds,
    env_line,
    free_port,
    header,
    load,
    percentile,
    proc_status_kb,
    start_sandbox_gateway,
    stop,
    venv_script,
    wait_until_serving,
)

TARGET_RSS_MB = 150.0
TARGET_P99_MS = 20.0


@dataclass
class Sample:
    t: float
    rss_kb: int
    server_cpu: float
    gateway_cpu: float
    load1: float
    wall_minus_mono: float  # changes when the wall clock is stepped; the ledger's times are wall-clock times


@dataclass
class Sampler:
    """Reads the server's RSS and both processes' CPU every ``every`` seconds, in a thread."""

    server_pid: int
    gateway_pid: int
    every: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def take(self) -> Sample:
        import os

        sample = Sample(
            time.monotonic(),
            proc_status_kb(self.server_pid, "VmRSS"),
            cpu_seconds(self.server_pid),
            cpu_seconds(self.gateway_pid),
            os.getloadavg()[0],
            time.time() - time.monotonic(),
        )
        self.samples.append(sample)
        return sample

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.every):
                try:
                    self.take()
                except OSError:
                    return

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@dataclass
class Mark:
    name: str
    sample: Sample
    status_requests: int  # at the gateway, all jobs, so far


def _ms(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (
        f"n={len(values)} p50 {percentile(values, 50) * 1000:.1f} ms, p90 {percentile(values, 90) * 1000:.1f} ms, "
        f"p99 {percentile(values, 99) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"
    )


def _ledger(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def _ledger_counts(path: Path) -> dict[str, int]:
    with closing(_ledger(path)) as conn:
        return {row[0]: row[1] for row in conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")}


async def _gateway_requests(http: httpx2.AsyncClient, gateway_url: str) -> int:
    stats = (await http.get(gateway_url + "/_sandbox/stats")).json()
    return sum(stats["status_requests"].values())


async def _timed_status(session: RawSession, request_id: str) -> float:
    start = time.perf_counter()
    result = await session.call_tool("check_status", {"request_id": request_id, "wait_seconds": 0})
    elapsed = time.perf_counter() - start
    if result.get("isError") and (result.get("structuredContent") or {}).get("status") not in ("failed", "error"):
        raise RuntimeError(f"check_status failed: {result}")
    return elapsed


@asynccontextmanager
async def _paced(rate: float) -> AsyncIterator[None]:
    """Makes the block take at least 1/rate seconds: a probe starts every 1/rate s unless the last one was slower."""
    start = time.monotonic()
    yield
    await anyio.sleep(max(0.0, 1.0 / rate - (time.monotonic() - start)))


async def _submit(session: RawSession, i: int, duration: int) -> tuple[str, float]:
    start = time.perf_counter()
    result = await session.call_tool(
        "generate_video",
        {"prompt": f"Benchmark clip number {i}: a lighthouse at dusk", "duration": duration, "wait_seconds": 0},
    )
    elapsed = time.perf_counter() - start
    job = result.get("structuredContent")
    if result.get("isError") or not isinstance(job, dict):
        raise RuntimeError(f"submit {i} failed: {result.get('content')}")
    return str(job["request_id"]), elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--poll", type=float, default=1.0, help="effective poll interval in seconds (default: 1)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="sandbox speed-up (default: 1, real timing)")
    parser.add_argument("--duration", type=int, default=15, help="clip seconds; sets how long jobs run")
    parser.add_argument("--concurrency", type=int, default=32, help="submits in flight (default: %(default)s)")
    parser.add_argument("--idle-calls", type=int, default=200)
    parser.add_argument("--probe-rate", type=float, default=20.0, help="check_status probes per second (default: 20)")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--render-size", default="64x36")
    parser.add_argument("--fps", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds in all")
    parser.add_argument(
        "--gateway-command",
        help="run this instead of python -m kling_mcp.sandbox (split by shlex; the gateway flags are appended)",
    )
    parser.add_argument(
        "--server-command",
        help="run this instead of kling-mcp (split by shlex; 'serve --transport http --port N' is appended), "
        "e.g. to compare a patched build",
    )
    parser.add_argument("--keep", type=Path, help="keep logs, ledger and gateway stats in this directory")
    args = parser.parse_args(argv)

    header()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return _main(args, args.keep)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        return _main(args, Path(tmp))


def _main(args: argparse.Namespace, work: Path) -> int:
    gw_port, srv_port = free_port(), free_port()
    gateway = start_sandbox_gateway(
        gw_port,
        work / "gateway.log",
        time_scale=args.time_scale,
        render_size=args.render_size,
        fps=args.fps,
        program=shlex.split(args.gateway_command) if args.gateway_command else None,
    )
    env = base_env(
        work / "home",
        KLING_MCP_MODE="sandbox",
        PIXAZO_BASE_URL=f"http://127.0.0.1:{gw_port}",
        KLING_MCP_SANDBOX_TIME_SCALE=f"{args.time_scale:g}",
        # The server divides the poll interval by the time scale in sandbox mode; this makes it --poll seconds.
        KLING_MCP_POLL_INTERVAL=f"{args.poll * args.time_scale:g}",
        KLING_MCP_MAX_ACTIVE_JOBS="2000",
        KLING_MCP_DEDUPE_SECONDS="0",
        KLING_MCP_DOWNLOAD="0",
        KLING_MCP_STATE_DIR=str(work / "state"),
        KLING_MCP_OUTPUT_DIR=str(work / "out"),
    )
    program = shlex.split(args.server_command) if args.server_command else [venv_script("kling-mcp")]
    server_args = [*program, "serve", "--transport", "http", "--port", str(srv_port)]
    print(f"# server: {env_line(env)} {shlex.join(server_args if args.server_command else server_args[1:])}")
    print(
        f"# gateway: {args.gateway_command or 'python -m kling_mcp.sandbox'} --time-scale {args.time_scale:g} --render-size {args.render_size} "
        f"--fps {args.fps}"
    )
    with (work / "server.log").open("wb") as err:
        server = subprocess.Popen(server_args, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        url = f"http://127.0.0.1:{srv_port}/mcp"
        wait_until_serving(url, server)
        sampler = Sampler(server.pid, gateway.pid)
        sampler.start()
        try:
            report = anyio.run(_drive, args, url, f"http://127.0.0.1:{gw_port}", work, sampler)
        finally:
            sampler.stop()
        report["hwm_kb"] = proc_status_kb(server.pid, "VmHWM")
        _print(args, report, sampler)
    finally:
        stop(server)
        stop(gateway)
    return 0


async def _drive(args: argparse.Namespace, url: str, gateway_url: str, work: Path, sampler: Sampler) -> dict[str, Any]:
    ledger = work / "state" / "ledger.sqlite3"
    marks: list[Mark] = []
    report: dict[str, Any] = {"marks": marks}
    limits = httpx2.Limits(max_connections=args.concurrency + 4, max_keepalive_connections=args.concurrency + 4)
    async with httpx2.AsyncClient(timeout=120.0, limits=limits, trust_env=False) as http:
        session = RawSession(http, url)
        await session.open()

        async def mark(name: str) -> None:
            marks.append(Mark(name, sampler.take(), await _gateway_requests(http, gateway_url)))

        await mark("idle")
        first, _ = await _submit(session, 0, args.duration)
        idle: list[float] = []
        for _ in range(args.idle_calls):
            async with _paced(args.probe_rate):
                idle.append(await _timed_status(session, first))
        report["idle_lat"] = idle
        await mark("submit start")

        ids = [first]
        submit_lat: list[float] = []
        todo = iter(range(1, args.jobs))

        async def submitter() -> None:
            for i in todo:
                rid, elapsed = await _submit(session, i, args.duration)
                ids.append(rid)
                submit_lat.append(elapsed)

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(args.concurrency):
                tg.start_soon(submitter)
        report["submit_s"] = time.monotonic() - started
        report["submit_lat"] = submit_lat
        await mark("submitted")

        counts = _ledger_counts(ledger)
        report["active_at_window_start"] = counts.get("queued", 0) + counts.get("processing", 0)
        loaded: list[float] = []
        window_end = time.monotonic() + args.latency_seconds
        rng = random.Random(7)
        while time.monotonic() < window_end:
            async with _paced(args.probe_rate):
                loaded.append(await _timed_status(session, rng.choice(ids)))
        report["loaded_lat"] = loaded
        counts = _ledger_counts(ledger)
        report["active_at_window_end"] = counts.get("queued", 0) + counts.get("processing", 0)
        await mark("latency window end")
        await session.close()

        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            counts = _ledger_counts(ledger)
            if sum(counts.get(s, 0) for s in ("completed", "failed", "error", "unknown")) >= args.jobs:
                break
            await anyio.sleep(1.0)
        else:
            print(f"timed out waiting for the jobs: {counts}", file=sys.stderr)
        report["final_counts"] = counts
        await mark("all final")
        stats = (await http.get(gateway_url + "/_sandbox/stats")).json()
    (work / "gateway-stats.json").write_text(json.dumps(stats))
    with closing(_ledger(ledger)) as conn:
        rows = conn.execute("SELECT request_id, submitted_at, finished_at, status FROM jobs").fetchall()
    report["jobs"] = [
        (
            r["request_id"],
            r["submitted_at"],
            r["finished_at"],
            r["status"],
            stats["status_requests"].get(r["request_id"]),
        )
        for r in rows
    ]
    report["gateway_status_requests"] = sum(stats["status_requests"].values())
    return report


def _print(args: argparse.Namespace, report: dict[str, Any], sampler: Sampler) -> None:
    marks: list[Mark] = report["marks"]
    by = {m.name: m for m in marks}
    print(f"# {load()} at end")
    print(f"jobs: {args.jobs} of {args.duration} s at time scale {args.time_scale:g}, poll interval {args.poll:g} s")
    print(f"final ledger states: {report['final_counts']}")
    submit_s = report["submit_s"]
    print(
        f"submit: {args.jobs - 1} calls in {submit_s:.1f} s ({(args.jobs - 1) / submit_s:.0f}/s, "
        f"{args.concurrency} in flight); latency {_ms(report['submit_lat'])}"
    )

    # memory
    idle_kb = by["idle"].sample.rss_kb
    peak_kb = report["hwm_kb"]
    peak_sampled = max(s.rss_kb for s in sampler.samples)
    verdict = "meets" if peak_kb / 1024 <= TARGET_RSS_MB else "misses"
    print(
        f"server RSS: idle {idle_kb / 1024:.1f} MB, peak (VmHWM) {peak_kb / 1024:.1f} MB "
        f"(highest sample {peak_sampled / 1024:.1f} MB), {(peak_kb - idle_kb) / args.jobs:.1f} KB per job over idle; "
        f"target <= {TARGET_RSS_MB:g} MB: {verdict}"
    )

    # CPU
    start, submitted, window_end, final = by["submit start"], by["submitted"], by["latency window end"], by["all final"]
    jobs = report["jobs"]
    requests = report["gateway_status_requests"]
    s0, s1, s2, s3 = start.sample, submitted.sample, window_end.sample, final.sample
    total_cpu = s3.server_cpu - s0.server_cpu
    submit_cpu = s1.server_cpu - s0.server_cpu
    per_submit = submit_cpu / (args.jobs - 1)
    # After the latency window only the engine works: its CPU over the status requests it made is the cost of a poll.
    tail_requests = final.status_requests - window_end.status_requests
    per_poll = (s3.server_cpu - s2.server_cpu) / tail_requests if tail_requests else float("nan")
    per_job = per_submit + per_poll * requests / args.jobs
    print(
        f"server CPU: {per_job * 1000:.1f} ms per job = {per_submit * 1000:.1f} ms per submit + "
        f"{per_poll * 1000:.2f} ms per status poll x {requests / args.jobs:.1f} polls; "
        f"in all {total_cpu:.1f} s from first submit to all final (that includes the latency window's calls)"
    )
    for name, a_, b_ in (("submit", s0, s1), ("latency window", s1, s2), ("after it", s2, s3)):
        wall = b_.t - a_.t
        print(
            f"  {name:<15} {wall:6.1f} s wall, {b_.server_cpu - a_.server_cpu:6.1f} s CPU = "
            f"{(b_.server_cpu - a_.server_cpu) / wall:.2f} cores busy; gateway {(b_.gateway_cpu - a_.gateway_cpu) / wall:.2f}"
        )
    print(f"load average during run: max {max(x.load1 for x in sampler.samples):.2f}")

    # polls per job
    # The ledger times jobs with the wall clock. If it was stepped during the run (this VM's is, now and then),
    # lifetimes are off by up to the step; the check allows that much and says so.
    offsets = [x.wall_minus_mono for x in sampler.samples]
    step = max(offsets) - min(offsets)
    allowed_violations = 0
    per_interval: list[float] = []
    counts: list[int] = []
    lifetimes: list[float] = []
    for _rid, submitted_at, finished_at, _status, n in jobs:
        if submitted_at is None or finished_at is None or n is None:
            continue
        life = finished_at - submitted_at
        counts.append(n)
        lifetimes.append(life)
        if n > int((life + step) / args.poll + 1e-6):
            allowed_violations += 1
        if n:
            per_interval.append(life / n)
    nominal = sum(lifetimes) / args.poll
    print(
        f"gateway status requests: {requests} in all, per job mean {statistics.mean(counts):.1f}, max {max(counts)}; "
        f"jobs over one request per {args.poll:g} s interval: {allowed_violations} "
        f"(target 0: {'meets' if allowed_violations == 0 else 'misses'}); "
        f"wall clock moved against the monotonic clock by {step * 1000:.0f} ms during the run"
    )
    print(
        f"achieved seconds between polls per job: median {statistics.median(per_interval):.2f}, "
        f"p99 {percentile(per_interval, 99):.2f}, max {max(per_interval):.2f} (nominal {args.poll:g}); "
        f"requests / nominal polls = {requests / nominal:.2f}; mean job lifetime {statistics.mean(lifetimes):.1f} s"
    )

    # latency
    loaded = report["loaded_lat"] or [float("nan")]
    p99 = percentile(loaded, 99) * 1000
    print(f"check_status idle (1 job, {args.probe_rate:g}/s): {_ms(report['idle_lat'])}")
    print(
        f"check_status under load ({report['active_at_window_start']} -> {report['active_at_window_end']} jobs "
        f"polling, {s2.t - s1.t:.0f} s window, {args.probe_rate:g}/s): {_ms(loaded)}; "
        f"target p99 <= {TARGET_P99_MS:g} ms: {'meets' if p99 <= TARGET_P99_MS else 'misses'}"
    )
    print("timeline (s since submit start: RSS MB, server cores busy since previous, load1):")
    step = max(1, len(sampler.samples) // 20)
    prev = sampler.samples[0]
    for s in sampler.samples[::step]:
        busy = (s.server_cpu - prev.server_cpu) / (s.t - prev.t) if s.t > prev.t else 0.0
        print(f"  {s.t - s0.t:7.1f}: {s.rss_kb / 1024:6.1f} MB  {busy:4.2f}  {s.load1:5.2f}")
        prev = s


if __name__ == "__main__":
    sys.exit(main())
