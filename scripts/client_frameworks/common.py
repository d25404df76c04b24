"""What every framework check shares: the sandbox server, the scripted calls, the expectations and the report.

Standard library only: it runs inside each framework's own virtual environment. The server is the project's
``python -m kling_mcp`` from ``KLING_SERVER_PYTHON`` (a venv with the project installed), in sandbox mode with a
fresh state and output folder per check, so no key is needed and nothing is charged.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

SERVER_PYTHON = os.environ.get("KLING_SERVER_PYTHON") or sys.executable
TOOL_NAMES = (
    "generate_video",
    "animate_image",
    "storyboard",
    "extend_video",
    "concat_videos",
    "check_status",
    "list_jobs",
)
# The bounds on a finished result as the model sees it (issue 11, "Done when").
MAX_RESULT_TEXT = 2500
MAX_IMAGES = 1
MAX_IMAGE_BYTES = int(os.environ.get("KLING_MCP_PREVIEW_MAX_BYTES") or 24000)

FAST_SCALE = "2000"  # a 3 s sandbox clip finishes in well under a second
# Each call's prompt differs per framework and transport, so the server's de-duplication never hands one check
# another's job.
GENERATE_ARGS = {"prompt": "A red fox trots through fresh snow at dawn", "duration": 3, "aspect_ratio": "16:9"}
# Two 10 s shots pass every schema limit but break the 15 s total, which only the server can check.
INVALID_STORYBOARD_ARGS = {
    "shots": [{"prompt": "A lighthouse at dusk", "duration": 10}, {"prompt": "Its beam sweeps the fog", "duration": 10}]
}
UNKNOWN_ID = "no-such-job-0000"
CHECK_UNKNOWN_ARGS = {"request_id": UNKNOWN_ID}


def args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", choices=("stdio", "http"), required=True)
    return parser.parse_args()


def generate_args(tag: str, **extra: Any) -> dict[str, Any]:
    return {**GENERATE_ARGS, "prompt": f"{GENERATE_ARGS['prompt']} ({tag})", **extra}


class Report:
    """Collects named expectations; ``finish()`` prints them and a ``RESULT {json}`` line, and exits 1 on a failure."""

    def __init__(self, framework: str, transport: str) -> None:
        self.framework, self.transport = framework, transport
        self.items: list[tuple[str, bool, str]] = []
        self.t0 = time.monotonic()

    def ok(self, name: str, detail: str = "") -> None:
        self.items.append((name, True, detail))
        say(f"  PASS {name}: {detail}")

    def fail(self, name: str, reason: str) -> None:
        self.items.append((name, False, reason))
        say(f"  FAIL {name}: {reason}")

    def expect(self, name: str, good: bool, detail: str, reason: str) -> bool:
        if good:
            self.ok(name, detail)
        else:
            self.fail(name, reason)
        return good

    def crash(self, name: str, exc: BaseException) -> None:
        self.fail(name, f"{type(exc).__name__}: {one_line(exc)}")

    def finish(self) -> None:
        failed = [f"{name}: {why}" for name, good, why in self.items if not good]
        notes = [f"{name}: {why}" for name, good, why in self.items if good and name.startswith("note")]
        summary = {
            "framework": self.framework,
            "transport": self.transport,
            "result": "FAIL" if failed or not self.items else "PASS",
            "seconds": round(time.monotonic() - self.t0, 1),
            "failed": failed,
            "notes": notes,
            "passed": [name for name, good, _ in self.items if good],
        }
        say("RESULT " + json.dumps(summary))
        sys.exit(1 if summary["result"] == "FAIL" else 0)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def one_line(exc: BaseException | str, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_error(exc: BaseException) -> BaseException:
    """The innermost non-group exception: task groups wrap the real error."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


# --- the server -----------------------------------------------------------------------------------------------


