"""The player: an MCP App (``io.modelcontextprotocol/ui``) that shows a job where the conversation is.

``ui://kling/player.html`` is one self-contained HTML file (``player.html`` beside this module). The generating
tools and ``check_status`` link it with ``_meta.ui.resourceUri``; hosts that render MCP Apps show it with the call's
result, and it follows the job through app-only tools. Clients that did not negotiate the extension get exactly
what they got before: ``PlayerGate`` strips the link and the app-only tools from their ``tools/list`` and refuses
those tools to them as unknown.

The host renders the player in a sandboxed iframe whose CSP comes from the resource's ``_meta.ui.csp``: a
``<video>`` loads only from the origins listed in ``resourceDomains``. Those are the built-in sandbox gateway's
origin (sandbox mode), ``KLING_MCP_MEDIA_ORIGINS`` (live mode), and over HTTP this server's own origin, whose
signed media route (``playback.py``) streams the downloaded file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from mcp.server import ServerRequestContext
from mcp.server.apps import APP_MIME_TYPE, Apps, client_supports_apps
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resources import FileResource
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from kling_mcp.config import Settings
from kling_mcp.errors import KlingError
from kling_mcp.files import slug
from kling_mcp.models import Job, is_digest
from kling_mcp.previews import local_video
from kling_mcp.server.confirm import Confirmed, ConfirmSpend, confirm_seconds
from kling_mcp.server.owners import owner_of
from kling_mcp.server.playback import FILMS_PATH, MediaSigner, own_origin, register_media_routes
from kling_mcp.server.resources import chain_of
from kling_mcp.server.results import REMOTE_CALLER, job_result
from kling_mcp.server.state import AppState, StateRef, runtime_of
from kling_mcp.server.tools import Generation, concat_videos, extend_video, get_job, run_generation

if TYPE_CHECKING:
    from kling_mcp.runtime import Runtime

PLAYER_URI = "ui://kling/player.html"
PLAYER_HTML = Path(__file__).with_name("player.html")
# The tools whose results the player shows.
PLAYER_TOOLS = frozenset(
    {"generate_video", "animate_image", "storyboard", "extend_video", "concat_videos", "check_status"}
)
APP_ONLY = ("player_view", "player_retake", "player_join")
CHAIN_SCAN = 200  # recent jobs searched for a clip's extensions

RequestId = Annotated[str, Field(min_length=1, max_length=200, description="The job's request_id.")]


def tool_meta(name: str) -> dict[str, Any] | None:
    """The ``_meta`` linking a tool to the player, for the tools whose results it shows."""
    return {"ui": {"resourceUri": PLAYER_URI}} if name in PLAYER_TOOLS else None


class Clip(BaseModel):
    request_id: str
    status: str
    prompt: str | None
    video_seconds: int


class Shot(BaseModel):
    prompt: str
    duration: int
    start_s: int


class PlayerView(BaseModel):
    """What the player shows of one job."""

    job: dict[str, Any]
    progress: float
    progress_message: str
    play_url: str | None
    shots: list[Shot]
    chain: list[Clip]
    retake_seconds: int
    retake_possible: bool


class Player:
    """The extension, its media signer and its gate, built once per server."""

    def __init__(self, settings: Settings, state_ref: StateRef) -> None:
        self.settings = settings
        self.state_ref = state_ref
        self.signer = MediaSigner(settings.media_secret)
        self.extension = _apps(self)
        self.gate = PlayerGate(self)

    def register_routes(self, server: MCPServer[AppState]) -> None:
        register_media_routes(server, self.state_ref, self.signer)

    async def media_origins(self, request: Any) -> list[str]:
        """The origins the player's ``<video>`` loads from, for the caller being answered."""
        origins: list[str] = []
        own = own_origin(self.settings, request)
        if own:
            origins.append(_origin(own))
        if self.settings.live:
            origins.extend(self.settings.media_origins)
        else:
            runtime = await self.state_ref.runtime()
            origins.append(_origin(runtime.engine.client.base_url))
        return list(dict.fromkeys(origins))

    def play_url(self, job: Job, runtime: Runtime, request: Any) -> str | None:
        """Over HTTP the signed route to the downloaded file; otherwise (or before the download) the media URL."""
        base = own_origin(self.settings, request)
        if base and REMOTE_CALLER.get():
            try:
                local_video(job)
            except KlingError:
                pass
            else:
                return self.signer.url(base, job.id, job.owner)
        return job.media_url if job.status == "completed" else None

    def film_url(self, name: str, owner: str, request: Any) -> str | None:
        """Over HTTP the signed route to a joined film; a local caller has its path (no route serves it there)."""
        base = own_origin(self.settings, request)
        return self.signer.url(base, name, owner, route=FILMS_PATH) if base and REMOTE_CALLER.get() else None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def _chain(runtime: Runtime, job: Job) -> list[Clip]:
    """The clip's ancestors, itself, and its latest extensions, first clip first."""
    ids = await chain_of(runtime, job)
    jobs = [await runtime.store.get(i, owner=job.owner) for i in ids[:-1]] + [job]
    recent = await runtime.store.recent(owner=job.owner, limit=CHAIN_SCAN)
    children = {j.parent_id: j for j in reversed(recent) if j.parent_id}  # the newest extension wins
    while jobs[-1].id in children and len(jobs) < CHAIN_SCAN:
        jobs.append(children[jobs[-1].id])
    return [
        Clip(request_id=j.id, status=j.status, prompt=j.request.prompt, video_seconds=j.video_seconds) for j in jobs
    ]


