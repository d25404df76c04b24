"""The player's media route over HTTP: a job's downloaded video, streamed to the owner's player by a signed URL.

A ``<video src>`` cannot send a bearer token, so the URL carries its authority: an HMAC over the job id, the owner
and an expiry, keyed by ``KLING_MCP_MEDIA_SECRET`` or a random per-process key. Playback then depends neither on
the upstream URL still being valid nor on the host letting the iframe reach the gateway's CDN. Every refusal reads
the same, so a URL tells nothing about jobs it does not name; Range requests (206) let the player seek.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from urllib.parse import quote, urlencode

from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from kling_mcp.config import Settings
from kling_mcp.errors import KlingError
from kling_mcp.server.state import AppState, StateRef

MEDIA_PATH = "/player/media/"
URL_TTL_S = 3600  # long enough to watch and seek a clip; the player asks for a fresh URL each time it opens a job


class MediaSigner:
    """Signs and checks the player's media URLs."""

    def __init__(self, secret: str | None, *, clock: Callable[[], float] = time.time) -> None:
        self._key = secret.encode() if secret else secrets.token_bytes(32)
        self._clock = clock

    def _mac(self, job_id: str, owner: str, expires: int) -> str:
        message = f"{job_id}\n{owner}\n{expires}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def url(self, base: str, job_id: str, owner: str) -> str:
        """The path (under ``base``, this server's origin) that streams ``job_id`` to ``owner`` for a while."""
        expires = int(self._clock()) + URL_TTL_S
        query = urlencode({"o": owner, "e": expires, "s": self._mac(job_id, owner, expires)})
        return f"{base}{MEDIA_PATH}{quote(job_id, safe='')}?{query}"

    def check(self, job_id: str, owner: str, expires: str, signature: str) -> bool:
        if not (expires.isascii() and expires.isdigit()) or int(expires) < self._clock():
            return False
        return hmac.compare_digest(self._mac(job_id, owner, int(expires)).encode(), signature.encode())


def register_media_route(server: MCPServer[AppState], state_ref: StateRef, signer: MediaSigner) -> None:
    @server.custom_route(MEDIA_PATH + "{job_id}", methods=["GET", "HEAD"])  # type: ignore[untyped-decorator]
    async def media(request: Request) -> Response:
        query = request.query_params
        job_id = request.path_params["job_id"]
        owner = query.get("o", "")
        if not signer.check(job_id, owner, query.get("e", ""), query.get("s", "")):
            return JSONResponse({"error": "this media link is not valid (expired or not yours)"}, status_code=403)
        try:
            from kling_mcp.previews import local_video

            runtime = await state_ref.runtime()
            path = local_video(await runtime.engine.get(job_id, owner=owner))
        except KlingError:
            return JSONResponse({"error": "not found"}, status_code=404)
        # Starlette's FileResponse answers Range requests with 206, so the player can seek.
        return FileResponse(path, media_type="video/mp4", headers={"Cache-Control": "private, max-age=300"})


def own_origin(settings: Settings, request: Request | None) -> str | None:
    """Where the caller reaches this server: the public URL, else the origin of the request being answered."""
    if settings.public_url:
        return settings.public_url
    if request is None:
        return None
    return f"{request.url.scheme}://{request.url.netloc}"
