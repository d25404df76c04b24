"""The doctor's checks of this machine: the configuration, the state and output folders, media decoding."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import anyio

from kling_mcp.config import DEFAULT_BASE_URL, SANDBOX_KEY, GatewayPaths, Settings
from kling_mcp.doctor._report import Report, key_text
from kling_mcp.errors import MediaError
from kling_mcp.files import temp_path

_LOW_DISK_BYTES = 500 * 1024 * 1024


def check_configuration(settings: Settings, report: Report) -> None:
    report.section("Configuration")
    if settings.live:
        report.add("ok", "mode", f"live: requests go to the gateway and are billed (KLING_MCP_MODE={settings.mode})")
    else:
        why = "no PIXAZO_API_KEY" if settings.mode == "auto" else "KLING_MCP_MODE=sandbox"
        report.add("ok", "mode", f"sandbox ({why}): placeholder videos, nothing is charged")
    key = settings.api_key
    if key is None:
        report.add("ok", "PIXAZO_API_KEY", f"not set; the sandbox key {SANDBOX_KEY} is sent")
    elif key[0] in "\"'" or key[-1] in "\"'" or any(c.isspace() for c in key):
        report.add(
            "fail",
            "PIXAZO_API_KEY",
            f"{key_text(key)}, but it holds quotes or spaces, which the gateway takes as part of the key",
            fix="PIXAZO_API_KEY: paste the bare key, without quotes or spaces",
        )
    else:
        report.add("ok", "PIXAZO_API_KEY", key_text(key) + ("" if settings.live else " (unused in sandbox mode)"))
    _check_base_url(settings, report)
    defaults = GatewayPaths()
    for env, name in (("PIXAZO_T2V_PATH", "text_to_video"), ("PIXAZO_I2V_PATH", "image_to_video")):
        _show_path(report, env, getattr(settings.paths, name), getattr(defaults, name))
    _show_path(report, "PIXAZO_STATUS_PATH", settings.paths.status, defaults.status)
    report.line(f"state folder:  {settings.resolved_state_dir}")
    downloads = settings.resolved_output_dir if settings.download else "off (KLING_MCP_DOWNLOAD=0)"
    report.line(f"output folder: {downloads}")


def _show_path(report: Report, env: str, path: str, default: str) -> None:
    report.line(f"{env}: {path}" + (" (default)" if path == default else " (set)"))


def _check_base_url(settings: Settings, report: Report) -> None:
    if not settings.live and settings.base_url is None:
        report.add("ok", "gateway", "the built-in sandbox, started on 127.0.0.1 for these checks")
        return
    url = settings.gateway_url
    host = urlsplit(url).hostname or ""
    if settings.live and url.startswith("http://") and host not in ("127.0.0.1", "localhost", "::1"):
        report.add(
            "fail",
            "gateway",
            f"{url}: plain http, so the key would cross the network unencrypted",
            fix=f"PIXAZO_BASE_URL: use https, or unset it for {DEFAULT_BASE_URL}",
        )
        return
    report.add("ok", "gateway", url + (" (default)" if settings.base_url is None else " (PIXAZO_BASE_URL)"))


def _try_folder(path: Path) -> int:
    """Creates ``path`` if needed, writes and removes a file there; returns the free bytes."""
    path.mkdir(parents=True, exist_ok=True)
    probe = temp_path(path / "doctor-write-test")
    try:
        probe.write_bytes(b"kling-mcp doctor")
    finally:
        probe.unlink(missing_ok=True)
    return shutil.disk_usage(path).free


def check_folders(settings: Settings, report: Report) -> Path | None:
    """Checks the state and output folders; returns the output folder when videos can be saved there."""
    report.section("Folders")
    folders = [("state folder", "KLING_MCP_STATE_DIR", settings.resolved_state_dir)]
    if settings.download:
        folders.append(("output folder", "KLING_MCP_OUTPUT_DIR", settings.resolved_output_dir))
    else:
        report.add("skip", "output folder", "downloads are off (KLING_MCP_DOWNLOAD=0)")
    writable: Path | None = None
    for name, env, path in folders:
        try:
            free = _try_folder(path)
        except OSError as exc:
            report.add(
                "fail", name, f"{path} is not writable ({exc.strerror or exc})", fix=f"{env}=<a writable folder>"
            )
            continue
        low = free < _LOW_DISK_BYTES
        detail = f"{path} is writable, {free / 1e9:.1f} GB free" + (
            " (videos are about 3 MB per second)" if low else ""
        )
        report.add("warn" if low else "ok", name, detail)
        if env == "KLING_MCP_OUTPUT_DIR":
            writable = path
    return writable


def _decode_test_clip(folder: Path) -> str:
    import av
    import PIL

    from kling_mcp.media import last_frame_image, probe
    from kling_mcp.sandbox.render import render_placeholder

    path = folder / "doctor-test.mp4"
    frames = render_placeholder(path, [("kling-mcp doctor", 1.0)], size=(128, 72), fps=8)
    info = probe(path)
    image = last_frame_image(path)
    return (
        f"PyAV {av.__version__} and Pillow {PIL.__version__} made and decoded a {info.width}x{info.height} "
        f"{info.codec} clip of {info.duration_s:.1f} s ({frames} frames; last frame {image.width}x{image.height})"
    )


async def check_media(report: Report) -> None:
    report.section("Media decoding")
    try:
        with tempfile.TemporaryDirectory(prefix="kling-mcp-doctor-") as scratch:
            detail = await anyio.to_thread.run_sync(_decode_test_clip, Path(scratch))
    except ImportError as exc:
        report.add(
            "fail", "PyAV and Pillow", f"cannot be imported ({exc})", fix="reinstall them: pip install -U av pillow"
        )
    except (MediaError, OSError, ValueError) as exc:
        report.add(
            "fail", "test clip", f"could not be encoded or decoded ({exc})", fix="reinstall PyAV: pip install -U av"
        )
    else:
        report.add("ok", "test clip", detail)
