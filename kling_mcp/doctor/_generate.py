"""``kling-mcp doctor --generate``: one 3 s clip, every answer held against the contract (§4-§6).

Each disagreement is reported with the setting that fixes it, or says that none does.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

import anyio

from kling_mcp import limits
from kling_mcp.config import T2V_API_ID, GatewayPaths, Settings
from kling_mcp.doctor._gateway import Gateway, route_fix
from kling_mcp.doctor._report import Report
from kling_mcp.errors import BlockedURLError, DownloadError, GatewayError, MediaError, NotFoundError
from kling_mcp.files import safe_name
from kling_mcp.models import GenerationRequest
from kling_mcp.pixazo import GatewayStatus, Submission, normalize_status

_REQUEST_ID = re.compile(
    rf"^{re.escape(T2V_API_ID)}_[0-9a-f]{{8}}-[0-9a-f]{{4}}-7[0-9a-f]{{3}}-[89ab][0-9a-f]{{3}}-[0-9a-f]{{12}}$"
)
_DOCUMENTED_STATUSES = ("QUEUED", "PROCESSING", "COMPLETED", "FAILED", "ERROR")
_LIVE_SIZE_16_9 = (1920, 1080)  # docs/pixazo-contract.md §6
CLIP_S = limits.DURATION_MIN_S
_MISSES = 3  # 404s in a row for the request just submitted before the route is blamed
_PROMPT = "kling-mcp doctor test clip: a red ball rolls slowly across a wooden table, soft daylight"


async def confirm(settings: Settings, gateway: Gateway, out: TextIO, stdin: TextIO) -> bool:
    if settings.live:
        cost = f"It is billed: {CLIP_S} s of video, about ${CLIP_S * limits.PRICE_PER_SECOND_USD:.2f} at list price."
    else:
        cost = "This is the sandbox: nothing is charged."
    out.write(f"\nThis submits one {CLIP_S} s text-to-video clip to {gateway.base_url}. {cost}\nContinue? [y/N] ")
    out.flush()
    answer = await anyio.to_thread.run_sync(stdin.readline)
    if not stdin.isatty():  # a terminal echoes the answer and its newline; a pipe does not
        out.write(f"{answer.strip()}\n")
    return answer.strip().lower() in ("y", "yes")


def _pace(settings: Settings) -> tuple[float, float]:
    """(poll interval, how long to wait for the clip) in this process's seconds."""
    scale = 1.0 if settings.live else settings.sandbox_time_scale
    return max(0.05, settings.poll_interval / scale), max(60.0, 900.0 / scale)


async def generate(settings: Settings, gateway: Gateway, report: Report, folder: Path | None) -> None:
    request = GenerationRequest(
        endpoint="text_to_video", prompt=_PROMPT, duration=CLIP_S, aspect_ratio=limits.ASPECT_RATIO_DEFAULT
    )
    try:
        submission = await gateway.client.submit(request)
    except GatewayError as exc:
        taken = " The gateway may have created the job: check the Pixazo console before trying again." * exc.maybe_sent
        report.add("fail", "submit", f"{exc.message}{taken}", fix=exc.hint)
        return
    check_submit_answer(gateway, submission, report)
    interval, deadline = _pace(settings)
    final = await poll_until_done(gateway, submission, report, interval, deadline)
    if final is None:
        return
    url = check_output(gateway, final, report)
    if url is None:
        return
    with tempfile.TemporaryDirectory(prefix="kling-mcp-doctor-") as scratch:
        path = await download(gateway, url, folder or Path(scratch), submission.request_id, report)
        if path is not None:
            await check_video(path, settings, report)


def _status_fix(submission: Submission, gateway: Gateway) -> str:
    """``PIXAZO_STATUS_PATH`` as the gateway's own ``polling_url`` spells it, when it does."""
    path = urlsplit(submission.polling_url or "").path
    if submission.request_id in path:
        return f"PIXAZO_STATUS_PATH={path.replace(submission.request_id, '{request_id}')}"
    return route_fix("PIXAZO_STATUS_PATH", GatewayPaths().status)


def _spelling(raw: str) -> Literal["documented", "tolerated", "unknown"]:
    if raw in _DOCUMENTED_STATUSES:
        return "documented"
    if normalize_status(raw) != "processing" or raw.strip().lower() in ("processing", "in_progress"):
        return "tolerated"
    return "unknown"


