"""First-frame images: every way an agent can name one, checked against the limits before anything is paid for.

Accepted references: an http(s) URL (checked from its first bytes where this server may fetch it), a ``data:``
URI, a local file path (or ``file://`` URL), and ``kling://jobs/{id}/last-frame`` (the last frame of a finished
job). Local paths are the local user's (stdio); callers over HTTP may name only files inside the configured image
roots. Only regular files are read, and never past the size limit. Local images travel to the gateway as a ``data:`` URI; whether the live gateway accepts those is unknown
(docs/pixazo-contract.md §3), so a refusal there is turned into advice to use a public URL.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio
import httpx2

from kling_mcp import limits
from kling_mcp.errors import InvalidInputError, KlingError, Measured, MediaError

LAST_FRAME_REF = re.compile(r"^kling://jobs/(?P<id>[^/]+)/last-frame(?:\.png)?$")
_DATA_URI = re.compile(r"^data:(?P<mime>image/[a-z0-9.+-]+)?(?P<b64>;base64)?,(?P<data>.*)$", re.IGNORECASE | re.DOTALL)
_HEAD_BYTES = 256 * 1024

# Resolves a job id to a local video file (for last-frame references).
VideoLookup = Callable[[str], Awaitable[Path]]


@dataclass(frozen=True)
class ResolvedImage:
    url: str  # what the gateway receives: the caller's http(s) URL, or a data: URI
    source: str  # "url", "data", "file", "last-frame"
    width: int | None = None
    height: int | None = None
    format: str | None = None


def _mime(fmt: str) -> str:
    return "image/png" if fmt == "PNG" else "image/jpeg"


def _check_bytes(
    field: str, data: bytes, *, total_size: int | None = None, partial: bool = False
) -> tuple[str, int, int]:
    """Format by content, size and shape of an image; ``partial`` data is read only as far as its header.

    The header is read without Pillow, so anything but PNG and JPEG, and anything over the pixel limit, is refused
    before a decoder sees it.
    """
    from kling_mcp.media import image_header, image_info, sniff_format

    size = total_size if total_size is not None else len(data)
    if size > limits.IMAGE_MAX_BYTES:
        limits.check_image(
            field=field, format="PNG", size_bytes=size, width=limits.IMAGE_MIN_SIDE_PX, height=limits.IMAGE_MIN_SIDE_PX
        )
    fmt, width, height = image_header(data) or (sniff_format(data), 0, 0)
    if fmt not in limits.IMAGE_FORMATS:
        limits.check_image(field=field, format=fmt, size_bytes=size, width=1, height=1)
    limits.check_image_pixels(width, height, field=field)
    if not partial:
        try:
            info = image_info(data, field=field)
        except MediaError as exc:
            raise InvalidInputError(field, "a PNG or JPEG image", exc.message, "send a complete PNG or JPEG") from None
        fmt, width, height = info.format, info.width, info.height
    limits.check_image(field=field, format=fmt, size_bytes=size, width=max(width, 1), height=max(height, 1))
    return fmt, width, height


def _data_uri(data: bytes, fmt: str) -> str:
    return f"data:{_mime(fmt)};base64," + base64.b64encode(data).decode()


def last_frame_uri(video: Path) -> ResolvedImage:
    """The last frame of ``video``, losslessly as a PNG data URI (blocking: call in a worker thread)."""
    from kling_mcp.media import encode_png, last_frame_image

    image = last_frame_image(video)
    data = encode_png(image)
    _check_bytes("image_url", data)
    return ResolvedImage(_data_uri(data, "PNG"), "last-frame", image.width, image.height, "PNG")


async def resolve_image(
    ref: str,
    *,
    field: str = "image_url",
    http: httpx2.AsyncClient | None = None,
    video_for_job: VideoLookup | None = None,
    limiter: anyio.CapacityLimiter | None = None,
    local_roots: Sequence[Path] | None = None,
) -> ResolvedImage:
    """Checks ``ref`` and returns what the gateway should receive. Raises ``InvalidInputError`` naming the rule.

    ``local_roots`` None: the caller is this machine's user, and any local file they can name is theirs. Otherwise
    (callers over HTTP) a local path must resolve, symlinks followed, inside one of those folders (none: no local
    files at all), and every refusal reads the same whether the path exists or not.
    """
    text = ref.strip()
    if match := LAST_FRAME_REF.match(text):
        if video_for_job is None:
            raise InvalidInputError(field, "a job reference this server can resolve", text, "pass an image URL")
        video = await video_for_job(match["id"])
        return await anyio.to_thread.run_sync(last_frame_uri, video, limiter=limiter)
    if text.lower().startswith("data:"):
        return await anyio.to_thread.run_sync(_resolve_data_uri, field, text, limiter=limiter)
    scheme = urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        limits.check_image_url(text, field=field)
        return await _resolve_remote(field, text, http)
    if scheme == "file" or scheme == "" or (len(scheme) == 1 and text[1:3] in (":\\", ":/")):
        path = Path(unquote(urlsplit(text).path) if scheme == "file" else text).expanduser()
        return await anyio.to_thread.run_sync(_resolve_file, field, path, local_roots, limiter=limiter)
    raise InvalidInputError(
        field,
        "an http(s) URL, a data: URI, a local file path or kling://jobs/{id}/last-frame",
        text,
        "pass one of those",
    )


def _resolve_data_uri(field: str, text: str) -> ResolvedImage:
    # Measured on the text, before any regular expression or decoder runs over it.
    if (estimate := len(text) * 3 // 4) > limits.IMAGE_MAX_BYTES + 100:
        _too_many_bytes(field, estimate)
    match = _DATA_URI.match(text)
    if not match or not match["b64"]:
        raise InvalidInputError(
            field, "a base64 data: URI (data:image/png;base64,...)", text[:40], "base64-encode the image"
        )
    if len(match["data"]) * 3 // 4 > limits.IMAGE_MAX_BYTES:
        _too_many_bytes(field, len(match["data"]) * 3 // 4)
    try:
        data = base64.b64decode(match["data"], validate=False)
    except (binascii.Error, ValueError):
        raise InvalidInputError(field, "valid base64", text[:40], "re-encode the image") from None
    fmt, width, height = _check_bytes(field, data)
    return ResolvedImage(_data_uri(data, fmt), "data", width, height, fmt)


def _too_many_bytes(field: str, size: int) -> None:
    limits.check_image(field=field, format="PNG", size_bytes=size, width=300, height=300)


def _resolve_file(field: str, path: Path, local_roots: Sequence[Path] | None) -> ResolvedImage:
    if not path.is_absolute():
        raise InvalidInputError(
            field, "an absolute file path", str(path), "give the full path, e.g. /home/me/frame.png"
        )
    data = _read_local(field, path) if local_roots is None else _read_in_roots(field, path, local_roots)
    fmt, width, height = _check_bytes(field, data)
    return ResolvedImage(_data_uri(data, fmt), "file", width, height, fmt)


def _read_local(field: str, path: Path) -> bytes:
    """A local user's file: any regular file they name, read no further than the size limit allows."""
    try:
        return _read_regular(path, field)
    except _NotRegular as exc:
        raise InvalidInputError(
            field, "a regular image file", Measured(exc.kind), f"give the path of a PNG or JPEG file, not {path}"
        ) from None
    except OSError as exc:
        raise InvalidInputError(field, "a readable image file", str(path), f"check the path ({exc.strerror})") from None


