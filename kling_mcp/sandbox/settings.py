"""The sandbox gateway's knobs: how fast it runs, what it renders, and which failures it injects."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, get_args

from kling_mcp import limits
from kling_mcp.config import GatewayPaths
from kling_mcp.render_size import MIN_SIDE, is_render_size

__all__ = ["Faults", "SandboxConfig", "StatusStyle"]

StatusStyle = Literal["upper", "lower", "in_queue"]
STATUS_STYLES: tuple[StatusStyle, ...] = get_args(StatusStyle)


@dataclass
class Faults:
    """Failure injection. Mutable on purpose: tests and ``POST /_sandbox/faults`` change it while jobs run.

    Every ``rate_*`` is a probability drawn from one RNG seeded with ``seed``, so a seeded run injects the
    same faults in the same order.
    """

    seed: int | None = None
    rate_5xx: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float = 1.0
    rate_challenge: float = 0.0
    rate_failed: float = 0.0
    rate_error: float = 0.0
    rate_slow: float = 0.0
    slow_s: float = 0.0
    rate_media_404: float = 0.0
    rate_submit_lost: float = 0.0
    status_style: StatusStyle = "upper"
    media_url_as_string: bool = False

    def __post_init__(self) -> None:
        self.merge({})

    def merge(self, changes: Mapping[str, object]) -> None:
        """Applies ``changes`` all or nothing; raises ``ValueError`` naming the first bad field."""
        known = {f.name for f in fields(self)}
        merged = {name: getattr(self, name) for name in known}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(known))}")
            merged[name] = value
        for name, value in merged.items():
            _check_fault(name, value)
        for name, value in merged.items():
            # ints are accepted where floats are expected; store floats so the JSON view is stable
            if name not in ("seed", "status_style", "media_url_as_string"):
                value = float(value)
            setattr(self, name, value)

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_fault(name: str, value: object) -> None:
    if name == "seed":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"seed must be an integer or null, got {value!r}")
        return
    if name == "status_style":
        if value not in STATUS_STYLES:
            raise ValueError(f"status_style must be one of {', '.join(STATUS_STYLES)}, got {value!r}")
        return
    if name == "media_url_as_string":
        if not isinstance(value, bool):
            raise ValueError(f"media_url_as_string must be true or false, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if name.startswith("rate_") and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} is a probability from 0 to 1, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")


@dataclass
class SandboxConfig:
    """How the sandbox gateway behaves. The defaults give a usable offline mode; tests tighten them.

    ``render_size`` is the 16:9 frame; the other aspect ratios use the same long and short sides
    (so (320, 180) renders 9:16 as 180x320 and 1:1 as 180x180). ``jobs_dir`` keeps a record of every job, so a
    gateway started later on the same folder answers for them (None: jobs live as long as the gateway).
    ``clock`` is the gateway's own time; ``wall_clock`` (Unix seconds) dates jobs and carries their age from one
    process to another.
    """

    time_scale: float = 20.0
    jitter: float = 0.15
    render_size: tuple[int, int] | None = None
    fps: int = limits.SANDBOX_FPS
    media_dir: Path | None = None
    jobs_dir: Path | None = None
    public_base_url: str | None = None
    keys: dict[str, float] | None = None
    default_balance_s: float = 1e9
    charge_failed: bool = True
    faults: Faults = field(default_factory=Faults)
    max_concurrent_renders: int = 1
    webhook_attempts: int = 3
    webhook_backoff_s: float = 0.2
    webhook_timeout_s: float = 5.0
    image_fetch_timeout_s: float = 10.0
    # fetch image_url from private and loopback addresses too (tests serving images locally); off, like the real one
    allow_private_image_urls: bool = False
    paths: GatewayPaths = field(default_factory=GatewayPaths)
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"time_scale must be a positive number, got {self.time_scale!r}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        if self.render_size is not None:
            w, h = self.render_size
            if not is_render_size(w, h):
                raise ValueError(f"render_size must be even sides of at least {MIN_SIDE} px, got {w}x{h}")
        if self.fps < 1:
            raise ValueError(f"fps must be at least 1, got {self.fps}")
        if self.max_concurrent_renders < 1:
            raise ValueError("max_concurrent_renders must be at least 1")
        if self.webhook_attempts < 1:
            raise ValueError("webhook_attempts must be at least 1")
        if self.keys is not None and any(not key for key in self.keys):
            raise ValueError("keys must be non-empty strings")

    def size_for(self, aspect_ratio: limits.AspectRatio) -> tuple[int, int]:
        if self.render_size is None:
            return limits.SANDBOX_SIZES[aspect_ratio]
        long_side, short_side = max(self.render_size), min(self.render_size)
        if aspect_ratio == "16:9":
            return long_side, short_side
        if aspect_ratio == "9:16":
            return short_side, long_side
        return short_side, short_side
