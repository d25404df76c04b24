"""Media toolkit for finished clips: probe, frames, posters, contact sheets, concatenation and image checks.

MCP-agnostic and synchronous: every function blocks (decoding a 1080p clip takes up to a second or two), so async
callers run them in worker threads. PyAV and Pillow are imported inside the functions, never at module import,
so that starting the server does not pay for loading FFmpeg.

Errors: media failures (unreadable, truncated or codec-less files, muxing failures) raise :class:`MediaError`;
bad arguments (empty lists, unsupported output suffixes) raise :class:`~kling_mcp.errors.InvalidInputError`.
"""

from __future__ import annotations

import io
import math
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar, cast

from kling_mcp.errors import InvalidInputError, KlingError, MediaError

if TYPE_CHECKING:
    from av.audio.fifo import AudioFifo
    from av.audio.frame import AudioFrame
    from av.audio.resampler import AudioResampler
    from av.audio.stream import AudioStream
    from av.container import InputContainer, OutputContainer
    from av.filter import Graph
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream
    from PIL import Image

__all__ = [
    "ConcatResult",
    "ImageInfo",
    "MediaError",
    "VideoInfo",
    "can_stream_copy",
    "concat",
    "contact_sheet",
    "encode_jpeg",
    "encode_png",
    "first_frame_image",
    "image_info",
    "last_frame",
    "last_frame_image",
    "poster",
    "probe",
]

StrPath = str | os.PathLike[str]
T = TypeVar("T")

