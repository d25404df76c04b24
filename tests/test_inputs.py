"""Hardened inputs and outputs (issue 12, points 1-5 and 7), each shown the way the review broke it.

Local files: over HTTP only inside KLING_MCP_IMAGE_ROOTS, with one refusal text; over stdio only regular files,
read with a bound. Images: only PNG and JPEG ever reach a decoder, and not above the pixel limit. URLs: the SSRF
guard in sandbox mode too, and the gateway client never follows a redirect with the key. Outputs: a film never
replaces a file, downloads and films live apart.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import os
import re
import struct
import urllib.parse
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent
from PIL import EpsImagePlugin, Image, ImageFile
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kling_mcp import limits
from kling_mcp.config import DEFAULT_I2V_PATH, Settings
from kling_mcp.errors import BlockedURLError, GatewayValidationError, InvalidInputError
from kling_mcp.files import publish_new
from kling_mcp.images import resolve_image
from kling_mcp.models import GenerationRequest
from kling_mcp.netguard import guarded_client, origin_of
from kling_mcp.pixazo import PixazoClient
from kling_mcp.runtime import open_runtime
from kling_mcp.sandbox import images as sandbox_images
from kling_mcp.sandbox.server import serve_asgi
from kling_mcp.server import build_server

pytestmark = pytest.mark.anyio

WAIT = 30.0


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def png(size: tuple[int, int] = (640, 360), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(out, fmt)
    return out.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def huge_png(side: int = 13_000) -> bytes:
    """A valid grey PNG of side x side pixels that is a few hundred KB: decoding it would take side² bytes."""
    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte, then one byte per pixel
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 640 360\n%%EndComments\n"
    b"newpath 0 0 moveto 640 360 lineto stroke showpage\n%%EOF\n"
)


@pytest.fixture
def eps_opened(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records every time Pillow's EPS plugin starts to read a file (its load would run Ghostscript)."""
    calls: list[int] = []
    real = EpsImagePlugin.EpsImageFile._open

    def spy(self: EpsImagePlugin.EpsImageFile) -> None:
        calls.append(1)
        real(self)

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy)
    return calls


@pytest.fixture
def decoders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every Pillow open and decode, so a test can show an image was refused before either."""
    calls: list[str] = []
    real_open, real_load = Image.open, ImageFile.ImageFile.load

    def spy_open(*args: Any, **kwargs: Any) -> Any:
        calls.append("open")
        return real_open(*args, **kwargs)

    def spy_load(self: ImageFile.ImageFile) -> Any:
        calls.append("load")
        return real_load(self)

    monkeypatch.setattr(Image, "open", spy_open)
    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    return calls


# --- 1. local files ----------------------------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A shared root with one image, and a private folder (also $HOME) with a secret image, notes and a folder."""
    root, private = tmp_path / "shared", tmp_path / "private"
    (private / "folder").mkdir(parents=True)
    root.mkdir()
    (root / "frame.png").write_bytes(png())
    (private / "secret.png").write_bytes(png((600, 400)))
    (private / "notes.txt").write_text("not an image")
    monkeypatch.setenv("HOME", str(private))
    return root, private


async def refusal(ref: str, roots: list[Path]) -> str:
    with pytest.raises(InvalidInputError) as caught:
        await resolve_image(ref, local_roots=roots)
    # The value shown is the caller's own (cut to 80 characters); everything else must not vary.
    return re.sub(r"; got .*\. Fix: ", "; got <path>. Fix: ", str(caught.value), count=1)


async def test_over_http_a_path_outside_the_roots_gets_one_refusal_whatever_is_there(
    folders: tuple[Path, Path],
) -> None:
    root, private = folders
    targets = [private / "secret.png", private / "missing.png", private / "folder", private / "notes.txt"]
    texts = set()
    for roots in ([root], []):
        for path in [*targets, Path("/dev/zero")]:
            texts.add(await refusal(str(path), roots))
            texts.add(await refusal(path.as_uri(), roots))
        texts.add(await refusal("~/secret.png", roots))
        texts.add(await refusal("~/missing.png", roots))

    assert len(texts) == 1, texts  # nothing tells an existing file from a missing one, a folder or a non-image
    assert "KLING_MCP_IMAGE_ROOTS" in texts.pop()


