"""Placeholder clips: real H.264 MP4s that look nothing like a generated video, on purpose.

Frames are drawn straight into yuv420p planes with Pillow: the RGB→YUV conversion through swscale was more than
half the render time (docs/media-notes.md §2), and numpy is not a dependency. Each shot's static layer (gradient,
caption, labels) is drawn once in RGB, converted once, and only the moving square and the time label are drawn
per frame.

PyAV and Pillow are imported inside the functions so that importing the sandbox package stays light.
"""

from __future__ import annotations

import functools
import os
import textwrap
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kling_mcp.files import replacing
from kling_mcp.render_size import MIN_SIDE, is_render_size

if TYPE_CHECKING:
    from av.container import OutputContainer
    from PIL import Image, ImageFont

__all__ = ["RenderCancelled", "render_job", "render_placeholder"]

# One (top, bottom) gradient per shot, far apart in hue so consecutive shots are told apart at a glance.
_PALETTE: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((30, 60, 150), (120, 20, 90)),
    ((10, 110, 80), (20, 40, 120)),
    ((140, 70, 10), (60, 10, 90)),
    ((120, 20, 30), (20, 20, 20)),
    ((90, 110, 20), (10, 60, 60)),
    ((70, 30, 130), (140, 90, 150)),
)
_SQUARE_RGB = (255, 200, 0)
_LABEL_RGB = (255, 255, 0)
# x264 is most of the render time, so ultrafast; CABAC, the 8x8 transform and B-frames are put back so the stream
# is High profile with frame reordering like real clips. 720p 15 s: 1.4 s here against 2.2 s with veryfast.
_X264_OPTIONS: dict[str, str] = {"preset": "ultrafast", "crf": "28", "x264-params": "bframes=3:cabac=1:8x8dct=1"}


class RenderCancelled(Exception):
    """``should_stop`` asked the render to stop; no file was written."""


_fonts = threading.local()  # a FreeType face must not be used by two render threads at once


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

    cache: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = _fonts.__dict__.setdefault("by_size", {})
    if size not in cache:
        # BASIC layout: raqm (complex-script shaping) fails outright on some arbitrary prompt text, and a
        # placeholder caption needs no shaping.
        try:  # DejaVu covers accents and dashes; Pillow's built-in font is ASCII-only
            cache[size] = ImageFont.truetype("DejaVuSans.ttf", size, layout_engine=ImageFont.Layout.BASIC)
        except OSError:
            cache[size] = ImageFont.load_default(size=size)
    return cache[size]


@functools.cache
def _limited_range_luts() -> tuple[list[int], list[int]]:
    # Pillow's YCbCr is full-range JPEG; H.264 players assume limited (TV) range unless told otherwise.
    luma = [16 + round(v * 219 / 255) for v in range(256)]
    chroma = [16 + round(v * 224 / 255) for v in range(256)]
    return luma, chroma


def _rgb_to_limited_yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = rgb
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 + (b - y) * 0.564
    cr = 128 + (r - y) * 0.713
    return (
        round(16 + y * 219 / 255),
        round(16 + cb * 224 / 255),
        round(16 + cr * 224 / 255),
    )


_SQUARE_YUV = _rgb_to_limited_yuv(_SQUARE_RGB)
_WHITE_LUMA = 235  # white in limited range


