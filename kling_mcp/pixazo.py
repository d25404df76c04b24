"""The Pixazo gateway client: submit, status, download. MCP-agnostic.

Reads (status polls, downloads) retry on 429, 5xx, challenge pages and transport errors with capped exponential
backoff and jitter, honouring ``Retry-After``. A submit is retried only when the gateway certainly did not take
it (connection refused, 429, a challenge page in front of the gateway); when it may have reached the gateway
(5xx, a timeout while waiting for the answer) the error says ``maybe_sent`` and the caller decides, because a
duplicate submit costs money.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import httpx2

from kling_mcp.config import GatewayPaths
from kling_mcp.errors import (
    AuthenticationError,
    ChallengePageError,
    DownloadError,
    GatewayConnectionError,
    GatewayError,
    GatewayValidationError,
    InsufficientCreditsError,
    NotFoundError,
    RateLimitError,
    UpstreamServerError,
)
from kling_mcp.files import publish_new, temp_path
from kling_mcp.models import GatewayState
from kling_mcp.models import GenerationRequest as GenerationRequest  # its home before models.py; callers import it

log = logging.getLogger(__name__)

_DONE = frozenset({"completed", "succeeded", "success"})
_FAILED = frozenset({"failed", "cancelled", "canceled"})
_QUEUED = frozenset({"queued", "in_queue", "pending", "submitted"})


def normalize_status(value: object) -> GatewayState:
    """Maps any status spelling the gateway family uses onto five states; unknown means still pending."""
    text = str(value or "").strip().lower()
    if text in _DONE:
        return "completed"
    if text == "error":
        return "error"
    if text in _FAILED:
        return "failed"
    if text in _QUEUED:
        return "queued"
    return "processing"


@dataclass(frozen=True)
class Submission:
    request_id: str
    status: GatewayState
    polling_url: str | None


@dataclass(frozen=True)
class GatewayStatus:
    request_id: str
    status: GatewayState
    raw_status: str
    media_urls: tuple[str, ...] = ()
    error: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict[str, Any])


@dataclass(frozen=True)
class Download:
    path: Path
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        backoff = min(self.max_delay, self.base_delay * 2**attempt)
        return _JITTER.uniform(backoff / 2, backoff)


Sleep = Callable[[float], Awaitable[None]]
_JITTER = random.Random()  # own instance: jitter must not consume (or be steered by) the global generator
T = TypeVar("T")


class PixazoClient:
    """Typed access to the gateway. The ``http`` client is the seam: real network, loopback, or ASGI.

    Gateway requests carry the API key, so they never follow a redirect, whatever ``http`` was built with: a
    redirect answer is an error naming where it pointed (the key goes to the configured gateway only).
    """

    def __init__(
        self,
        http: httpx2.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        paths: GatewayPaths | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = anyio.sleep,
        media_http: httpx2.AsyncClient | None = None,
    ) -> None:
        self._http = http
        # Media URLs come from the gateway's answers, so they are fetched through a client that can refuse them.
        self._media_http = media_http or http
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._paths = paths or GatewayPaths()
        self._retry = retry or RetryPolicy()
        self._sleep = sleep

    @property
    def base_url(self) -> str:
        return self._base_url

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {
            "Ocp-Apim-Subscription-Key": self._api_key,
            "Content-Type": "application/json",
            "Cache-Control": "no-cache",
        }
        headers.update(extra or {})
        return headers

    def status_url(self, request_id: str, polling_url: str | None = None) -> str:
        """The gateway's ``polling_url`` when it is on the gateway's own origin, else the documented route.

        The API key is sent to whatever URL this returns, so a ``polling_url`` on another host is never used.
        """
        if polling_url and _origin(polling_url) == _origin(self._base_url):
            return polling_url
        return self._base_url + self._paths.status.format(request_id=request_id)

    async def submit(self, request: GenerationRequest, *, webhook_url: str | None = None) -> Submission:
        path = self._paths.text_to_video if request.endpoint == "text_to_video" else self._paths.image_to_video
        extra = {"X-Webhook-URL": webhook_url} if webhook_url else None
        content = json.dumps(request.body()).encode()

        async def once() -> Submission:
            response = await self._http.post(
                self._base_url + path, content=content, headers=self._headers(extra), follow_redirects=False
            )
            try:
                data = _json_or_raise(response, request_id=None)
            except RateLimitError:
                raise  # refused before the gateway proper: not taken
            except GatewayError as exc:
                exc.maybe_sent = _may_have_taken(exc)
                raise
            return _parse_submission(data)

        return await self._with_retries(once, _SUBMITS)

    async def status(self, request_id: str, *, polling_url: str | None = None) -> GatewayStatus:
        url = self.status_url(request_id, polling_url)

        async def once() -> GatewayStatus:
            response = await self._http.get(url, headers=self._headers(), follow_redirects=False)
            return parse_status(_json_or_raise(response, request_id=request_id), request_id)

        return await self._with_retries(once, _READS)

    async def download(self, url: str, dest: Path, *, max_bytes: int | None = None) -> Download:
        """Streams a media file to ``dest`` atomically (temporary file, size check, new name); returns its sha256.

        ``Download.path`` is ``dest``, or a numbered sibling when ``dest`` already exists: nothing is replaced.

        The API key is never sent: media URLs live on a CDN, possibly another host.
        """

        async def once() -> Download:
            return await self._download_once(url, dest, max_bytes)

        try:
            return await self._with_retries(once, _READS)
        except GatewayError as exc:
            raise DownloadError(f"Could not download the video: {exc.message}", hint=exc.hint) from None

    async def _download_once(self, url: str, dest: Path, max_bytes: int | None) -> Download:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(dest)
        digest = hashlib.sha256()
        size = 0
        try:
            async with self._media_http.stream("GET", url, headers={"Cache-Control": "no-cache"}) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _json_or_raise(response, request_id=None)
                expected = response.headers.get("content-length")
                # Plain writes of network-sized chunks land in the page cache in microseconds; a thread hop per
                # chunk (or re-chunking into large blocks) cost more than half the throughput.
                with tmp.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if max_bytes is not None and size > max_bytes:
                            raise DownloadError(
                                f"The video is larger than the {max_bytes} byte cap.",
                                hint="Raise the cap or download it from media_url yourself.",
                            )
                        digest.update(chunk)
                        out.write(chunk)
            if expected is not None and expected.isdigit() and int(expected) != size:
                raise GatewayConnectionError(
                    f"Download stopped at {size} of {expected} bytes.",
                    maybe_sent=False,
                    hint="It will be retried.",
                )
            if size == 0:
                raise GatewayConnectionError("The gateway sent an empty file.", maybe_sent=False)
            # Never over an existing file: a video already under this name gets a numbered sibling instead.
            dest = await anyio.to_thread.run_sync(publish_new, tmp, dest)
        except httpx2.TransportError as exc:
            raise GatewayConnectionError(f"Download failed ({type(exc).__name__}).", maybe_sent=False) from None
        except OSError as exc:
            # Saving failed, not the gateway (a full disk; a temporary file another process on a shared folder
            # removed): a download error the engine counts and retries, never an exception that stops the engine.
            # The text leaves the server's paths out.
            raise DownloadError(
                f"Could not save the video ({exc.strerror or type(exc).__name__}).",
                hint="It will be retried; check that the output folder is writable and has space.",
            ) from None
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.Path(tmp).unlink(missing_ok=True)
        return Download(path=dest, size_bytes=size, sha256=digest.hexdigest())

    async def _with_retries(self, once: Callable[[], Awaitable[T]], retrying: Retrying) -> T:
        attempt = 0
        while True:
            try:
                return await once()
            except httpx2.TransportError as exc:
                error = retrying.transport_error(exc)
            except GatewayError as exc:
                error = exc
            if not retrying.retryable(error) or attempt + 1 >= self._retry.attempts:
                raise error
            delay = self._retry.delay(attempt, error.retry_after if isinstance(error, RateLimitError) else None)
            log.info("gateway %s failed (%s); retrying in %.2fs", retrying.what, error.code, delay)
            await self._sleep(delay)
            attempt += 1


@dataclass(frozen=True)
class Retrying:
    """Which failures of one kind of request are retried (docs/pixazo-contract.md §7 Errors).

    ``transport_error`` turns a transport failure into the error to report, deciding whether the request may have
    reached the gateway; ``retryable`` says whether to send it again.
    """

    what: str
    transport_error: Callable[[httpx2.TransportError], GatewayError]
    retryable: Callable[[GatewayError], bool]


def _unreachable(exc: httpx2.TransportError) -> GatewayError:
    return GatewayConnectionError(f"Could not reach the gateway ({type(exc).__name__}).", maybe_sent=False)


# Reads are free to repeat: every transient failure is retried.
_READS = Retrying("read", _unreachable, lambda error: error.retryable)

# Failures that leave the body on this machine, so the gateway cannot have taken the job.
_NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout, httpx2.WriteTimeout)


def _submit_transport_error(exc: httpx2.TransportError) -> GatewayError:
    if isinstance(exc, _NOT_SENT):
        return GatewayConnectionError(
            f"Could not reach the gateway ({type(exc).__name__}).",
            maybe_sent=False,
            hint="Nothing was submitted or charged; check the network and call again.",
        )
    return GatewayConnectionError(
        f"The connection failed after the request was sent ({type(exc).__name__}).",
        maybe_sent=True,
        hint="The gateway may have accepted the job; it must not be submitted again blindly.",
    )


def _may_have_taken(error: GatewayError) -> bool:
    """Whether a submit answered with ``error`` may have created a (billed) job.

    A 2xx is the gateway's own acceptance, whatever its body; a 5xx comes from the gateway or, as an HTML page, from
    the CDN about an origin that may have received the request (502, 504, 52x). Only a 503 HTML page is the CDN's
    own refusal (its challenge or overload page), like every 4xx.
    """
    status = error.status_code
    if status is None:
        return False
    if isinstance(error, ChallengePageError):
        return 200 <= status < 300 or (status >= 500 and status != 503)
    return 200 <= status < 300 or status >= 500


def _submit_retryable(error: GatewayError) -> bool:
    """Only a submit the gateway certainly did not take: a duplicate costs money."""
    if isinstance(error, RateLimitError | ChallengePageError | GatewayConnectionError):
        return not error.maybe_sent
    return False


_SUBMITS = Retrying("submit", _submit_transport_error, _submit_retryable)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _gateway_message(data: object, text: str) -> str:
    if isinstance(data, dict):
        for key in ("message", "error", "detail"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
    return text.strip()[:300] or "(empty body)"


def _retry_after(response: httpx2.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def _json_or_raise(response: httpx2.Response, *, request_id: str | None) -> dict[str, Any]:
    """Returns the JSON object of a 2xx answer, or raises the error that fits the answer."""
    status = response.status_code
    ctype = response.headers.get("content-type", "")
    text = response.text
    if "html" in ctype or text.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
        raise ChallengePageError(
            f"The gateway answered with an HTML page (HTTP {status}) instead of JSON, likely a bot challenge.",
            status_code=status,
            request_id=request_id,
            hint="This is transient; the call will be retried.",
        )
    data: object
    try:
        data = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        data = None
    message = _gateway_message(data, text)
    common: dict[str, Any] = {"status_code": status, "request_id": request_id, "gateway_message": message}
    if 200 <= status < 300:
        if isinstance(data, dict):
            return data
        raise UpstreamServerError(f"The gateway answered HTTP {status} without a JSON object.", **common)
    if 300 <= status < 400:
        raise _redirect_error(response, common)
    if status in (401, 403):
        raise AuthenticationError(
            f"The gateway refused the API key (HTTP {status}): {message}",
            hint="Check PIXAZO_API_KEY: copy it again from the Pixazo API console.",
            **common,
        )
    if status == 402:
        raise InsufficientCreditsError(
            f"The Pixazo account is out of balance (HTTP 402): {message}",
            hint="Top up the Pixazo balance; this request was not charged.",
            **common,
        )
    if status == 404:
        raise NotFoundError(f"The gateway does not know this request (HTTP 404): {message}", **common)
    if status == 429:
        after = _retry_after(response)
        raise RateLimitError(
            f"The gateway is rate limiting (HTTP 429): {message}",
            retry_after=after,
            hint=f"Wait {after:g} s and try again." if after is not None else "Wait a few seconds and try again.",
            **common,
        )
    if status >= 500:
        raise UpstreamServerError(f"The gateway had a server error (HTTP {status}): {message}", **common)
    raise GatewayValidationError(
        f"The gateway rejected the request (HTTP {status}): {message}",
        hint="Correct the field it names and call again.",
        **common,
    )


def _redirect_target(response: httpx2.Response) -> str:
    """Where a redirect points, as scheme, host and port only: a Location may carry credentials or signatures."""
    location = response.headers.get("location", "")
    try:
        target = response.url.join(location) if location else None
    except httpx2.InvalidURL:
        return ""
    if target is None or not target.host:
        return ""
    return f" to {target.scheme}://{target.host}" + (f":{target.port}" if target.port else "")


def _redirect_error(response: httpx2.Response, common: dict[str, Any]) -> GatewayValidationError:
    return GatewayValidationError(
        f"The gateway answered with a redirect (HTTP {response.status_code}){_redirect_target(response)}; it was "
        "not followed, because gateway requests carry the API key.",
        hint="If that address is the gateway, set PIXAZO_BASE_URL (or the PIXAZO_*_PATH routes) to it.",
        **common,
    )


def _parse_submission(data: Mapping[str, Any]) -> Submission:
    request_id = data.get("request_id") or data.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise UpstreamServerError(
            "The gateway accepted the request but sent no request_id.",
            gateway_message=json.dumps(data)[:300],
            maybe_sent=True,
            hint="The job may exist and be billed; check the Pixazo console before submitting again.",
        )
    polling_url = data.get("polling_url")
    return Submission(
        request_id=request_id,
        status=normalize_status(data.get("status") or "queued"),
        polling_url=polling_url if isinstance(polling_url, str) else None,
    )


def parse_status(data: Mapping[str, Any], request_id: str) -> GatewayStatus:
    """A status object, from a poll or a webhook body, read tolerantly."""
    raw_status = str(data.get("status", ""))
    output = data.get("output")
    urls: list[str] = []
    if isinstance(output, Mapping):
        media: object = output.get("media_url") or output.get("video_url") or output.get("url")
        if isinstance(media, str):
            urls = [media]
        elif isinstance(media, list):
            urls = [u for u in media if isinstance(u, str) and u]
    error = data.get("error") or (data.get("message") if raw_status.lower() in ("failed", "error") else None)
    status = normalize_status(raw_status)
    if status == "completed" and not urls:
        # A completion without a video is of no use to anyone; treat it as still finishing.
        status = "processing"
    return GatewayStatus(
        request_id=str(data.get("request_id") or request_id),
        status=status,
        raw_status=raw_status,
        media_urls=tuple(urls),
        error=str(error) if error else None,
        raw=dict(data),
    )
