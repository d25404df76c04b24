"""One exception tree for kling-mcp; each class says what it means, and ``code`` is its name in tool results.

    KlingError
    ├── ConfigurationError
    ├── InvalidInputError
    ├── GatewayError
    │   ├── AuthenticationError
    │   ├── InsufficientCreditsError
    │   ├── GatewayValidationError
    │   ├── NotFoundError
    │   ├── RateLimitError
    │   ├── UpstreamServerError
    │   ├── ChallengePageError
    │   └── GatewayConnectionError
    ├── JobError
    │   └── JobNotFoundError
    ├── SpendLimitError
    ├── MediaError
    ├── DownloadError
    └── BlockedURLError

Lower-level errors (httpx2, sqlite3, av) are translated at the boundary where they occur, so callers only ever
handle these types (docs/pixazo-contract.md §7 Errors).
"""

from __future__ import annotations

import json
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar


# Errors are dataclasses so each attribute is declared once; eq and repr stay Exception's own (identity, args).
@dataclass(eq=False, repr=False)
class KlingError(Exception):
    """Every error this package raises. ``hint`` is advice a model or a person can act on."""

    message: str
    _: KW_ONLY
    hint: str | None = None

    code: ClassVar[str] = "kling_error"

    def __init_subclass__(cls, *, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ConfigurationError(KlingError, code="configuration"):
    """Bad settings or environment: the server will not start."""


class LedgerUnavailableError(KlingError, code="ledger_unavailable"):
    """The shared ledger (PostgreSQL) does not answer: the server tries again by itself."""


class Measured(str):
    """What was given, described (its length, its size) rather than quoted: shown as is in an error text."""

    __slots__ = ()


def show_value(value: Any) -> str:
    """A value as a model reads it in an error text: JSON (the form it sent), cut to 80 characters."""
    text = str(value) if isinstance(value, Measured) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def must_be(field: str, limit: str, shown: str | None) -> str:
    """The sentence every limit is stated in: "duration must be 3-15 seconds; got 16." (``shown`` None: not given).

    ``limit`` is the noun or adjective phrase that completes "must be"; the fix follows as "Fix: ...".
    """
    return f"{field} must be {limit}" + (f"; got {shown}." if shown is not None else ".")


class InvalidInputError(KlingError, code="invalid_input"):
    """A value broke a limit, caught before anything is paid for. Names the field, the limit, the value and the fix.

    ``limit`` completes "<field> must be ..." and ``fix`` completes "Fix: ..."; see ``must_be``.
    """

    def __init__(self, field: str, limit: str, value: Any, fix: str) -> None:
        self.field = field
        self.limit = limit
        self.value = value
        self.fix = fix
        super().__init__(must_be(field, limit, None if value is None else show_value(value)), hint=f"Fix: {fix}.")


@dataclass(eq=False, repr=False, kw_only=True)
class GatewayError(KlingError, code="gateway_error"):
    """The gateway answered with an error, or could not be reached. ``retryable``: a read may be sent again."""

    status_code: int | None = None
    request_id: str | None = None
    gateway_message: str | None = None  # the gateway's own words; never the API key
    # For submits: the request may have reached the gateway (and cost money) although no answer came back.
    maybe_sent: bool = False

    retryable: ClassVar[bool] = False

    def __init_subclass__(cls, *, retryable: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if retryable is not None:
            cls.retryable = retryable


class AuthenticationError(GatewayError, code="authentication"):
    """401/403: a missing or wrong API key."""


class InsufficientCreditsError(GatewayError, code="insufficient_credits"):
    """402: the account is out of balance."""


class GatewayValidationError(GatewayError, code="gateway_validation"):
    """400 and other 4xx: the gateway refused the request body."""


class NotFoundError(GatewayError, code="not_found"):
    """404: no such request id."""


@dataclass(eq=False, repr=False, kw_only=True)
class RateLimitError(GatewayError, code="rate_limited", retryable=True):
    """429: slow down, for ``retry_after`` seconds when the gateway says."""

    retry_after: float | None = None


class UpstreamServerError(GatewayError, code="upstream_server", retryable=True):
    """5xx, or a 2xx answer that is not a JSON object: transient."""


class ChallengePageError(GatewayError, code="challenge_page", retryable=True):
    """An HTML (bot-challenge) page where JSON was expected."""


class GatewayConnectionError(GatewayError, code="connection", retryable=True):
    """Transport failure or timeout; ``maybe_sent`` tells whether the request may have reached the gateway."""


class JobError(KlingError, code="job_error"):
    """A job could not produce a video."""


class JobNotFoundError(JobError, code="job_not_found"):
    """No job with that id in the ledger."""


@dataclass(eq=False, repr=False, kw_only=True)
class SpendLimitError(KlingError, code="spend_limit"):
    """A server-side spend guard (active jobs, seconds per day) refused a request before it was sent."""

    limit: str
    remaining: float
    resets_at: str | None
    hint: str = field()  # required: a refusal always says what to do instead


class MediaError(KlingError, code="media"):
    """A video or image could not be read, decoded or written."""


class DownloadError(KlingError, code="download"):
    """The finished video could not be saved locally."""


@dataclass(eq=False, repr=False, kw_only=True)
class BlockedURLError(KlingError, code="blocked_url"):
    """The SSRF guard refused a URL: wrong scheme, credentials in it, or a host that is (or resolves to) non-public.

    Never retried: the same URL would be refused again. ``address`` is the offending IP when one was involved.
    """

    host: str
    reason: str
    address: str | None = None
    hint: str = field()  # required: a refusal always says what to do instead
