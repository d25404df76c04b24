"""The sandbox gateway as a program. ``add_arguments`` and ``run`` are shared by ``python -m kling_mcp.sandbox``
and the main CLI, so both take the same flags.

Everything goes to stderr: stdout may be an MCP stdio channel when the CLI embeds this.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path
from typing import get_args

import anyio

from kling_mcp.config import SANDBOX_KEY
from kling_mcp.render_size import MIN_SIDE, is_render_size
from kling_mcp.sandbox.app import KEY_HEADER
from kling_mcp.sandbox.server import serve_sandbox
from kling_mcp.sandbox.settings import Faults, SandboxConfig, StatusStyle

__all__ = ["add_arguments", "config_from_args", "run"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
_DEFAULTS = SandboxConfig()
_FAULT_DEFAULTS = Faults()
_FAULT_HELP = {
    "rate_5xx": "probability of a 5xx answer on submit and status routes (nothing is created)",
    "rate_429": "probability of a 429 with Retry-After on submit and status routes",
    "retry_after_s": "seconds announced by 429 answers",
    "rate_challenge": "probability of an HTML 403 bot-challenge page on status polls",
    "rate_failed": "probability that a job ends FAILED",
    "rate_error": "probability that a job ends ERROR (refunded)",
    "rate_slow": "probability that an answer is delayed by --slow-s",
    "slow_s": "real seconds of delay for slow answers",
    "rate_media_404": "probability that a media download answers 404 as if expired",
    "rate_submit_lost": "probability that a submit creates and charges the job but answers 504",
}


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 320x180") from None
    if not is_render_size(w, h):
        raise argparse.ArgumentTypeError(f"{text!r}: sides must be even and at least {MIN_SIDE}")
    return w, h


def _key(text: str) -> tuple[str, float | None]:
    key, sep, amount = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError("a key must not be empty")
    if not sep:
        return key, None
    try:
        return key, float(amount)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the balance after '=' must be seconds of video") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the sandbox gateway's flags to ``parser``."""
    _network_arguments(parser)
    _simulation_arguments(parser)
    _account_arguments(parser)
    _fault_arguments(parser)
    parser.add_argument(
        "--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="stderr log level"
    )


def _network_arguments(parser: argparse.ArgumentParser) -> None:
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    net.add_argument("--port", type=int, default=DEFAULT_PORT, help="port; 0 picks a free one (default: %(default)s)")
    net.add_argument("--public-base-url", help="absolute base for polling and media URLs (default: the request's)")
    net.add_argument(
        "--allow-private-image-urls",
        action="store_true",
        help="fetch image_url from private and loopback addresses too (default: public addresses only, like Pixazo)",
    )


def _simulation_arguments(parser: argparse.ArgumentParser) -> None:
    sim = parser.add_argument_group("simulation")
    sim.add_argument(
        "--time-scale",
        type=float,
        default=_DEFAULTS.time_scale,
        help="speed-up against real gateway timing; 1 = real (default: %(default)s)",
    )
    sim.add_argument(
        "--jitter", type=float, default=_DEFAULTS.jitter, help="relative timing jitter (default: %(default)s)"
    )
    sim.add_argument("--render-size", type=_size, help="16:9 frame size WxH, e.g. 320x180 (default: 720p tier)")
    sim.add_argument("--fps", type=int, default=_DEFAULTS.fps, help="frames per second (default: %(default)s)")
    sim.add_argument("--media-dir", type=Path, help="where rendered MP4s go (default: a temporary directory)")
    sim.add_argument(
        "--jobs-dir",
        type=Path,
        help="keep a record of every job here, so a gateway started again on it knows them (default: memory only)",
    )
    sim.add_argument("--max-concurrent-renders", type=int, default=_DEFAULTS.max_concurrent_renders)
    sim.add_argument("--webhook-attempts", type=int, default=_DEFAULTS.webhook_attempts)


