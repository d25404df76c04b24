"""The standalone program's flags (shared with the main CLI through add_arguments/run) and its exit codes."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kling_mcp import limits
from kling_mcp.sandbox import Faults, SandboxConfig
from kling_mcp.sandbox.standalone import DEFAULT_PORT, add_arguments, config_from_args

ROOT = Path(__file__).parents[1]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_without_flags_the_config_is_the_library_default_on_the_documented_port() -> None:
    args = parse()

    assert (args.host, args.port) == ("127.0.0.1", DEFAULT_PORT)
    assert config_from_args(args) == SandboxConfig(clock=SandboxConfig().clock)


def test_flags_reach_the_config_and_the_faults() -> None:
    args = parse(
        "--time-scale=100",
        "--render-size=320x180",
        "--fps=8",
        "--seed=4",
        "--rate-5xx=0.1",
        "--rate-429=0.2",
        "--retry-after-s=3",
        "--rate-challenge=0.3",
        "--rate-failed=0.4",
        "--rate-error=0.5",
        "--rate-slow=0.6",
        "--slow-s=2",
        "--rate-media-404=0.7",
        "--rate-submit-lost=0.8",
        "--status-style=in_queue",
        "--media-url-as-string",
        "--key=sk_a=10",
        "--key=sk_b",
        "--default-balance=99",
        "--no-charge-failed",
        "--max-concurrent-renders=2",
        "--webhook-attempts=5",
        "--public-base-url=http://sandbox.local",
        "--media-dir=/srv/sandbox/media",
        "--jobs-dir=/srv/sandbox/jobs",
    )

    config = config_from_args(args)

    assert config.faults == Faults(
        seed=4,
        rate_5xx=0.1,
        rate_429=0.2,
        retry_after_s=3,
        rate_challenge=0.3,
        rate_failed=0.4,
        rate_error=0.5,
        rate_slow=0.6,
        slow_s=2,
        rate_media_404=0.7,
        rate_submit_lost=0.8,
        status_style="in_queue",
        media_url_as_string=True,
    )
    assert (config.time_scale, config.render_size, config.fps) == (100, (320, 180), 8)
    assert config.keys == {"sk_a": 10, "sk_b": 99}
    assert not config.charge_failed
    assert (config.max_concurrent_renders, config.webhook_attempts) == (2, 5)
    assert config.public_base_url == "http://sandbox.local"
    assert (config.media_dir, config.jobs_dir) == (Path("/srv/sandbox/media"), Path("/srv/sandbox/jobs"))


def test_render_size_keeps_the_requested_aspect_for_every_ratio() -> None:
    config = config_from_args(parse("--render-size=320x180"))

    assert [config.size_for(a) for a in limits.ASPECT_RATIOS] == [(320, 180), (180, 320), (180, 180)]
    assert config_from_args(parse()).size_for("9:16") == limits.SANDBOX_SIZES["9:16"]


@pytest.mark.parametrize("flag", ["--render-size=321x180", "--render-size=big", "--key==5", "--key=a=lots"])
def test_malformed_flags_are_usage_errors(flag: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(flag)

    assert exit_info.value.code == 2


def test_an_impossible_fault_rate_exits_2_with_the_reason_on_stderr_and_nothing_on_stdout() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kling_mcp.sandbox", "--port=0", "--rate-5xx=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert "rate_5xx" in result.stderr
    assert result.stdout == ""


def test_a_busy_port_exits_1_with_the_reason_on_stderr() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "kling_mcp.sandbox", f"--port={port}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert result.stdout == ""
