"""Replicas: several ``kling-mcp serve --transport http`` processes on one PostgreSQL ledger, against the standalone
sandbox gateway injecting faults; calls go to replicas at random and replicas are SIGKILLed during the run.

Checked at the end: every job ends completed and saved (or ``unknown`` where a submit was cut), no prompt reached
the gateway twice (nothing paid twice), no video was fetched twice except those a killed replica was fetching,
every wait on a surviving replica returned, and a killed replica's jobs were taken over within the lease plus one
poll interval. ``tests/test_replicas_scenario.py`` runs a small version; the large one is

    python -m bench.replicas --jobs 3000 --fault-rate 0.2 --kills 2

It starts its own PostgreSQL from the Debian binaries (tests/support/postgres.py) unless given --database-url.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psycopg
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench._common import base_env, free_port, header, start_sandbox_gateway, stop, wait_until_serving

CALL_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Plan:
    jobs: int = 40
    replicas: int = 3
    kills: int = 1
    fault_rate: float = 0.2
    time_scale: float = 50.0  # a 3 s clip takes about a second: jobs are in flight when a replica dies
    lease_seconds: float = 1.5
    poll_interval: float = 0.25  # what the engine polls at (KLING_MCP_POLL_INTERVAL is this times the time scale)
    concurrency: int = 20
    seed: int = 1


@dataclass
class Report:
    plan: Plan
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    downloads: Counter[str] = field(default_factory=Counter)
    gateway_jobs: int = 0
    status_requests: list[int] = field(default_factory=list)  # per gateway job: the polls it was asked
    prompts_twice: int = 0
    fetched_twice: int = 0  # videos fetched more than once, not explained by a killed replica
    fetched_twice_after_kill: int = 0
    takeover_s: list[float] = field(default_factory=list)  # per kill: until its last job had a new driver
    held_at_kill: list[int] = field(default_factory=list)
    calls_retried: int = 0  # calls cut by a kill, sent again (with the same idempotency key) to a survivor
    waits_returned: int = 0
    unsettled: list[str] = field(default_factory=list)

    @property
    def takeover_bound_s(self) -> float:
        return self.plan.lease_seconds + self.plan.poll_interval

    def ok(self, slack_s: float = 1.0) -> bool:
        outcomes_ok = set(self.outcomes) <= {"completed", "unknown"} and not self.unsettled
        fetched_ok = self.prompts_twice == 0 and self.fetched_twice == 0
        return outcomes_ok and fetched_ok and all(t <= self.takeover_bound_s + slack_s for t in self.takeover_s)

    def lines(self) -> list[str]:
        p = self.plan
        return [
            f"jobs: {p.jobs} over {p.replicas} replicas in {self.seconds:.1f}s; {p.kills} SIGKILLs; "
            f"fault rate {p.fault_rate:g}; lease {p.lease_seconds:g}s, poll interval {p.poll_interval:g}s",
            f"outcomes: {dict(self.outcomes)}; downloads: {dict(self.downloads)}",
            f"gateway: {self.gateway_jobs} jobs created; prompts submitted twice: {self.prompts_twice}; status "
            f"requests per job: mean {statistics.fmean(self.status_requests or [0]):.1f}, "
            f"max {max(self.status_requests, default=0)}",
            f"videos fetched twice: {self.fetched_twice} (plus {self.fetched_twice_after_kill} a killed replica "
            "was fetching)",
            f"jobs held by each killed replica: {self.held_at_kill}; taken over after "
            f"{', '.join(f'{t:.2f}s' for t in self.takeover_s)} (bound: lease + poll = {self.takeover_bound_s:g}s)",
            f"calls cut by a kill and sent again: {self.calls_retried}; waits returned: {self.waits_returned}; "
            f"unsettled: {len(self.unsettled)}",
        ]


@dataclass
class Replica:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    alive: bool = True


def _gateway_flags(plan: Plan) -> list[str]:
    share = plan.fault_rate / 4  # 5xx, 429, challenge pages and slow answers share the faulty answers
    return [
        f"--seed={plan.seed}",
        f"--rate-5xx={share}",
        f"--rate-429={share}",
        "--retry-after-s=0.05",
        f"--rate-challenge={share}",
        f"--rate-slow={share}",
        "--slow-s=1.5",
    ]


def _replica_env(plan: Plan, work: Path, name: str, gateway: str, database_url: str) -> dict[str, str]:
    return base_env(
        work / "home",
        KLING_MCP_MODE="sandbox",
        PIXAZO_BASE_URL=gateway,
        KLING_MCP_DATABASE_URL=database_url,
        KLING_MCP_MEDIA_SECRET="bench-replicas-media-key",  # one key for all, as the README asks
        KLING_MCP_LEASE_SECONDS=f"{plan.lease_seconds:g}",
        KLING_MCP_SANDBOX_TIME_SCALE=f"{plan.time_scale:g}",
        KLING_MCP_POLL_INTERVAL=f"{plan.poll_interval * plan.time_scale:g}",
        KLING_MCP_REQUEST_TIMEOUT="1.0",  # below the slow answers' delay, so they are real timeouts
        KLING_MCP_STATE_DIR=str(work / f"state-{name}"),
        KLING_MCP_OUTPUT_DIR=str(work / "out"),  # shared by every replica, as the README asks
        KLING_MCP_MAX_ACTIVE_JOBS=str(plan.jobs + 1),
        KLING_MCP_DEDUPE_SECONDS="0",
        KLING_MCP_MAX_WAIT="30",
    )


@contextlib.contextmanager
def _processes(plan: Plan, work: Path, database_url: str) -> Iterator[tuple[str, list[Replica]]]:
    """The sandbox gateway and the replicas, each in its own process; (the gateway's URL, the replicas)."""
    gateway_port = free_port()
    gateway = start_sandbox_gateway(
        gateway_port,
        work / "gateway.log",
        time_scale=plan.time_scale,
        render_size="64x36",
        fps=4,
        extra=_gateway_flags(plan),
    )
    replicas: list[Replica] = []
    try:
        for i in range(plan.replicas):
            name, port = f"r{i}", free_port()
            env = _replica_env(plan, work, name, f"http://127.0.0.1:{gateway_port}", database_url)
            command = [sys.executable, "-m", "kling_mcp", "serve", "--transport", "http", "--port", str(port)]
            with (work / f"{name}.log").open("wb") as err:
                proc = subprocess.Popen(
                    [*command, "--replica-id", name], env=env, stdout=subprocess.DEVNULL, stderr=err
                )
            replicas.append(Replica(name, f"http://127.0.0.1:{port}/mcp", proc))
        for replica in replicas:
            wait_until_serving(replica.url.removesuffix("/mcp") + "/healthz", replica.proc)
        yield f"http://127.0.0.1:{gateway_port}", replicas
    finally:
        for replica in replicas:
            stop(replica.proc)
        stop(gateway)


class Cluster:
    """The running replicas and the MCP clients that call them, with kills and retries."""

    def __init__(self, plan: Plan, replicas: list[Replica], database_url: str, report: Report) -> None:
        self.plan = plan
        self.replicas = replicas
        self.database_url = database_url
        self.report = report
        self.rng = random.Random(plan.seed)
        self.killed_jobs: set[str] = set()  # jobs a killed replica held: a second fetch of their video is excused

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """One tool call to a live replica picked at random, in a session of its own (no affinity: the next call
        may go anywhere); a call cut by a kill goes to another replica."""
        while True:
            replica = self.rng.choice(self.live())
            try:
                with anyio.fail_after(CALL_TIMEOUT_S):
                    async with Client(streamable_http_client(replica.url)) as client:
                        result = await client.call_tool(tool, arguments)
            except Exception:
                if replica.alive:
                    raise
                self.report.calls_retried += 1
                continue
            if result.structured_content is None:
                raise RuntimeError(f"{tool} refused: {result.content}")
            return dict(result.structured_content)

    async def kill(self, replica: Replica) -> None:
        """SIGKILL, then time how long until every unsettled job it held has another driver."""
        with psycopg.connect(self.database_url) as conn:
            replica.alive = False
            replica.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            held = await anyio.to_thread.run_sync(_held_by, conn, replica.name)
            self.report.held_at_kill.append(len(held))
            # Reading the ledger is the measurement: nothing else announces that another replica took a job.
            while await anyio.to_thread.run_sync(_held_by, conn, replica.name):  # noqa: ASYNC110
                await anyio.sleep(0.02)
            self.report.takeover_s.append(time.monotonic() - killed)
            self.killed_jobs.update(held)


def _held_by(conn: psycopg.Connection[Any], name: str) -> set[str]:
    """Unsettled jobs whose lease names ``name`` (a settled job gives its lease back)."""
    rows = conn.execute(
        "SELECT request_id, job_id FROM jobs WHERE lease_owner = %s AND NOT (status IN "
        "('failed', 'error', 'unknown') OR (status = 'completed' AND download_state IN ('done', 'failed', 'off')))",
        (name,),
    ).fetchall()
    conn.commit()
    return {str(r[0] or r[1]) for r in rows}


async def _drive(cluster: Cluster) -> list[str]:
    """Submits every job (with the kills spread over the submissions), then waits for each; the request ids."""
    plan, ids = cluster.plan, []
    kill_at = {plan.jobs * (k + 1) // (plan.kills + 1): k for k in range(plan.kills)}
    limiter = anyio.Semaphore(plan.concurrency)

    async with anyio.create_task_group() as tg:

        async def submit(i: int) -> None:
            async with limiter:
                arguments = {"prompt": f"replica job {i}", "duration": 3, "wait_seconds": 0, "idempotency_key": f"k{i}"}
                ids.append((await cluster.call("generate_video", arguments))["request_id"])
            if len(ids) in kill_at:  # amid the submissions, with jobs in flight on every replica
                tg.start_soon(cluster.kill, cluster.replicas[kill_at[len(ids)]])

        for i in range(plan.jobs):
            tg.start_soon(submit, i)
    return ids


async def _settle(cluster: Cluster, ids: list[str]) -> dict[str, dict[str, Any]]:
    finals: dict[str, dict[str, Any]] = {}
    limiter = anyio.Semaphore(cluster.plan.concurrency)

    async def settle(rid: str) -> None:
        async with limiter:
            while True:
                job = await cluster.call("check_status", {"request_id": rid, "wait_seconds": 30})
                cluster.report.waits_returned += 1
                if job.get("status") in ("failed", "error", "unknown") or job.get("download") in ("saved", "off"):
                    finals[rid] = job
                    return

    async with anyio.create_task_group() as tg:
        for rid in ids:
            tg.start_soon(settle, rid)
    return finals


def _gateway_records(gateway: str, report: Report, excused: set[str]) -> None:
    with httpx2.Client(base_url=gateway, trust_env=False, timeout=30) as http:
        stats = http.get("/_sandbox/stats").json()
        report.gateway_jobs = int(stats["submits"])
        prompts: Counter[str] = Counter()
        for rid in stats["status_polls"]:
            job = http.get(f"/_sandbox/jobs/{rid}").json()
            report.status_requests.append(int(job["status_requests"]))
            prompts[str(job["body"].get("prompt"))] += 1
            if job["media_requests"] > 1:
                if rid in excused:
                    report.fetched_twice_after_kill += 1
                else:
                    report.fetched_twice += 1
    report.prompts_twice = sum(n - 1 for n in prompts.values() if n > 1)


async def run(plan: Plan, work: Path, database_url: str) -> Report:
    report = Report(plan)
    started = time.monotonic()
    with _processes(plan, work, database_url) as (gateway, replicas):
        cluster = Cluster(plan, replicas, database_url, report)
        ids = await _drive(cluster)
        finals = await _settle(cluster, ids)
        _gateway_records(gateway, report, cluster.killed_jobs)
    report.seconds = time.monotonic() - started
    for rid in ids:
        job = finals.get(rid, {})
        report.outcomes[job.get("status", "missing")] += 1
        report.downloads[job.get("download", "missing")] += 1
        if rid not in finals:
            report.unsettled.append(rid)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--lease-seconds", type=float, default=3.0)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--time-scale", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: a throwaway server)")
    args = parser.parse_args()
    plan = Plan(
        jobs=args.jobs,
        replicas=args.replicas,
        kills=args.kills,
        fault_rate=args.fault_rate,
        time_scale=args.time_scale,
        lease_seconds=args.lease_seconds,
        poll_interval=args.poll_interval,
        concurrency=args.concurrency,
        seed=args.seed,
    )
    header()
    with tempfile.TemporaryDirectory() as tmp, _database(args.database_url) as url:
        report = anyio.run(functools.partial(run, plan, Path(tmp), url))
    for line in report.lines():
        print(line)
    print("PASS" if report.ok() else "FAIL")
    return 0 if report.ok() else 1


@contextlib.contextmanager
def _database(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    from tests.support.postgres import binaries, running_server

    bin_dir = binaries()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL binaries in /usr/lib/postgresql/*/bin; apt-get install postgresql")
    with running_server(bin_dir) as server:
        yield server.new_database()


if __name__ == "__main__":
    sys.exit(main())
