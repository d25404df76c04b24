"""Benchmark of kling_mcp.media on two generated clips.

A = sandbox-like 1280x720, 15 s, 24 fps, veryfast/crf 28, x264's default keyframe interval (one GOP of 10.4 s).
B = Kling-like 1920x1080, 10 s, 24 fps, High profile with B-frames, keyframes every 4 s, moving texture, AAC.

Prints the median wall time in ms of each operation. Run from the repository root:

    python -m bench.media_ops [--repeat 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import PIL
from av.audio.frame import AudioFrame
from av.video.frame import VideoFrame
from PIL import Image, ImageChops, ImageDraw

from kling_mcp import media

FPS = 24
SAMPLE_RATE = 48_000


def render(path: Path, size: tuple[int, int], seconds: int, *, kling_like: bool) -> None:
    w, h = size
    base = Image.linear_gradient("L").resize(size).convert("RGB")
    if kling_like:
        # Texture that moves every frame keeps the bit rate near a real clip's (~10 Mb/s) instead of a flat card's.
        noise = Image.merge("RGB", [Image.effect_noise(size, 40) for _ in range(3)])
        base = Image.blend(base, noise, 0.3)
    options = (
        {"preset": "superfast", "crf": "22", "x264-params": "keyint=96:min-keyint=96:scenecut=0"}
        if kling_like
        else {"preset": "veryfast", "crf": "28"}
    )
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
        vs = out.add_stream("libx264", rate=FPS, options=options)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        astream = out.add_stream("aac", rate=SAMPLE_RATE) if kling_like else None
        if astream is not None:
            astream.layout, astream.format = "stereo", "fltp"
        side = min(w, h) // 8
        frames = seconds * FPS
        for k in range(frames):
            image = ImageChops.offset(base, k * 7, k * 3) if kling_like else base.copy()
            x = int(k / max(1, frames - 1) * (w - side))
            ImageDraw.Draw(image).rectangle([x, h * 3 // 4 - side, x + side, h * 3 // 4], fill=(255, 200, 0))
            frame = VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
            frame.pts = k
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if astream is not None:
            pts, total = 0, seconds * SAMPLE_RATE
            while pts < total:
                n = min(1024, total - pts)
                tone = array("f", (0.2 * math.sin(2 * math.pi * 330 * (pts + i) / SAMPLE_RATE) for i in range(n)))
                aframe = AudioFrame(format="fltp", layout="stereo", samples=n)
                for plane in aframe.planes:
                    plane.update(tone.tobytes())
                aframe.sample_rate, aframe.pts, aframe.time_base = SAMPLE_RATE, pts, Fraction(1, SAMPLE_RATE)
                out.mux(astream.encode(aframe))
                pts += n
            out.mux(astream.encode(None))


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: first-call imports and page cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per operation (re-encode: at most 3)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the clips")
    args = parser.parse_args()

    print("command:", shlex.join(["python", "-m", "bench.media_ops", *sys.argv[1:]]))
    print(f"python {platform.python_version()}, av {av.__version__}, pillow {PIL.__version__}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        a, b = work / "a_720p_15s.mp4", work / "b_1080p_10s.mp4"
        start = time.perf_counter()
        render(a, (1280, 720), 15, kling_like=False)
        render(b, (1920, 1080), 10, kling_like=True)
        print(f"rendered the clips in {time.perf_counter() - start:.1f} s")
        for name, path in (("A", a), ("B", b)):
            info = media.probe(path)
            print(
                f"{name}: {info.width}x{info.height} {info.duration_s:.1f} s, {info.frames} frames, "
                f"{info.size_bytes * 8 / info.duration_s / 1000:.0f} kb/s, audio={info.has_audio}"
            )

        rows: list[tuple[str, float, float]] = []
        for label, fn in (
            ("probe", lambda p: media.probe(p)),
            ("last_frame PNG", lambda p: media.last_frame(p, work / "last.png")),
            ("last_frame JPEG", lambda p: media.last_frame(p, work / "last.jpg")),
            ("poster", lambda p: media.poster(p, work / "poster.jpg")),
            ("contact_sheet 3x3 JPEG", lambda p: media.contact_sheet(p, work / "sheet.jpg")),
        ):
            rows.append((label, median_ms(partial(fn, a), args.repeat), median_ms(partial(fn, b), args.repeat)))
        copy_a = median_ms(lambda: media.concat([a, a, a], work / "copy.mp4"), args.repeat)
        copy_b = median_ms(lambda: media.concat([b, b, b], work / "copy.mp4"), args.repeat)
        rows.append(("concat copy of 3 clips", copy_a, copy_b))

        mixed = media.concat([a, b], work / "mixed.mp4")
        assert mixed.method == "reencode"
        reencode = median_ms(lambda: media.concat([a, b], work / "mixed.mp4"), min(3, args.repeat))

        print(f"\n{'operation (median ms)':<28}{'A 720p 15 s':>14}{'B 1080p 10 s':>14}")
        for label, ms_a, ms_b in rows:
            print(f"{label:<28}{ms_a:>14.0f}{ms_b:>14.0f}")
        print(
            f"{'concat re-encode A + B':<28}{reencode:>14.0f}   (-> {mixed.width}x{mixed.height}, "
            f"{mixed.duration_s:.1f} s, AAC with silence under A)"
        )


if __name__ == "__main__":
    main()
