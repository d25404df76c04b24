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
from pathlib import Path
from urllib.parse import quote, urlencode

from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from kling_mcp.config import Settings
from kling_mcp.errors import KlingError
from kling_mcp.files import safe_name
from kling_mcp.previews import FILMS_FOLDER, local_video
from kling_mcp.server.state import AppState, StateRef

MEDIA_PATH = "/player/media/"  # + a job's request id
FILMS_PATH = "/player/films/"  # + the file name of a film the player joined, in the output folder's films/
URL_TTL_S = 3600  # long enough to watch and seek a clip; the player asks for a fresh URL each time it opens a job
_REFUSED = {"error": "this media link is not valid (expired or not yours)"}


class MediaSigner:
    """Signs and checks the player's media URLs: what (a route and a name), for whom, until when."""

    def __init__(self, secret: str | None, *, clock: Callable[[], float] = time.time) -> None:
        self._key = secret.encode() if secret else secrets.token_bytes(32)
        self._clock = clock

    def _mac(self, route: str, name: str, owner: str, expires: int) -> str:
        message = f"{route}\n{name}\n{owner}\n{expires}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def url(self, base: str, name: str, owner: str, *, route: str = MEDIA_PATH) -> str:
        """The URL (under ``base``, this server's origin) that streams ``name`` to ``owner`` for a while."""
        expires = int(self._clock()) + URL_TTL_S
        query = urlencode({"o": owner, "e": expires, "s": self._mac(route, name, owner, expires)})
        return f"{base}{route}{quote(name, safe='')}?{query}"

    def check(self, name: str, owner: str, expires: str, signature: str, *, route: str = MEDIA_PATH) -> bool:
        if not (expires.isascii() and expires.isdigit()) or int(expires) < self._clock():
            return False
        return hmac.compare_digest(self._mac(route, name, owner, int(expires)).encode(), signature.encode())

    def allows(self, request: Request, route: str) -> str | None:
        """The owner a request's signature stands for, if it is valid for the name in its path."""
        query = request.query_params
        owner = query.get("o", "")
        name = request.path_params["name"]
        return owner if self.check(name, owner, query.get("e", ""), query.get("s", ""), route=route) else None


def _video(path: Path) -> Response:
    # Starlette's FileResponse answers Range requests with 206, so the player can seek.
    return FileResponse(path, media_type="video/mp4", headers={"Cache-Control": "private, max-age=300"})


def register_media_routes(server: MCPServer[AppState], state_ref: StateRef, signer: MediaSigner) -> None:
    @server.custom_route(MEDIA_PATH + "{name}", methods=["GET", "HEAD"])  # type: ignore[untyped-decorator]
    async def media(request: Request) -> Response:
        owner = signer.allows(request, MEDIA_PATH)
        if owner is None:
            return JSONResponse(_REFUSED, status_code=403)
        try:
            runtime = await state_ref.runtime()
            return _video(local_video(await runtime.engine.get(request.path_params["name"], owner=owner)))
        except KlingError:
            return JSONResponse({"error": "not found"}, status_code=404)

    @server.custom_route(FILMS_PATH + "{name}", methods=["GET", "HEAD"])  # type: ignore[untyped-decorator]
    async def film(request: Request) -> Response:
        if signer.allows(request, FILMS_PATH) is None:
            return JSONResponse(_REFUSED, status_code=403)
        name = request.path_params["name"]
        runtime = await state_ref.runtime()
        path = runtime.settings.resolved_output_dir / FILMS_FOLDER / safe_name(name)
        if safe_name(name) != name or not path.is_file():
            return JSONResponse({"error": "not found"}, status_code=404)
        return _video(path)


def own_origin(settings: Settings, request: Request | None) -> str | None:
    """Where the caller reaches this server: the public URL, else the origin of the request being answered."""
    if settings.public_url:
        return settings.public_url
    if request is None:
        return None
    return f"{request.url.scheme}://{request.url.netloc}"
