"""Still images: PNG and JPEG encoding within byte and size budgets, and checking what an image file is.

Images from outside are opened only through :func:`open_image`: PNG or JPEG by their signatures, at most
``limits.IMAGE_MAX_PIXELS`` by their headers, and only then handed to Pillow, restricted to those two formats.
Pillow would otherwise try every format it knows (EPS among them, which runs Ghostscript) and allocate whatever
size a header claims.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kling_mcp import limits
from kling_mcp.errors import InvalidInputError, MediaError
from kling_mcp.media._common import reason

if TYPE_CHECKING:
    from PIL import Image

_JPEG_QUALITIES = (90, 80, 70, 60, 50, 40)
MIN_SIDE = 16
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers, which carry the size: SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


@dataclass(frozen=True)
class ImageInfo:
    """An image's format as Pillow names it from the content ("JPEG", "PNG", "GIF", "WEBP", ...) and its size."""

    format: str
    width: int
    height: int
    size_bytes: int


def fit(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def save_jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def rgb(image: Image.Image) -> Image.Image:
    return image if image.mode in ("RGB", "L") else image.convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes at compress_level=1: 30-50 % faster than the default level for a few % more bytes."""
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _shrunk(image: Image.Image, max_bytes: int, size_bytes: int) -> Image.Image:
    """``image`` scaled down by the square root of how far ``size_bytes`` overshoots ``max_bytes``."""
    from PIL import Image as PILImage

    if min(image.size) <= MIN_SIDE:
        raise MediaError(f"Could not fit the image into {max_bytes} bytes.", hint="Allow more bytes.")
    scale = max(0.25, min(0.9, math.sqrt(max_bytes / size_bytes) * 0.95))
    size = (max(MIN_SIDE, round(image.width * scale)), max(MIN_SIDE, round(image.height * scale)))
    return image.resize(size, PILImage.Resampling.LANCZOS)


def encode_png_within(image: Image.Image, max_bytes: int | None) -> bytes:
    data = encode_png(image)
    while max_bytes is not None and len(data) > max_bytes:
        image = _shrunk(image, max_bytes, len(data))
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
    if max_side is not None and max_side < MIN_SIDE:
        raise InvalidInputError("max_side", f"at least {MIN_SIDE} pixels", max_side, "allow a larger side")
    image = rgb(image)
    size = fit(image.width, image.height, max_side)
    if size != image.size:
        image = image.resize(size, PILImage.Resampling.LANCZOS, reducing_gap=3.0)
    while True:
        data = b""
        for quality in _JPEG_QUALITIES:
            data = save_jpeg(image, quality)
            if max_bytes is None or len(data) <= max_bytes:
                return data
        assert max_bytes is not None
        image = _shrunk(image, max_bytes, len(data))


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_STANDALONE:
            i += 2
        elif marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


# Formats that are refused, named so an error says what was sent; recognised by signature, never opened.
_OTHER_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
)


def sniff_format(data: bytes) -> str:
    """The format ``data`` starts like ("PNG", "JPEG", "GIF", "WEBP", ...), or "unrecognised content"."""
    header = image_header(data)
    if header is not None:
        return header[0]
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _OTHER_SIGNATURES if data.startswith(magic)), "unrecognised content")


def image_header(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` read from the first bytes of a PNG or JPEG, without Pillow; None for others.

    Enough of a file's start will do (a PNG's first 24 bytes; a JPEG up to its frame header).
    """
    if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 24:
        return "PNG", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(b"\xff\xd8"):
        size = _jpeg_size(data)
        return None if size is None else ("JPEG", *size)
    return None


def open_image(data: bytes, *, field: str = "image_url") -> Image.Image:
    """Opens PNG or JPEG bytes lazily (nothing decoded yet), refusing anything else and anything too large.

    Raises ``InvalidInputError`` naming ``field`` for more than ``IMAGE_MAX_PIXELS``, checked from the header
    before Pillow sees the data and again from what Pillow read, and ``MediaError`` for any other content.
    """
    from PIL import Image as PILImage

    header = image_header(data)
    if header is None:
        raise MediaError(
            f"The content is not a PNG or JPEG image ({sniff_format(data)}).", hint="Send a PNG or JPEG file."
        )
    limits.check_image_pixels(header[1], header[2], field=field)
    try:
        image = PILImage.open(io.BytesIO(data), formats=list(limits.IMAGE_FORMATS))
    except (OSError, EOFError, ValueError, SyntaxError, PILImage.DecompressionBombError) as exc:
        raise MediaError(f"The image could not be read: {reason(exc)}.", hint="Send a PNG or JPEG file.") from exc
    try:
        limits.check_image_pixels(image.width, image.height, field=field)
    except InvalidInputError:
        image.close()
        raise
    return image


def image_info(data: bytes, *, field: str = "image_url") -> ImageInfo:
    """Format (by content, not name: "JPEG", "PNG", "GIF", "WEBP", ...) and size of an image.

    Decodes the whole image so that truncated or corrupt files are caught here rather than by the gateway;
    JPEGs are decoded at 1/8 scale, which still reads every byte. Only PNG and JPEG are opened (``open_image``).
    """
    from PIL import Image as PILImage

    if not data:
        raise MediaError("The image is empty (0 bytes).", hint="Send a PNG or JPEG file.")
    try:
        with open_image(data, field=field) as image:
            fmt = image.format or "unknown"
            width, height = image.size
            if fmt == "JPEG":
                image.draft(image.mode, (1, 1))
            image.load()
    except (OSError, EOFError, ValueError, SyntaxError, PILImage.DecompressionBombError) as exc:
        raise MediaError(
            f"The image could not be decoded: {reason(exc)}.",
            hint="Send a complete PNG or JPEG file.",
        ) from exc
    return ImageInfo(format=fmt, width=width, height=height, size_bytes=len(data))
