"""Serving over HTTP: bearer tokens, DNS-rebinding protection, and the plain routes beside ``/mcp``."""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import urlsplit

from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kling_mcp import __version__
from kling_mcp.config import WEBHOOK_PATH, Settings, token_owners
from kling_mcp.server.state import AppState, StateRef

WEBHOOK_MAX_BYTES = 64 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class StaticTokenVerifier:
    """Bearer tokens from KLING_MCP_AUTH_TOKEN, compared in constant time; a token stands for its owner's name."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        pairs = token_owners(entries)
        self._owners = tuple(owner for owner, _ in pairs)
        self._tokens = tuple(token.encode() for _, token in pairs)

    async def verify_token(self, token: str) -> AccessToken | None:
        given = token.encode()
        # Compare against every token, so the time taken does not tell which one nearly matched.
        matched = [hmac.compare_digest(given, known) for known in self._tokens]
        if not any(matched):
            return None
        owner = self._owners[matched.index(True)]
        return AccessToken(token="redacted", client_id=owner, subject=owner, scopes=[])


def auth_options(settings: Settings) -> dict[str, Any]:
    """MCPServer's auth arguments: none, or bearer tokens (static ones, then the issuer's JWTs) checked by the SDK."""
    verifiers: list[TokenVerifier] = [StaticTokenVerifier(settings.auth_tokens)] if settings.auth_tokens else []
    if not settings.oauth_issuer:
        if not verifiers:
            return {}
        # Static tokens come from no authorization server, so none is published: without resource_server_url the
        # SDK serves no protected-resource metadata and its 401s name none. It still insists on an issuer_url,
        # which it only uses in that metadata and in the routes of a full authorization server (not set up here).
        return {
            "token_verifier": verifiers[0],
            "auth": AuthSettings(issuer_url="http://127.0.0.1", resource_server_url=None),
        }
    # Loaded only with an issuer: PyJWT and cryptography would be most of the server's start.
    from kling_mcp.server.oauth import FirstMatch, jwt_verifier, resource_url

    verifiers.append(jwt_verifier(settings))
    # RFC 9728 metadata at /.well-known/oauth-protected-resource/mcp sends clients to the issuer for tokens.
    auth = AuthSettings(
        issuer_url=settings.oauth_issuer,
        resource_server_url=resource_url(settings),
        validate_token_resource=False,  # JwtVerifier checks the audience itself
    )
    return {"token_verifier": verifiers[0] if len(verifiers) == 1 else FirstMatch(verifiers), "auth": auth}


def http_security(settings: Settings, host: str) -> TransportSecuritySettings:
    """DNS-rebinding protection, always on: loopback, the bound host, the public URL's host, and what is configured."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    if host not in (*LOOPBACK_HOSTS, "0.0.0.0", "::"):
        names.append(f"[{host}]" if ":" in host else host)
    public_host = urlsplit(settings.public_url).hostname if settings.public_url else None
    if public_host:
        names.append(public_host)
    hosts = [f"{name}:*" for name in names] + names + list(settings.allowed_hosts)
    origins = [f"{scheme}://{name}{port}" for name in names for scheme in ("http", "https") for port in ("", ":*")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=origins + list(settings.allowed_origins),
    )


async def _read_capped(request: Request, cap: int) -> bytes | None:
    """The body, or None once it is longer than ``cap`` (whatever Content-Length claimed)."""
    length = request.headers.get("content-length")
    if length is not None and (not (length.isascii() and length.isdigit()) or int(length) > cap):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            return None
    return body


def register_routes(server: MCPServer[AppState], state_ref: StateRef, settings: Settings) -> None:
    """Plain HTTP routes beside /mcp (streamable HTTP only). They are outside bearer auth on purpose.

    The webhook route exists only while webhooks are on (KLING_MCP_PUBLIC_URL): otherwise its path is as unknown
    as any other, and a leaked old URL reaches nothing.
    """

    @server.custom_route("/healthz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def healthz(request: Request) -> Response:
        if state_ref.current is not None:
            state_ref.current.startup.want()
        ok = state_ref.current is not None and state_ref.current.startup.ready
        return JSONResponse({"ok": ok, "version": __version__})

    if settings.public_url:
        _register_webhook(server, state_ref)


def _register_webhook(server: MCPServer[AppState], state_ref: StateRef) -> None:
    @server.custom_route(WEBHOOK_PATH + "{token}", methods=["POST"])  # type: ignore[untyped-decorator]
    async def webhook(request: Request) -> Response:
        state = state_ref.current
        if state is not None:
            state.startup.want()
        if state is None or not state.startup.ready:
            return JSONResponse({"error": "starting"}, status_code=503)
        body = await _read_capped(request, WEBHOOK_MAX_BYTES)
        if body is None:
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        if not isinstance(data, dict):
            return JSONResponse({"error": "body is not a JSON object"}, status_code=400)
        # The body only rings the job's doorbell: the engine polls the gateway and applies that answer.
        code, reason = await (await state.runtime()).engine.on_webhook(request.path_params["token"], data)
        return JSONResponse({"ok": code < 300, "detail": reason}, status_code=code)
