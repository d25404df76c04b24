"""The server's own log: stderr only, at KLING_MCP_LOG_LEVEL, with webhook tokens redacted from every line.

A webhook token is the only credential a webhook has, and uvicorn's access log (like any HTTP client's request log)
prints the request path, ``/webhooks/pixazo/<token>``. So every record that reaches the stderr handler, uvicorn's
included, passes ``RedactWebhookTokens`` first.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

from kling_mcp.config import WEBHOOK_PATH

REDACTED = "<redacted>"
_TOKEN_IN_PATH = re.compile(re.escape(WEBHOOK_PATH) + r"[^/?#\s\"'<>]+")


def redact(text: str) -> str:
    """``text`` with the token of every webhook path in it replaced by ``<redacted>``."""
    return _TOKEN_IN_PATH.sub(WEBHOOK_PATH + REDACTED, text) if WEBHOOK_PATH in text else text


def _redact_arg(arg: Any) -> Any:
    if arg is None or isinstance(arg, (bool, int, float)):
        return arg
    # Not only strings: an HTTP client logs URL objects, whose text holds the path.
    text = arg if isinstance(arg, str) else str(arg)
    redacted = redact(text)
    return arg if redacted == text else redacted


class RedactWebhookTokens(logging.Filter):
    """Rewrites a record's message and arguments in place, so formatters that read ``args`` (uvicorn's) see no
    token either."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: _redact_arg(value) for key, value in record.args.items()}
        return True


def log_to_stderr(level: str) -> None:
    """stdout carries the protocol in stdio mode, so every log line goes to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactWebhookTokens())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("kling_mcp").setLevel(level)


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging for ``serve --transport http``: its loggers keep no handlers of their own and pass their
    records to the stderr handler of ``log_to_stderr``, so the access log (on from INFO) is redacted like the rest."""
    loggers = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {name: {"level": level.upper(), "handlers": [], "propagate": True} for name in loggers},
    }