async def test_inside_a_root_images_are_read_but_symlinks_and_dot_dots_out_of_it_are_not(
    folders: tuple[Path, Path], tmp_path: Path
) -> None:
    root, private = folders
    (root / "link.png").symlink_to(private / "secret.png")
    (root / "door").symlink_to(private)
    (tmp_path / "root-link").symlink_to(root)

    inside = await resolve_image(str(root / "frame.png"), local_roots=[root])
    via_linked_root = await resolve_image(
        str(tmp_path / "root-link" / "frame.png"), local_roots=[tmp_path / "root-link"]
    )
    outside = [root / "link.png", root / "door" / "secret.png", root / ".." / "private" / "secret.png"]
    texts = {await refusal(str(path), [root]) for path in outside}

    assert (inside.source, inside.format, inside.width) == ("file", "PNG", 640)
    assert via_linked_root.url == inside.url
    assert len(texts) == 1
    assert "KLING_MCP_IMAGE_ROOTS" in texts.pop()


async def test_over_stdio_a_device_is_refused_without_being_read() -> None:
    with anyio.fail_after(WAIT), pytest.raises(InvalidInputError) as caught:
        await resolve_image("/dev/zero")
    assert "must be a regular image file; got a character device." in str(caught.value)


async def test_over_stdio_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "stdin.png"  # what /dev/stdin is when a client pipes into the server
    os.mkfifo(fifo)
    done = anyio.Event()
    outcome: list[BaseException] = []

    async def resolve() -> None:
        try:
            await resolve_image(str(fifo))
        except InvalidInputError as exc:
            outcome.append(exc)
        finally:
            done.set()

    async def unstick() -> None:
        # A reader stuck on the FIFO cannot be cancelled: give it a writer, so this test fails rather than hangs.
        with anyio.move_on_after(WAIT):
            await done.wait()
        if not done.is_set():
            stuck.append(True)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    stuck: list[bool] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(unstick)
        tg.start_soon(resolve)
    assert stuck == [], "the server waited on the FIFO for a writer"
    assert len(outcome) == 1
    assert "got a FIFO (named pipe)." in str(outcome[0])


async def test_over_stdio_regular_files_anywhere_still_work(folders: tuple[Path, Path]) -> None:
    _, private = folders
    for ref in (str(private / "secret.png"), (private / "secret.png").as_uri(), "~/secret.png"):
        resolved = await resolve_image(ref)
        assert (resolved.source, resolved.format) == ("file", "PNG")


async def test_the_server_refuses_local_paths_to_remote_callers_outside_the_roots(
    settings: Settings, sandbox: Any, folders: tuple[Path, Path]
) -> None:
    # A caller over HTTP is remote (loopback included); an in-memory or stdio caller is the local user.
    from tests.test_http_security import serve
    from tests.test_sessions import legacy_http_client

    root, private = folders
    rooted = settings.with_(image_roots=(root,))
    with anyio.fail_after(WAIT):
        async with serve(rooted) as base, legacy_http_client(base) as client:
            secret = await client.call_tool("animate_image", {"image_url": str(private / "secret.png")})
            shared = await client.call_tool("animate_image", {"image_url": str(root / "frame.png"), "duration": 3})
        async with Client(build_server(rooted)) as local:
            own = await local.call_tool("animate_image", {"image_url": str(private / "secret.png"), "duration": 3})
    assert secret.is_error
    assert "KLING_MCP_IMAGE_ROOTS" in text_of(secret)
    assert not shared.is_error, text_of(shared)
    assert not own.is_error, text_of(own)
    assert sandbox.gateway.submit_count == 2


# --- 2. and 3. images: PNG and JPEG only, bounded ----------------------------------------------------------


async def test_eps_inside_a_png_data_uri_never_reaches_the_eps_reader(eps_opened: list[int]) -> None:
    with pytest.raises(InvalidInputError) as server_side:
        await resolve_image(data_uri(EPS))
    with pytest.raises(InvalidInputError) as sandbox_side:
        sandbox_images.check_image_bytes(EPS)

    assert eps_opened == []
    for caught in (server_side, sandbox_side):
        assert "JPEG or PNG" in str(caught.value)
        assert "EPS" in str(caught.value)


async def test_a_huge_png_header_is_refused_before_pillow_opens_it(decoders: list[str], tmp_path: Path) -> None:
    data = huge_png()
    assert len(data) < 1_000_000
    path = tmp_path / "bomb.png"
    path.write_bytes(data)

    errors = []
    for ref in (data_uri(data), str(path)):
        with pytest.raises(InvalidInputError) as caught:
            await resolve_image(ref)
        errors.append(str(caught.value))
    with pytest.raises(InvalidInputError) as sandbox_side:
        sandbox_images.check_image_bytes(data)
    errors.append(str(sandbox_side.value))

    assert decoders == []
    for error in errors:
        assert f"at most {limits.IMAGE_MAX_PIXELS // 1_000_000} megapixels" in error
        assert "13000x13000 px (169 MP)" in error


