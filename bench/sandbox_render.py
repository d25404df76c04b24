"""Render speed of the sandbox's placeholder clips: seconds of wall time per second of video, per aspect ratio.

    python -m bench.sandbox_render [--seconds 15] [--runs 3] [--fps 24]   # from the repository root

Renders at the sandbox's real sizes (limits.SANDBOX_SIZES), three shots, and reports the median of the runs.
The target is a 15 s 16:9 clip in under 3 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kling_mcp import limits
from kling_mcp.sandbox.render import render_placeholder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=limits.DURATION_MAX_S, help="clip length (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="renders per aspect ratio (default: %(default)s)")
    parser.add_argument("--fps", type=int, default=limits.SANDBOX_FPS, help="frame rate (default: %(default)s)")
    args = parser.parse_args(argv)

    import av

    per_shot = args.seconds / 3
    shots = [
        ("A red fox trots through fresh snow at dawn, low tracking shot", per_shot),
        ("Close-up: the fox stops and looks into the camera", per_shot),
        ("Wide aerial shot of the snowy forest as the sun rises", per_shot),
    ]
    print(f"$ {shlex.join(sys.orig_argv)}")
    print(f"python {platform.python_version()}, av {av.__version__}, {platform.machine()}, {_cpus()} CPUs")
    print(f"{args.seconds} s clip, 3 shots, {args.fps} fps, median of {args.runs}")
    print(f"{'aspect':>6}  {'size':>9}  {'median s':>8}  {'s per s':>7}  {'runs':<20}  file")
    with tempfile.TemporaryDirectory() as tmp:
        for aspect in limits.ASPECT_RATIOS:
            size = limits.SANDBOX_SIZES[aspect]
            path = Path(tmp) / f"{aspect.replace(':', 'x')}.mp4"
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                render_placeholder(path, shots, size=size, fps=args.fps)
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            runs = " ".join(f"{t:.2f}" for t in times)
            print(
                f"{aspect:>6}  {f'{size[0]}x{size[1]}':>9}  {median:8.2f}  {median / args.seconds:7.3f}  {runs:<20}  "
                f"{path.stat().st_size // 1024} KB"
            )
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
