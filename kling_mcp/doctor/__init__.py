"""``kling-mcp doctor``: checks what a first live run depends on and names the setting that fixes what fails.

MCP-agnostic: it drives the core (``Settings``, ``PixazoClient``, the SSRF-guarded media client, the media toolkit)
the way the server does, and writes a report for a person to a terminal, never to a protocol stream.

Nothing costs money without ``--generate`` and a confirmation: the key is tried with a status poll for a made-up
request id, the submit routes with a body the contract says is refused before anything is charged
(docs/pixazo-contract.md §10, "What kling-mcp doctor sends"). ``--generate`` makes one 3 s clip and compares every
answer with the contract (§4-§6).

- ``_report``: the findings and the summary
- ``_local``: configuration, folders, media decoding
- ``_gateway``: reachability, key and routes, for free
- ``_generate``: the paid clip and its contract checks
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import anyio

from kling_mcp import __version__
from kling_mcp.config import Settings
from kling_mcp.doctor._gateway import MADE_UP_REQUEST_ID, Gateway, check_gateway, open_gateway
from kling_mcp.doctor._generate import confirm, generate
from kling_mcp.doctor._local import check_configuration, check_folders, check_media
from kling_mcp.doctor._report import Report
from kling_mcp.errors import ConfigurationError
from kling_mcp.pixazo import RetryPolicy

__all__ = ["MADE_UP_REQUEST_ID", "Report", "main", "run_doctor"]


async def run_doctor(
    settings: Settings,
    out: TextIO,
    stdin: TextIO,
    *,
    generate_clip: bool = False,
    yes: bool = False,
    retry: RetryPolicy | None = None,
) -> int:
    """Runs every check, writing the report to ``out``; 0 when nothing failed, else 1."""
    report = Report(out)
    out.write(f"kling-mcp {__version__} doctor\n")
    check_configuration(settings, report)
    folder = check_folders(settings, report)
    await check_media(report)
    try:
        async with open_gateway(settings, retry or RetryPolicy()) as gateway:
            ready = await check_gateway(gateway, report)
            if generate_clip:
                await _generate_step(settings, gateway, report, folder, ready, out, stdin, yes)
    except OSError as exc:  # the built-in sandbox could not start (its media folder is in the state folder)
        report.add("fail", "gateway", f"could not start the built-in sandbox ({exc})", fix="KLING_MCP_STATE_DIR")
    return report.finish()


async def _generate_step(
    settings: Settings,
    gateway: Gateway,
    report: Report,
    folder: Path | None,
    ready: bool,
    out: TextIO,
    stdin: TextIO,
    yes: bool,
) -> None:
    report.section("Generation (--generate)")
    if not ready:
        report.add("skip", "generation", "not attempted: fix the gateway problems above first")
    elif not yes and not await confirm(settings, gateway, out, stdin):
        report.add("skip", "generation", "not confirmed: nothing was submitted")
    else:
        await generate(settings, gateway, report, folder)


def main(*, generate_clip: bool = False, yes: bool = False, env: Mapping[str, str] | None = None) -> int:
    """``kling-mcp doctor``: the report goes to stdout (a terminal here, not a protocol stream)."""
    out = sys.stdout
    try:
        settings = Settings.from_env(os.environ if env is None else env)
    except ConfigurationError as exc:
        report = Report(out)
        report.section("Configuration")
        report.add("fail", "settings", exc.message, fix=exc.hint)
        return report.finish()
    return anyio.run(lambda: run_doctor(settings, out, sys.stdin, generate_clip=generate_clip, yes=yes))
