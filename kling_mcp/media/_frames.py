"""Single frames out of a clip: the last and first frames, posters and contact sheets.

Finding a frame costs a decode from the keyframe before it, so every function here seeks first and decodes as
little as it can: the last GOP for the last frame, one keyframe for a poster, one pass for a whole sheet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kling_mcp.errors import InvalidInputError
from kling_mcp.media._common import (
    JPEG_SUFFIXES,
    TIME_EPS,
    StrPath,
    T,
    check_suffix,
    no_frames,
    translated,
    write_atomic,
)
from kling_mcp.media._images import MIN_SIDE, encode_jpeg, encode_png, encode_png_within, fit, rgb, save_jpeg
from kling_mcp.media._probe import frame_time, open_input, origin_s, video_duration_s, video_stream

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream
    from PIL import Image

# The last frame is found by seeking this far before the end (to the keyframe before it) and decoding to EOF.
_LAST_FRAME_TAIL_S = 1.0
# Clips shorter than this get their first frame as poster: a third of the way in is barely different.
_POSTER_MIN_DURATION_S = 1.0


def _pick(
    frames: Iterable[VideoFrame], targets: Sequence[float], origin_s: float, convert: Callable[[VideoFrame], T]
) -> list[T]:
    """For ascending ``targets`` (seconds from ``origin_s``), the frame on screen at each: the last one starting
    at or before it. Targets before the first frame get the first frame; targets past the end get the last frame.

    Stops decoding as soon as the last target is settled; converts each chosen frame once.
    """
    picked: list[T] = []
    prev: VideoFrame | None = None
    prev_converted: T | None = None
    prev_t = -math.inf

    def take(frame: VideoFrame) -> None:
        nonlocal prev_converted
        if prev_converted is None:
            prev_converted = convert(frame)
        picked.append(prev_converted)

    for frame in frames:
        ft = frame_time(frame)
        t = ft - origin_s if ft is not None else prev_t
        while prev is not None and len(picked) < len(targets) and t > targets[len(picked)] + TIME_EPS:
            take(prev)
        if len(picked) == len(targets):
            return picked
        prev, prev_converted, prev_t = frame, None, t
    if prev is not None:
        while len(picked) < len(targets):
            take(prev)
    return picked


def _to_image(frame: VideoFrame, width: int | None = None, height: int | None = None) -> Image.Image:
    """RGB PIL image, optionally scaled by swscale on the way (much cheaper than converting first)."""
    from PIL import Image as PILImage

    if width is not None and height is not None and (width, height) != (frame.width, frame.height):
        frame = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
    image = frame.to_image()  # type: ignore[no-untyped-call]  # PyAV's stub leaves it unannotated
    assert isinstance(image, PILImage.Image)
    return image


def _seek(container: InputContainer, stream: VideoStream, at_s: float) -> None:
    """Seeks to the keyframe at or before ``at_s`` (absolute stream time)."""
    if stream.time_base is None:
        container.seek(0)
        return
    container.seek(max(0, int(at_s / stream.time_base)), stream=stream, backward=True)


def _frame_at(container: InputContainer, stream: VideoStream, at_s: float, path: StrPath) -> VideoFrame:
    """The frame on screen ``at_s`` seconds into the clip: a keyframe seek plus a short decode."""
    import av

    origin = origin_s(stream)
    picked: list[VideoFrame] = []
    if at_s > 0:
        try:
            _seek(container, stream, origin + at_s)
            picked = _pick(container.decode(stream), [at_s], origin, lambda f: f)
        except av.FFmpegError:
            picked = []
    if not picked or (frame_time(picked[0]) or 0.0) - origin > at_s + TIME_EPS:
        # A broken index can land the seek past the target; decode from the start instead.
        container.seek(0)
        picked = _pick(container.decode(stream), [at_s], origin, lambda f: f)
    if not picked:
        raise no_frames(path)
    return picked[0]


def _keyframe_near(
    container: InputContainer, stream: VideoStream, target_s: float, low_s: float, high_s: float
) -> VideoFrame | None:
    """The indexed keyframe closest to ``target_s`` within [low_s, high_s], if there is one.

    Decoding a keyframe alone costs one frame; reaching an exact time can cost a whole GOP (~4 s of 1080p).
    """
    entries = stream.index_entries
    if stream.time_base is None or not len(entries):
        return None
    tb, origin = stream.time_base, origin_s(stream)
    # Index timestamps are decode times while seeking takes display times; with B-frames the two differ by the
    # reorder delay, which is the gap between the first frame's display and decode times.
    delay = max(0, (stream.start_time or 0) - entries[0].timestamp)
    stamps = [e.timestamp + delay for e in entries if e.is_keyframe]
    inside = [ts for ts in stamps if low_s <= float(ts * tb) - origin <= high_s]
    if not inside:
        return None
    container.seek(min(inside, key=lambda ts: abs(float(ts * tb) - origin - target_s)), stream=stream, backward=True)
    # Frame threading holds back output until several packets are in flight; skipping non-key frames makes the
    # keyframe the only one decoded (it was 3-5 frames, ~1 s for a noisy 1080p clip).
    stream.codec_context.skip_frame = "NONKEY"
    try:
        for frame in container.decode(stream):
            t = frame_time(frame)
            # A mis-guessed delay lands on an earlier keyframe: the caller then decodes to the exact time instead.
            return frame if t is not None and low_s <= t - origin <= high_s else None
    finally:
        stream.codec_context.skip_frame = "DEFAULT"
    return None


def _last_frame(path: StrPath) -> VideoFrame:
    import av

    def latest(frames: Iterable[VideoFrame]) -> VideoFrame | None:
        best: VideoFrame | None = None
        for frame in frames:
            if best is None or frame.pts is None or best.pts is None or frame.pts >= best.pts:
                best = frame
        return best

    with open_input(path) as container:
        stream = video_stream(container, path)
        end = origin_s(stream) + video_duration_s(container, stream)
        best: VideoFrame | None = None
        try:
            # Decoding only the last GOP costs ~1/10 of a full decode on Kling-like clips (keyframes every ~4 s).
            _seek(container, stream, max(0.0, end - _LAST_FRAME_TAIL_S))
            best = latest(container.decode(stream))
        except av.FFmpegError:
            best = None
        if best is None:
            # Broken or missing index: the seek found nothing, so pay for a full decode.
            container.seek(0)
            best = latest(container.decode(stream))
        if best is None:
            raise no_frames(path)
        return best


def last_frame_image(path: StrPath) -> Image.Image:
    """The clip's final frame in display order, as an RGB image (used to chain the next shot from it)."""
    with translated("read the last frame of", path):
        return _to_image(_last_frame(path))


