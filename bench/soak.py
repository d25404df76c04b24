"""Soak: N jobs through the MCP server against a sandbox gateway that injects faults into a share of its answers.

Every job must end accounted for (completed and downloaded, or a reported FAILED/ERROR/unknown) and no prompt may
reach the gateway twice. Run: ``python -m bench.soak --jobs 1000 --fault-rate 0.2``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from kling_mcp.config import Settings
from kling_mcp.sandbox import Faults, SandboxConfig, serve_sandbox
from kling_mcp.server import build_server


@dataclass
class SoakReport:
    jobs: int
    seconds: float
    outcomes: Counter[str] = field(default_factory=Counter)
    downloads: Counter[str] = field(default_factory=Counter)
    gateway_submits: int = 0
    gateway_submit_requests: int = 0
    duplicate_prompts: int = 0
    status_requests: int = 0
    tool_errors: list[str] = field(default_factory=list)
    unaccounted: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"jobs: {self.jobs} in {self.seconds:.1f}s",
            f"outcomes: {dict(self.outcomes)}",
            f"downloads: {dict(self.downloads)}",
            f"gateway: {self.gateway_submits} jobs created from {self.gateway_submit_requests} submit requests; "
            f"{self.status_requests} status requests",
            f"prompts submitted twice: {self.duplicate_prompts}",
            f"tool calls refused: {len(self.tool_errors)}",
            f"unaccounted jobs: {len(self.unaccounted)}",
        ]


async def soak(jobs: int, fault_rate: float, workdir: Path, *, seed: int = 1, concurrency: int = 50) -> SoakReport:
    share = fault_rate / 4  # 5xx, 429, challenge pages and timeouts share the faulty answers
    faults = Faults(
        seed=seed, rate_5xx=share, rate_429=share, retry_after_s=0.05, rate_challenge=share, rate_slow=share, slow_s=1.5
    )
    config = SandboxConfig(time_scale=2000, render_size=(64, 36), fps=4, media_dir=workdir / "gw", faults=faults)
    report = SoakReport(jobs=jobs, seconds=0.0)
    started = time.monotonic()
    async with serve_sandbox(config) as served:
        settings = Settings(
            mode="sandbox",
            base_url=served.base_url,
            poll_interval=0.05,
            request_timeout=1.0,  # below slow_s, so a slow answer is a real timeout
            state_dir=workdir / "state",
            output_dir=workdir / "out",
            max_active_jobs=jobs + 1,
            dedupe_seconds=0,
            sandbox_time_scale=2000,
        )
        async with Client(build_server(settings)) as client:
            ids: list[str] = []
            limiter = anyio.Semaphore(concurrency)

            async def submit(i: int) -> None:
                async with limiter:
                    result = await client.call_tool("generate_video", {"prompt": f"soak job {i}", "wait_seconds": 0})
                if result.structured_content is None:
                    report.tool_errors.append(" ".join(getattr(c, "text", "") for c in result.content)[:200])
                else:
                    ids.append(result.structured_content["request_id"])

            async with anyio.create_task_group() as tg:
                for i in range(jobs):
                    tg.start_soon(submit, i)

            finals: dict[str, dict[str, Any]] = {}

            async def settle(rid: str) -> None:
                async with limiter:
                    result = await client.call_tool("check_status", {"request_id": rid, "wait_seconds": 50})
                finals[rid] = result.structured_content or {}

            async with anyio.create_task_group() as tg:
                for rid in ids:
                    tg.start_soon(settle, rid)
        served.gateway.config.faults.merge({"rate_5xx": 0, "rate_429": 0, "rate_challenge": 0, "rate_slow": 0})
        stats = served.gateway.stats()
        prompts = Counter(j.body.get("prompt") for j in served.gateway.jobs.values())
    report.seconds = time.monotonic() - started
    for rid, job in finals.items():
        report.outcomes[job.get("status", "missing")] += 1
        report.downloads[job.get("download", "missing")] += 1
        settled = job.get("status") in ("failed", "error", "unknown") or (
            job.get("status") == "completed" and job.get("download") == "saved"
        )
        if not settled:
            report.unaccounted.append(rid)
    report.gateway_submits = int(stats["submits"])
    report.gateway_submit_requests = int(stats["submit_requests"])
    report.status_requests = sum(stats["status_requests"].values())
    report.duplicate_prompts = sum(n - 1 for n in prompts.values() if n > 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = anyio.run(functools.partial(soak, args.jobs, args.fault_rate, Path(tmp), seed=args.seed))
    print(f"$ python -m bench.soak --jobs {args.jobs} --fault-rate {args.fault_rate} --seed {args.seed}")
    for line in report.lines():
        print(line)
    for error in report.tool_errors[:5]:
        print("  refused:", error)
    ok = not report.unaccounted and report.duplicate_prompts == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
