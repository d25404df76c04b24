"""One exception tree for kling-mcp.

    KlingError                       every error this package raises; .hint says what to do next
    ├── ConfigurationError           bad settings or environment; the server will not start
    ├── InvalidInputError            a request broke a limit; caught before anything is paid for
    ├── GatewayError                 the gateway answered with an error, or could not be reached
    │   ├── AuthenticationError      401/403: missing or wrong API key
    │   ├── InsufficientCreditsError 402: out of balance
    │   ├── GatewayValidationError   400 and other 4xx: the gateway refused the request body
    │   ├── NotFoundError            404: no such request id
    │   ├── RateLimitError           429: slow down; .retry_after
    │   ├── UpstreamServerError      5xx: transient
    │   ├── ChallengePageError       an HTML (bot-challenge) page where JSON was expected
    │   └── GatewayConnectionError   transport failure or timeout
    │   (every GatewayError has .status_code, .request_id, .gateway_message and, for submits, .maybe_sent)
    ├── JobError                     a job could not produce a video
    │   └── JobNotFoundError         no job with that request id
    ├── SpendLimitError              a spend guard refused the request; .limit, .remaining, .resets_at
    ├── MediaError                   a video or image could not be read, decoded or written
    ├── DownloadError                the finished video could not be saved locally
    └── BlockedURLError              a URL to fetch is not a public http(s) URL (SSRF guard); .host, .address, .reason

Lower-level errors (httpx2, sqlite3, av) are translated at the boundary where they occur, so callers only ever
handle these types.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar


# Errors are dataclasses so each attribute is declared once; eq and repr stay Exception's own (identity, args).
@dataclass(eq=False, repr=False)
class KlingError(Exception):
    """Base of every kling-mcp error. ``hint`` is advice a model or a person can act on."""

    message: str
    _: KW_ONLY
    hint: str | None = None

    code: ClassVar[str] = "kling_error"

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ConfigurationError(KlingError):
    code = "configuration"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class InvalidInputError(KlingError):
    """A value broke a limit. Names the field, the limit, the value given and the fix."""

    code = "invalid_input"

    def __init__(self, field: str, limit: str, value: Any, fix: str) -> None:
        self.field = field
        self.limit = limit
        self.value = value
        self.fix = fix
        super().__init__(f"Invalid {field}: must be {limit}; got {_show(value)}.", hint=f"Fix: {fix}.")


@dataclass(eq=False, repr=False, kw_only=True)
class GatewayError(KlingError):
    """The gateway answered with an error status, or could not be reached."""

    status_code: int | None = None
    request_id: str | None = None
    gateway_message: str | None = None
    # For submits: the request may have reached the gateway (and cost money) although no answer came back.
    maybe_sent: bool = False

    code: ClassVar[str] = "gateway_error"
    retryable: ClassVar[bool] = False


class AuthenticationError(GatewayError):
    code = "authentication"


class InsufficientCreditsError(GatewayError):
    code = "insufficient_credits"


class GatewayValidationError(GatewayError):
    code = "gateway_validation"


class NotFoundError(GatewayError):
    code = "not_found"


@dataclass(eq=False, repr=False, kw_only=True)
class RateLimitError(GatewayError):
    retry_after: float | None = None

    code = "rate_limited"
    retryable = True


class UpstreamServerError(GatewayError):
    code = "upstream_server"
    retryable = True


class ChallengePageError(GatewayError):
    code = "challenge_page"
    retryable = True


class GatewayConnectionError(GatewayError):
    """Transport failure or timeout; ``maybe_sent`` tells whether the request may have reached the gateway."""

    code = "connection"
    retryable = True


class JobError(KlingError):
    code = "job_error"


class JobNotFoundError(JobError):
    code = "job_not_found"


@dataclass(eq=False, repr=False, kw_only=True)
class SpendLimitError(KlingError):
    """A server-side spend guard (active jobs, seconds per day) refused a request before it was sent."""

    limit: str
    remaining: float
    resets_at: str | None
    hint: str = field()  # required: a refusal always says what to do instead

    code = "spend_limit"


class MediaError(KlingError):
    """A video or image could not be read, decoded or written."""

    code = "media"


class DownloadError(KlingError):
    code = "download"


@dataclass(eq=False, repr=False, kw_only=True)
class BlockedURLError(KlingError):
    """The SSRF guard refused a URL: wrong scheme, credentials in it, or a host that is (or resolves to) non-public.

    Never retried: the same URL would be refused again. ``address`` is the offending IP when one was involved.
    """

    host: str
    reason: str
    address: str | None = None
    hint: str = field()  # required: a refusal always says what to do instead

    code = "blocked_url"
