"""First-frame images: every way an agent can name one, checked against the limits before anything is paid for.

Accepted references: an http(s) URL (checked from its first bytes where this server may fetch it), a ``data:``
URI, a local file path (or ``file://`` URL), and ``kling://jobs/{id}/last-frame`` (the last frame of a finished
job). Local images travel to the gateway as a ``data:`` URI; whether the live gateway accepts those is unknown
(docs/pixazo-contract.md §3), so a refusal there is turned into advice to use a public URL.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio
import httpx2

from kling_mcp import limits
from kling_mcp.errors import InvalidInputError, KlingError, MediaError

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
    """Format by content, size and shape of an image; ``partial`` data is read only as far as its header."""
    from PIL import Image

    size = total_size if total_size is not None else len(data)
    if size > limits.IMAGE_MAX_BYTES:
        limits.check_image(
            field=field, format="PNG", size_bytes=size, width=limits.IMAGE_MIN_SIDE_PX, height=limits.IMAGE_MIN_SIDE_PX
        )
    if partial:
        try:
            with Image.open(io.BytesIO(data)) as image:
                fmt, (width, height) = image.format or "unknown", image.size
        except (OSError, ValueError, SyntaxError):
            fmt, width, height = "unrecognised content", 0, 0
    else:
        from kling_mcp.media import image_info

        try:
            info = image_info(data)
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
) -> ResolvedImage:
    """Checks ``ref`` and returns what the gateway should receive. Raises ``InvalidInputError`` naming the rule."""
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
        return await anyio.to_thread.run_sync(_resolve_file, field, path, limiter=limiter)
    raise InvalidInputError(
        field,
        "an http(s) URL, a data: URI, a local file path or kling://jobs/{id}/last-frame",
        text,
        "pass one of those",
    )


def _resolve_data_uri(field: str, text: str) -> ResolvedImage:
    match = _DATA_URI.match(text)
    if not match or not match["b64"]:
        raise InvalidInputError(
            field, "a base64 data: URI (data:image/png;base64,...)", text[:40], "base64-encode the image"
        )
    if len(match["data"]) * 3 // 4 > limits.IMAGE_MAX_BYTES:
        limits.check_image(field=field, format="PNG", size_bytes=len(match["data"]) * 3 // 4, width=300, height=300)
    try:
        data = base64.b64decode(match["data"], validate=False)
    except (binascii.Error, ValueError):
        raise InvalidInputError(field, "valid base64", text[:40], "re-encode the image") from None
    fmt, width, height = _check_bytes(field, data)
    return ResolvedImage(_data_uri(data, fmt), "data", width, height, fmt)


def _resolve_file(field: str, path: Path) -> ResolvedImage:
    if not path.is_absolute():
        raise InvalidInputError(
            field, "an absolute file path", str(path), "give the full path, e.g. /home/me/frame.png"
        )
    try:
        size = path.stat().st_size
        if size > limits.IMAGE_MAX_BYTES:
            limits.check_image(field=field, format="PNG", size_bytes=size, width=300, height=300)
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(field, "a readable image file", str(path), f"check the path ({exc.strerror})") from None
    fmt, width, height = _check_bytes(field, data)
    return ResolvedImage(_data_uri(data, fmt), "file", width, height, fmt)


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
