"""Settings: the one place the environment is read.

Every knob is an environment variable (what MCP client configs can set) with a safe default. ``Settings.from_env``
turns a bad value into a ``ConfigurationError`` that names the variable.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit

from kling_mcp.errors import ConfigurationError
from kling_mcp.models import LOCAL_OWNER, Mode
from kling_mcp.render_size import is_render_size

ModeSetting = Literal["auto", Mode]  # auto: live with an API key, sandbox without
MODE_SETTINGS: Final[tuple[str, ...]] = get_args(ModeSetting)
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

DEFAULT_BASE_URL = "https://gateway.pixazo.ai"
DEFAULT_MEDIA_ORIGINS = ("https://*.pixazo.ai",)
SANDBOX_KEY = "sk_sandbox_local"
WEBHOOK_PATH = "/webhooks/pixazo/"  # under KLING_MCP_PUBLIC_URL, followed by a per-job token

# Paths of the gateway's per-model submit routes; Pixazo has renamed such paths before, so they are settings.
T2V_API_ID = "kling-video-v3-turbo-pro-text-to-video"
I2V_API_ID = "kling-video-v3-turbo-pro-image-to-video"
DEFAULT_T2V_PATH = f"/{T2V_API_ID}/v1/{T2V_API_ID}-request"
DEFAULT_I2V_PATH = f"/{I2V_API_ID}/v1/{I2V_API_ID}-request"
DEFAULT_STATUS_PATH = "/v2/requests/status/{request_id}"


# --- parsers: (variable, its value, the field's default) -> the setting ------------------------------------------

Parser = Callable[[str, str, Any], object]


def _text(name: str, raw: str, default: object) -> str:
    return raw


def _status_path(name: str, raw: str, default: object) -> str:
    # Formatted per poll with the request id: any other placeholder, or none, would fail or poll one URL for all.
    try:
        fields_ = {field_name for _, field_name, _, _ in string.Formatter().parse(raw) if field_name is not None}
    except ValueError:  # an unmatched brace
        fields_ = set()
    if fields_ != {"request_id"} or not raw.startswith("/"):
        raise ConfigurationError(
            f"{name}={raw!r} must be a path starting with / that contains {{request_id}} and no other placeholder.",
            hint=f"Use e.g. {default}.",
        )
    return raw


def _url(name: str, raw: str, default: object) -> str | None:
    return raw.rstrip("/") or None


def _to_number(name: str, raw: str, default: object, minimum: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number.", hint=f"Unset it to use {default}.") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigurationError(f"{name}={raw!r} must be a number of at least {minimum}.")
    return value


def _number(minimum: float) -> Parser:
    def parse(name: str, raw: str, default: object) -> float:
        return _to_number(name, raw, default, minimum)

    return parse


def _whole(minimum: int) -> Parser:
    def parse(name: str, raw: str, default: object) -> int:
        # The advice for an optional count (default None) names 0, which is what a blank value would have meant.
        return int(_to_number(name, raw, 0 if default is None else default, minimum))

    return parse


def _count_or_none(name: str, raw: str, default: object) -> int | None:
    """A count where 0 means none."""
    return int(_to_number(name, raw, 0, 0)) or None


def _flag(name: str, raw: str, default: object) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a boolean.", hint="Use 1 or 0.")


def _choice(options: tuple[str, ...], *, upper: bool = False) -> Parser:
    def parse(name: str, raw: str, default: object) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in options:
            raise ConfigurationError(f"{name}={raw!r} must be one of: {', '.join(options)}.")
        return value

    return parse


def _items(name: str, raw: str, default: object) -> tuple[str, ...]:
    """A comma-separated list."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def secure_url(url: str) -> bool:
    """An https URL, or plain http to this machine only: what signing keys may be fetched from."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    return bool(parts.hostname) and (parts.scheme == "https" or (parts.scheme == "http" and loopback))


def _issuer(name: str, raw: str, default: object) -> str:
    # Kept exactly as given (a trailing slash too): issuers are compared as strings with the tokens' `iss`.
    if not secure_url(raw) or "?" in raw or "#" in raw:
        raise ConfigurationError(
            f"{name}={raw!r} must be an https:// URL with no query or fragment (http:// only on loopback).",
            hint="Use the issuer your authorization server names in its tokens' iss claim.",
        )
    return raw


def _database_url(name: str, raw: str, default: object) -> str:
    if not re.match(r"postgres(ql)?://", raw):
        # Only a URL scheme is repeated: anything else of the value may be (or hold) the password.
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", raw)
        got = f"a value starting {scheme.group(1)!r}" if scheme else "a value that is not a URL"
        raise ConfigurationError(
            f"{name} must be a postgresql:// URL; got {got}.",
            hint="Use e.g. postgresql://kling@db.internal:5432/kling, or unset it for the local SQLite ledger.",
        )
    return raw


def _replica_id(name: str, raw: str, default: object) -> str:
    if not _OWNER_NAME.fullmatch(raw.replace(":", "-")):
        raise ConfigurationError(
            f"{name} must be 1 to 100 letters, digits and . _ @ + - : characters; got {raw!r}.",
            hint="Use e.g. the host name, kling-1.",
        )
    return raw


def _path(name: str, raw: str, default: object) -> Path:
    return Path(raw).expanduser()


def _folders(name: str, raw: str, default: object) -> tuple[Path, ...]:
    """Absolute folders, separated by the platform's path separator (as in PATH) or by commas."""
    folders = tuple(Path(part.strip()).expanduser() for part in re.split(f"[,{re.escape(os.pathsep)}]", raw))
    relative = [str(folder) for folder in folders if str(folder) != "." and not folder.is_absolute()]
    if relative:
        raise ConfigurationError(f"{name} must list absolute folders; {relative[0]!r} is not.", hint="Use full paths.")
    return tuple(folder for folder in folders if str(folder) != ".")


