"""Server memory under oversized images: six at once, and the server's peak RSS.

    python -m bench.image_memory          # from the repository root (Linux: reads /proc)

Spawns ``python -m kling_mcp`` (stdio, sandbox mode, its own state and output folders) and speaks raw JSON-RPC:
``initialize``, then six ``animate_image`` calls written at once, without waiting for answers. Each names a PNG
whose header says 13000x13000 pixels (a few hundred KB on disk, 169 MB once decoded): three as ``data:`` URIs and
three as local files. A server that decodes them grows by gigabytes; one that reads the header first refuses them
all. Then six more at once, of images just under the pixel limit (accepted, decoded one at a time to check them,
then sent to the built-in sandbox), which is the most memory a valid request may cost.

Prints each round's answers and the server's peak resident memory (VmHWM) after it. Target: under 300 MB.
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import IO, Any

from bench._common import base_env, header, proc_status_kb

TARGET_MB = 300
CALLS = 6


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def grey_png(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG, streamed through zlib so that building it never holds the pixels."""
    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def send(stdin: IO[bytes], message: dict[str, Any]) -> None:
    stdin.write(json.dumps(message).encode() + b"\n")
    stdin.flush()


def answers(stdout: IO[bytes], ids: set[int]) -> dict[int, dict[str, Any]]:
    """Reads lines until every id in ``ids`` is answered (notifications and other lines are skipped)."""
    got: dict[int, dict[str, Any]] = {}
    while ids - set(got):
        line = stdout.readline()
        if not line:
            raise RuntimeError("the server closed its stdout")
        message = json.loads(line)
        if message.get("id") in ids:
            got[message["id"]] = message
    return got


def summary(answer: dict[str, Any]) -> str:
    result = answer.get("result", {})
    text = " ".join(c.get("text", "") for c in result.get("content", []) if c.get("type") == "text")
    status = (result.get("structuredContent") or {}).get("status")
    return ("error: " if result.get("isError") else f"{status}: ") + text.split(" Nothing was")[0][:160]


def round_of(proc: subprocess.Popen[bytes], refs: list[str], first_id: int) -> float:
    assert proc.stdin is not None
    assert proc.stdout is not None
    start = time.perf_counter()
    ids = set()
    for n, ref in enumerate(refs):
        ids.add(first_id + n)
        args = {"image_url": ref, "duration": 3, "wait_seconds": 0, "prompt": f"take {first_id + n}"}
        send(
            proc.stdin,
            {
                "jsonrpc": "2.0",
                "id": first_id + n,
                "method": "tools/call",
                "params": {"name": "animate_image", "arguments": args},
            },
        )
    got = answers(proc.stdout, ids)
    elapsed = time.perf_counter() - start
    for key in sorted(got):
        print(f"  call {key}: {summary(got[key])}")
    return elapsed


def main() -> int:
    header()
    with tempfile.TemporaryDirectory(prefix="kling-bench-images-") as tmp:
        work = Path(tmp)
        bomb = grey_png(13_000, 13_000)
        near = grey_png(7_700, 5_190)  # 39.96 MP: just under the limit
        files = []
        for n in range(3):
            path = work / f"bomb-{n}.png"
            path.write_bytes(bomb)
            files.append(str(path))
        bomb_uri = "data:image/png;base64," + base64.b64encode(bomb).decode()
        near_files = []
        for n in range(CALLS):
            path = work / f"near-{n}.png"
            path.write_bytes(near[:-12] + _chunk(b"tEXt", f"n\0{n}".encode()) + near[-12:])  # six distinct files
            near_files.append(str(path))
        print(
            f"# oversized: 13000x13000 PNG of {len(bomb) / 1024:.0f} KB; near the limit: 7700x5190 PNG of {len(near) / 1024:.0f} KB"
        )
        env = base_env(
            work / "home",
            KLING_MCP_STATE_DIR=str(work / "state"),
            KLING_MCP_OUTPUT_DIR=str(work / "out"),
            KLING_MCP_SANDBOX_RENDER_SIZE="320x180",
            KLING_MCP_SANDBOX_TIME_SCALE="200",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "kling_mcp"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            assert proc.stdin is not None
            assert proc.stdout is not None
            send(
                proc.stdin,
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {},
                        "clientInfo": {"name": "bench", "version": "1"},
                    },
                },
            )
            answers(proc.stdout, {0})
            send(proc.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            print(f"after start: peak {proc_status_kb(proc.pid, 'VmHWM') / 1024:.0f} MB")
            print(f"round 1: {CALLS} oversized images at once (3 data: URIs, 3 files)")
            elapsed = round_of(proc, [bomb_uri] * 3 + files, 1)
            peak = proc_status_kb(proc.pid, "VmHWM") / 1024
            print(f"round 1: answered in {elapsed:.2f} s; server peak RSS {peak:.0f} MB (target < {TARGET_MB} MB)")
            print(f"round 2: {CALLS} images just under the pixel limit at once (files)")
            elapsed = round_of(proc, near_files, 101)
            peak2 = proc_status_kb(proc.pid, "VmHWM") / 1024
            print(f"round 2: answered in {elapsed:.2f} s; server peak RSS {peak2:.0f} MB")
        finally:
            proc.terminate()
            proc.wait(15)
    verdict = "PASS" if peak < TARGET_MB else "FAIL"
    print(f"{verdict}: six oversized images at once leave the server at {peak:.0f} MB peak RSS")
    return 0 if peak < TARGET_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