_JPEG_SUFFIXES = (".jpg", ".jpeg")
_VIDEO_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}
# Timestamps are stored in ticks of 1/12288 s and the like, so times computed from fps miss by a fraction of a
# tick; this slack absorbs that without ever reaching the next frame (it is far below a frame at 1000 fps).
_TIME_EPS = 1e-3
# The last frame is found by seeking this far before the end (to the keyframe before it) and decoding to EOF.
_LAST_FRAME_TAIL_S = 1.0
# Clips shorter than this get their first frame as poster: a third of the way in is barely different.
_POSTER_MIN_DURATION_S = 1.0
_JPEG_QUALITIES = (90, 80, 70, 60, 50, 40)
_MIN_SIDE = 16
_REENCODE_OPTIONS = {"preset": "veryfast", "crf": "23"}
_AAC_FRAME = 1024


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` reads from a clip's header and index. ``frames`` is None when the container does not
    say; ``fps`` is the average rate."""

    duration_s: float
    width: int
    height: int
    fps: float | None
    codec: str
    pix_fmt: str | None
    frames: int | None
    has_audio: bool
    size_bytes: int


@dataclass(frozen=True)
class ConcatResult:
    """The joined file and how it was made: ``copy`` (packets remuxed, no quality loss) or ``reencode``."""

    path: Path
    method: Literal["copy", "reencode"]
    duration_s: float
    size_bytes: int
    width: int
    height: int


@dataclass(frozen=True)
class ImageInfo:
    """An image's format as Pillow names it from the content ("JPEG", "PNG", "GIF", "WEBP", ...) and its size."""

    format: str
    width: int
    height: int
    size_bytes: int


# --------------------------------------------------------------------------------------------------- helpers


@contextmanager
def _translated(action: str, path: StrPath | None = None, hint: str | None = None) -> Iterator[None]:
    """Turns PyAV/Pillow/OS failures into MediaError so callers only handle the kling-mcp tree."""
    import av
    from PIL import Image as PILImage

    try:
        yield
    except KlingError:
        raise
    # ValueError: PyAV raises it for data it cannot handle (odd timestamps, unsupported layouts), not only bugs.
    except (av.FFmpegError, OSError, EOFError, ValueError, PILImage.DecompressionBombError) as exc:
        where = f" {Path(path).name}" if path is not None else ""
        raise MediaError(
            f"Could not {action}{where}: {_reason(exc)}.",
            hint=hint or "Check that the file is a complete, playable video; download it again if it was cut short.",
        ) from exc


def _reason(exc: BaseException) -> str:
    # FFmpegError and OSError both carry strerror, which omits the errno and path noise of str(exc).
    strerror = getattr(exc, "strerror", None)
    return strerror if isinstance(strerror, str) and strerror else str(exc) or type(exc).__name__


@contextmanager
def _atomic_path(out_path: Path) -> Iterator[Path]:
    """Yields a temporary sibling of ``out_path`` that replaces it on success and is removed on any failure.

    The temporary name keeps the suffix so that tools guessing the format from the name still work, and starts
    with a dot so that directory listings of finished clips do not show half-written files.
    """
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.{secrets.token_hex(4)}.part{out_path.suffix}")
    try:
        yield tmp
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomic(out_path: Path, data: bytes) -> Path:
    with (
        _translated("write", out_path, hint="Check that the folder exists and is writable."),
        _atomic_path(out_path) as tmp,
    ):
        tmp.write_bytes(data)
    return out_path


def _open(path: StrPath) -> InputContainer:
    import av

    return av.open(os.fspath(path), "r")


def _video_stream(container: InputContainer, path: StrPath) -> VideoStream:
    from av.codec.context import ThreadType

    if not container.streams.video:
        raise MediaError(f"{Path(path).name} has no video stream.", hint="Pass an MP4 video file.")
    stream = container.streams.video[0]
    # Frame threading roughly halves decode time of 1080p clips on two cores.
    stream.thread_type = ThreadType.AUTO
    return stream


def _origin_s(stream: VideoStream) -> float:
    """Presentation time of the stream's first frame; caller-facing times count from there."""
    if stream.start_time is not None and stream.time_base is not None:
        return float(stream.start_time * stream.time_base)
    return 0.0


def _fps(stream: VideoStream) -> Fraction | None:
    return stream.average_rate or stream.guessed_rate or None


def _video_duration_s(container: InputContainer, stream: VideoStream) -> float:
    if stream.duration and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # AV_TIME_BASE
    fps = _fps(stream)
    if stream.frames and fps:
        return float(stream.frames / fps)
    return 0.0


def _frame_time(frame: VideoFrame) -> float | None:
    # The stub says float, but frames without a pts (some raw streams) have no time.
    return cast("float | None", frame.time)


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
        ft = _frame_time(frame)
        t = ft - origin_s if ft is not None else prev_t
        while prev is not None and len(picked) < len(targets) and t > targets[len(picked)] + _TIME_EPS:
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


def _fit(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _seek(container: InputContainer, stream: VideoStream, at_s: float) -> None:
    """Seeks to the keyframe at or before ``at_s`` (absolute stream time)."""
    if stream.time_base is None:
        container.seek(0)
        return
    container.seek(max(0, int(at_s / stream.time_base)), stream=stream, backward=True)


def _frame_at(container: InputContainer, stream: VideoStream, at_s: float, path: StrPath) -> VideoFrame:
    """The frame on screen ``at_s`` seconds into the clip: a keyframe seek plus a short decode."""
    import av

    origin = _origin_s(stream)
    picked: list[VideoFrame] = []
    if at_s > 0:
        try:
            _seek(container, stream, origin + at_s)
            picked = _pick(container.decode(stream), [at_s], origin, lambda f: f)
        except av.FFmpegError:
            picked = []
    if not picked or (_frame_time(picked[0]) or 0.0) - origin > at_s + _TIME_EPS:
        # A broken index can land the seek past the target; decode from the start instead.
        container.seek(0)
        picked = _pick(container.decode(stream), [at_s], origin, lambda f: f)
    if not picked:
        raise MediaError(f"{Path(path).name} has no decodable video frames.", hint="Download the clip again.")
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
    tb, origin = stream.time_base, _origin_s(stream)
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
            t = _frame_time(frame)
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

    with _open(path) as container:
        stream = _video_stream(container, path)
        end = _origin_s(stream) + _video_duration_s(container, stream)
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
            raise MediaError(f"{Path(path).name} has no decodable video frames.", hint="Download the clip again.")
        return best


def _suffix(out_path: Path, allowed: Sequence[str], field: str) -> str:
    suffix = out_path.suffix.lower()
    if suffix not in allowed:
        raise InvalidInputError(
            field, "a file name ending in " + " or ".join(allowed), str(out_path), "change the suffix"
        )
    return suffix


def _save_jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode in ("RGB", "L") else image.convert("RGB")


# --------------------------------------------------------------------------------------------------- probe


def probe(path: StrPath) -> VideoInfo:
    """Size, duration, frame rate, codec and audio presence of a video file, from its header and index only."""
    with _translated("read", path), _open(path) as container:
        stream = _video_stream(container, path)
        ctx = stream.codec_context
        fps = _fps(stream)
        duration = container.duration / 1_000_000 if container.duration else _video_duration_s(container, stream)
        return VideoInfo(
            duration_s=float(duration),
            width=ctx.width,
            height=ctx.height,
            fps=float(fps) if fps else None,
            codec=ctx.name,
            pix_fmt=ctx.format.name if ctx.format is not None else None,
            frames=stream.frames or None,  # from the MP4 index; other containers may not know it
            has_audio=bool(container.streams.audio),
            size_bytes=Path(path).stat().st_size,
        )


# --------------------------------------------------------------------------------------------------- frames


def last_frame_image(path: StrPath) -> Image.Image:
    """The clip's final frame in display order, as an RGB image (used to chain the next shot from it)."""
    with _translated("read the last frame of", path):
        return _to_image(_last_frame(path))


def last_frame(path: StrPath, out_path: StrPath) -> Path:
    """Writes the clip's final frame to ``out_path``: PNG (compress_level=1) or JPEG (quality 95) by suffix."""
    out = Path(out_path)
    suffix = _suffix(out, (".png", *_JPEG_SUFFIXES), "out_path")
    image = last_frame_image(path)
    with _translated("encode the last frame of", path):
        data = encode_png(image) if suffix == ".png" else _save_jpeg(_rgb(image), 95)
    return _write_atomic(out, data)


def first_frame_image(path: StrPath) -> Image.Image:
    """The clip's first frame in display order, as an RGB image."""
    with _translated("read the first frame of", path), _open(path) as container:
        stream = _video_stream(container, path)
        for frame in container.decode(stream):
            return _to_image(frame)
        raise MediaError(f"{Path(path).name} has no decodable video frames.", hint="Download the clip again.")


def poster(path: StrPath, out_path: StrPath, *, max_bytes: int = 200_000, max_side: int = 640) -> Path:
    """Writes a JPEG poster: a frame about a third of the way in (the keyframe nearest to it when one lies between
    a quarter and a half, which is much cheaper to decode; the first frame for clips under a second), scaled to
    fit ``max_side`` and recompressed until it is at most ``max_bytes``."""
    out = Path(out_path)
    _suffix(out, _JPEG_SUFFIXES, "out_path")
    with _translated("make a poster from", path), _open(path) as container:
        stream = _video_stream(container, path)
        duration = _video_duration_s(container, stream)
        frame = None
        if duration >= _POSTER_MIN_DURATION_S:
            frame = _keyframe_near(container, stream, duration / 3, duration / 4, duration / 2)
        if frame is None:
            frame = _frame_at(container, stream, duration / 3 if duration >= _POSTER_MIN_DURATION_S else 0.0, path)
        image = _to_image(frame, *_fit(frame.width, frame.height, max_side))
        data = encode_jpeg(image, max_bytes=max_bytes, max_side=max_side)
    return _write_atomic(out, data)


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
    suffix = _suffix(out, (".png", *_JPEG_SUFFIXES), "out_path")
    if times is not None:
        if not times:
            raise InvalidInputError("times", "a non-empty list of seconds", list(times), "pass at least one time")
        if not all(math.isfinite(t) for t in times):
            raise InvalidInputError("times", "finite numbers of seconds", list(times), "remove NaN or infinity")
    elif n < 1:
        raise InvalidInputError("n", "at least 1", n, "ask for one thumbnail or more")
    if cols < 1:
        raise InvalidInputError("cols", "at least 1", cols, "use one column or more")
    if thumb_w < _MIN_SIDE:
        raise InvalidInputError("thumb_w", f"at least {_MIN_SIDE} pixels", thumb_w, "use wider thumbnails")

    from PIL import Image as PILImage

    with _translated("make a contact sheet from", path):
        with _open(path) as container:
            stream = _video_stream(container, path)
            ctx = stream.codec_context
            if times is None:
                duration = _video_duration_s(container, stream)
                times = [(i + 0.5) * duration / n for i in range(n)]
            thumb_h = max(2, round(thumb_w * ctx.height / max(1, ctx.width) / 2) * 2)
            order = sorted(range(len(times)), key=lambda i: times[i])
            images = _pick(
                container.decode(stream),
                [times[i] for i in order],
                _origin_s(stream),
                lambda f: _to_image(f, thumb_w, thumb_h),
            )
        if not images:
            raise MediaError(f"{Path(path).name} has no decodable video frames.", hint="Download the clip again.")
        tiles: list[Image.Image] = [images[0]] * len(times)
        for rank, i in enumerate(order):
            tiles[i] = images[rank]
        cols = min(cols, len(tiles))
        rows = -(-len(tiles) // cols)
        sheet = PILImage.new("RGB", (cols * thumb_w, rows * thumb_h))
        for i, tile in enumerate(tiles):
            sheet.paste(tile, ((i % cols) * thumb_w, (i // cols) * thumb_h))
        if suffix == ".png":
            data = _encode_png_within(sheet, max_bytes)
        else:
            data = encode_jpeg(sheet, max_bytes=max_bytes, max_side=None)
    return _write_atomic(out, data)


# --------------------------------------------------------------------------------------------------- images


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes at compress_level=1: 30-50 % faster than the default level for a few % more bytes."""
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _encode_png_within(image: Image.Image, max_bytes: int | None) -> bytes:
    from PIL import Image as PILImage

    data = encode_png(image)
    while max_bytes is not None and len(data) > max_bytes:
        if min(image.size) <= _MIN_SIDE:
            raise MediaError(f"Could not fit the image into {max_bytes} bytes.", hint="Allow more bytes.")
        scale = max(0.25, min(0.9, math.sqrt(max_bytes / len(data)) * 0.95))
        size = (max(_MIN_SIDE, round(image.width * scale)), max(_MIN_SIDE, round(image.height * scale)))
        image = image.resize(size, PILImage.Resampling.LANCZOS)
        data = encode_png(image)
    return data


def encode_jpeg(image: Image.Image, *, max_bytes: int | None, max_side: int | None) -> bytes:
    """JPEG bytes no larger than ``max_side`` pixels per side and ``max_bytes`` bytes (``None``: no limit).

    Tries qualities 90 down to 40, then shrinks the image by the square root of the size overshoot and tries
    again, because below quality ~40 blocking hurts more than losing resolution.
    """
    from PIL import Image as PILImage

    if max_bytes is not None and max_bytes < 1:
        raise InvalidInputError("max_bytes", "a positive number of bytes", max_bytes, "allow more bytes")
    if max_side is not None and max_side < _MIN_SIDE:
        raise InvalidInputError("max_side", f"at least {_MIN_SIDE} pixels", max_side, "allow a larger side")
    image = _rgb(image)
    size = _fit(image.width, image.height, max_side)
    if size != image.size:
        image = image.resize(size, PILImage.Resampling.LANCZOS, reducing_gap=3.0)
    while True:
        data = b""
        for quality in _JPEG_QUALITIES:
            data = _save_jpeg(image, quality)
            if max_bytes is None or len(data) <= max_bytes:
                return data
        assert max_bytes is not None
        if min(image.size) <= _MIN_SIDE:
            raise MediaError(f"Could not fit the image into {max_bytes} bytes.", hint="Allow more bytes.")
        scale = max(0.25, min(0.9, math.sqrt(max_bytes / len(data)) * 0.95))
        size = (max(_MIN_SIDE, round(image.width * scale)), max(_MIN_SIDE, round(image.height * scale)))
        image = image.resize(size, PILImage.Resampling.LANCZOS)


def image_info(data: bytes) -> ImageInfo:
    """Format (by content, not name: "JPEG", "PNG", "GIF", "WEBP", ...) and size of an image.

    Decodes the whole image so that truncated or corrupt files are caught here rather than by the gateway;
    JPEGs are decoded at 1/8 scale, which still reads every byte.
    """
    from PIL import Image as PILImage

    if not data:
        raise MediaError("The image is empty (0 bytes).", hint="Send a PNG or JPEG file.")
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            fmt = image.format or "unknown"
            width, height = image.size
            if fmt == "JPEG":
                image.draft(image.mode, (1, 1))
            image.load()
    except (OSError, EOFError, ValueError, SyntaxError, PILImage.DecompressionBombError) as exc:
        raise MediaError(
            f"The image could not be decoded: {_reason(exc)}.",
            hint="Send a complete PNG or JPEG file.",
        ) from exc
    return ImageInfo(format=fmt, width=width, height=height, size_bytes=len(data))


# --------------------------------------------------------------------------------------------------- concat


def _signature(container: InputContainer, path: StrPath) -> dict[str, object]:
    """What must be equal across clips for a stream copy to produce one valid file."""
    video = _video_stream(container, path)
    ctx = video.codec_context
    sig: dict[str, object] = {
        "video codec": ctx.name,
        "size": f"{ctx.width}x{ctx.height}",
        "pixel format": ctx.format.name if ctx.format is not None else None,
        "frame rate": _fps(video),
        # One avcC (SPS/PPS) box serves the whole output track, so parameter sets must be identical.
        "codec parameters (SPS/PPS)": bytes(ctx.extradata or b""),
        "audio": "none",
    }
    if container.streams.audio:
        audio = container.streams.audio[0].codec_context
        sig.update(
            {
                "audio": audio.name,
                "audio sample rate": audio.sample_rate,
                "audio channels": audio.channels,
                "audio codec parameters": bytes(audio.extradata or b""),
            }
        )
    return sig


def _copy_mismatch(containers: Sequence[InputContainer], paths: Sequence[StrPath]) -> str | None:
    first = _signature(containers[0], paths[0])
    for container, path in zip(containers[1:], paths[1:], strict=True):
        sig = _signature(container, path)
        for key in [*first, *(k for k in sig if k not in first)]:  # most telling difference first
            a, b = first.get(key), sig.get(key)
            if a != b:
                if isinstance(a, bytes) or isinstance(b, bytes):
                    return f"{Path(path).name} has different {key} from {Path(paths[0]).name}"
                return f"{Path(path).name} has {key} {b}, {Path(paths[0]).name} has {a}"
    return None


@contextmanager
def _open_all(paths: Sequence[StrPath]) -> Iterator[list[InputContainer]]:
    """Opens every clip once: opening costs ~70 ms for a detailed 1080p clip (FFmpeg decodes a few frames to
    learn the stream's reorder delay), so the checks and the join share the same containers."""
    with ExitStack() as stack:
        containers = []
        for path in paths:
            with _translated("read", path):
                containers.append(stack.enter_context(_open(path)))
                _video_stream(containers[-1], path)
        yield containers


def can_stream_copy(paths: Sequence[StrPath]) -> bool:
    """True when the clips can be joined without re-encoding: same codec, size, pixel format, frame rate, codec
    parameters (SPS/PPS) and audio layout."""
    if not paths:
        raise InvalidInputError("paths", "at least one video", [], "pass the clips to join")
    with _open_all(paths) as containers:
        return _copy_mismatch(containers, paths) is None


def concat(paths: Sequence[StrPath], out_path: StrPath, *, reencode: bool | None = None) -> ConcatResult:
    """Joins clips into one MP4 (moov first), written to a temporary sibling and renamed into place.

    ``reencode=None`` copies packets when :func:`can_stream_copy` allows and re-encodes otherwise; ``True`` always
    re-encodes (H.264 + AAC, letterboxed to the first clip's size at its frame rate); ``False`` always copies and
    raises :class:`MediaError` if the clips are not copy-compatible, since copying them would write a broken file.
    """
    if not paths:
        raise InvalidInputError("paths", "at least one video", [], "pass the clips to join")
    out = Path(out_path)
    fmt = _VIDEO_FORMATS[_suffix(out, tuple(_VIDEO_FORMATS), "out_path")]
    with _open_all(paths) as containers:
        mismatch = None if reencode else _copy_mismatch(containers, paths)
        if reencode is False and mismatch is not None:
            raise MediaError(
                f"Cannot join the clips without re-encoding: {mismatch}.",
                hint="Use reencode=True (or leave it unset to choose automatically).",
            )
        method: Literal["copy", "reencode"] = "reencode" if reencode or mismatch is not None else "copy"
        with (
            _translated(f"join {len(paths)} clips into", out, hint="Check the input clips with probe()."),
            _atomic_path(out) as tmp,
        ):
            if method == "copy":
                duration, (width, height) = _concat_copy(containers, tmp, fmt), _size(containers[0])
            else:
                duration, width, height = _concat_reencode(containers, paths, tmp, fmt)
    return ConcatResult(
        path=out, method=method, duration_s=duration, size_bytes=out.stat().st_size, width=width, height=height
    )


def _size(container: InputContainer) -> tuple[int, int]:
    ctx = container.streams.video[0].codec_context
    return ctx.width, ctx.height


def _open_output(path: Path, fmt: str) -> OutputContainer:
    import av

    # +faststart puts the index first so players and browsers can start before the whole file arrives.
    return av.open(os.fspath(path), "w", format=fmt, options={"movflags": "+faststart"})


def _concat_copy(inputs: Sequence[InputContainer], tmp: Path, fmt: str) -> float:
    """Remuxes packets, shifting each clip's timestamps by the running end time of the output; returns that end."""
    with _open_output(tmp, fmt) as output:
        out_streams = [output.add_stream_from_template(s) for s in _copy_streams(inputs[0])]
        offset = 0.0
        last_dts: dict[int, float] = {}
        for container in inputs:
            streams = _copy_streams(container)
            position = {s.index: i for i, s in enumerate(streams)}
            end = offset
            for packet in container.demux(streams):
                if packet.dts is None:  # the demuxer's flush packet
                    continue
                tb = packet.time_base
                pos = position[packet.stream.index]
                shift = round(offset / tb)
                packet.dts += shift
                if packet.pts is not None:
                    packet.pts += shift
                dts_s = float(packet.dts * tb)
                if dts_s <= last_dts.get(pos, -math.inf):
                    # AAC priming packet overlapping the previous clip's tail: muxing it fails with EINVAL,
                    # and players discard those samples anyway.
                    continue
                last_dts[pos] = dts_s
                stamp = packet.pts if packet.pts is not None else packet.dts
                end = max(end, float((stamp + (packet.duration or 0)) * tb))
                packet.stream = out_streams[pos]
                output.mux(packet)
            offset = end
    return offset


def _copy_streams(container: InputContainer) -> list[VideoStream | AudioStream]:
    streams: list[VideoStream | AudioStream] = [container.streams.video[0]]
    if container.streams.audio:
        streams.append(container.streams.audio[0])
    return streams


def _concat_reencode(
    inputs: Sequence[InputContainer], paths: Sequence[StrPath], tmp: Path, fmt: str
) -> tuple[float, int, int]:
    """H.264 at the first clip's size and frame rate; AAC when any clip has sound (silence for clips without).

    Returns the duration, width and height written.
    """
    stream0 = inputs[0].streams.video[0]
    width = stream0.codec_context.width // 2 * 2  # yuv420p needs even sizes
    height = stream0.codec_context.height // 2 * 2
    fps = _fps(stream0) or Fraction(24)
    if fps.denominator > 1001:  # an average of odd timestamps, e.g. 2997/125; keep the time base sane
        fps = fps.limit_denominator(1001)
    rates = [c.streams.audio[0].codec_context.sample_rate or 48_000 for c in inputs if c.streams.audio]
    with _open_output(tmp, fmt) as output:
        video = _VideoJoin(output, width, height, fps)
        audio = _AudioJoin(output, rates[0]) if rates else None
        for container, path in zip(inputs, paths, strict=True):
            with _translated("read", path):
                _reencode_clip(container, path, video, audio)
        video.finish()
        if audio is not None:
            audio.finish()
    return float(video.written * video.frame_tb), width, height


def _reencode_clip(container: InputContainer, path: StrPath, video: _VideoJoin, audio: _AudioJoin | None) -> None:
    """Frames are resampled in time, not renumbered, so a 30 fps clip joined to a 24 fps one keeps its speed and
    duration; each output slot shows the input frame whose start is nearest (the earlier one on a tie)."""
    from av.audio.frame import AudioFrame as AVAudioFrame
    from av.video.frame import VideoFrame as AVVideoFrame

    vin = _video_stream(container, path)
    ain = container.streams.audio[0] if audio is not None and container.streams.audio else None
    origin = _origin_s(vin)
    slot_s = float(video.frame_tb)
    in_frame_s = 1 / float(_fps(vin) or video.fps)
    video.start_clip()
    prev: VideoFrame | None = None
    prev_t = 0.0
    for packet in container.demux([vin] if ain is None else [vin, ain]):
        for decoded in packet.decode():
            if isinstance(decoded, AVAudioFrame):
                assert audio is not None
                audio.add(decoded)
            elif isinstance(decoded, AVVideoFrame):
                ft = _frame_time(decoded)
                t = ft - origin if ft is not None else prev_t + in_frame_s
                while prev is not None and (video.clip_frames + 0.5) * slot_s <= t + _TIME_EPS:
                    video.emit(prev)
                prev, prev_t = decoded, t
        if audio is not None:
            audio.release(video.clip_frames * video.frame_tb)
    if prev is None:
        raise MediaError(f"{Path(path).name} has no decodable video frames.", hint="Download the clip again.")
    clip_frames = max(1, round((prev_t + in_frame_s) / slot_s))
    while video.clip_frames < clip_frames:
        video.emit(prev)
    if audio is not None:
        audio.end_clip(video.clip_frames * video.frame_tb)


def _letterbox_graph(frame: VideoFrame, width: int, height: int) -> Graph:
    """A scale+pad filter graph fitting frames like ``frame`` into width x height, centred on black.

    It stays in YUV: going through RGB and Pillow cost ~6 ms per 1080p frame, this costs under 1 ms.
    """
    from av.filter import Graph as AVGraph

    scale = min(width / frame.width, height / frame.height)
    w = min(width, max(2, round(frame.width * scale / 2) * 2))
    h = min(height, max(2, round(frame.height * scale / 2) * 2))
    graph = AVGraph()
    graph.link_nodes(
        graph.add_buffer(width=frame.width, height=frame.height, format=frame.format, time_base=frame.time_base),
        graph.add("scale", f"{w}:{h}:flags=area"),
        graph.add("pad", f"{width}:{height}:{(width - w) // 2}:{(height - h) // 2}:black"),
        graph.add("setsar", "1"),  # rounding to even sizes would otherwise leave a 1.003:1 pixel aspect
        graph.add("format", "yuv420p"),
        graph.add("buffersink"),
    )
    graph.configure()
    return graph


class _VideoJoin:
    """Feeds the H.264 encoder across clips, letterboxing frames of other sizes (one filter graph per input
    geometry) and starting each clip on a keyframe so that players can seek straight to any shot."""

    def __init__(self, output: OutputContainer, width: int, height: int, fps: Fraction) -> None:
        self._output = output
        self._stream = output.add_stream("libx264", rate=fps, options=dict(_REENCODE_OPTIONS))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self.fps = fps
        self.frame_tb = 1 / fps
        self.written = 0
        self._clip_start = 0
        self._graphs: dict[tuple[int, int, str], Graph] = {}

    @property
    def clip_frames(self) -> int:
        return self.written - self._clip_start

    def start_clip(self) -> None:
        self._clip_start = self.written

    def emit(self, frame: VideoFrame) -> None:
        from av.video.frame import PictureType

        if (frame.width, frame.height) != (self._stream.width, self._stream.height):
            frame = self._letterbox(frame)
        # libx264 obeys the picture types the decoder left on the frame; reset them, forcing only clip starts.
        frame.pict_type = PictureType.I if self.written == self._clip_start else PictureType.NONE
        frame.pts, frame.time_base = self.written, self.frame_tb
        self._output.mux(self._stream.encode(frame))
        self.written += 1

    def _letterbox(self, frame: VideoFrame) -> VideoFrame:
        key = (frame.width, frame.height, frame.format.name)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = _letterbox_graph(frame, self._stream.width, self._stream.height)
        graph.vpush(frame)
        return graph.vpull()

    def finish(self) -> None:
        self._output.mux(self._stream.encode(None))


class _AudioJoin:
    """Feeds the AAC encoder across clips: resamples to one format, and cuts or pads each clip's sound to the
    exact sample count of its video so the tracks stay in sync however the clips' audio lengths differ."""

    def __init__(self, output: OutputContainer, sample_rate: int) -> None:
        from av.audio.fifo import AudioFifo as AVAudioFifo

        self._output = output
        self._rate = sample_rate
        self._stream = output.add_stream("aac", rate=sample_rate)
        self._stream.layout = "stereo"
        self._stream.format = "fltp"
        self._encoder_fifo: AudioFifo = AVAudioFifo()
        self._pts = 0
        self._clip_samples = 0  # samples of the current clip already passed on
        self._clip_fifo: AudioFifo = AVAudioFifo()
        self._resampler = self._new_resampler()

    def _new_resampler(self) -> AudioResampler:
        from av.audio.resampler import AudioResampler as AVAudioResampler

        return AVAudioResampler(format="fltp", layout="stereo", rate=self._rate)

    def add(self, frame: AudioFrame) -> None:
        for out in self._resampler.resample(frame):
            out.pts = None  # AudioFifo would insist on continuous timestamps
            self._clip_fifo.write(out)

    def release(self, video_s: Fraction) -> None:
        """Passes on this clip's samples up to the video time written so far (never past the clip's end)."""
        self._move(round(video_s * self._rate))

    def end_clip(self, video_s: Fraction) -> None:
        for out in self._resampler.resample(None):
            out.pts = None
            self._clip_fifo.write(out)
        target = round(video_s * self._rate)
        self._move(target)
        if self._clip_samples < target:
            self._write(self._silence(target - self._clip_samples))
        self._clip_samples = 0
        self._clip_fifo = type(self._clip_fifo)()
        # A new resampler per clip: clips may differ in rate or layout, which one resampler refuses.
        self._resampler = self._new_resampler()

    def finish(self) -> None:
        rest = self._encoder_fifo.read()  # the AAC encoder accepts a short final frame
        if rest is not None:
            self._encode(rest)
        self._output.mux(self._stream.encode(None))

    def _move(self, target: int) -> None:
        while self._clip_samples < target and self._clip_fifo.samples > 0:
            chunk = self._clip_fifo.read(min(target - self._clip_samples, self._clip_fifo.samples))
            if chunk is None:
                break
            self._clip_samples += chunk.samples
            self._write(chunk)

    def _write(self, frame: AudioFrame) -> None:
        frame.pts = None
        self._encoder_fifo.write(frame)
        while self._encoder_fifo.samples >= _AAC_FRAME:
            chunk = self._encoder_fifo.read(_AAC_FRAME)
            assert chunk is not None
            self._encode(chunk)

    def _encode(self, frame: AudioFrame) -> None:
        frame.pts = self._pts
        frame.time_base = Fraction(1, self._rate)
        frame.sample_rate = self._rate
        self._pts += frame.samples
        self._output.mux(self._stream.encode(frame))

    def _silence(self, samples: int) -> AudioFrame:
        from av.audio.frame import AudioFrame as AVAudioFrame

        frame = AVAudioFrame(format="fltp", layout="stereo", samples=samples)
        frame.sample_rate = self._rate
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        return frame
