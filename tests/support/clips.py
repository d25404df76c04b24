"""Tiny real MP4s for tests that need a video without rendering one through a gateway."""

from __future__ import annotations

from pathlib import Path


def make_clip(path: Path, *, seconds: float = 1.0, size: tuple[int, int] = (64, 36), fps: int = 8) -> Path:
    import av
    from PIL import Image

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(max(1, round(seconds * fps))):
            frame = av.VideoFrame.from_image(Image.new("RGB", size, (i * 20 % 256, 80, 160)))  # type: ignore[no-untyped-call]
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
