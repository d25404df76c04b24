"""Download throughput and memory: ``PixazoClient.download`` against ``curl`` on the same file over loopback.

    python -m bench.download [--sizes 10,50,200] [--runs 5]      # from the repository root

Files of random bytes (incompressible) are served by a tiny Starlette app under uvicorn in its own process
(``FileResponse``, HTTP/1.1 on 127.0.0.1). Each run downloads a file to disk once with ``curl`` and once with our
client in a fresh child process (``python -m bench.download --fetch``), alternating, and deletes the copy. A third
variant, ``httpx2 raw``, streams the same response with the same client and chunk size but neither hashes nor writes
it, which separates the HTTP client's cost from ours.

* Throughput is size over the download's own time: curl's ``time_total``; for our client, the ``download()`` call
  (connection included, interpreter start and imports excluded, like curl's).
* Memory of our client is the download's own peak: the child resets its peak RSS (``/proc/self/clear_refs``)
  after imports, downloads, and reports VmHWM minus the RSS before. The whole child's max RSS (``wait4``) and
  curl's are printed too.

Targets: our throughput at least 0.8x curl's (50 MB); peak memory constant, not proportional to the file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import REPO, free_port, header, load, proc_status_kb, reset_peak_rss, stop, wait_until_serving

TARGET_RATIO = 0.8
MB = 1024 * 1024


@dataclass
class Result:
    seconds: list[float] = field(default_factory=list)
    peak_delta_kb: list[int] = field(default_factory=list)  # the download's own peak over the RSS before it
    maxrss_kb: list[int] = field(default_factory=list)  # the whole process


# --- child modes ------------------------------------------------------------------------------------------------


def _serve(directory: Path, port: int) -> int:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, Response
    from starlette.routing import Route

    async def file(request: Request) -> Response:
        path = directory / request.path_params["name"]
        if not path.is_file():
            return Response(status_code=404)
        return FileResponse(path, media_type="video/mp4")

    async def health(request: Request) -> Response:
        return Response("ok")

    app = Starlette(routes=[Route("/files/{name}", file), Route("/healthz", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


def _fetch(url: str, dest: Path, variant: str) -> int:
    import anyio
    import httpx2

    from kling_mcp.pixazo import PixazoClient

    async def go() -> dict[str, Any]:
        # The same client settings as the server's (kling_mcp.server.open_state).
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, connect=10.0), follow_redirects=True) as http:
            client = PixazoClient(http, base_url=url.rsplit("/files/", 1)[0], api_key="unused")
            reset = reset_peak_rss(os.getpid())
            before = proc_status_kb(os.getpid(), "VmRSS")
            start = time.perf_counter()
            if variant == "ours":
                saved = await client.download(url, dest)
                size = saved.size_bytes
            else:
                size = 0
                async with http.stream("GET", url, headers={"Cache-Control": "no-cache"}) as response:
                    async for chunk in response.aiter_bytes(1 << 20):
                        size += len(chunk)
            seconds = time.perf_counter() - start
            peak = proc_status_kb(os.getpid(), "VmHWM")
        return {"seconds": seconds, "size": size, "peak_delta_kb": peak - before if reset else -1}

    print(json.dumps(anyio.run(go)))
    return 0


# --- the benchmark ----------------------------------------------------------------------------------------------


def _wait4(proc: subprocess.Popen[bytes]) -> tuple[int, int]:
    """(exit status, max RSS in KB) of a child, from wait4."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, int(usage.ru_maxrss)


def _curl(url: str, dest: Path, result: Result) -> None:
    proc = subprocess.Popen(
        ["curl", "-sS", "--fail", "-o", str(dest), "-w", "%{time_total} %{size_download}", url],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    code, maxrss = _wait4(proc)
    if code != 0:
        raise RuntimeError(f"curl exited {code}")
    seconds, size = out.split()
    if int(size) != dest.stat().st_size:
        raise RuntimeError("curl saved a different size")
    result.seconds.append(float(seconds))
    result.maxrss_kb.append(maxrss)


def _child(url: str, dest: Path, variant: str, result: Result) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.download", "--fetch", url, str(dest), "--variant", variant],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    code, maxrss = _wait4(proc)
    if code != 0:
        raise RuntimeError(f"fetch child exited {code}")
    data = json.loads(out)
    result.seconds.append(data["seconds"])
    result.peak_delta_kb.append(data["peak_delta_kb"])
    result.maxrss_kb.append(maxrss)


def _make_file(path: Path, megabytes: int) -> None:
    with path.open("wb") as out:
        for _ in range(megabytes):
            out.write(os.urandom(MB))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,50,200", help="file sizes in MiB (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="downloads per size and client (default: %(default)s)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fetch", nargs=2, metavar=("URL", "DEST"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="ours", choices=("ours", "raw"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        return _serve(args.serve, args.port)
    if args.fetch is not None:
        return _fetch(args.fetch[0], Path(args.fetch[1]), args.variant)

    header()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"# {args.runs} runs per size and client, alternating; medians; files of random bytes on disk")
    with tempfile.TemporaryDirectory(prefix="bench-dl-") as tmp:
        work = Path(tmp)
        (work / "files").mkdir()
        for size in sizes:
            _make_file(work / "files" / f"{size}.bin", size)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.download", "--serve", str(work / "files"), "--port", str(port)], cwd=REPO
        )
        try:
            wait_until_serving(f"http://127.0.0.1:{port}/healthz", server)
            rows: list[tuple[int, Result, Result, Result]] = []
            for size in sizes:
                url = f"http://127.0.0.1:{port}/files/{size}.bin"
                curl, ours, raw = Result(), Result(), Result()
                dest = work / "dest.mp4"
                for _ in range(args.runs):
                    _curl(url, dest, curl)
                    dest.unlink()
                    _child(url, dest, "ours", ours)
                    dest.unlink()
                    _child(url, dest, "raw", raw)
                rows.append((size, curl, ours, raw))
                print(f"  {size} MiB done ({load()})", file=sys.stderr)
        finally:
            stop(server)
    print(f"# {load()} at end")
    print(
        f"{'MiB':>4} {'curl MB/s':>9} {'ours MB/s':>9} {'ratio':>5} {'raw MB/s':>9}  "
        f"{'ours peak over start':>20} {'ours max RSS':>12} {'curl max RSS':>12}"
    )
    verdicts: list[str] = []
    for size, curl, ours, raw in rows:
        c = size * MB / statistics.median(curl.seconds) / 1e6
        o = size * MB / statistics.median(ours.seconds) / 1e6
        r = size * MB / statistics.median(raw.seconds) / 1e6
        delta = statistics.median(ours.peak_delta_kb) / 1024
        print(
            f"{size:>4} {c:9.0f} {o:9.0f} {o / c:5.2f} {r:9.0f}  {delta:17.1f} MB "
            f"{statistics.median(ours.maxrss_kb) / 1024:9.1f} MB {statistics.median(curl.maxrss_kb) / 1024:9.1f} MB"
        )
        verdicts.append(f"{size} MiB ratio {o / c:.2f}")
    print(f"target: ours >= {TARGET_RATIO}x curl ({'; '.join(verdicts)}); memory: compare the peak column across sizes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
