"""Every limit of Kling Video 3 Turbo Pro on the Pixazo gateway, stated once.

Tool schemas, the server's own checks, the sandbox gateway's validation, error texts and the README all derive
from the constants here, so a limit cannot say one thing in prose and another in code. Sources are in
``docs/pixazo-contract.md §3``.
"""

from collections.abc import Sequence
from typing import Annotated, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from kling_mcp.errors import InvalidInputError, Measured

PROMPT_MIN_CHARS: Final = 1
PROMPT_MAX_CHARS: Final = 3072

DURATION_MIN_S: Final = 3
DURATION_MAX_S: Final = 15
DURATION_DEFAULT_S: Final = 5

AspectRatio = Literal["16:9", "9:16", "1:1"]
ASPECT_RATIOS: Final[tuple[AspectRatio, ...]] = get_args(AspectRatio)
ASPECT_RATIO_DEFAULT: Final[AspectRatio] = "16:9"

SHOTS_MIN: Final = 1
SHOTS_MAX: Final = 6
SHOT_DURATION_MIN_S: Final = DURATION_MIN_S
SHOT_DURATION_MAX_S: Final = DURATION_MAX_S
SHOT_DURATION_DEFAULT_S: Final = DURATION_DEFAULT_S
TOTAL_DURATION_MAX_S: Final = 15

IMAGE_FORMATS: Final = ("JPEG", "PNG")
IMAGE_MAX_BYTES: Final = 50 * 1024 * 1024
IMAGE_MIN_SIDE_PX: Final = 300
IMAGE_MAX_ASPECT: Final = 2.5  # width/height and height/width both at most this
# This server's own bound, not the gateway's: what an image may decode to (40 MP of RGBA is 160 MB), read from the
# header before anything is decoded, so a small file that claims a huge size costs nothing.
IMAGE_MAX_PIXELS: Final = 40_000_000

# The sandbox's output sizes: 720p-tier stand-ins for the live model's 1080p.
SANDBOX_SIZES: Final[dict[AspectRatio, tuple[int, int]]] = {
    "16:9": (1280, 720),
    "9:16": (720, 1280),
    "1:1": (720, 720),
}
SANDBOX_FPS: Final = 24

# Timing model from real recordings (docs/pixazo-contract.md §8): base + per output second (+ image-to-video).
TIMING_BASE_S: Final = 45.0
TIMING_PER_SECOND_S: Final = 6.0
TIMING_IMAGE_EXTRA_S: Final = 15.0
TIMING_QUEUE_S: Final = (2.0, 10.0)

# Upstream list price, per second of output video (USD); Pixazo's own rate is unpublished.
PRICE_PER_SECOND_USD: Final = 0.14


def estimated_render_seconds(duration_s: float, *, image: bool) -> float:
    """Expected gateway time from submit to COMPLETED, queueing excluded."""
    return TIMING_BASE_S + TIMING_PER_SECOND_S * duration_s + (TIMING_IMAGE_EXTRA_S if image else 0.0)


# --- descriptions, derived from the numbers above ---------------------------------------------------------

PROMPT_DESCRIPTION: Final = f"Subject, action, camera, style; {PROMPT_MIN_CHARS}-{PROMPT_MAX_CHARS} characters."
DURATION_DESCRIPTION: Final = f"Clip length in seconds, {DURATION_MIN_S}-{DURATION_MAX_S}."
ASPECT_DESCRIPTION: Final = "Frame shape: " + ", ".join(ASPECT_RATIOS) + "."
SHOTS_DESCRIPTION: Final = (
    f"{SHOTS_MIN}-{SHOTS_MAX} shots played in order as one clip; "
    f"shot durations must add up to at most {TOTAL_DURATION_MAX_S} s."
)
SHOT_DURATION_DESCRIPTION: Final = f"Shot length in seconds, {SHOT_DURATION_MIN_S}-{SHOT_DURATION_MAX_S}."
IMAGE_DESCRIPTION: Final = (
    f"First frame: https URL, file path, data: URI or kling://jobs/ID/last-frame; {'/'.join(IMAGE_FORMATS)} "
    f"<= {IMAGE_MAX_BYTES // (1024 * 1024)} MB, sides >= {IMAGE_MIN_SIDE_PX} px, "
    f"aspect 1:{IMAGE_MAX_ASPECT:g}-{IMAGE_MAX_ASPECT:g}:1."
)
# A data: URI of the largest image allowed, base64 being 4 characters per 3 bytes.
IMAGE_REF_MAX_CHARS: Final = IMAGE_MAX_BYTES * 4 // 3 + 100

# --- annotated types: schemas and validation come from these ----------------------------------------------

Prompt = Annotated[str, Field(min_length=PROMPT_MIN_CHARS, max_length=PROMPT_MAX_CHARS, description=PROMPT_DESCRIPTION)]
Duration = Annotated[int, Field(ge=DURATION_MIN_S, le=DURATION_MAX_S, description=DURATION_DESCRIPTION)]
ShotDuration = Annotated[
    int, Field(ge=SHOT_DURATION_MIN_S, le=SHOT_DURATION_MAX_S, description=SHOT_DURATION_DESCRIPTION)
]