class _Planes:
    """A yuv420p picture as three Pillow "L" images, each as wide as the frame's padded line size."""

    def __init__(self, y: Image.Image, u: Image.Image, v: Image.Image) -> None:
        self.y, self.u, self.v = y, u, v

    @classmethod
    def from_rgb(cls, image: Image.Image, line_sizes: Sequence[int]) -> _Planes:
        from PIL import Image

        luma_lut, chroma_lut = _limited_range_luts()
        y, cb, cr = image.convert("YCbCr").split()
        y = y.point(luma_lut)
        cb = cb.reduce(2).point(chroma_lut)
        cr = cr.reduce(2).point(chroma_lut)
        padded = []
        for plane, line in zip((y, cb, cr), line_sizes, strict=True):
            if plane.width == line:
                padded.append(plane)
            else:
                canvas = Image.new("L", (line, plane.height))
                canvas.paste(plane, (0, 0))
                padded.append(canvas)
        return cls(*padded)

    def copy(self) -> _Planes:
        return _Planes(self.y.copy(), self.u.copy(), self.v.copy())

    def fill_rect(self, box: tuple[int, int, int, int], yuv: tuple[int, int, int]) -> None:
        from PIL import ImageDraw

        x0, y0, x1, y1 = box
        ImageDraw.Draw(self.y).rectangle((x0, y0, x1 - 1, y1 - 1), fill=yuv[0])
        half = (x0 // 2, y0 // 2, (x1 + 1) // 2 - 1, (y1 + 1) // 2 - 1)
        ImageDraw.Draw(self.u).rectangle(half, fill=yuv[1])
        ImageDraw.Draw(self.v).rectangle(half, fill=yuv[2])

    def load_into(self, frame: Any) -> None:
        for plane, image in zip(frame.planes, (self.y, self.u, self.v), strict=True):
            plane.update(image.tobytes())


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    from PIL import Image, ImageOps

    # Cover, not letterbox: the clip's first frame should be the picture, as upstream's is.
    return ImageOps.fit(image.convert("RGB"), size, method=Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class _Layout:
    """Where things go in a frame of one size: caption and label font sizes, the moving square, the time label."""

    width: int
    height: int
    font_size: int
    label_font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    square: int
    time_box: tuple[int, int, int, int]

    @classmethod
    def for_size(cls, size: tuple[int, int]) -> _Layout:
        w, h = size
        fs = max(12, min(w, h) // 14)
        label_w = min(w, 6 * fs)
        return cls(w, h, fs, _font(max(10, fs // 2)), max(2, min(w, h) // 8), (w - label_w, h - fs - fs // 4, w, h))


def _static_layer(index: int, count: int, caption: str, layout: _Layout, background: Image.Image | None) -> Image.Image:
    from PIL import Image, ImageDraw

    size = w, h = layout.width, layout.height
    fs = layout.font_size
    if background is None:
        top, bottom = _PALETTE[index % len(_PALETTE)]
        bg = Image.composite(
            Image.new("RGB", size, bottom),
            Image.new("RGB", size, top),
            Image.linear_gradient("L").resize(size),
        )
    else:
        from PIL import ImageFilter

        # After the exact opening frame, the input image stays as a softened backdrop so the new caption reads.
        bg = background.filter(ImageFilter.GaussianBlur(radius=max(2, min(w, h) // 40)))
    draw = ImageDraw.Draw(bg)
    text = "\n".join(textwrap.wrap(caption, width=max(10, int(w / (fs * 0.55))))[:4]) or " "
    draw.multiline_text(
        (w / 2, h / 2),
        text,
        font=_font(fs),
        fill="white",
        anchor="mm",
        align="center",
        stroke_width=max(1, fs // 16),
        stroke_fill="black",
    )
    draw.text((fs // 2, fs // 2), f"SANDBOX  shot {index + 1}/{count}", font=layout.label_font, fill=_LABEL_RGB)
    # Black under the time label keeps its chroma neutral, so drawing only luma per frame gives white text.
    box = layout.time_box
    draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(0, 0, 0))
    return bg


def _moving_layer(static: _Planes, layout: _Layout, k: int, count: int, frame: int, fps: int) -> _Planes:
    """Frame ``k`` of ``count`` in a shot: the square a step further along, and the clip time in the label."""
    from PIL import ImageDraw

    w, h, sq, box = layout.width, layout.height, layout.square, layout.time_box
    planes = static.copy()
    x = int(k / max(1, count - 1) * (w - sq)) & ~1
    y = int(h * 0.72) & ~1
    planes.fill_rect((x, y, x + sq, min(h, y + sq)), _SQUARE_YUV)
    ImageDraw.Draw(planes.y).text(
        (box[0] + layout.font_size // 4, box[1] + layout.font_size // 8),
        f"{frame / fps:5.2f}s #{frame}",
        font=layout.label_font,
        fill=_WHITE_LUMA,
    )
    return planes


class _Encoder:
    """One H.264 stream being written; ``emit`` checks ``should_stop`` before each frame."""

    def __init__(
        self, out: OutputContainer, size: tuple[int, int], fps: int, dest: Path, should_stop: Callable[[], bool] | None
    ) -> None:
        self._out = out
        self._stream = out.add_stream("libx264", rate=fps, options=dict(_X264_OPTIONS))
        self._stream.width, self._stream.height = size
        self._stream.pix_fmt = "yuv420p"
        self._dest = dest
        self._should_stop = should_stop
        self.frames = 0

    def emit(self, planes: _Planes) -> None:
        import av

        if self._should_stop is not None and self._should_stop():
            raise RenderCancelled(str(self._dest))
        frame = av.VideoFrame(self._stream.width, self._stream.height, "yuv420p")
        planes.load_into(frame)
        frame.pts = self.frames
        self.frames += 1
        self._out.mux(self._stream.encode(frame))

    def finish(self) -> None:
        self._out.mux(self._stream.encode(None))


def render_placeholder(
    path: str | os.PathLike[str],
    shots: Sequence[tuple[str, float]],
    *,
    size: tuple[int, int],
    fps: int,
    first_image: Image.Image | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Writes an H.264 yuv420p MP4 (moov first) with one coloured, captioned segment per shot.

    ``first_image`` (image-to-video) is fitted to the frame, shown alone as frame 0 and used as the first shot's
    background. The file appears at ``path`` atomically. ``should_stop`` is checked between frames so a shutting
    down gateway does not wait for a whole render. Returns the number of frames.
    """
    import av

    if not is_render_size(*size):
        raise ValueError(f"render size must be even and at least {MIN_SIDE}x{MIN_SIDE}, got {size[0]}x{size[1]}")
    if fps < 1:
        raise ValueError(f"fps must be at least 1, got {fps}")
    if not shots:
        raise ValueError("at least one shot is needed")

    layout = _Layout.for_size(size)
    line_sizes = [p.line_size for p in av.VideoFrame(*size, "yuv420p").planes]
    fitted = _fit(first_image, size) if first_image is not None else None
    dest = Path(path)
    with replacing(dest) as tmp, av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        encoder = _Encoder(out, size, fps, dest, should_stop)
        if fitted is not None:
            encoder.emit(_Planes.from_rgb(fitted, line_sizes))
        for index, (caption, seconds) in enumerate(shots):
            background = fitted if index == 0 else None
            static = _Planes.from_rgb(_static_layer(index, len(shots), caption, layout, background), line_sizes)
            count = max(1, round(seconds * fps))
            if index == 0 and fitted is not None:
                count = max(1, count - 1)  # the bare image frame is part of the first shot
            for k in range(count):
                encoder.emit(_moving_layer(static, layout, k, count, encoder.frames, fps))
        encoder.finish()
    return encoder.frames


def render_job(
    path: Path,
    shots: list[tuple[str, float]],
    size: tuple[int, int],
    fps: int,
    image: bytes | None,
    should_stop: Callable[[], bool],
) -> int:
    """A job's placeholder: ``image``, the encoded input of image-to-video, becomes its first frame."""
    from kling_mcp.media import open_image

    if image is None:
        return render_placeholder(path, shots, size=size, fps=fps, should_stop=should_stop)
    with open_image(image) as first:  # checked at submit; opened the same bounded way again
        first.load()
        return render_placeholder(path, shots, size=size, fps=fps, first_image=first, should_stop=should_stop)