def last_frame(path: StrPath, out_path: StrPath) -> Path:
    """Writes the clip's final frame to ``out_path``: PNG (compress_level=1) or JPEG (quality 95) by suffix."""
    out = Path(out_path)
    suffix = check_suffix(out, (".png", *JPEG_SUFFIXES), "out_path")
    image = last_frame_image(path)
    with translated("encode the last frame of", path):
        data = encode_png(image) if suffix == ".png" else save_jpeg(rgb(image), 95)
    return write_atomic(out, data)


def first_frame_image(path: StrPath) -> Image.Image:
    """The clip's first frame in display order, as an RGB image."""
    with translated("read the first frame of", path), open_input(path) as container:
        stream = video_stream(container, path)
        for frame in container.decode(stream):
            return _to_image(frame)
        raise no_frames(path)


def poster(path: StrPath, out_path: StrPath, *, max_bytes: int = 200_000, max_side: int = 640) -> Path:
    """Writes a JPEG poster: a frame about a third of the way in (the keyframe nearest to it when one lies between
    a quarter and a half, which is much cheaper to decode; the first frame for clips under a second), scaled to
    fit ``max_side`` and recompressed until it is at most ``max_bytes``."""
    out = Path(out_path)
    check_suffix(out, JPEG_SUFFIXES, "out_path")
    with translated("make a poster from", path), open_input(path) as container:
        stream = video_stream(container, path)
        duration = video_duration_s(container, stream)
        frame = None
        if duration >= _POSTER_MIN_DURATION_S:
            frame = _keyframe_near(container, stream, duration / 3, duration / 4, duration / 2)
        if frame is None:
            frame = _frame_at(container, stream, duration / 3 if duration >= _POSTER_MIN_DURATION_S else 0.0, path)
        image = _to_image(frame, *fit(frame.width, frame.height, max_side))
        data = encode_jpeg(image, max_bytes=max_bytes, max_side=max_side)
    return write_atomic(out, data)


