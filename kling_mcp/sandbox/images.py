"""Fetching and checking ``image_url`` the way the gateway must: by the decoded content, not the URL's suffix."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_to_bytes

import anyio
import httpx2

from kling_mcp import limits
from kling_mcp.errors import BlockedURLError, InvalidInputError

__all__ = ["check_image_bytes", "load_image"]

_FIELD = "image_url"
_REACHABLE = "a URL the gateway can fetch (HTTP 200)"


def _too_big(actual: str) -> InvalidInputError:
    return InvalidInputError(
        _FIELD,
        f"at most {limits.IMAGE_MAX_BYTES // (1024 * 1024)} MB",
        actual,
        "downscale or recompress the image",
    )


def _decode_data_uri(uri: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise InvalidInputError(_FIELD, "a data: URI like data:image/png;base64,...", uri, "add the comma and data")
    if header.lower().endswith(";base64"):
        # base64 grows data by 4/3; refuse before decoding a payload that cannot fit
        if len(payload) * 3 // 4 > limits.IMAGE_MAX_BYTES + 3:
            raise _too_big(f"about {len(payload) * 3 // 4 / (1024 * 1024):.1f} MB")
        try:
            return base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInputError(
                _FIELD, "a data: URI with valid base64", uri, "encode the image bytes with standard base64"
            ) from None
    # Capped on the text too: each %XX escape is one byte, every other character one byte.
    if (estimate := len(payload) - 2 * payload.count("%")) > limits.IMAGE_MAX_BYTES:
        raise _too_big(f"about {estimate / (1024 * 1024):.1f} MB")
    return unquote_to_bytes(payload)


async def load_image(url: str, http: httpx2.AsyncClient, *, limit_s: float) -> bytes:
    """The image's bytes, from a ``data:`` URI or a GET of ``url``; raises ``InvalidInputError`` naming image_url."""
    if url.startswith("data:"):
        data = _decode_data_uri(url)
        if len(data) > limits.IMAGE_MAX_BYTES:
            raise _too_big(f"{len(data) / (1024 * 1024):.1f} MB")
        return data
    buf = bytearray()
    try:
        with anyio.fail_after(limit_s):
            async with http.stream("GET", url, follow_redirects=True, timeout=limit_s) as response:
                if response.status_code != 200:
                    raise InvalidInputError(
                        _FIELD,
                        _REACHABLE,
                        url,
                        f"it answered HTTP {response.status_code}; host the image where anyone can download it",
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limits.IMAGE_MAX_BYTES:
                    raise _too_big(f"{int(declared) / (1024 * 1024):.1f} MB")
                async for chunk in response.aiter_bytes():
                    buf += chunk
                    if len(buf) > limits.IMAGE_MAX_BYTES:
                        raise _too_big(f"more than {limits.IMAGE_MAX_BYTES // (1024 * 1024)} MB")
    except TimeoutError:
        raise InvalidInputError(
            _FIELD, _REACHABLE, url, f"it did not answer within {limit_s:g} s; host it somewhere faster"
        ) from None
    except httpx2.HTTPError as exc:
        raise InvalidInputError(
            _FIELD, _REACHABLE, url, f"it could not be reached ({type(exc).__name__}); check the link"
        ) from None
    except BlockedURLError as exc:
        # Named by host only, as the guard does: a signed URL's query string is a credential.
        raise InvalidInputError(
            _FIELD,
            "a URL on a public address",
            exc.host or "this URL",
            "host the image where anyone can download it; " + exc.message.rstrip("."),
        ) from None
    return bytes(buf)


def check_image_bytes(data: bytes) -> None:
    """Decodes the image fully (a truncated file must fail here, not in the render) and checks its limits.

    Only PNG and JPEG are opened, and only after their headers show at most ``IMAGE_MAX_PIXELS`` (``open_image``).
    CPU-bound for big images: call it in a worker thread.
    """
    from PIL import Image

    from kling_mcp.media import MediaError, image_header, open_image, sniff_format

    fmt, width, height = image_header(data) or (sniff_format(data), 0, 0)
    limits.check_image(field=_FIELD, format=fmt, size_bytes=len(data), width=max(width, 1), height=max(height, 1))
    try:
        with open_image(data, field=_FIELD) as image:
            image.load()
    except (MediaError, OSError, ValueError, Image.DecompressionBombError):
        raise InvalidInputError(
            _FIELD, "a " + " or ".join(limits.IMAGE_FORMATS) + " image", f"a damaged {fmt} file", "export it again"
        ) from None
