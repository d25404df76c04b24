"""Settings from the environment: every variable reaches its field, a blank one keeps the default, a bad one is
refused with a message that names it."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import pytest

from kling_mcp.config import DEFAULT_T2V_PATH, GatewayPaths, Settings, token_owner_name, token_owners
from kling_mcp.errors import ConfigurationError

# A valid value for each variable, and the value the setting then holds.
READS = {
    "KLING_MCP_MODE": ("Sandbox", "mode", "sandbox"),
    "PIXAZO_API_KEY": (" sk_1 ", "api_key", "sk_1"),
    "PIXAZO_BASE_URL": ("http://gw.test//", "base_url", "http://gw.test"),
    "KLING_MCP_POLL_INTERVAL": ("0.05", "poll_interval", 0.05),
    "KLING_MCP_MAX_WAIT": ("0", "max_wait", 0.0),
    "KLING_MCP_REQUEST_TIMEOUT": ("1e1", "request_timeout", 10.0),
    "KLING_MCP_STATE_DIR": ("/tmp/s", "state_dir", Path("/tmp/s")),
    "KLING_MCP_OUTPUT_DIR": ("/tmp/o", "output_dir", Path("/tmp/o")),
    "KLING_MCP_DOWNLOAD": ("off", "download", False),
    "KLING_MCP_DEDUPE_SECONDS": ("0", "dedupe_seconds", 0.0),
    "KLING_MCP_ERROR_RETRIES": ("3.7", "error_retries", 3),
    "KLING_MCP_MAX_ACTIVE_JOBS": ("3", "max_active_jobs", 3),
    "KLING_MCP_DAILY_SECONDS": ("0", "daily_seconds", 0),
    "KLING_MCP_CONFIRM_ABOVE_SECONDS": ("10", "confirm_above_seconds", 10),
    "KLING_MCP_ALLOW_PRIVATE_URLS": ("YES", "allow_private_urls", True),
    "KLING_MCP_AUTH_TOKEN": (" a, b ,,", "auth_tokens", ("a", "b")),
    "KLING_MCP_OAUTH_ISSUER": ("https://id.test/", "oauth_issuer", "https://id.test/"),
    "KLING_MCP_OAUTH_AUDIENCE": ("api://video", "oauth_audience", "api://video"),
    "KLING_MCP_IMAGE_ROOTS": (
        f"/srv/a{os.pathsep}/srv/b, /srv/c,",
        "image_roots",
        (Path("/srv/a"), Path("/srv/b"), Path("/srv/c")),
    ),
    "KLING_MCP_PUBLIC_URL": ("https://me.test/", "public_url", "https://me.test"),
    "KLING_MCP_WEBHOOK_POLL_INTERVAL": ("5", "webhook_poll_interval", 5.0),
    "KLING_MCP_ALLOWED_HOSTS": ("h1,h2", "allowed_hosts", ("h1", "h2")),
    "KLING_MCP_MEDIA_ORIGINS": (
        "https://a.example, https://*.cdn.example",
        "media_origins",
        ("https://a.example", "https://*.cdn.example"),
    ),
    "KLING_MCP_MEDIA_SECRET": ("s3cret", "media_secret", "s3cret"),
    "KLING_MCP_ALLOWED_ORIGINS": ("https://o.test", "allowed_origins", ("https://o.test",)),
    "KLING_MCP_SANDBOX_TIME_SCALE": ("100", "sandbox_time_scale", 100.0),
    "KLING_MCP_SANDBOX_RENDER_SIZE": ("320X180", "sandbox_render_size", (320, 180)),
    "KLING_MCP_SANDBOX_FPS": ("12", "sandbox_fps", 12),
    "KLING_MCP_LOG_LEVEL": ("debug", "log_level", "DEBUG"),
    "KLING_MCP_RESULT_LINKS": ("on", "result_links", True),
    "KLING_MCP_PREVIEW_MAX_BYTES": ("0", "preview_max_bytes", 0),
    "KLING_MCP_TOTAL_DAILY_SECONDS": ("60", "total_daily_seconds", 60),
    "KLING_MCP_RETENTION_DAYS": ("0", "retention_days", 0.0),
    "KLING_MCP_DATABASE_URL": ("postgresql://k@db:5432/k", "database_url", "postgresql://k@db:5432/k"),
    "KLING_MCP_LEASE_SECONDS": ("2.5", "lease_seconds", 2.5),
    "KLING_MCP_REPLICA_ID": ("kling-1:a", "replica_id", "kling-1:a"),
}
# What a variable needs beside it to be a valid configuration.
ALONGSIDE = {"KLING_MCP_OAUTH_ISSUER": {"KLING_MCP_PUBLIC_URL": "https://me.test"}}


def test_every_setting_read_from_the_environment_is_checked_here() -> None:
    assert {f.metadata["env"] for f in fields(Settings) if "env" in f.metadata} == set(READS)


@pytest.mark.parametrize("name", sorted(READS))
def test_each_variable_sets_its_field(name: str) -> None:
    raw, field, value = READS[name]
    settings = Settings.from_env({**ALONGSIDE.get(name, {}), name: raw})
    assert getattr(settings, field) == value
    assert getattr(Settings(), field) != value
    assert Settings.from_env({name: "  "}) == Settings()


def test_the_gateway_paths_are_read_and_default_when_blank() -> None:
    settings = Settings.from_env(
        {"PIXAZO_T2V_PATH": "", "PIXAZO_I2V_PATH": "/i", "PIXAZO_STATUS_PATH": "/s/{request_id}"}
    )
    assert settings.paths == GatewayPaths(text_to_video=DEFAULT_T2V_PATH, image_to_video="/i", status="/s/{request_id}")


def test_a_zero_total_daily_budget_means_none() -> None:
    assert Settings.from_env({"KLING_MCP_TOTAL_DAILY_SECONDS": "0"}).total_daily_seconds is None


def test_a_zero_frame_rate_means_the_sandbox_default() -> None:
    assert Settings.from_env({"KLING_MCP_SANDBOX_FPS": "0"}).sandbox_fps is None


@pytest.mark.parametrize(
    ("env", "message", "hint"),
    [
        (
            {"KLING_MCP_POLL_INTERVAL": "soon"},
            "KLING_MCP_POLL_INTERVAL='soon' is not a number.",
            "Unset it to use 5.0.",
        ),
        ({"KLING_MCP_ERROR_RETRIES": "x"}, "KLING_MCP_ERROR_RETRIES='x' is not a number.", "Unset it to use 2."),
        ({"KLING_MCP_DAILY_SECONDS": "x"}, "KLING_MCP_DAILY_SECONDS='x' is not a number.", "Unset it to use 0."),
        ({"KLING_MCP_MAX_ACTIVE_JOBS": "0"}, "KLING_MCP_MAX_ACTIVE_JOBS='0' must be a number of at least 1.", None),
        ({"KLING_MCP_MAX_WAIT": "nan"}, "KLING_MCP_MAX_WAIT='nan' must be a number of at least 0.0.", None),
        ({"KLING_MCP_DOWNLOAD": "maybe"}, "KLING_MCP_DOWNLOAD='maybe' is not a boolean.", "Use 1 or 0."),
        ({"KLING_MCP_MODE": "prod"}, "KLING_MCP_MODE='prod' must be one of: auto, live, sandbox.", None),
        (
            {"KLING_MCP_LOG_LEVEL": "trace"},
            "KLING_MCP_LOG_LEVEL='trace' must be one of: DEBUG, INFO, WARNING, ERROR.",
            None,
        ),
        ({"KLING_MCP_MODE": "live"}, "KLING_MCP_MODE=live needs PIXAZO_API_KEY.", None),
        (
            {"KLING_MCP_AUTH_TOKEN": "ann=tok1,ann=tok2"},
            "KLING_MCP_AUTH_TOKEN names the owner 'ann' more than once.",
            None,
        ),
        (
            {"KLING_MCP_AUTH_TOKEN": "local=tok1"},
            "KLING_MCP_AUTH_TOKEN may not name the owner 'local': it is the local (stdio) user.",
            None,
        ),
        *(
            (
                {"KLING_MCP_OAUTH_ISSUER": issuer},
                f"KLING_MCP_OAUTH_ISSUER={issuer!r} must be an https:// URL with no query or fragment (http:// only "
                "on loopback).",
                "Use the issuer your authorization server names in its tokens' iss claim.",
            )
            for issuer in ("http://id.test", "id.test", "https://id.test/?x=1", "https://id.test/#a", "http://[::1")
        ),
        *(
            (
                {"KLING_MCP_OAUTH_ISSUER": "https://id.test", **alongside},
                "KLING_MCP_OAUTH_ISSUER needs the URL clients reach this server at, to check tokens' audience and to "
                "publish it in the protected-resource metadata.",
                "Set KLING_MCP_PUBLIC_URL (the MCP endpoint is its /mcp), or KLING_MCP_OAUTH_AUDIENCE to the full MCP "
                "URL, e.g. https://video.example.com/mcp.",
            )
            for alongside in ({}, {"KLING_MCP_OAUTH_AUDIENCE": "api://video"})
        ),
        (
            {"KLING_MCP_IMAGE_ROOTS": "/srv/ok,pictures"},
            "KLING_MCP_IMAGE_ROOTS must list absolute folders; 'pictures' is not.",
            "Use full paths.",
        ),
        *(
            (
                {"PIXAZO_STATUS_PATH": path},
                f"PIXAZO_STATUS_PATH={path!r} must be a path starting with / that contains {{request_id}} and no "
                "other placeholder.",
                "Use e.g. /v2/requests/status/{request_id}.",
            )
            for path in ("/status", "/status/{id}", "/s/{request_id}/{x}", "s/{request_id}", "/s/{request_id}{")
        ),
        (  # the message never repeats the URL, which may carry a password
            {"KLING_MCP_DATABASE_URL": "mysql://kling:secret@db/kling"},
            "KLING_MCP_DATABASE_URL must be a postgresql:// URL; got a value starting 'mysql'.",
            "Use e.g. postgresql://kling@db.internal:5432/kling, or unset it for the local SQLite ledger.",
        ),
        *(
            (  # not a URL at all (a libpq keyword string, a scheme-less URL): nothing of the value is repeated
                {"KLING_MCP_DATABASE_URL": raw},
                "KLING_MCP_DATABASE_URL must be a postgresql:// URL; got a value that is not a URL.",
                "Use e.g. postgresql://kling@db.internal:5432/kling, or unset it for the local SQLite ledger.",
            )
            for raw in ("host=db user=kling password=hunter2", "hunter2@db/kling", "p@ss:word@db")
        ),
        (
            {"KLING_MCP_REPLICA_ID": "kling one"},
            "KLING_MCP_REPLICA_ID must be 1 to 100 letters, digits and . _ @ + - : characters; got 'kling one'.",
            "Use e.g. the host name, kling-1.",
        ),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(env: dict[str, str], message: str, hint: str | None) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    assert caught.value.message == message
    if hint is not None:
        assert caught.value.hint == hint


def test_token_entries_name_their_owner_and_a_bare_token_gets_a_name_that_is_not_the_token() -> None:
    pairs = token_owners(("alice=s3cret", "bare-token", "dG9rZW4=", "YWI==", "bad name=x"))
    assert pairs[0] == ("alice", "s3cret")
    assert pairs[1] == (token_owner_name("bare-token"), "bare-token")
    assert pairs[1][0].startswith("token-")
    assert "bare-token" not in pairs[1][0]
    # base64 padding and text that is no name leave the entry a bare token
    assert [token for _, token in pairs[2:]] == ["dG9rZW4=", "YWI==", "bad name=x"]
    assert token_owners(("bare-token",)) == (pairs[1],)  # stable across restarts
