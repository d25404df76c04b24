"""What every media module shares: error translation, atomic output files and output suffix checks."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from kling_mcp.errors import InvalidInputError, KlingError, MediaError
from kling_mcp.files import Created, creating, replacing

if TYPE_CHECKING:
    from av.container import OutputContainer

StrPath = str | os.PathLike[str]
T = TypeVar("T")

JPEG_SUFFIXES = (".jpg", ".jpeg")
# Timestamps are stored in ticks of 1/12288 s and the like, so times computed from fps miss by a fraction of a
# tick; this slack absorbs that without ever reaching the next frame (it is far below a frame at 1000 fps).
TIME_EPS = 1e-3


@contextmanager
def translated(action: str, path: StrPath | None = None, hint: str | None = None) -> Iterator[None]:
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
            f"Could not {action}{where}: {reason(exc)}.",
            hint=hint or "Check that the file is a complete, playable video; download it again if it was cut short.",
        ) from exc


def reason(exc: BaseException) -> str:
    # FFmpegError and OSError both carry strerror, which omits the errno and path noise of str(exc).
    strerror = getattr(exc, "strerror", None)
    return strerror if isinstance(strerror, str) and strerror else str(exc) or type(exc).__name__


def no_frames(path: StrPath) -> MediaError:
    return MediaError(f"{Path(path).name} has no decodable video frames.", hint="Download the clip again.")


@contextmanager
def atomic_path(out_path: Path) -> Iterator[Path]:
    """Yields a temporary sibling of ``out_path`` that replaces it on success and is removed on any failure."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out_path) as tmp:
        yield tmp


@contextmanager
def new_file(out_path: Path) -> Iterator[Created]:
    """Like :func:`atomic_path`, but the result never replaces a file: it takes a numbered name instead."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with creating(out_path) as created:
        yield created


def write_atomic(out_path: Path, data: bytes) -> Path:
    with (
        translated("write", out_path, hint="Check that the folder exists and is writable."),
        atomic_path(out_path) as tmp,
    ):
        tmp.write_bytes(data)
    return out_path


def open_output(path: Path, fmt: str) -> OutputContainer:
    import av

    # +faststart puts the index first so players and browsers can start before the whole file arrives.
    return av.open(os.fspath(path), "w", format=fmt, options={"movflags": "+faststart"})


def check_suffix(out_path: Path, allowed: Sequence[str], field: str) -> str:
    suffix = out_path.suffix.lower()
    if suffix not in allowed:
        raise InvalidInputError(
            field, "a file name ending in " + " or ".join(allowed), str(out_path), "change the suffix"
        )
    return suffix