def _size(name: str, raw: str, default: object) -> tuple[int, int]:
    return _parse_size(raw)


def _env(variable: str, parse: Parser) -> dict[str, Any]:
    """A field's metadata: the environment variable that sets it, and how its text becomes the value."""
    return {"env": variable, "parse": parse}


def _from_env(cls: type[Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The fields of ``cls`` that ``env`` sets; a field whose variable is unset or blank keeps its default."""
    values: dict[str, Any] = {}
    for spec in fields(cls):
        if "env" not in spec.metadata:
            continue
        raw = env.get(spec.metadata["env"], "").strip()
        if raw:
            values[spec.name] = spec.metadata["parse"](spec.metadata["env"], raw, spec.default)
    return values


# --- the settings -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayPaths:
    text_to_video: str = field(default=DEFAULT_T2V_PATH, metadata=_env("PIXAZO_T2V_PATH", _text))
    image_to_video: str = field(default=DEFAULT_I2V_PATH, metadata=_env("PIXAZO_I2V_PATH", _text))
    status: str = field(default=DEFAULT_STATUS_PATH, metadata=_env("PIXAZO_STATUS_PATH", _status_path))


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
    mode: ModeSetting = field(default="auto", metadata=_env("KLING_MCP_MODE", _choice(MODE_SETTINGS)))
    api_key: str | None = field(default=None, repr=False, metadata=_env("PIXAZO_API_KEY", _text))
    # None: the real gateway when live, the built-in sandbox otherwise
    base_url: str | None = field(default=None, metadata=_env("PIXAZO_BASE_URL", _url))
    paths: GatewayPaths = field(default_factory=GatewayPaths)  # read from its own fields' variables
    poll_interval: float = field(default=5.0, metadata=_env("KLING_MCP_POLL_INTERVAL", _number(0.05)))
    # How long a tool waits when the call names no wait_seconds, and the most any call waits: a model may ask for
    # up to the schema's limit, so a value above it (for clients with long timeouts) only lengthens the default.
    max_wait: float = field(default=45.0, metadata=_env("KLING_MCP_MAX_WAIT", _number(0.0)))
    request_timeout: float = field(default=30.0, metadata=_env("KLING_MCP_REQUEST_TIMEOUT", _number(0.1)))
    state_dir: Path | None = field(default=None, metadata=_env("KLING_MCP_STATE_DIR", _path))
    # a PostgreSQL ledger shared by several replicas; None: the SQLite file in the state folder
    database_url: str | None = field(default=None, repr=False, metadata=_env("KLING_MCP_DATABASE_URL", _database_url))
    # seconds a replica's hold on a job lasts without renewal; after that another replica takes the job over
    lease_seconds: float = field(default=15.0, metadata=_env("KLING_MCP_LEASE_SECONDS", _number(0.2)))
    # this replica's name in the ledger's leases; None: host name, process id and a per-core suffix (unnamed_replica)
    replica_id: str | None = field(default=None, metadata=_env("KLING_MCP_REPLICA_ID", _replica_id))
    output_dir: Path | None = field(default=None, metadata=_env("KLING_MCP_OUTPUT_DIR", _path))
    download: bool = field(default=True, metadata=_env("KLING_MCP_DOWNLOAD", _flag))
    dedupe_seconds: float = field(default=600.0, metadata=_env("KLING_MCP_DEDUPE_SECONDS", _number(0.0)))
    error_retries: int = field(default=2, metadata=_env("KLING_MCP_ERROR_RETRIES", _whole(0)))
    max_active_jobs: int = field(default=8, metadata=_env("KLING_MCP_MAX_ACTIVE_JOBS", _whole(1)))
    # seconds of video per UTC day, per owner; None: unlimited
    daily_seconds: int | None = field(default=None, metadata=_env("KLING_MCP_DAILY_SECONDS", _whole(0)))
    # seconds of video per UTC day for the whole server, all owners together; None (or 0): unlimited
    total_daily_seconds: int | None = field(
        default=None, metadata=_env("KLING_MCP_TOTAL_DAILY_SECONDS", _count_or_none)
    )
    # days after which a finished job's prompts and image references are kept only as hashes; 0: kept for good
    retention_days: float = field(default=30.0, metadata=_env("KLING_MCP_RETENTION_DAYS", _number(0.0)))
    confirm_above_seconds: int | None = field(default=None, metadata=_env("KLING_MCP_CONFIRM_ABOVE_SECONDS", _whole(0)))
    # let downloads and image checks reach private addresses (sandbox, tests)
    allow_private_urls: bool = field(default=False, metadata=_env("KLING_MCP_ALLOW_PRIVATE_URLS", _flag))
    auth_tokens: tuple[str, ...] = field(default=(), repr=False, metadata=_env("KLING_MCP_AUTH_TOKEN", _items))
    # an OAuth 2.1 / OpenID Connect issuer whose signed JWT access tokens are accepted besides the static tokens
    oauth_issuer: str | None = field(default=None, metadata=_env("KLING_MCP_OAUTH_ISSUER", _issuer))
    # the `aud` those tokens must carry; None: this server's MCP URL
    oauth_audience: str | None = field(default=None, metadata=_env("KLING_MCP_OAUTH_AUDIENCE", _text))
    # folders whose images HTTP clients may name by local path; over stdio every local path works
    image_roots: tuple[Path, ...] = field(default=(), metadata=_env("KLING_MCP_IMAGE_ROOTS", _folders))
    # where the gateway can reach this server: turns webhooks on
    public_url: str | None = field(default=None, metadata=_env("KLING_MCP_PUBLIC_URL", _url))
    webhook_poll_interval: float = field(default=60.0, metadata=_env("KLING_MCP_WEBHOOK_POLL_INTERVAL", _number(0.05)))
    allowed_hosts: tuple[str, ...] = field(default=(), metadata=_env("KLING_MCP_ALLOWED_HOSTS", _items))
    allowed_origins: tuple[str, ...] = field(default=(), metadata=_env("KLING_MCP_ALLOWED_ORIGINS", _items))
    # origins the player (MCP App) may load live-mode media from: the gateway's CDN is undocumented, so its domain
    media_origins: tuple[str, ...] = field(
        default=DEFAULT_MEDIA_ORIGINS, metadata=_env("KLING_MCP_MEDIA_ORIGINS", _items)
    )
    # signs the player's short-lived media URLs; unset: a random key per process (set one shared by all replicas)
    media_secret: str | None = field(default=None, repr=False, metadata=_env("KLING_MCP_MEDIA_SECRET", _text))
    sandbox_time_scale: float = field(default=20.0, metadata=_env("KLING_MCP_SANDBOX_TIME_SCALE", _number(0.001)))
    sandbox_render_size: tuple[int, int] | None = field(
        default=None, metadata=_env("KLING_MCP_SANDBOX_RENDER_SIZE", _size)
    )
    sandbox_fps: int | None = field(default=None, metadata=_env("KLING_MCP_SANDBOX_FPS", _count_or_none))
    # resource_link blocks in tool results; off by default because several client adapters reject or mangle them
    result_links: bool = field(default=False, metadata=_env("KLING_MCP_RESULT_LINKS", _flag))
    # the most bytes of the preview image a result carries inline; 0: no image
    preview_max_bytes: int = field(default=24_000, metadata=_env("KLING_MCP_PREVIEW_MAX_BYTES", _whole(0)))
    log_level: str = field(default="WARNING", metadata=_env("KLING_MCP_LOG_LEVEL", _choice(LOG_LEVELS, upper=True)))

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
        token_owners(self.auth_tokens)
        if self.oauth_issuer and not (self.public_url or _is_http_url(self.oauth_audience)):
            raise ConfigurationError(
                "KLING_MCP_OAUTH_ISSUER needs the URL clients reach this server at, to check tokens' audience and "
                "to publish it in the protected-resource metadata.",
                hint="Set KLING_MCP_PUBLIC_URL (the MCP endpoint is its /mcp), or KLING_MCP_OAUTH_AUDIENCE to the "
                "full MCP URL, e.g. https://video.example.com/mcp.",
            )
        return self

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return cls(**_from_env(cls, env), paths=GatewayPaths(**_from_env(GatewayPaths, env))).check()


# --- bearer tokens and their owners --------------------------------------------------------------------------

_OWNER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")


def token_owner_name(token: str) -> str:
    """The owner of a token given without a name: stable across restarts, and never the token itself."""
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:8]


def token_owners(entries: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """KLING_MCP_AUTH_TOKEN's entries as (owner, token) pairs; an entry is ``name=token`` or a bare token.

    An entry is named only when the text before its first ``=`` is a valid name and the rest does not start with
    ``=``: a base64 token ends in ``=`` padding, which must not make it a name.
    """
    pairs: list[tuple[str, str]] = []
    for entry in entries:
        name, sep, token = entry.partition("=")
        if sep and token and not token.startswith("=") and _OWNER_NAME.fullmatch(name):
            pairs.append((name, token))
        else:
            pairs.append((token_owner_name(entry), entry))
    owners = [owner for owner, _ in pairs]
    twice = sorted({owner for owner in owners if owners.count(owner) > 1})
    if twice:
        raise ConfigurationError(
            f"KLING_MCP_AUTH_TOKEN names the owner {twice[0]!r} more than once.",
            hint="Give each person their own name=token entry; a name is whose jobs a token sees.",
        )
    if LOCAL_OWNER in owners:
        raise ConfigurationError(
            f"KLING_MCP_AUTH_TOKEN may not name the owner {LOCAL_OWNER!r}: it is the local (stdio) user.",
            hint="Pick another name for that token.",
        )
    return tuple(pairs)


def _is_http_url(text: str | None) -> bool:
    return text is not None and urlsplit(text).scheme in ("http", "https") and bool(urlsplit(text).hostname)


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
