"""Command line: ``kling-mcp [serve]``, ``kling-mcp demo``, ``kling-mcp doctor``, ``kling-mcp sandbox-gateway``.

Heavy modules load inside the command that needs them, so ``kling-mcp`` starts fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kling_mcp import __version__
from kling_mcp.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse

    from kling_mcp.config import Settings
    from kling_mcp.server.app import KlingServer


def _parser(*, gateway_flags: bool = True) -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="kling-mcp",
        description="MCP server for Kling Video 3 Turbo Pro on the Pixazo gateway. Without PIXAZO_API_KEY it runs "
        "on a built-in sandbox gateway that renders placeholder videos offline.",
    )
    parser.add_argument("--version", action="version", version=f"kling-mcp {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve MCP (the default: stdio)")
    serve.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve HTTP on a non-loopback address without KLING_MCP_AUTH_TOKEN (anyone who reaches it can spend)",
    )
    serve.add_argument(
        "--replica-id",
        help="this replica's name in the shared ledger's leases (sets KLING_MCP_REPLICA_ID; default: host:pid plus a suffix of its own)",
    )
    sub.add_parser("demo", help="run the sandbox demo: a real MCP client drives the server over stdio")
    doctor = sub.add_parser(
        "doctor", help="check the configuration, API key, gateway routes, folders and media decoding (free)"
    )
    doctor.add_argument(
        "--generate", action="store_true", help="also make one 3 s clip and check it against the contract (billed)"
    )
    doctor.add_argument("--yes", "-y", action="store_true", help="with --generate: do not ask for confirmation")
    gateway = sub.add_parser("sandbox-gateway", help="run the sandbox gateway alone (the Pixazo HTTP contract)")
    if gateway_flags:  # they come with the whole sandbox, which the server itself starts off its critical path
        from kling_mcp.sandbox.standalone import add_arguments

        add_arguments(gateway)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # what desktop clients launch: stdio, nothing to parse (and no parser to build before answering)
        return _serve("stdio", "127.0.0.1", 8000)
    args = _parser(gateway_flags=bool(argv) and argv[0] == "sandbox-gateway").parse_args(argv)
    command = args.command or "serve"
    if command == "sandbox-gateway":
        from kling_mcp.sandbox.standalone import run

        return int(run(args))
    if command == "doctor":
        from kling_mcp.doctor import main as doctor

        return doctor(generate_clip=args.generate, yes=args.yes)
    if command == "demo":
        from kling_mcp.demo import run_demo

        return run_demo()
    if getattr(args, "replica_id", None):
        os.environ["KLING_MCP_REPLICA_ID"] = args.replica_id  # checked with the variable's own rule
    return _serve(
        getattr(args, "transport", "stdio"),
        getattr(args, "host", "127.0.0.1"),
        getattr(args, "port", 8000),
        insecure=getattr(args, "insecure_no_auth", False),
    )


def _serve(transport: str, host: str, port: int, *, insecure: bool = False) -> int:
    from kling_mcp.config import Settings
    from kling_mcp.server import LOOPBACK_HOSTS, build_server, freeze_heap, log_to_stderr

    try:
        settings = Settings.from_env(os.environ)
    except ConfigurationError as exc:
        sys.stderr.write(f"kling-mcp: {exc}\n")
        return 2
    log_to_stderr(settings.log_level)
    authenticated = settings.auth_tokens or settings.oauth_issuer
    if transport == "http" and host not in LOOPBACK_HOSTS and not authenticated and not insecure:
        sys.stderr.write(
            f"kling-mcp: refusing to serve HTTP on {host} without KLING_MCP_AUTH_TOKEN: anyone who can reach it "
            "could spend your credits. Set KLING_MCP_AUTH_TOKEN (or KLING_MCP_OAUTH_ISSUER), or pass "
            "--insecure-no-auth.\n"
        )
        return 2
    if transport == "http" and settings.database_url and not settings.media_secret:
        # Replicas share one URL: a media link one of them signed with its own random key fails on all the others.
        sys.stderr.write(
            "kling-mcp: refusing to serve HTTP on a shared ledger (KLING_MCP_DATABASE_URL) without "
            "KLING_MCP_MEDIA_SECRET: every replica must sign the player's media links with the same key. Set "
            "KLING_MCP_MEDIA_SECRET to the same random value on every replica, e.g. `openssl rand -hex 32`.\n"
        )
        return 2
    # The one place that knows who the callers are: over HTTP they are other people, not this machine's user.
    server = build_server(settings)
    freeze_heap()
    if transport == "http":
        _serve_http(server, settings, host, port)
    else:
        server.run()
    return 0


def _serve_http(server: KlingServer, settings: Settings, host: str, port: int) -> None:
    """What ``server.run("streamable-http")`` does, with uvicorn's logging sent through the redacting stderr log."""
    import anyio
    import uvicorn

    from kling_mcp.server import http_security, uvicorn_log_config

    app = server.streamable_http_app(
        streamable_http_path="/mcp", transport_security=http_security(settings, host), host=host
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        log_config=uvicorn_log_config(settings.log_level),
    )
    anyio.run(uvicorn.Server(config).serve)
