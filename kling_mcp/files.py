"""File names the server makes: safe names from ids and titles, and the temporary files behind atomic writes.

Every file written in place of another is first written to :func:`temp_path` and renamed over the destination,
so a reader never sees half a file; :func:`stale_temps` finds what a killed writer left behind. Files a user keeps
(downloaded videos, joined films) are never written in place of another: :func:`publish_new` links the finished
temporary file under a name nobody has taken.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Created",
    "creating",
    "publish_new",
    "replacing",
    "safe_component",
    "safe_name",
    "slug",
    "stale_temps",
    "temp_path",
    "video_name",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_TOKEN_BYTES = 4  # 8 hex digits: writers racing for one destination never pick the same temporary file
_SLUG_MAX = 40
_SHORT_ID = 8
_NAME_TRIES = 1000  # "name-2.mp4" ... before giving up: far more films of one title than anyone makes


def safe_component(text: str) -> str:
    """``text`` with each run of characters other than letters, digits, ``.``, ``_`` and ``-`` made one ``_``."""
    return _UNSAFE.sub("_", text)


def safe_name(text: str, *, limit: int = 80) -> str:
    """A file name made only of safe characters: ids and titles never choose a path."""
    name = safe_component(text).strip("._")[:limit]
    return name or "untitled"


def slug(text: str | None, *, limit: int = _SLUG_MAX) -> str:
    """Lower-case ASCII words joined by ``-``, cut at a word boundary: a prompt as a file name people can read."""
    ascii_text = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    out = ""
    for word in words:
        if len(out) + len(word) + (1 if out else 0) > limit:
            break
        out = f"{out}-{word}" if out else word
    return out or (words[0][:limit] if words else "video")


def video_name(created_at: float, prompt: str | None, job_id: str) -> str:
    """``{YYYYmmdd-HHMMSS}_{slug of the prompt}_{short id}.mp4``: sorted by when it was asked for, found by what it
    shows; the short id (the id's last hex digits, its random part) keeps two takes of one prompt apart."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(created_at))
    digits = re.sub(r"[^0-9a-f]", "", job_id.lower())
    short = digits[-_SHORT_ID:] or safe_name(job_id, limit=_SHORT_ID)
    return f"{stamp}_{slug(prompt)}_{short}.mp4"


def temp_path(dest: Path) -> Path:
    """A fresh temporary sibling of ``dest``, hidden (leading dot) so listings of finished files skip it."""
    return dest.with_name(f".{dest.name}.{secrets.token_hex(_TOKEN_BYTES)}.part")


def stale_temps(dest: Path) -> list[Path]:
    """The temporary siblings of ``dest`` that :func:`temp_path` made and nobody renamed or removed."""
    # Exactly the token, not "*": that would also match the temporary files of "<name>.<more>" destinations.
    token = "[0-9a-f]" * (2 * _TOKEN_BYTES)
    return sorted(dest.parent.glob(f".{glob.escape(dest.name)}.{token}.part"))


@contextmanager
def replacing(dest: Path) -> Iterator[Path]:
    """Yields a :func:`temp_path` for ``dest`` that replaces it on success and is removed on any failure."""
    tmp = temp_path(dest)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def publish_new(tmp: Path, dest: Path) -> Path:
    """Gives the finished ``tmp`` the name ``dest``, or ``dest`` numbered ("film-2.mp4") when that is taken.

    Never replaces a file: a hard link fails when the name exists, so two writers cannot both win one name and a
    film titled like another job's video cannot overwrite it. ``tmp`` itself stays for the caller to remove.
    """
    for n in range(1, _NAME_TRIES + 1):
        candidate = dest if n == 1 else dest.with_name(f"{dest.stem}-{n}{dest.suffix}")
        try:
            os.link(tmp, candidate)
        except FileExistsError:
            continue
        except OSError:
            # A file system without hard links: the exclusive create still reserves the name for this writer alone.
            try:
                with candidate.open("xb"):
                    pass
            except FileExistsError:
                continue
            try:
                os.replace(tmp, candidate)
            except OSError:
                candidate.unlink(missing_ok=True)  # the reserved name, still empty: never leave it as a "video"
                raise
        return candidate
    raise FileExistsError(f"{dest} and {_NAME_TRIES - 1} numbered names after it are all taken")


@dataclass
class Created:
    """A file :func:`creating` is writing: ``tmp`` while it is written, then ``path``, its final name."""

    tmp: Path
    path: Path


@contextmanager
def creating(dest: Path) -> Iterator[Created]:
    """Like :func:`replacing`, but the finished file never replaces another (see :func:`publish_new`)."""
    created = Created(tmp=temp_path(dest), path=dest)
    try:
        yield created
        created.path = publish_new(created.tmp, dest)
    finally:
        created.tmp.unlink(missing_ok=True)