class Shot(BaseModel):
    """One shot of a multi-shot clip."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Prompt
    duration: ShotDuration = SHOT_DURATION_DEFAULT_S


Shots = Annotated[list[Shot], Field(min_length=SHOTS_MIN, max_length=SHOTS_MAX, description=SHOTS_DESCRIPTION)]


# --- checks a JSON schema cannot express ------------------------------------------------------------------


def check_prompt(prompt: str, *, field: str = "prompt") -> str:
    if not prompt.strip():
        raise InvalidInputError(
            field,
            f"text of {PROMPT_MIN_CHARS}-{PROMPT_MAX_CHARS} characters, not only spaces",
            prompt,
            "describe the clip in words; a prompt of only spaces is empty",
        )
    if (over := len(prompt) - PROMPT_MAX_CHARS) > 0:
        raise InvalidInputError(
            field,
            f"text of at most {PROMPT_MAX_CHARS} characters",
            Measured(f"{len(prompt)} characters"),
            f"shorten it by {over} character" + ("s" if over > 1 else ""),
        )
    return prompt


def check_duration(duration: int, *, field: str = "duration") -> int:
    if not DURATION_MIN_S <= duration <= DURATION_MAX_S:
        raise InvalidInputError(
            field,
            f"{DURATION_MIN_S}-{DURATION_MAX_S} seconds",
            duration,
            f"pick a whole number of seconds from {DURATION_MIN_S} to {DURATION_MAX_S}; for longer work, chain clips",
        )
    return duration


def check_aspect_ratio(aspect_ratio: str, *, field: str = "aspect_ratio") -> AspectRatio:
    for known in ASPECT_RATIOS:
        if aspect_ratio == known:
            return known
    raise InvalidInputError(field, "one of " + ", ".join(ASPECT_RATIOS), aspect_ratio, "use one of those values")


def check_shots(shots: Sequence[Shot], *, field: str = "shots") -> tuple[Shot, ...]:
    if not SHOTS_MIN <= len(shots) <= SHOTS_MAX:
        raise InvalidInputError(
            field,
            f"a list of {SHOTS_MIN}-{SHOTS_MAX} shots",
            Measured(f"{len(shots)} shots"),
            "merge shots or split the story into several clips" if shots else "give at least one shot",
        )
    for i, shot in enumerate(shots):
        check_prompt(shot.prompt, field=f"{field}[{i}].prompt")
        check_duration(shot.duration, field=f"{field}[{i}].duration")
    total = sum(s.duration for s in shots)
    if total > TOTAL_DURATION_MAX_S:
        raise InvalidInputError(
            field,
            f"at most {TOTAL_DURATION_MAX_S} s long in total",
            Measured("+".join(str(s.duration) for s in shots) + f" = {total} s"),
            f"shorten shots by {total - TOTAL_DURATION_MAX_S} s in all, or split into two clips",
        )
    return tuple(shots)


def check_image_pixels(width: int, height: int, *, field: str = "image_url") -> None:
    """Refuses an image whose header promises more than ``IMAGE_MAX_PIXELS``; call it before decoding."""
    if width * height > IMAGE_MAX_PIXELS:
        raise InvalidInputError(
            field,
            f"an image of at most {IMAGE_MAX_PIXELS // 1_000_000} megapixels",
            Measured(f"{width}x{height} px ({width * height / 1e6:.0f} MP)"),
            "downscale the image",
        )


def check_image(*, field: str, format: str | None, size_bytes: int | None, width: int, height: int) -> None:
    """Checks an image's decoded properties (not its URL) against the gateway's image rules."""
    if format not in IMAGE_FORMATS:
        raise InvalidInputError(
            field,
            "a " + " or ".join(IMAGE_FORMATS) + " image",
            format or "unrecognised content",
            "convert the image to PNG or JPEG",
        )
    if size_bytes is not None and size_bytes > IMAGE_MAX_BYTES:
        raise InvalidInputError(
            field,
            f"an image of at most {IMAGE_MAX_BYTES // (1024 * 1024)} MB",
            Measured(f"{size_bytes / (1024 * 1024):.1f} MB"),
            "downscale or recompress the image",
        )
    check_image_pixels(width, height, field=field)
    if min(width, height) < IMAGE_MIN_SIDE_PX:
        raise InvalidInputError(
            field,
            f"an image whose sides are each at least {IMAGE_MIN_SIDE_PX} px",
            Measured(f"{width}x{height} px"),
            f"upscale the image so its shorter side is at least {IMAGE_MIN_SIDE_PX} px",
        )
    ratio = width / height
    if not 1 / IMAGE_MAX_ASPECT <= ratio <= IMAGE_MAX_ASPECT:
        raise InvalidInputError(
            field,
            f"an image with an aspect ratio between 1:{IMAGE_MAX_ASPECT:g} and {IMAGE_MAX_ASPECT:g}:1",
            Measured(f"{width}x{height} px ({ratio:.2f}:1)"),
            "crop the image closer to the clip's aspect ratio",
        )


def check_image_url(url: str, *, field: str = "image_url") -> str:
    """An image reference the gateway can take: an http(s) URL, or a ``data:image/...`` URI."""
    text = url.strip()
    lowered = text.lower()
    if lowered.startswith(("http://", "https://")) and len(text) > len("https://x"):
        return text
    if lowered.startswith(("data:image/png;base64,", "data:image/jpeg;base64,", "data:image/jpg;base64,")):
        return text
    raise InvalidInputError(
        field,
        "an http(s) URL (or a data:image/png|jpeg;base64 URI) of a " + " or ".join(IMAGE_FORMATS) + " image",
        text,
        "upload the image somewhere the gateway can fetch it and pass that https:// URL",
    )
