"""Request-body validation as the gateway does it (docs/pixazo-contract.md §3), derived from ``kling_mcp.limits``.

Every rule raises ``InvalidInputError`` from the same ``limits.check_*`` helpers the server uses, so the
sandbox's 400 texts and the server's own errors quote the same limits.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from kling_mcp import limits
from kling_mcp.errors import InvalidInputError

__all__ = [
    "UNSUPPORTED_FIELDS",
    "BadRequest",
    "Endpoint",
    "ParsedRequest",
    "check_webhook_url",
    "parse_submit",
]

Endpoint = Literal["text_to_video", "image_to_video"]

# Parameters other Kling versions take and this one does not (docs/pixazo-contract.md §3); sending one is a
# mistake worth telling the caller about rather than silently ignoring.
UNSUPPORTED_FIELDS: tuple[str, ...] = (
    "negative_prompt",
    "cfg_scale",
    "seed",
    "sound",
    "audio",
    "generate_audio",
    "resolution",
    "mode",
)

_WHOLE_NUMBER = re.compile(r"[0-9]+")


class BadRequest(Exception):
    """A 400 answer: ``{"error": error, "message": message}``."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message

    @classmethod
    def from_invalid(cls, exc: InvalidInputError) -> BadRequest:
        return cls(f"Invalid {exc.field}", str(exc))

    def body(self) -> dict[str, str]:
        return {"error": self.error, "message": self.message}


@dataclass(frozen=True)
class ParsedRequest:
    endpoint: Endpoint
    shots: tuple[tuple[str, int], ...]  # (prompt, seconds); a single prompt is one shot; "" when i2v has none
    aspect_ratio: limits.AspectRatio
    image_url: str | None

    @property
    def seconds(self) -> int:
        """Seconds of output video: what is billed and rendered."""
        return sum(s for _, s in self.shots)

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.shots)


def parse_submit(raw: bytes, endpoint: Endpoint) -> tuple[dict[str, Any], ParsedRequest]:
    """Returns the decoded body and what it asks for, or raises ``BadRequest``. Does not fetch ``image_url``."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest("Invalid JSON", f"The request body is not valid JSON ({exc}).") from None
    if not isinstance(body, dict):
        raise BadRequest("Invalid body", f"The request body must be a JSON object, got {_json_type(body)}.")
    try:
        return body, _parse(body, endpoint)
    except InvalidInputError as exc:
        raise BadRequest.from_invalid(exc) from None


def check_webhook_url(url: str) -> None:
    """Raises ``BadRequest`` unless ``url`` (an ``X-Webhook-URL`` header) is an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise BadRequest("Invalid X-Webhook-URL", f"X-Webhook-URL must be an http(s) URL; got {url[:200]!r}.")


