"""The frame sizes the sandbox renderer accepts, checked in one place for the environment, flags and config."""

from __future__ import annotations

__all__ = ["MIN_SIDE", "is_render_size"]

MIN_SIDE = 16


def is_render_size(width: int, height: int) -> bool:
    """Even sides (yuv420p stores chroma at half size) of at least :data:`MIN_SIDE` pixels."""
    return width >= MIN_SIDE and height >= MIN_SIDE and not width % 2 and not height % 2