def server_env(root: Path, time_scale: str = FAST_SCALE, **settings: str) -> dict[str, str]:
    """Sandbox settings; ``PIXAZO_*`` left out so the built-in sandbox gateway runs. ``settings``: what the README's
    client notes tell a framework's users to set."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT")}
    env.update(
        KLING_MCP_MODE="sandbox",
        KLING_MCP_SANDBOX_TIME_SCALE=time_scale,
        KLING_MCP_SANDBOX_RENDER_SIZE="320x180",
        KLING_MCP_SANDBOX_FPS="8",
        KLING_MCP_STATE_DIR=str(root / "state"),
        KLING_MCP_OUTPUT_DIR=str(root / "videos"),
    )
    env.update(settings)
    return env


def stdio_command() -> tuple[str, list[str]]:
    return SERVER_PYTHON, ["-m", "kling_mcp"]


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    keep = os.environ.get("KEEP_WORK") == "1"
    path = Path(tempfile.mkdtemp(prefix="kling-cf-"))
    try:
        yield path
    finally:
        if not keep:
            subprocess.run(["rm", "-rf", str(path)], check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def http_server(root: Path, time_scale: str = FAST_SCALE, **settings: str) -> Iterator[str]:
    """``kling-mcp serve --transport http`` on a free loopback port; yields its /mcp URL."""
    port = _free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = (root / "http-server.log").open("wb")
    cmd = [SERVER_PYTHON, "-m", "kling_mcp", "serve", "--transport", "http", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=server_env(root, time_scale, **settings), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"HTTP server did not listen on {port}: {(root / 'http-server.log').read_text()[-800:]}")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --- what the model saw ---------------------------------------------------------------------------------------


def _image_bytes(data: str) -> int:
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        return len(base64.b64decode(data, validate=False))
    except ValueError:
        return len(data)


def _parts_view(parts: Any) -> tuple[str, list[int], list[str]]:
    """(text, image sizes, other part types) of a content value in any of the three wire formats."""
    if isinstance(parts, str):
        return parts, [], []
    if isinstance(parts, dict):
        parts = [parts]
    text, images, other = [], [], []
    for part in parts or []:
        if isinstance(part, str):
            text.append(part)
            continue
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text") or (kind is None and "text" in part):
            text.append(str(part.get("text", "")))
        elif kind in ("image_url", "input_image", "image"):
            url = part.get("image_url")
            url = url.get("url", "") if isinstance(url, dict) else (url or part.get("data") or "")
            images.append(_image_bytes(str(url)))
        elif "inlineData" in part or "inline_data" in part:
            blob = part.get("inlineData") or part.get("inline_data") or {}
            images.append(_image_bytes(str(blob.get("data", ""))))
        else:
            other.append(str(kind or sorted(part)))
            text.append(json.dumps(part))
    return "".join(text), images, other


class Seen:
    """One tool result as the fake model received it."""

    def __init__(self, text: str, images: list[int], other: list[str], where: int) -> None:
        self.text, self.images, self.other, self.request_index = text, images, other, where

    def describe(self) -> str:
        imgs = ", ".join(f"{b} B" for b in self.images) or "none"
        extra = f"; other parts {self.other}" if self.other else ""
        return f"{len(self.text)} chars of text, images: {imgs}{extra}"

    def within_limits(self) -> str | None:
        """None when the issue's size bounds hold, else the reason."""
        if len(self.text) > MAX_RESULT_TEXT:
            return f"{len(self.text)} chars of text > {MAX_RESULT_TEXT}"
        if len(self.images) > MAX_IMAGES:
            return f"{len(self.images)} images > {MAX_IMAGES}"
        if big := [b for b in self.images if b > MAX_IMAGE_BYTES]:
            return f"image of {big[0]} B > {MAX_IMAGE_BYTES}"
        return None


def seen_tool_result(requests: list[dict[str, Any]], n: int) -> Seen | None:
    """The n-th (0-based) tool result in the first request that carries it, or None if no request did."""
    for index, rec in enumerate(requests):
        body = rec["body"]
        found = _nth_result(rec["path"], body, n)
        if found is not None:
            return Seen(*_parts_view(found), where=index)
    return None


def _nth_result(path: str, body: dict[str, Any], n: int) -> Any:
    results: list[Any] = []
    if path.endswith("/chat/completions"):
        msgs = body.get("messages", [])
        for i, m in enumerate(msgs):
            if m.get("role") == "tool":
                content = m.get("content")
                # Some adapters put a tool result's images in a user message right after it.
                if i + 1 < len(msgs) and msgs[i + 1].get("role") == "user" and isinstance(msgs[i + 1]["content"], list):
                    content = [*([content] if isinstance(content, str) else content or []), *msgs[i + 1]["content"]]
                results.append(content)
    elif path.endswith("/responses"):
        items = body.get("input")
        results = [
            i.get("output")
            for i in (items if isinstance(items, list) else [])
            if i.get("type") == "function_call_output"
        ]
    else:
        for content in body.get("contents", []):
            for part in content.get("parts", []):
                fr = part.get("functionResponse") or part.get("function_response")
                if fr is not None:
                    inner = fr.get("parts") or []
                    results.append([{"type": "text", "text": json.dumps(fr.get("response"))}, *inner])
    return results[n] if n < len(results) else None


