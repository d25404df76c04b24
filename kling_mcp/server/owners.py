"""Who is calling: the owner whose jobs a request may see, spend on and be told about.

Over HTTP with auth the owner is the authenticated principal (a static token's name, or a JWT's ``sub``); without
an access token (stdio, or HTTP without auth on loopback) it is the local user. The transport binds a legacy
session to the credential that opened it, so a session's owner never changes.
"""

from __future__ import annotations

from typing import Any

from mcp.server import ServerRequestContext
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context

from kling_mcp.models import LOCAL_OWNER

__all__ = ["LOCAL_OWNER", "owner_of", "owner_of_token"]


def owner_of_token(token: AccessToken | None) -> str:
    """The owner a verified access token stands for; the local user when there is none."""
    if token is None:
        return LOCAL_OWNER
    return token.subject or token.client_id


def _request_token(ctx: Context[Any] | ServerRequestContext[Any, Any] | None) -> AccessToken | None:
    """The token of the HTTP request this message came in, when the transport attached the request."""
    if ctx is None:
        return None
    try:
        request_ctx = ctx.request_context if isinstance(ctx, Context) else ctx
    except ValueError:  # a Context outside a request
        return None
    scope = getattr(request_ctx.request, "scope", None)
    user = scope.get("user") if isinstance(scope, dict) else None
    return user.access_token if isinstance(user, AuthenticatedUser) else None


def owner_of(ctx: Context[Any] | ServerRequestContext[Any, Any] | None = None) -> str:
    """The caller's owner name. Handlers without a request context (completion, static resources) pass none."""
    return owner_of_token(_request_token(ctx) or get_access_token())
