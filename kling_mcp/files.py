"""File names the server makes: safe names from ids and titles, and the temporary files behind atomic writes.

Every file written in place of another is first written to :func:`temp_path` and renamed over the destination,
so a reader never sees half a file; :func:`stale_temps` finds what a killed writer left behind.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["replacing", "safe_component", "safe_name", "stale_temps", "temp_path"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_TOKEN_BYTES = 4  # 8 hex digits: writers racing for one destination never pick the same temporary file


def safe_component(text: str) -> str:
    """``text`` with each run of characters other than letters, digits, ``.``, ``_`` and ``-`` made one ``_``."""
    return _UNSAFE.sub("_", text)


def safe_name(text: str, *, limit: int = 80) -> str:
    """A file name made only of safe characters: ids and titles never choose a path."""
    name = safe_component(text).strip("._")[:limit]
    return name or "untitled"


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
