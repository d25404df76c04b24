"""Cold start over stdio: process spawn to the answer of ``tools/list``, kling-mcp against a bare MCPServer.

    python -m bench.cold_start [--runs 10] [--mode legacy]     # from the repository root

Each run spawns a fresh process through the SDK's ``stdio_client`` (the way desktop clients launch servers),
completes the ``initialize`` handshake and times the answer of ``tools/list``. Variants, interleaved round by round
(the order rotates each round so none always runs first after the previous one's teardown):

* floor: ``bench/floor_server.py``, a bare mcp 2.3 ``MCPServer`` with one trivial tool;
* sandbox: ``python -m kling_mcp`` with KLING_MCP_MODE=sandbox, whose lifespan starts the built-in sandbox gateway;
* live: ``python -m kling_mcp`` with PIXAZO_API_KEY set to a dummy value and PIXAZO_BASE_URL at a loopback port
  nobody listens on (nothing is called by tools/list).

Every run gets a fresh state and output directory. One warm-up run per variant is discarded (it fills the page
cache and writes bytecode), so the figures are "cold process, warm disk cache", which is what a client restarting
a server sees. Target: kling-mcp's median at most 1.10x the floor's.

    python -m bench.cold_start --instructions    # needs valgrind

counts instead the CPU instructions each variant executes from exec to its tools/list answer, once each under
callgrind (a dump is requested the moment the answer arrives). Wall-clock ratios swing with whatever else the machine
runs; instruction counts repeat to a fraction of a percent, so they show what a change costs on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters, stdio_client

from bench._common import REPO, STDIO_HANDSHAKE, base_env, free_port, header, load

TARGET_RATIO = 1.10


@dataclass
class Variant:
    name: str
    args: list[str]
    env: Callable[[Path], dict[str, str]]
    init_s: list[float] = field(default_factory=list)
    list_s: list[float] = field(default_factory=list)
    tools: int = 0


def _floor_env(run_dir: Path) -> dict[str, str]:
    return base_env(run_dir / "home")


def _sandbox_env(run_dir: Path) -> dict[str, str]:
    return base_env(
        run_dir / "home",
        KLING_MCP_MODE="sandbox",
        KLING_MCP_STATE_DIR=str(run_dir / "state"),
        KLING_MCP_OUTPUT_DIR=str(run_dir / "out"),
    )


def _live_env_factory(dead_port: int) -> Callable[[Path], dict[str, str]]:
    def env(run_dir: Path) -> dict[str, str]:
        return base_env(
            run_dir / "home",
            KLING_MCP_MODE="live",
            PIXAZO_API_KEY="dummy-key-for-cold-start-bench",
            PIXAZO_BASE_URL=f"http://127.0.0.1:{dead_port}",
            KLING_MCP_STATE_DIR=str(run_dir / "state"),
            KLING_MCP_OUTPUT_DIR=str(run_dir / "out"),
        )

    return env


async def _one(variant: Variant, run_dir: Path, mode: str, errlog: Path) -> tuple[float, float, int]:
    params = StdioServerParameters(
        command=variant.args[0], args=variant.args[1:], env=variant.env(run_dir), cwd=str(REPO)
    )
    with errlog.open("a") as err, anyio.fail_after(120):
        start = time.perf_counter()
        async with Client(stdio_client(params, errlog=err), mode=mode) as client:
            initialized = time.perf_counter()
            tools = await client.list_tools()
            listed = time.perf_counter()
    return initialized - start, listed - start, len(tools.tools)


async def _run(runs: int, mode: str, variants: list[Variant], work: Path) -> None:
    errlog = work / "stderr.log"
    for variant in variants:  # warm-up, discarded
        await _one(variant, work / f"warm-{variant.name}", mode, errlog)
    for r in range(runs):
        shift = r % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            init_s, list_s, count = await _one(variant, work / f"run{r}-{variant.name}", mode, errlog)
            variant.init_s.append(init_s)
            variant.list_s.append(list_s)
            variant.tools = count
        print(f"  round {r + 1}/{runs} done ({load()})", file=sys.stderr)


def _instructions_of(variant: Variant, run_dir: Path) -> int:
    """Instructions from exec to the tools/list answer, counted by callgrind (raw JSON-RPC, to know the pid)."""
    out = run_dir / "callgrind.out"
    run_dir.mkdir(parents=True)
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *variant.args]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=variant.env(run_dir),
        cwd=REPO,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        for message in STDIO_HANDSHAKE:
            proc.stdin.write(json.dumps(message).encode() + b"\n")
            proc.stdin.flush()
            if "id" in message:
                while json.loads(proc.stdout.readline()).get("id") != message["id"]:
                    pass
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], capture_output=True, check=True, timeout=120)
    finally:
        proc.kill()
        proc.wait()
    counts = [
        int(line.split()[1])
        for dump in run_dir.glob("callgrind.out*")
        for line in dump.read_text().splitlines()
        if line.startswith(("summary:", "totals:"))
    ]
    return max(counts)


def _report_instructions(variants: list[Variant], work: Path) -> int:
    print("# CPU instructions from exec to the tools/list answer, under callgrind (one run each; warm bytecode)")
    for variant in variants:  # warm-up: bytecode written, page cache filled
        anyio.run(_one, variant, work / f"warm-{variant.name}", "legacy", work / "stderr.log")
    counts = {v.name: _instructions_of(v, work / f"cg-{v.name}") for v in variants}
    floor = counts["floor"]
    for name, count in counts.items():
        print(f"{name:<8} {count / 1e6:9.1f} M instructions {count / floor:6.3f}x floor")
    worst = max(count for name, count in counts.items() if name != "floor") / floor
    verdict = "meets" if worst <= TARGET_RATIO else "misses"
    print(f"target: at most {TARGET_RATIO}x floor; worst variant is {worst:.3f}x: {verdict} the target")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="measured runs per variant (default: %(default)s)")
    parser.add_argument(
        "--mode",
        default="legacy",
        choices=("legacy", "auto"),
        help="client handshake: legacy = initialize; auto = server/discover first (default: %(default)s)",
    )
    parser.add_argument(
        "--server-command",
        help="run this instead of python -m kling_mcp for the sandbox and live variants (split by shlex), "
        "e.g. to compare a patched build",
    )
    parser.add_argument(
        "--instructions", action="store_true", help="count CPU instructions under callgrind instead of timing"
    )
    args = parser.parse_args(argv)

    header()
    dead_port = free_port()  # bound and released: nothing listens there during the run
    ours = shlex.split(args.server_command) if args.server_command else [sys.executable, "-m", "kling_mcp"]
    variants = [
        Variant("floor", [sys.executable, "-m", "bench.floor_server"], _floor_env),
        Variant("sandbox", ours, _sandbox_env),
        Variant("live", ours, _live_env_factory(dead_port)),
    ]
    if args.server_command:
        print(f"# kling-mcp variants run: {args.server_command}")
    if args.instructions:
        with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
            return _report_instructions(variants, Path(tmp))
    print(f"# {args.runs} runs per variant after 1 discarded warm-up, interleaved; client mode {args.mode}")
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        anyio.run(_run, args.runs, args.mode, variants, Path(tmp))
    floor = statistics.median(variants[0].list_s)
    print(f"# {load()} at end")
    print(
        f"{'variant':<8} {'tools':>5} {'init med ms':>11} {'list med ms':>11} {'min ms':>7} {'max ms':>7} "
        f"{'x floor':>7}  all runs (ms, spawn to tools/list answer)"
    )
    for v in variants:
        med = statistics.median(v.list_s)
        runs_ms = " ".join(f"{s * 1000:.0f}" for s in v.list_s)
        print(
            f"{v.name:<8} {v.tools:>5} {statistics.median(v.init_s) * 1000:11.0f} {med * 1000:11.0f} "
            f"{min(v.list_s) * 1000:7.0f} {max(v.list_s) * 1000:7.0f} {med / floor:7.2f}  {runs_ms}"
        )
    worst = max(statistics.median(v.list_s) for v in variants[1:]) / floor
    verdict = "meets" if worst <= TARGET_RATIO else "misses"
    print(f"target: kling-mcp median <= {TARGET_RATIO}x floor; worst variant is {worst:.2f}x: {verdict} the target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