def contact_sheet(
    path: StrPath,
    out_path: StrPath,
    *,
    times: Sequence[float] | None = None,
    n: int = 9,
    cols: int = 3,
    thumb_w: int = 320,
    max_bytes: int | None = None,
) -> Path:
    """Writes a grid of thumbnails from one decode pass: the frames on screen at ``times`` (seconds from the
    first frame, e.g. shot midpoints; tiles keep the given order) or at the middles of ``n`` equal slices.

    JPEG for .jpg/.jpeg (recompressed, then scaled down, to fit ``max_bytes``), PNG for .png (scaled down to fit).
    """
    out = Path(out_path)
    suffix = check_suffix(out, (".png", *JPEG_SUFFIXES), "out_path")
    _check_sheet(times, n, cols, thumb_w)
    with translated("make a contact sheet from", path):
        sheet = _grid(_thumbnails(path, times, n, thumb_w), cols)
        if suffix == ".png":
            data = encode_png_within(sheet, max_bytes)
        else:
            data = encode_jpeg(sheet, max_bytes=max_bytes, max_side=None)
    return write_atomic(out, data)


def _check_sheet(times: Sequence[float] | None, n: int, cols: int, thumb_w: int) -> None:
    if times is not None:
        if not times:
            raise InvalidInputError("times", "a non-empty list of seconds", list(times), "pass at least one time")
        if not all(math.isfinite(t) for t in times):
            raise InvalidInputError("times", "finite numbers of seconds", list(times), "remove NaN or infinity")
    elif n < 1:
        raise InvalidInputError("n", "at least 1", n, "ask for one thumbnail or more")
    if cols < 1:
        raise InvalidInputError("cols", "at least 1", cols, "use one column or more")
    if thumb_w < MIN_SIDE:
        raise InvalidInputError("thumb_w", f"at least {MIN_SIDE} pixels", thumb_w, "use wider thumbnails")


def _thumbnails(path: StrPath, times: Sequence[float] | None, n: int, thumb_w: int) -> list[Image.Image]:
    """One thumbnail per time, in the given order, all ``thumb_w`` wide and of one even height."""
    with open_input(path) as container:
        stream = video_stream(container, path)
        ctx = stream.codec_context
        if times is None:
            duration = video_duration_s(container, stream)
            times = [(i + 0.5) * duration / n for i in range(n)]
        thumb_h = max(2, round(thumb_w * ctx.height / max(1, ctx.width) / 2) * 2)
        order = sorted(range(len(times)), key=lambda i: times[i])
        images = _pick(
            container.decode(stream),
            [times[i] for i in order],
            origin_s(stream),
            lambda f: _to_image(f, thumb_w, thumb_h),
        )
    if not images:
        raise no_frames(path)
    tiles: list[Image.Image] = [images[0]] * len(times)
    for rank, i in enumerate(order):
        tiles[i] = images[rank]
    return tiles


def _grid(tiles: Sequence[Image.Image], cols: int) -> Image.Image:
    from PIL import Image as PILImage

    thumb_w, thumb_h = tiles[0].size
    cols = min(cols, len(tiles))
    rows = -(-len(tiles) // cols)
    sheet = PILImage.new("RGB", (cols * thumb_w, rows * thumb_h))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * thumb_w, (i // cols) * thumb_h))
    return sheet