def _parse(body: dict[str, Any], endpoint: Endpoint) -> ParsedRequest:
    for name in UNSUPPORTED_FIELDS:
        if name in body:
            supported = "prompt, multi_prompt, duration, aspect_ratio" + (
                ", image_url" if endpoint == "image_to_video" else ""
            )
            raise BadRequest(
                f"Unsupported parameter: {name}",
                f"{name} is not supported by Kling Video 3 Turbo Pro; remove it. Supported: {supported}.",
            )
    prompt = body.get("prompt")
    multi = body.get("multi_prompt")
    if prompt is not None and multi is not None:
        raise InvalidInputError(
            "multi_prompt",
            "exclusive with prompt",
            "both prompt and multi_prompt",
            "send either one prompt or a multi_prompt list; put the prompt into the first shot",
        )
    # A top-level duration is checked even beside multi_prompt (a bad value is a bug worth reporting),
    # but then the clip's length is the sum of the shots.
    duration = _whole_seconds(body["duration"], "duration") if body.get("duration") is not None else None
    aspect = body.get("aspect_ratio")
    aspect_ratio = limits.ASPECT_RATIO_DEFAULT if aspect is None else _aspect(aspect)

    shots: tuple[tuple[str, int], ...]
    if multi is not None:
        shots = _shots(multi)
    elif prompt is not None:
        shots = ((_prompt(prompt, "prompt"), duration or limits.DURATION_DEFAULT_S),)
    elif endpoint == "text_to_video":
        raise InvalidInputError(
            "prompt",
            f"given for text-to-video (prompt of {limits.PROMPT_MIN_CHARS}-{limits.PROMPT_MAX_CHARS} characters, "
            "or multi_prompt)",
            None,
            "describe the clip in prompt, or give multi_prompt shots",
        )
    else:
        shots = (("", duration or limits.DURATION_DEFAULT_S),)

    image_url: str | None = None
    if endpoint == "image_to_video":
        image_url = _image_url(body.get("image_url"))
    return ParsedRequest(endpoint=endpoint, shots=shots, aspect_ratio=aspect_ratio, image_url=image_url)


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def _prompt(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(
            field,
            f"a string of {limits.PROMPT_MIN_CHARS}-{limits.PROMPT_MAX_CHARS} characters",
            value,
            "send the prompt as JSON text",
        )
    return limits.check_prompt(value, field=field)


def _whole_seconds(value: object, field: str) -> int:
    """Pixazo's wanted type is unknown (docs/pixazo-contract.md §3), so 5, 5.0 and "5" are all taken."""
    seconds: int | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int):
        seconds = value
    elif isinstance(value, float) and value.is_integer():
        seconds = int(value)
    elif isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value.strip()):
        seconds = int(value.strip())
    if seconds is None:
        raise InvalidInputError(
            field,
            f"a whole number of seconds, {limits.DURATION_MIN_S}-{limits.DURATION_MAX_S}, "
            'as an integer or a numeric string like "5"',
            value,
            f"send an integer such as {limits.DURATION_DEFAULT_S}",
        )
    return limits.check_duration(seconds, field=field)


def _aspect(value: object) -> limits.AspectRatio:
    if not isinstance(value, str):
        raise InvalidInputError(
            "aspect_ratio", "one of " + ", ".join(limits.ASPECT_RATIOS), value, "use one of those values"
        )
    return limits.check_aspect_ratio(value)


def _shots(value: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list):
        raise InvalidInputError(
            "multi_prompt",
            f"a list of {limits.SHOTS_MIN}-{limits.SHOTS_MAX} shots like "
            f'{{"prompt": "...", "duration": {limits.SHOT_DURATION_DEFAULT_S}}}',
            value,
            "send multi_prompt as a JSON array of objects",
        )
    shots: list[limits.Shot] = []
    for i, item in enumerate(value):
        field = f"multi_prompt[{i}]"
        if not isinstance(item, dict):
            raise InvalidInputError(
                field, 'an object {"prompt": ..., "duration": ...}', item, "send each shot as a JSON object"
            )
        if item.get("prompt") is None:
            raise InvalidInputError(f"{field}.prompt", "given for every shot", None, "describe what the shot shows")
        if not isinstance(item["prompt"], str):
            _prompt(item["prompt"], f"{field}.prompt")
        raw = item.get("duration")
        seconds = limits.SHOT_DURATION_DEFAULT_S if raw is None else _whole_seconds(raw, f"{field}.duration")
        # Unvalidated construction: check_shots reports count, prompt and total with the shared wording.
        shots.append(limits.Shot.model_construct(prompt=item["prompt"], duration=seconds))
    checked = limits.check_shots(shots, field="multi_prompt")
    return tuple((s.prompt, s.duration) for s in checked)


def _image_url(value: object) -> str:
    limit = "an http(s) URL or a data: URI of a " + " or ".join(limits.IMAGE_FORMATS) + " image"
    if value is None:
        raise InvalidInputError("image_url", limit, None, "pass the first frame's URL; it is required")
    if not isinstance(value, str):
        raise InvalidInputError("image_url", limit, value, "send the URL as a string")
    if value.startswith("data:"):
        return value
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidInputError("image_url", limit, value, "use a public https:// link to the image")
    return value