async def test_a_huge_png_on_a_web_server_is_refused_from_its_first_bytes(decoders: list[str]) -> None:
    data = huge_png()

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(206, content=data[:4096], headers={"content-range": f"bytes 0-4095/{len(data)}"})

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as http:
        with pytest.raises(InvalidInputError, match="megapixels"):
            await resolve_image("https://images.example/bomb.png", http=http)
    assert decoders == []


async def test_data_uris_are_measured_before_they_are_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real_b64, real_unquote = base64.b64decode, urllib.parse.unquote_to_bytes

    def b64(*args: Any, **kwargs: Any) -> bytes:
        decoded.append("base64")
        return real_b64(*args, **kwargs)

    def unquote(*args: Any, **kwargs: Any) -> bytes:
        decoded.append("percent")
        return real_unquote(*args, **kwargs)

    monkeypatch.setattr(base64, "b64decode", b64)
    monkeypatch.setattr(sandbox_images, "unquote_to_bytes", unquote)
    too_big = "A" * (limits.IMAGE_MAX_BYTES * 4 // 3 + 8)  # base64 of just over 50 MB; as plain text, 67 MB
    with pytest.raises(InvalidInputError, match="50 MB"):
        await resolve_image("data:image/png;base64," + too_big)
    for uri in ("data:image/png;base64," + too_big, "data:image/png," + too_big):
        with pytest.raises(InvalidInputError, match="50 MB"):
            await sandbox_images.load_image(uri, httpx2.AsyncClient(), limit_s=1)
    assert decoded == []


# --- 4. URLs: the guard in sandbox mode too ------------------------------------------------------------------


@dataclass
class Internal:
    """A loopback "internal" web server that counts who fetched from it."""

    url: str
    hits: list[str] = field(default_factory=list)


@asynccontextmanager
async def internal_host() -> AsyncIterator[Internal]:
    image = png()
    hits: list[str] = []

    async def serve(request: Request) -> Response:
        hits.append(request.url.path)
        return Response(image, media_type="image/png")

    async with serve_asgi(Starlette(routes=[Route("/{name}", serve)])) as url:
        yield Internal(url, hits)


async def test_in_sandbox_mode_a_loopback_image_url_is_refused_and_never_fetched(
    settings: Settings, sandbox: Any
) -> None:
    assert not settings.live
    async with internal_host() as internal:
        with anyio.fail_after(WAIT):
            async with Client(build_server(settings)) as client:
                refused = await client.call_tool("animate_image", {"image_url": f"{internal.url}/admin.png"})
                made = await client.call_tool("generate_video", {"prompt": "still downloaded", "duration": 3})
    assert refused.is_error
    assert "127.0.0.1 is a loopback address" in text_of(refused)
    assert internal.hits == []
    assert sandbox.gateway.submit_count == 1  # only the text-to-video job
    video = (made.structured_content or {}).get("local_path")
    assert video  # the sandbox's own media origin is still fetched from
    assert Path(video).is_file()


async def test_the_sandbox_gateway_itself_never_fetches_a_private_image_url(sandbox: Any) -> None:
    async with internal_host() as internal, httpx2.AsyncClient(trust_env=False) as http:
        with anyio.fail_after(WAIT):
            response = await http.post(
                sandbox.base_url + DEFAULT_I2V_PATH,
                json={"image_url": f"{internal.url}/admin.png"},
                headers={"Ocp-Apim-Subscription-Key": "sk_test_guard"},
            )
    assert response.status_code == 400, response.text
    assert "public address" in response.json()["message"]
    assert internal.hits == []
    assert sandbox.gateway.submit_count == 0


async def test_only_the_exempt_origin_passes_the_guard_and_its_redirects_are_checked() -> None:
    def answer(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/bounce":
            return httpx2.Response(302, headers={"location": "http://127.0.0.1:9/private"})
        return httpx2.Response(200, content=b"ok")

    exempt = [origin_of("http://127.0.0.1:8000")]
    async with guarded_client(
        allow_private=False, timeout=5, transport=httpx2.MockTransport(answer), exempt_origins=exempt
    ) as http:
        assert (await http.get("http://127.0.0.1:8000/media/a.mp4")).content == b"ok"
        for url in ("http://127.0.0.1:8001/media/a.mp4", "https://127.0.0.1:8000/", "http://127.0.0.1:8000/bounce"):
            with pytest.raises(BlockedURLError, match="loopback"):
                await http.get(url)


# --- 7. the key never follows a redirect -----------------------------------------------------------------------


@asynccontextmanager
async def redirecting_gateway() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A "gateway" that answers everything with a 307 to another origin, a second loopback port that records."""
    seen: list[dict[str, str]] = []

    async def elsewhere(request: Request) -> Response:
        seen.append(dict(request.headers))
        return Response('{"request_id": "stolen", "status": "queued"}', media_type="application/json")

    async with serve_asgi(Starlette(routes=[Route("/{path:path}", elsewhere, methods=["GET", "POST"])])) as other:

        async def redirect(request: Request) -> Response:
            return Response(status_code=307, headers={"location": f"{other}{request.url.path}"})

        app = Starlette(routes=[Route("/{path:path}", redirect, methods=["GET", "POST"])])
        async with serve_asgi(app) as gateway:
            yield gateway, seen


async def test_a_307_to_another_origin_is_an_error_and_the_key_stays_home(tmp_path: Path) -> None:
    key = "sk_live_redirect_secret"
    async with redirecting_gateway() as (gateway, seen):
        live = Settings(
            mode="live", api_key=key, base_url=gateway, state_dir=tmp_path / "state", output_dir=tmp_path / "out"
        )
        with anyio.fail_after(WAIT):
            async with open_runtime(live) as runtime:
                client = runtime.engine.client
                with pytest.raises(GatewayValidationError) as polled:
                    await client.status("abc")
                with pytest.raises(GatewayValidationError) as submitted:
                    await client.submit(GenerationRequest(endpoint="text_to_video", prompt="a", duration=3))
            # A client built to follow redirects does not change that: each gateway request says not to.
            async with httpx2.AsyncClient(follow_redirects=True) as follows:
                own = PixazoClient(follows, base_url=gateway, api_key=key)
                with pytest.raises(GatewayValidationError):
                    await own.status("abc")
    assert seen == []
    for caught in (polled, submitted):
        assert "redirect (HTTP 307) to http://127.0.0.1:" in caught.value.message
        assert not caught.value.maybe_sent
        assert key not in str(caught.value)


# --- 5. outputs never replace a file -------------------------------------------------------------------------


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def test_a_film_titled_with_another_jobs_id_leaves_that_jobs_video_alone(settings: Settings) -> None:
    with anyio.fail_after(WAIT * 2):
        async with Client(build_server(settings)) as client:
            jobs = [
                (await client.call_tool("generate_video", {"prompt": f"clip {i}", "duration": 3})).structured_content
                for i in range(2)
            ]
            assert all(job and job["local_path"] for job in jobs)
            bob = jobs[1]
            assert bob is not None
            before = sha256(bob["local_path"])
            ids = [job["request_id"] for job in jobs if job]
            films = [
                (await client.call_tool("concat_videos", {"request_ids": ids, "title": bob["request_id"]}))
                for _ in range(2)
            ]
    paths = [Path((film.structured_content or {})["path"]) for film in films]
    assert sha256(bob["local_path"]) == before
    assert Path(bob["local_path"]).parent == settings.resolved_output_dir
    assert paths[0] == settings.resolved_output_dir / "films" / f"{bob['request_id']}.mp4"
    assert paths[1] == paths[0].with_name(f"{bob['request_id']}-2.mp4")  # the second film did not replace the first
    assert all(path.is_file() for path in paths)


async def test_a_download_never_replaces_an_existing_file(tmp_path: Path) -> None:
    dest = tmp_path / "kl_job.mp4"
    dest.write_bytes(b"someone else's video")

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(lambda r: httpx2.Response(200, content=b"mp4"))) as h:
        saved = await PixazoClient(h, base_url="https://gw.example", api_key="k").download("https://cdn/x.mp4", dest)

    assert dest.read_bytes() == b"someone else's video"
    assert saved.path == tmp_path / "kl_job-2.mp4"
    assert saved.path.read_bytes() == b"mp4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kl_job-2.mp4", "kl_job.mp4"]


def test_publish_new_takes_the_next_free_number(tmp_path: Path) -> None:
    names = []
    for body in (b"a", b"bb", b"ccc"):
        tmp = tmp_path / f".tmp{len(body)}"
        tmp.write_bytes(body)
        names.append(publish_new(tmp, tmp_path / "film.mp4").name)
        tmp.unlink()
    assert names == ["film.mp4", "film-2.mp4", "film-3.mp4"]
    assert (tmp_path / "film.mp4").read_bytes() == b"a"
