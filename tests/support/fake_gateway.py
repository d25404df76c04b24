"""A second, deliberately different gateway written only from the contract (``docs/pixazo-contract.md``).

It is not our sandbox: it answers with the spellings the contract says other Pixazo-fronted models use
(``IN_QUEUE``, ``IN_PROGRESS``, lower-case ``completed``), sends no ``polling_url``, and gives ``media_url`` as a
plain string. A server that only worked against our own sandbox would fail here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

T2V = "kling-video-v3-turbo-pro-text-to-video"
I2V = "kling-video-v3-turbo-pro-image-to-video"
KEY = "sk_live_fake_gateway_key"


@dataclass
class FakeState:
    video: Path
    polls: dict[str, int] = field(default_factory=dict)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    submits: int = 0


def fake_gateway(video: Path) -> tuple[Starlette, FakeState]:
    state = FakeState(video=video)

    def denied(request: Request) -> Response | None:
        if request.headers.get("ocp-apim-subscription-key") != KEY:
            return JSONResponse({"statusCode": 401, "message": "Access denied due to invalid subscription key."}, 401)
        return None

    async def submit(request: Request) -> Response:
        if (refusal := denied(request)) is not None:
            return refusal
        api_id = request.path_params["api_id"]
        body = await request.json()
        state.submits += 1
        request_id = f"{api_id}_{uuid.uuid4()}"
        state.bodies[request_id] = body
        state.polls[request_id] = 0
        return JSONResponse({"request_id": request_id, "status": "IN_QUEUE"}, status_code=202)

    async def status(request: Request) -> Response:
        if (refusal := denied(request)) is not None:
            return refusal
        request_id = request.path_params["request_id"]
        if request_id not in state.polls:
            return JSONResponse({"error": "not found"}, 404)
        state.polls[request_id] += 1
        n = state.polls[request_id]
        if n == 1:
            return JSONResponse({"request_id": request_id, "status": "IN_QUEUE"})
        if n == 2:
            return JSONResponse({"request_id": request_id, "status": "IN_PROGRESS"})
        url = str(request.base_url).rstrip("/") + f"/cdn/{request_id}.mp4"
        return JSONResponse(
            {"request_id": request_id, "status": "completed", "output": {"media_url": url, "media_type": "video/mp4"}}
        )

    async def media(request: Request) -> Response:
        return FileResponse(state.video, media_type="video/mp4")

    async def image(request: Request) -> Response:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (640, 360), (30, 90, 160)).save(buffer, "PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    app = Starlette(
        routes=[
            Route("/images/frame.png", image),
            Route("/{api_id}/v1/{api_id2}-request", submit, methods=["POST"]),
            Route("/v2/requests/status/{request_id}", status),
            Route("/cdn/{name}", media),
        ]
    )
    return app, state
