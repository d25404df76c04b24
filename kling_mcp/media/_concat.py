"""Joining clips: a packet copy when every clip matches, else a re-encode (in ``_reencode``)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kling_mcp.errors import InvalidInputError, MediaError
from kling_mcp.media._common import StrPath, check_suffix, new_file, open_output, translated
from kling_mcp.media._probe import fps_of, open_input, video_stream
from kling_mcp.media._reencode import concat_reencode

if TYPE_CHECKING:
    from av.audio.stream import AudioStream
    from av.container import InputContainer
    from av.video.stream import VideoStream

_VIDEO_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}


@dataclass(frozen=True)
class ConcatResult:
    """The joined file and how it was made: ``copy`` (packets remuxed, no quality loss) or ``reencode``."""

    path: Path
    method: Literal["copy", "reencode"]
    duration_s: float
    size_bytes: int
    width: int
    height: int


def _signature(container: InputContainer, path: StrPath) -> dict[str, object]:
    """What must be equal across clips for a stream copy to produce one valid file."""
    video = video_stream(container, path)
    ctx = video.codec_context
    sig: dict[str, object] = {
        "video codec": ctx.name,
        "size": f"{ctx.width}x{ctx.height}",
        "pixel format": ctx.format.name if ctx.format is not None else None,
        "frame rate": fps_of(video),
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
            with translated("read", path):
                containers.append(stack.enter_context(open_input(path)))
                video_stream(containers[-1], path)
        yield containers


def can_stream_copy(paths: Sequence[StrPath]) -> bool:
    """True when the clips can be joined without re-encoding: same codec, size, pixel format, frame rate, codec
    parameters (SPS/PPS) and audio layout."""
    if not paths:
        raise InvalidInputError("paths", "at least one video", [], "pass the clips to join")
    with _open_all(paths) as containers:
        return _copy_mismatch(containers, paths) is None


def concat(paths: Sequence[StrPath], out_path: StrPath, *, reencode: bool | None = None) -> ConcatResult:
    """Joins clips into one MP4 (moov first), written to a temporary sibling and then given its name.

    An existing file is never replaced: when ``out_path`` is taken the result is numbered ("film-2.mp4"), and
    ``ConcatResult.path`` says where it went.

    ``reencode=None`` copies packets when :func:`can_stream_copy` allows and re-encodes otherwise; ``True`` always
    re-encodes (H.264 + AAC, letterboxed to the first clip's size at its frame rate); ``False`` always copies and
    raises :class:`MediaError` if the clips are not copy-compatible, since copying them would write a broken file.
    """
    if not paths:
        raise InvalidInputError("paths", "at least one video", [], "pass the clips to join")
    out = Path(out_path)
    fmt = _VIDEO_FORMATS[check_suffix(out, tuple(_VIDEO_FORMATS), "out_path")]
    with _open_all(paths) as containers:
        mismatch = None if reencode else _copy_mismatch(containers, paths)
        if reencode is False and mismatch is not None:
            raise MediaError(
                f"Cannot join the clips without re-encoding: {mismatch}.",
                hint="Use reencode=True (or leave it unset to choose automatically).",
            )
        method: Literal["copy", "reencode"] = "reencode" if reencode or mismatch is not None else "copy"
        with (
            translated(f"join {len(paths)} clips into", out, hint="Check the input clips with probe()."),
            new_file(out) as created,
        ):
            if method == "copy":
                duration, (width, height) = _concat_copy(containers, created.tmp, fmt), _size(containers[0])
            else:
                duration, width, height = concat_reencode(containers, paths, created.tmp, fmt)
    path = created.path
    return ConcatResult(
        path=path, method=method, duration_s=duration, size_bytes=path.stat().st_size, width=width, height=height
    )


def _size(container: InputContainer) -> tuple[int, int]:
    ctx = container.streams.video[0].codec_context
    return ctx.width, ctx.height


def _concat_copy(inputs: Sequence[InputContainer], tmp: Path, fmt: str) -> float:
    """Remuxes packets, shifting each clip's timestamps by the running end time of the output; returns that end."""
    with open_output(tmp, fmt) as output:
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
