"""Media toolkit for finished clips: probe, frames, posters, contact sheets, concatenation and image checks.

MCP-agnostic and synchronous: every function blocks (decoding a 1080p clip takes up to a second or two), so async
callers run them in worker threads. PyAV and Pillow are imported inside the functions, never at module import,
so that starting the server does not pay for loading FFmpeg.

Errors: media failures (unreadable, truncated or codec-less files, muxing failures) raise :class:`MediaError`;
bad arguments (empty lists, unsupported output suffixes) raise :class:`~kling_mcp.errors.InvalidInputError`.

One concern per module, all re-exported here:

- ``_probe``: what a clip's header says, and the stream helpers the others start from
- ``_frames``: last and first frames, posters, contact sheets
- ``_images``: PNG and JPEG encoding within budgets, image checks, and the only way images from outside are opened
- ``_concat``: joining clips, by packet copy when they match
- ``_reencode``: joining clips by re-encoding to one size, rate and audio format
- ``_common``: error translation and atomic output files
"""

from kling_mcp.errors import MediaError
from kling_mcp.media._concat import ConcatResult, can_stream_copy, concat
from kling_mcp.media._frames import contact_sheet, first_frame_image, last_frame, last_frame_image, poster
from kling_mcp.media._images import (
    ImageInfo,
    encode_jpeg,
    encode_png,
    image_header,
    image_info,
    open_image,
    sniff_format,
)
from kling_mcp.media._probe import VideoInfo, probe

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
    "image_header",
    "image_info",
    "last_frame",
    "last_frame_image",
    "open_image",
    "poster",
    "probe",
    "sniff_format",
]
