"""Download throughput and memory: ``PixazoClient.download`` against ``curl`` on the same file over loopback.

    python -m bench.download [--sizes 10,50,200] [--runs 5]      # from the repository root

Files of random bytes (incompressible) are served by a tiny Starlette app under uvicorn in its own process
(``FileResponse``, HTTP/1.1 on 127.0.0.1). Each run downloads a file to disk once with ``curl`` and once with our
client, alternating, and deletes the copy. Our client runs in one long-lived child (``python -m bench.download
--worker``), as it does in the server: one ``httpx2.AsyncClient`` for all downloads, after one discarded warm-up. A
third variant, ``raw``, streams the same response with the same client and chunk size but neither hashes nor writes
it, which separates the HTTP client's cost from ours.

* Throughput is size over the download's own time: curl's ``time_total``; for our client, the ``download()`` call
  (connection included, interpreter start and imports excluded, like curl's).
* CPU: curl's user + system time (``wait4``); for ours and raw, the child's ``process_time`` over the download
  (all its threads). Unlike wall time this hardly moves with the machine's load, so it is the steadier comparison.
* Memory of our client is each download's own peak: the worker resets its peak RSS (``/proc/self/clear_refs``)
  before each download and reports VmHWM minus the RSS before. The worker's max RSS over its life (``wait4``) and
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

from bench._common import REPO, free_port, header, load, proc_status_kb, reset_peak_rss, stop, wait_until_serving

TARGET_RATIO = 0.8
MB = 1024 * 1024


@dataclass
class Result:
    seconds: list[float] = field(default_factory=list)
    peak_delta_kb: list[int] = field(default_factory=list)  # the download's own peak over the RSS before it
    maxrss_kb: list[int] = field(default_factory=list)  # the whole process (curl)
    cpu: list[float] = field(default_factory=list)  # CPU seconds of the download (user + system)


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


def _worker() -> int:
    """Downloads what stdin asks for, one JSON line each way, in one long-lived process like the server's."""
    import anyio
    import httpx2

    from kling_mcp.pixazo import PixazoClient

    async def go() -> None:
        # The same client settings as the server's (kling_mcp.server.open_state), one client for every download.
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, connect=10.0), follow_redirects=True) as http:
            while line := await anyio.to_thread.run_sync(sys.stdin.readline):
                order = json.loads(line)
                url, dest, variant = order["url"], Path(order["dest"]), order["variant"]
                client = PixazoClient(http, base_url=url.rsplit("/files/", 1)[0], api_key="unused")
                reset = reset_peak_rss(os.getpid())
                before = proc_status_kb(os.getpid(), "VmRSS")
                cpu = time.process_time()
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
                cpu = time.process_time() - cpu
                peak = proc_status_kb(os.getpid(), "VmHWM")
                answer = {"seconds": seconds, "cpu": cpu, "size": size, "peak_delta_kb": peak - before if reset else -1}
                sys.stdout.write(json.dumps(answer) + "\n")
                sys.stdout.flush()

    anyio.run(go)
    return 0


# --- the benchmark ----------------------------------------------------------------------------------------------


def _wait4(proc: subprocess.Popen[bytes]) -> tuple[int, int, float]:
    """(exit status, max RSS in KB, CPU seconds) of a child, from wait4."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, int(usage.ru_maxrss), usage.ru_utime + usage.ru_stime


def _curl(url: str, dest: Path, result: Result) -> None:
    proc = subprocess.Popen(
        ["curl", "-sS", "--fail", "-o", str(dest), "-w", "%{time_total} %{size_download}", url],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    code, maxrss, cpu = _wait4(proc)
    if code != 0:
        raise RuntimeError(f"curl exited {code}")
    seconds, size = out.split()
    if int(size) != dest.stat().st_size:
        raise RuntimeError("curl saved a different size")
    result.seconds.append(float(seconds))
    result.maxrss_kb.append(maxrss)
    result.cpu.append(cpu)


class Worker:
    """The long-lived ``--worker`` child that runs our client's downloads."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.download", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
        )

    def fetch(self, url: str, dest: Path, variant: str, result: Result | None) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"url": url, "dest": str(dest), "variant": variant}).encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the download worker exited with {self.proc.wait()}")
        data = json.loads(line)
        dest.unlink(missing_ok=True)
        if result is not None:
            result.seconds.append(data["seconds"])
            result.peak_delta_kb.append(data["peak_delta_kb"])
            result.cpu.append(data["cpu"])

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        _, maxrss, _ = _wait4(self.proc)
        return maxrss


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
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        return _serve(args.serve, args.port)
    if args.worker:
        return _worker()

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
        worker = Worker()
        try:
            wait_until_serving(f"http://127.0.0.1:{port}/healthz", server)
            rows: list[tuple[int, Result, Result, Result]] = []
            dest = work / "dest.mp4"
            warm = f"http://127.0.0.1:{port}/files/{sizes[0]}.bin"
            worker.fetch(warm, dest, "ours", None)  # warm-up: first use of threads, files, buffers
            worker.fetch(warm, dest, "raw", None)
            for size in sizes:
                url = f"http://127.0.0.1:{port}/files/{size}.bin"
                curl, ours, raw = Result(), Result(), Result()
                for _ in range(args.runs):
                    _curl(url, dest, curl)
                    dest.unlink()
                    worker.fetch(url, dest, "ours", ours)
                    worker.fetch(url, dest, "raw", raw)
                rows.append((size, curl, ours, raw))
                print(f"  {size} MiB done ({load()})", file=sys.stderr)
        finally:
            worker_maxrss = worker.close()
            stop(server)
    print(f"# {load()} at end")
    print(
        f"{'MiB':>4} {'curl MB/s':>9} {'ours MB/s':>9} {'ratio':>5} {'raw MB/s':>9}  "
        f"{'CPU ms/MiB curl':>15} {'ours':>5} {'raw':>5}  "
        f"{'ours peak over start':>20} {'curl max RSS':>12}"
    )
    verdicts: list[str] = []
    for size, curl, ours, raw in rows:
        c = size * MB / statistics.median(curl.seconds) / 1e6
        o = size * MB / statistics.median(ours.seconds) / 1e6
        r = size * MB / statistics.median(raw.seconds) / 1e6
        delta = statistics.median(ours.peak_delta_kb) / 1024
        print(
            f"{size:>4} {c:9.0f} {o:9.0f} {o / c:5.2f} {r:9.0f}  "
            f"{statistics.median(curl.cpu) / size * 1000:15.2f} {statistics.median(ours.cpu) / size * 1000:5.2f} "
            f"{statistics.median(raw.cpu) / size * 1000:5.2f}  {delta:17.1f} MB "
            f"{statistics.median(curl.maxrss_kb) / 1024:9.1f} MB"
        )
        verdicts.append(f"{size} MiB ratio {o / c:.2f}")
    print(
        f"our worker process: max RSS {worker_maxrss / 1024:.1f} MB over all its downloads (Python and imports included)"
    )
    print(f"target: ours >= {TARGET_RATIO}x curl ({'; '.join(verdicts)}); memory: compare the peak column across sizes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
