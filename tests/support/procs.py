"""Helpers for tests that run kling-mcp (or its sandbox gateway) as a real subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx2


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),
        "KLING_MCP_MODE": "sandbox",
        "KLING_MCP_SANDBOX_TIME_SCALE": "2000",
        "KLING_MCP_SANDBOX_RENDER_SIZE": "320x180",
        "KLING_MCP_SANDBOX_FPS": "8",
        "KLING_MCP_POLL_INTERVAL": "0.05",
        "KLING_MCP_STATE_DIR": str(tmp_path / "state"),
        "KLING_MCP_OUTPUT_DIR": str(tmp_path / "out"),
    }
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(url: str, proc: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    """Polls until the server answers; bounded, and fails at once if the process dies."""
    deadline = time.monotonic() + seconds
    with httpx2.Client() as http:
        while time.monotonic() < deadline:
            try:
                http.get(url, timeout=0.5)
                return
            except httpx2.TransportError:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}") from None
                time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {seconds}s")