def _account_arguments(parser: argparse.ArgumentParser) -> None:
    acct = parser.add_argument_group("keys and balance")
    acct.add_argument(
        "--key",
        dest="keys",
        action="append",
        type=_key,
        metavar="KEY[=SECONDS]",
        help="accept only these keys (repeatable), each with a balance in seconds of video; default: any key",
    )
    acct.add_argument(
        "--default-balance",
        type=float,
        default=_DEFAULTS.default_balance_s,
        help="balance of keys given without one, in seconds of video",
    )
    acct.add_argument("--no-charge-failed", action="store_true", help="refund FAILED jobs (default: charged)")


def _fault_arguments(parser: argparse.ArgumentParser) -> None:
    faults = parser.add_argument_group("fault injection")
    faults.add_argument("--seed", type=int, help="seed for every random fault and the timing jitter")
    for f in fields(Faults):
        if f.name in _FAULT_HELP:
            default = getattr(_FAULT_DEFAULTS, f.name)
            faults.add_argument(
                "--" + f.name.replace("_", "-"),
                type=float,
                default=default,
                help=f"{_FAULT_HELP[f.name]} (default: {default:g})",
            )
    faults.add_argument(
        "--status-style",
        choices=get_args(StatusStyle),
        default=_FAULT_DEFAULTS.status_style,
        help="QUEUED/PROCESSING (upper), lower case, or IN_QUEUE/IN_PROGRESS (default: %(default)s)",
    )
    faults.add_argument("--media-url-as-string", action="store_true", help="output.media_url as a string, not a list")


# Flags whose destination is the SandboxConfig field of the same name.
_SAME_NAMED = (
    "time_scale",
    "jitter",
    "render_size",
    "fps",
    "media_dir",
    "jobs_dir",
    "public_base_url",
    "allow_private_image_urls",
    "max_concurrent_renders",
    "webhook_attempts",
)


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """Raises ``ValueError`` for values the dataclasses refuse."""
    faults = Faults(
        seed=args.seed,
        status_style=args.status_style,
        media_url_as_string=args.media_url_as_string,
        **{name: getattr(args, name) for name in _FAULT_HELP},
    )
    keys: dict[str, float] | None = None
    if args.keys:
        keys = {key: args.default_balance if amount is None else amount for key, amount in args.keys}
    return SandboxConfig(
        **{name: getattr(args, name) for name in _SAME_NAMED},
        keys=keys,
        default_balance_s=args.default_balance,
        charge_failed=not args.no_charge_failed,
        faults=faults,
    )


def _ready_line(base_url: str, config: SandboxConfig) -> str:
    if config.keys:
        keys = "send one of these keys: " + ", ".join(config.keys)
    else:
        keys = f"any non-empty key works, e.g. {SANDBOX_KEY}"
    return (
        f"kling-mcp sandbox gateway listening on {base_url} "
        f"({KEY_HEADER}: {keys}; time scale {config.time_scale:g}x; Ctrl-C stops it)\n"
    )


async def _serve(config: SandboxConfig, host: str, port: int) -> None:
    with contextlib.ExitStack() as stack:
        signals: AsyncIterator[int] | None
        try:
            # Listening from the start: a SIGTERM during startup still gets a clean shutdown.
            signals = stack.enter_context(anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM))
        except NotImplementedError:  # Windows: Ctrl-C arrives as KeyboardInterrupt instead
            signals = None
        async with serve_sandbox(config, host, port) as running:
            sys.stderr.write(_ready_line(running.base_url, config))
            sys.stderr.flush()
            if signals is None:
                await anyio.sleep_forever()
            else:
                async for signum in signals:
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    break


def run(args: argparse.Namespace) -> int:
    """Serves until SIGINT or SIGTERM; returns the process exit code."""
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
        sys.stderr.write(f"sandbox gateway: {exc}\n")
        return 2
    try:
        anyio.run(_serve, config, args.host, args.port)
    except OSError as exc:
        sys.stderr.write(f"sandbox gateway: cannot listen on {args.host}:{args.port}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        pass  # a second Ctrl-C during shutdown
    return 0