def check_submit_answer(gateway: Gateway, submission: Submission, report: Report) -> None:
    seen = gateway.last("POST")
    data: Any = None
    if seen is not None and seen.body:
        data = _json(seen.body)
    data = data if isinstance(data, dict) else {}
    problems: list[str] = []
    if not isinstance(data.get("request_id"), str):
        problems.append("no request_id (the client read `id` instead)")
    elif not _REQUEST_ID.match(submission.request_id):
        problems.append(f"request_id {submission.request_id!r} is not {T2V_API_ID}_<UUIDv7> (it is opaque: fine)")
    raw_status = data.get("status")
    if raw_status is None:
        problems.append("no status (it counts as QUEUED)")
    elif _spelling(str(raw_status)) == "unknown":
        problems.append(f"status {raw_status!r} is not a known word (it counts as still running)")
    code = seen.status if seen is not None else "2xx"
    detail = f"HTTP {code}, request_id {submission.request_id}, status {raw_status!r}"
    report.add("warn" if problems else "ok", "submit answer", "; ".join([detail, *problems]))
    configured = gateway.client.status_url(submission.request_id)
    if submission.polling_url is None:
        report.add("warn", "polling_url", f"missing: polls go to the configured status route {configured}")
    elif urlsplit(submission.polling_url).path != urlsplit(configured).path:
        report.add(
            "warn",
            "polling_url",
            f"{urlsplit(submission.polling_url).path} differs from PIXAZO_STATUS_PATH's {urlsplit(configured).path}",
            fix=_status_fix(submission, gateway),
        )
    else:
        report.add("ok", "polling_url", "on the configured status route")


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return None


async def poll_until_done(
    gateway: Gateway, submission: Submission, report: Report, interval: float, deadline: float
) -> GatewayStatus | None:
    """Polls the configured status route the way the engine does; returns the COMPLETED status, else None."""
    started = time.monotonic()
    seen: list[str] = []
    polling_url: str | None = None  # the configured route first: that is what a PIXAZO_STATUS_PATH mistake breaks
    misses = 0
    status: GatewayStatus | None = None
    with anyio.move_on_after(deadline):
        while True:
            try:
                status = await gateway.client.status(submission.request_id, polling_url=polling_url)
            except NotFoundError as exc:
                misses += 1
                fallback = _fallback_url(gateway, submission) if polling_url is None else None
                if fallback is not None or misses >= _MISSES:
                    _report_miss(gateway, submission, report, exc, polling_url, fallback)
                    if fallback is None:
                        return None
                    polling_url, misses = fallback, 0
            except GatewayError as exc:
                report.add("fail", "status poll", exc.message, fix=exc.hint)
                return None
            else:
                if not seen or seen[-1] != status.raw_status:
                    seen.append(status.raw_status)
                    report.line(f"{time.monotonic() - started:6.1f} s  {status.raw_status or '(no status)'}")
                if _ended(status):
                    break
            await anyio.sleep(interval)
    return _judge_statuses(status, seen, submission, report, deadline)


def _fallback_url(gateway: Gateway, submission: Submission) -> str | None:
    """The gateway's ``polling_url`` when the server would poll it and it is not the configured route."""
    url = submission.polling_url
    configured = gateway.client.status_url(submission.request_id)
    if url is None or url == configured or gateway.client.status_url(submission.request_id, url) != url:
        return None
    return url


def _report_miss(
    gateway: Gateway,
    submission: Submission,
    report: Report,
    exc: NotFoundError,
    polling_url: str | None,
    fallback: str | None,
) -> None:
    if polling_url is not None:
        report.add("fail", "status poll", f"the gateway's own polling_url answered 404 {_MISSES} times in a row")
        return
    report.add(
        "fail",
        "status route",
        f"{gateway.paths.status} does not know the request just submitted ({exc.gateway_message})"
        + ("; polling the gateway's polling_url instead" if fallback else ""),
        fix=_status_fix(submission, gateway),
    )


def _ended(status: GatewayStatus) -> bool:
    # A COMPLETED without a URL parses as still processing; it is over all the same, and check_output says why.
    return status.status in ("completed", "failed", "error") or normalize_status(status.raw_status) == "completed"


