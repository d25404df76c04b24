"""Helpers shared by the benchmarks: the machine and load line, ports, /proc readings, subprocess plumbing.

Linux only where it reads /proc (the benchmarks report memory and CPU of other processes from there).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx2

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def command() -> str:
    """The exact command that is running, as typed."""
    return shlex.join(sys.orig_argv)


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load() -> str:
    """The load averages now (1, 5, 15 min): other people run tests on this machine, so every figure carries it."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024**2:.0f} GiB RAM"
                break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()}, {model or platform.machine()}, {cpus()} CPUs{mem}, "
        f"Python {platform.python_version()}"
    )


def revision() -> str:
    """The commit the working tree is at, and whether kling_mcp/ or bench/ differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "kling_mcp", "bench"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision (not a git checkout)"
    return f"{head}{' with uncommitted changes' if dirty else ''}"


def header() -> None:
    """Prints the command, the machine, the code's revision and the load: the first lines of every benchmark."""
    print(f"$ {command()}")
    print(f"# {machine()}")
    print(f"# kling-mcp at {revision()}")
    print(f"# {load()} at start, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# --- /proc ------------------------------------------------------------------------------------------------------


def proc_status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status, e.g. VmRSS (resident now) or VmHWM (peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process so far (its threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def reset_peak_rss(pid: int) -> bool:
    """Resets VmHWM to the current RSS (Linux 4.0+); False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --- subprocesses -----------------------------------------------------------------------------------------------


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """A small, explicit environment for a child process: nothing of the caller's KLING_/PIXAZO_ settings leaks."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    env.update(extra)
    return env


def venv_script(name: str) -> str:
    """A console script installed next to the running interpreter (the project's venv)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise SystemExit(f"{name} is not installed next to {sys.executable}; run `pip install -e .` first")
    return str(path)


def wait_until_serving(url: str, proc: subprocess.Popen[bytes], seconds: float = 60.0) -> None:
    """Polls ``url`` until it answers; bounded, and fails at once if the process dies."""
    deadline = time.monotonic() + seconds
    with httpx2.Client(trust_env=False) as http:
        while time.monotonic() < deadline:
            try:
                http.get(url, timeout=0.5)
                return
            except httpx2.TransportError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}") from None
                time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {seconds}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: only the process this benchmark started."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def start_sandbox_gateway(
    port: int,
    log: Path,
    *,
    time_scale: float,
    render_size: str,
    fps: int,
    extra: Sequence[str] = (),
    program: Sequence[str] | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m kling_mcp.sandbox`` (or ``program``, taking the same flags) in its own process, waited for until
    it answers /healthz."""
    args = [
        *(program or [sys.executable, "-m", "kling_mcp.sandbox"]),
        "--port",
        str(port),
        "--time-scale",
        f"{time_scale:g}",
        "--render-size",
        render_size,
        "--fps",
        str(fps),
        "--media-dir",
        str(log.parent / "gateway-media"),
        *extra,
    ]
    with log.open("wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    wait_until_serving(f"http://127.0.0.1:{port}/healthz", proc)
    return proc


def env_line(env: Mapping[str, str]) -> str:
    """The KLING_/PIXAZO_ part of a child's environment, for the record."""
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()) if k.startswith(("KLING_", "PIXAZO_")))


# --- a light MCP client over streamable HTTP --------------------------------------------------------------------


class McpCallError(Exception):
    """A JSON-RPC error answer."""


class RawSession:
    """Just enough of the streamable HTTP transport to time calls with little client-side work.

    The SDK's ``Client`` validates every result against the tool's output schema, which costs the client more
    than the server spends answering; this one sends JSON-RPC and reads the one answer of each request.
    """

    PROTOCOL = "2025-06-18"

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self._http = http
        self._url = url
        self._session_id: str | None = None
        self._next_id = 0

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        if self._session_id is not None:
            headers["Mcp-Session-Id"] = self._session_id
            headers["Mcp-Protocol-Version"] = self.PROTOCOL
        return headers

    async def open(self) -> dict[str, Any]:
        result = await self.request(
            "initialize",
            {"protocolVersion": self.PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}},
        )
        response = await self._http.post(
            self._url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self._headers()
        )
        response.raise_for_status()
        return result

    async def close(self) -> None:
        if self._session_id is not None:
            await self._http.delete(self._url, headers=self._headers())

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        rid = self._next_id
        response = await self._http.post(
            self._url, json={"jsonrpc": "2.0", "id": rid, "method": method, "params": params}, headers=self._headers()
        )
        response.raise_for_status()
        if self._session_id is None:
            self._session_id = response.headers.get("mcp-session-id")
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            messages = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
        else:
            messages = [response.json()]
        for message in messages:
            if isinstance(message, dict) and message.get("id") == rid:
                if "error" in message:
                    raise McpCallError(json.dumps(message["error"]))
                result: dict[str, Any] = message["result"]
                return result
        raise McpCallError(f"no answer to request {rid} in {response.text[:300]!r}")

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The tool's result; its ``structuredContent`` holds the job."""
        return await self.request("tools/call", {"name": name, "arguments": arguments})


# A raw stdio handshake up to tools/list (id 2), for benches that need the server's pid or its exact bytes.
STDIO_HANDSHAKE: tuple[dict[str, object], ...] = (
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    },
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}},
)