def _shots(job: Job) -> list[Shot]:
    shots, start = [], 0
    for shot in job.request.shots or ():
        shots.append(Shot(prompt=shot.prompt, duration=shot.duration, start_s=start))
        start += shot.duration
    return shots


def _can_retake(job: Job) -> bool:
    """Whether the request can be made again: its prompts kept, and its image kept or (an extension) found again."""
    request = job.request
    prompts = [request.prompt, *(s.prompt for s in request.shots or ())]
    image_back = not is_digest(request.image_url) or job.parent_id is not None
    return image_back and not any(is_digest(t) for t in prompts)


async def _view(player: Player, ctx: Context[AppState], job: Job) -> CallToolResult:
    runtime = await runtime_of(ctx)
    progress, total, message = runtime.engine.progress(job)
    view = PlayerView(
        job=job_result(job, runtime=runtime).model_dump(mode="json"),
        progress=round(progress / total, 4),
        progress_message=message,
        play_url=player.play_url(job, runtime, ctx.request_context.request),
        shots=_shots(job),
        chain=await _chain(runtime, job),
        retake_seconds=job.video_seconds,
        retake_possible=_can_retake(job),
    )
    text = f"{job.id}: {job.status}. {message}"
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=view.model_dump())


async def _confirm_retake(request_id: str, ctx: Context[AppState]) -> ConfirmSpend | Elicit[ConfirmSpend]:
    job = await get_job(await runtime_of(ctx), request_id, owner_of(ctx))
    return confirm_seconds(ctx, job.video_seconds)


async def _retake(ctx: Context[AppState], request_id: str, confirmed: Confirmed) -> CallToolResult:
    """The same request again, as a new job (force_new), answered at once."""
    runtime = await runtime_of(ctx)
    owner = owner_of(ctx)
    job = await get_job(runtime, request_id, owner)
    if not _can_retake(job):
        raise ToolError(
            "Not submitted: this job's prompt or image is kept only as a hash now, so it cannot be made again. "
            "Fix: call the generating tool with the prompt and image again."
        )
    if job.parent_id and is_digest(job.request.image_url):
        # An extension's first frame was its parent's last frame, inlined and then hashed: take it again.
        request = job.request
        assert request.prompt is not None
        assert request.duration is not None
        return await extend_video(
            job.parent_id, request.prompt, ctx, request.duration, 0, None, True, confirmed=confirmed
        )

    async def build(*_: object) -> Any:
        return job.request

    parent = await get_job(runtime, job.parent_id, owner) if job.parent_id else None
    return await run_generation(ctx, build, Generation(0, None, True, confirmed, parent))