def _read_in_roots(field: str, path: Path, roots: Sequence[Path]) -> bytes:
    """A remote caller's file: only inside ``roots``, and one refusal for every reason, so nothing can be probed."""
    refusal = InvalidInputError(
        field,
        "an image URL or data: URI; local files only inside the folders in KLING_MCP_IMAGE_ROOTS",
        str(path),
        "pass an https URL or a data: URI, or ask the server's operator which folders are shared",
    )
    try:
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root.resolve()) for root in roots):
            raise refusal
        # No symlink is left in the resolved path; O_NOFOLLOW keeps one swapped in from being followed out.
        return _read_regular(resolved, field, nofollow=True)
    except (OSError, RuntimeError, _NotRegular):  # RuntimeError: a symlink loop
        raise refusal from None


class _NotRegular(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def _read_regular(path: Path, field: str, *, nofollow: bool = False) -> bytes:
    """The bytes of a regular file, at most one past the size limit: a device or pipe is never read or waited on.

    Checked before opening (opening a FIFO would wait for a writer) and again on the open descriptor, so a file
    swapped for something else in between is caught; O_NONBLOCK keeps even that open from waiting.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _NotRegular(_kind(mode))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags | (getattr(os, "O_NOFOLLOW", 0) if nofollow else 0))
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(handle.fileno())
        if not stat.S_ISREG(opened.st_mode):
            raise _NotRegular(_kind(opened.st_mode))
        if opened.st_size > limits.IMAGE_MAX_BYTES:
            _too_many_bytes(field, opened.st_size)
        data = handle.read(limits.IMAGE_MAX_BYTES + 1)
    if len(data) > limits.IMAGE_MAX_BYTES:  # grew since fstat
        _too_many_bytes(field, len(data))
    return data


async def _resolve_remote(field: str, url: str, http: httpx2.AsyncClient | None) -> ResolvedImage:
    """Reads the first bytes where this server may fetch the URL; a URL it cannot reach is left to the gateway."""
    if http is None:
        return ResolvedImage(url, "url")
    try:
        async with http.stream("GET", url, headers={"Range": f"bytes=0-{_HEAD_BYTES - 1}"}) as response:
            if response.status_code >= 400:
                raise InvalidInputError(
                    field, "a URL that serves the image", f"{url} answered HTTP {response.status_code}", "check the URL"
                )
            head = b""
            async for chunk in response.aiter_bytes():
                head += chunk
                if len(head) >= _HEAD_BYTES:
                    break
            total = _total_size(response)
    except KlingError:
        raise
    except httpx2.HTTPError:
        return ResolvedImage(url, "url")  # the gateway may reach what this server cannot
    fmt, width, height = _check_bytes(field, head, total_size=total, partial=True)
    return ResolvedImage(url, "url", width, height, fmt)


def _total_size(response: httpx2.Response) -> int | None:
    content_range = response.headers.get("content-range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("content-length")
    return int(length) if response.status_code == 200 and length and length.isdigit() else None