# --- the expectations, shared so every framework is judged alike ---------------------------------------------

REPR_MARKS = re.compile(r"AnyUrl\(|TextContent\(|ImageContent\(|ResourceLink\(|EmbeddedResource\(|meta=None")
GENERIC_ERRORS = ("An error occurred while running the tool", "Please try again")


def judge_generate(
    report: Report, seen: Seen | None, label: str = "b generate_video", error: BaseException | None = None
) -> None:
    if seen is None:
        why = f"; the run raised {type(error).__name__}: {one_line(error)}" if error else ""
        report.fail(label, "the model never received a request carrying the generate_video tool result" + why)
        return
    problems = []
    if ".mp4" not in seen.text:
        problems.append(f"result text names no finished video: {seen.text[:300]!r}")
    if REPR_MARKS.search(seen.text):
        problems.append(f"Python reprs reach the model: {REPR_MARKS.search(seen.text).group(0)!r}…")
    if any(g in seen.text for g in GENERIC_ERRORS):
        problems.append(f"the model got the framework's generic error: {seen.text[:200]!r}")
    if limit := seen.within_limits():
        problems.append(limit)
    detail = f"follow-up request #{seen.request_index + 1} carries it; {seen.describe()}"
    report.expect(label, not problems, detail, "; ".join(problems) + f" ({seen.describe()})")


def judge_readable(
    report: Report, seen: Seen | None, label: str, needles: tuple[str, ...], error: BaseException | None = None
) -> None:
    """An error result must reach the model as a sentence naming the problem, not a crash, repr or generic text."""
    if seen is None:
        why = f": the run raised {type(error).__name__}: {one_line(error)}" if error else " (the run stopped)"
        report.fail(label, "the model never received a request carrying this tool result" + why)
        return
    text = seen.text
    problems = []
    if not any(n.lower() in text.lower() for n in needles):
        problems.append(f"text names none of {needles}: {text[:300]!r}")
    if REPR_MARKS.search(text):
        problems.append(f"Python reprs reach the model: {text[:200]!r}")
    if any(g in text for g in GENERIC_ERRORS):
        problems.append(f"only the framework's generic error reaches the model: {text[:200]!r}")
    if "must be shot" in text:
        problems.append(f"the error text is not a sentence: {text[:300]!r}")
    report.expect(label, not problems, f"{text[:160]!r}", "; ".join(problems))


STORYBOARD_NEEDLES = ("15 s", "15s", "at most 15", "total")
UNKNOWN_NEEDLES = (UNKNOWN_ID, "unknown", "not found", "no job")


def mcp_content_view(blocks: list[dict[str, Any]], where: int = 0) -> Seen:
    """A raw MCP content list (for clients without a model): text blocks, image blocks, other block types."""
    text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
    images = [_image_bytes(str(b.get("data", ""))) for b in blocks if b.get("type") == "image"]
    other = [str(b.get("type")) for b in blocks if b.get("type") not in ("text", "image")]
    return Seen(text, images, other, where)


# The invalid storyboard and the unknown check_status, in that order: what (c) feeds a framework's model script.
ERROR_SCRIPT: list[tuple[str, dict[str, Any]]] = [
    ("storyboard", INVALID_STORYBOARD_ARGS),
    ("check_status", CHECK_UNKNOWN_ARGS),
]


def judge_error_script(report: Report, requests: list[dict[str, Any]], error: BaseException | None) -> None:
    """(c) for a run of ERROR_SCRIPT: both errors reached the model as readable sentences."""
    judge_readable(report, seen_tool_result(requests, 0), "c invalid storyboard", STORYBOARD_NEEDLES, error)
    judge_readable(report, seen_tool_result(requests, 1), "c unknown check_status", UNKNOWN_NEEDLES, error)


def main(framework: str, run: Callable[[Report, Path], Awaitable[None]]) -> None:
    """A check script's entry point: ``--transport``, a work folder, ``run``, then the report (exit 1 on a failure)."""
    import asyncio

    report = Report(framework, args().transport)
    with workdir() as root:
        try:
            asyncio.run(run(report, root))
        except Exception as exc:
            report.crash("session", first_error(exc))
    report.finish()
