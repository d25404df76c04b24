"""Settings: the one place the environment is read.

Every knob is an environment variable (what MCP client configs can set) with a safe default. ``Settings.from_env``
turns a bad value into a ``ConfigurationError`` that names the variable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from kling_mcp.errors import ConfigurationError
from kling_mcp.render_size import is_render_size

Mode = Literal["auto", "live", "sandbox"]

DEFAULT_BASE_URL = "https://gateway.pixazo.ai"
SANDBOX_KEY = "sk_sandbox_local"

# Paths of the gateway's per-model submit routes; Pixazo has renamed such paths before, so they are settings.
T2V_API_ID = "kling-video-v3-turbo-pro-text-to-video"
I2V_API_ID = "kling-video-v3-turbo-pro-image-to-video"
DEFAULT_T2V_PATH = f"/{T2V_API_ID}/v1/{T2V_API_ID}-request"
DEFAULT_I2V_PATH = f"/{I2V_API_ID}/v1/{I2V_API_ID}-request"
DEFAULT_STATUS_PATH = "/v2/requests/status/{request_id}"


@dataclass(frozen=True)
class GatewayPaths:
    text_to_video: str = DEFAULT_T2V_PATH
    image_to_video: str = DEFAULT_I2V_PATH
    status: str = DEFAULT_STATUS_PATH


def _default_state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir("kling-mcp", appauthor=False))


def _default_output_dir() -> Path:
    import platformdirs

    videos = Path(platformdirs.user_videos_dir())
    base = videos if videos.is_dir() else Path(platformdirs.user_data_dir(appauthor=False))
    return base / "kling-mcp"


@dataclass(frozen=True)
class Settings:
    mode: Mode = "auto"
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None  # None: the real gateway when live, the built-in sandbox otherwise
    paths: GatewayPaths = field(default_factory=GatewayPaths)
    poll_interval: float = 5.0
    max_wait: float = 45.0
    request_timeout: float = 30.0
    state_dir: Path | None = None
    output_dir: Path | None = None
    download: bool = True
    dedupe_seconds: float = 600.0
    error_retries: int = 2
    max_active_jobs: int = 8
    daily_seconds: int | None = None  # seconds of video per UTC day; None: unlimited
    confirm_above_seconds: int | None = None
    allow_private_urls: bool = False  # let downloads and image checks reach private addresses (sandbox, tests)
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    public_url: str | None = None  # where the gateway can reach this server: turns webhooks on
    webhook_poll_interval: float = 60.0
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    sandbox_time_scale: float = 20.0
    sandbox_render_size: tuple[int, int] | None = None
    sandbox_fps: int | None = None
    log_level: str = "WARNING"

    @property
    def live(self) -> bool:
        """True when requests go to a real gateway (and cost money)."""
        if self.mode == "auto":
            return self.api_key is not None
        return self.mode == "live"

    @property
    def gateway_url(self) -> str:
        return self.base_url or DEFAULT_BASE_URL

    @property
    def resolved_state_dir(self) -> Path:
        return self.state_dir or _default_state_dir()

    @property
    def resolved_output_dir(self) -> Path:
        return self.output_dir or _default_output_dir()

    def check(self) -> Settings:
        if self.mode == "live" and not self.api_key:
            raise ConfigurationError(
                "KLING_MCP_MODE=live needs PIXAZO_API_KEY.",
                hint="Set PIXAZO_API_KEY to your Pixazo key, or use KLING_MCP_MODE=sandbox to try it offline.",
            )
        return self

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        reader = _EnvReader(env)
        mode = reader.choice("KLING_MCP_MODE", ("auto", "live", "sandbox"), "auto")
        size = reader.get("KLING_MCP_SANDBOX_RENDER_SIZE")
        settings = cls(
            mode=mode,  # type: ignore[arg-type]
            api_key=reader.get("PIXAZO_API_KEY"),
            base_url=(reader.get("PIXAZO_BASE_URL") or "").rstrip("/") or None,
            paths=GatewayPaths(
                text_to_video=reader.get("PIXAZO_T2V_PATH") or DEFAULT_T2V_PATH,
                image_to_video=reader.get("PIXAZO_I2V_PATH") or DEFAULT_I2V_PATH,
                status=reader.get("PIXAZO_STATUS_PATH") or DEFAULT_STATUS_PATH,
            ),
            poll_interval=reader.number("KLING_MCP_POLL_INTERVAL", 5.0, minimum=0.05),
            max_wait=reader.number("KLING_MCP_MAX_WAIT", 45.0, minimum=0.0),
            request_timeout=reader.number("KLING_MCP_REQUEST_TIMEOUT", 30.0, minimum=0.1),
            state_dir=reader.path("KLING_MCP_STATE_DIR"),
            output_dir=reader.path("KLING_MCP_OUTPUT_DIR"),
            download=reader.flag("KLING_MCP_DOWNLOAD", True),
            dedupe_seconds=reader.number("KLING_MCP_DEDUPE_SECONDS", 600.0, minimum=0.0),
            error_retries=int(reader.number("KLING_MCP_ERROR_RETRIES", 2, minimum=0)),
            max_active_jobs=int(reader.number("KLING_MCP_MAX_ACTIVE_JOBS", 8, minimum=1)),
            daily_seconds=reader.optional_int("KLING_MCP_DAILY_SECONDS"),
            confirm_above_seconds=reader.optional_int("KLING_MCP_CONFIRM_ABOVE_SECONDS"),
            allow_private_urls=reader.flag("KLING_MCP_ALLOW_PRIVATE_URLS", False),
            auth_tokens=reader.items("KLING_MCP_AUTH_TOKEN"),
            public_url=(reader.get("KLING_MCP_PUBLIC_URL") or "").rstrip("/") or None,
            webhook_poll_interval=reader.number("KLING_MCP_WEBHOOK_POLL_INTERVAL", 60.0, minimum=0.05),
            allowed_hosts=reader.items("KLING_MCP_ALLOWED_HOSTS"),
            allowed_origins=reader.items("KLING_MCP_ALLOWED_ORIGINS"),
            sandbox_time_scale=reader.number("KLING_MCP_SANDBOX_TIME_SCALE", 20.0, minimum=0.001),
            sandbox_render_size=_parse_size(size) if size else None,
            sandbox_fps=int(reader.number("KLING_MCP_SANDBOX_FPS", 0, minimum=0)) or None,
            log_level=reader.choice(
                "KLING_MCP_LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "WARNING", upper=True
            ),
        )
        return settings.check()


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise ConfigurationError(
            f"KLING_MCP_SANDBOX_RENDER_SIZE={text!r} is not WIDTHxHEIGHT.", hint="Use e.g. 320x180."
        ) from None
    if not is_render_size(w, h):
        raise ConfigurationError(
            f"KLING_MCP_SANDBOX_RENDER_SIZE={text!r} must be even sides of at least 16 px.",
            hint="Use e.g. 320x180.",
        )
    return w, h


class _EnvReader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def number(self, name: str, default: float, *, minimum: float) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r} is not a number.", hint=f"Unset it to use {default}.") from None
        if not math.isfinite(value) or value < minimum:
            raise ConfigurationError(f"{name}={raw!r} must be a number of at least {minimum}.")
        return value

    def items(self, name: str) -> tuple[str, ...]:
        """A comma-separated list."""
        return tuple(part.strip() for part in (self.get(name) or "").split(",") if part.strip())

    def optional_int(self, name: str) -> int | None:
        if self.get(name) is None:
            return None
        return int(self.number(name, 0, minimum=0))

    def flag(self, name: str, default: bool) -> bool:
        raw = self.get(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigurationError(f"{name}={raw!r} is not a boolean.", hint="Use 1 or 0.")

    def choice(self, name: str, options: tuple[str, ...], default: str, *, upper: bool = False) -> str:
        raw = self.get(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in options:
            raise ConfigurationError(f"{name}={raw!r} must be one of: {', '.join(options)}.")
        return value

    def path(self, name: str) -> Path | None:
        raw = self.get(name)
        return Path(raw).expanduser() if raw else None
