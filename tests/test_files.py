"""kling_mcp.files and kling_mcp.render_size: the one place safe names, temp files and render sizes are decided."""

from __future__ import annotations

from pathlib import Path

import pytest

from kling_mcp.files import replacing, safe_component, safe_name, stale_temps, temp_path
from kling_mcp.render_size import is_render_size


def test_safe_component_replaces_each_run_of_unsafe_characters_with_one_underscore() -> None:
    assert safe_component("../a b//c:d.mp4") == ".._a_b_c_d.mp4"
    assert safe_component("kl_01-AZ.x") == "kl_01-AZ.x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("My film: take 2!", "My_film_take_2"), ("..hidden", "hidden"), ("???", "untitled"), ("x" * 100, "x" * 80)],
)
def test_safe_name_never_starts_with_a_dot_and_is_never_empty(text: str, expected: str) -> None:
    assert safe_name(text) == expected


def test_stale_temps_finds_the_temporary_files_of_its_destination_only(tmp_path: Path) -> None:
    dest = tmp_path / "clip[1].mp4"  # glob metacharacters in the name must not widen or break the match
    mine = [temp_path(dest) for _ in range(2)]
    others = [temp_path(tmp_path / "clip1.mp4"), temp_path(tmp_path / "clip[1].mp4.mp4"), dest]
    for path in [*mine, *others]:
        path.write_bytes(b"x")

    assert stale_temps(dest) == sorted(mine)
    assert all(p.name.startswith(".") and p.parent == tmp_path for p in mine)


def test_replacing_swaps_the_file_in_on_success_and_leaves_the_old_one_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "out.mp4"
    dest.write_bytes(b"old")

    def write_half() -> None:
        with replacing(dest) as tmp:
            tmp.write_bytes(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_half()
    assert dest.read_bytes() == b"old"
    assert stale_temps(dest) == []

    with replacing(dest) as tmp:
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new"
    assert list(tmp_path.iterdir()) == [dest]


@pytest.mark.parametrize(
    ("size", "ok"),
    [((16, 16), True), ((320, 180), True), ((14, 16), False), ((16, 14), False), ((17, 16), False), ((16, 33), False)],
)
def test_a_render_size_has_even_sides_of_at_least_16_pixels(size: tuple[int, int], ok: bool) -> None:
    assert is_render_size(*size) is ok