def _apps(player: Player) -> Apps:
    apps = Apps()
    apps.add_resource(
        FileResource(
            uri=PLAYER_URI,
            name="player",
            title="Kling video player",
            description="Shows a video job as it runs, then plays it; extend, retake and join from it.",
            mime_type=APP_MIME_TYPE,
            path=PLAYER_HTML,
            meta={"ui": {"prefersBorder": True}},
        )
    )
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    local = ToolAnnotations(destructive_hint=False, idempotent_hint=True, open_world_hint=False)

    @apps.tool(resource_uri=PLAYER_URI, visibility=["app"], title="Player view of a job", annotations=read_only)
    async def player_view(request_id: RequestId, ctx: Context[AppState]) -> CallToolResult:
        """A job as the player shows it: state, progress, a playable URL, its shots and its chain."""
        app_only(ctx, "player_view")
        runtime = await runtime_of(ctx)
        return await _view(player, ctx, await get_job(runtime, request_id, owner_of(ctx)))

    @apps.tool(resource_uri=PLAYER_URI, visibility=["app"], title="Another take of a job")
    async def player_retake(
        request_id: RequestId,
        ctx: Context[AppState],
        confirmed: Annotated[Confirmed, Resolve(_confirm_retake)] = None,  # type: ignore[assignment]
    ) -> CallToolResult:
        """A new paid job of the same request (the same seconds of video), answered at once."""
        app_only(ctx, "player_retake")
        return await _retake(ctx, request_id, confirmed)

    @apps.tool(resource_uri=PLAYER_URI, visibility=["app"], title="Join a chain into one film", annotations=local)
    async def player_join(request_id: RequestId, ctx: Context[AppState]) -> CallToolResult:
        """Joins the clip's chain (first clip to latest extension) into one film, named by the first prompt. Free."""
        app_only(ctx, "player_join")
        runtime = await runtime_of(ctx)
        chain = await _chain(runtime, await get_job(runtime, request_id, owner_of(ctx)))
        result = await concat_videos([c.request_id for c in chain], ctx, title=slug(chain[0].prompt))
        if result.structured_content is not None:
            film = Path(result.structured_content["path"]).name
            play = player.film_url(film, owner_of(ctx), ctx.request_context.request)
            result.structured_content = {**result.structured_content, "play_url": play}
        return result

    return apps


class PlayerGate:
    """Server middleware: what a client that did not negotiate MCP Apps must not see, and the player's CSP."""

    def __init__(self, player: Player) -> None:
        self.player = player

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if not isinstance(result, dict):
            return result
        if ctx.method == "tools/list" and not client_supports_apps(ctx):
            return _without_apps(result)
        params = ctx.params if isinstance(ctx.params, dict) else {}
        if ctx.method == "resources/read" and params.get("uri") == PLAYER_URI:
            domains = await self.player.media_origins(ctx.request)
            for content in result.get("contents", []):
                meta = content.setdefault("_meta", {})
                meta["ui"] = {**meta.get("ui", {}), "csp": {"resourceDomains": domains}}
        return result


def app_only(ctx: Context[AppState], name: str) -> None:
    """An app-only tool called by a client that did not negotiate MCP Apps: unknown, as it is not listed to it."""
    if not client_supports_apps(ctx):
        raise ToolError(f"Unknown tool: {name}")


def _without_apps(result: dict[str, Any]) -> dict[str, Any]:
    """``tools/list`` as it was before the player: no app-only tools, no ``_meta.ui`` links."""
    tools = []
    for tool in result.get("tools", []):
        if tool.get("name") in APP_ONLY:
            continue
        tool = dict(tool)
        meta = {k: v for k, v in (tool.pop("_meta", None) or {}).items() if k != "ui"}
        if meta:
            tool["_meta"] = meta
        tools.append(tool)
    return {**result, "tools": tools}