def _judge_statuses(
    status: GatewayStatus | None, seen: list[str], submission: Submission, report: Report, deadline: float
) -> GatewayStatus | None:
    unknown = [s for s in seen if _spelling(s) == "unknown"]
    tolerated = [s for s in seen if _spelling(s) == "tolerated"]
    flow = " → ".join(s or "(none)" for s in seen)
    if unknown:
        report.add(
            "warn",
            "status values",
            f"{flow}: {', '.join(map(repr, unknown))} not in the contract's vocabulary (read as still running)",
            fix="none by setting: the vocabulary is code (normalize_status in kling_mcp/pixazo.py); report it",
        )
    elif seen:
        note = f" ({', '.join(tolerated)}: other spellings the client reads the same)" if tolerated else ""
        report.add("ok", "status values", flow + note)
    if status is None or not _ended(status):
        report.add(
            "fail",
            "outcome",
            f"not finished after {deadline:.0f} s; request {submission.request_id} goes on on the gateway",
            fix="run it again later; a slow queue needs no setting",
        )
        return None
    if status.status in ("failed", "error"):
        charged = "not charged, retrying is free" if status.status == "error" else "may be charged"
        report.add("fail", "outcome", f"{status.raw_status}: {status.error or 'no error text'} ({charged})")
        return None
    return status


def check_output(gateway: Gateway, status: GatewayStatus, report: Report) -> str | None:
    """``output.media_url`` against the contract (§5, §6); returns the URL to download."""
    output = status.raw.get("output")
    output = output if isinstance(output, Mapping) else {}
    name = next((k for k in ("media_url", "video_url", "url") if output.get(k)), None)
    if name is None or not status.media_urls:
        report.add(
            "fail",
            "media_url",
            f"{status.raw_status} without output.media_url (the server would keep polling)",
            fix="none by setting: report it with the status body",
        )
        return None
    url = status.media_urls[0]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        report.add("fail", "media_url", f"{url[:80]!r} is not an http(s) URL")
        return None
    notes = [] if name == "media_url" else [f"under output.{name}, a spelling the client tolerates"]
    if isinstance(output.get(name), str):
        notes.append("a string, not the list the contract shows (the client takes both)")
    if len(status.media_urls) > 1:
        notes.append(f"{len(status.media_urls)} URLs; the first is used")
    if output.get("media_type") not in (None, "video/mp4"):
        notes.append(f"media_type {output.get('media_type')!r}")
    where = "the gateway's host" if parts.netloc == urlsplit(gateway.base_url).netloc else "a media host"
    # No query string: signed CDN URLs carry credentials there.
    shown = f"{parts.scheme}://{parts.netloc}{parts.path} (on {where}, fetched without the key)"
    report.add("warn" if notes else "ok", "media_url", "; ".join([shown, *notes]))
    return url


async def download(gateway: Gateway, url: str, folder: Path, request_id: str, report: Report) -> Path | None:
    dest = folder / f"doctor-{safe_name(request_id)}.mp4"
    try:
        result = await gateway.client.download(url, dest)
    except BlockedURLError as exc:
        fix = "KLING_MCP_ALLOW_PRIVATE_URLS=1, only if the media host is meant to be on a private network"
        report.add("fail", "download", exc.message, fix=fix)
        return None
    except DownloadError as exc:
        report.add("fail", "download", exc.message, fix=exc.hint)
        return None
    seen = gateway.last("GET")
    ctype = seen.content_type.split(";")[0].strip() if seen is not None else ""
    detail = f"{result.size_bytes:,} bytes, {ctype or 'no content-type'}, saved as {dest}"
    if ctype != "video/mp4":
        report.add("warn", "download", f"{detail} (the contract says video/mp4; the probe below decides)")
    else:
        report.add("ok", "download", detail)
    return dest


async def check_video(path: Path, settings: Settings, report: Report) -> None:
    from kling_mcp.media import probe

    try:
        info = await anyio.to_thread.run_sync(probe, path)
    except MediaError as exc:
        report.add("fail", "MP4", f"not a playable video: {exc.message}")
        return
    detail = (
        f"{info.duration_s:.2f} s, {info.width}x{info.height}, {info.fps or 0:g} fps, {info.codec}, "
        f"{'with' if info.has_audio else 'no'} audio"
    )
    off: list[str] = []
    if abs(info.duration_s - CLIP_S) > 0.5:
        off.append(f"{CLIP_S} s was asked for")
    if settings.live and (info.width, info.height) != _LIVE_SIZE_16_9:
        off.append("the contract says 1920x1080 for 16:9 (post-processing reads the real size)")
    report.add("warn" if off else "ok", "MP4", "; ".join([detail, *off]))
