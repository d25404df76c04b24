"""render_placeholder: real H.264 clips, one visibly different captioned segment per shot, image first for i2v."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from kling_mcp.sandbox import render_placeholder
from kling_mcp.sandbox.render import RenderCancelled

SIZE = (320, 180)
FPS = 8


def frames_of(path: Path) -> list[Image.Image]:
    with av.open(str(path), "r") as container:
        return [frame.to_image() for frame in container.decode(video=0)]  # type: ignore[no-untyped-call]


def info(path: Path) -> dict[str, Any]:
    with av.open(str(path), "r") as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        assert container.duration is not None
        assert stream.average_rate is not None
        return {
            "duration": container.duration / av.time_base,
            "codec": cc.name,
            "pix_fmt": cc.format.name if cc.format is not None else None,
            "size": (cc.width, cc.height),
            "fps": float(stream.average_rate),
            "audio": len(container.streams.audio),
        }


def rgb_pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    # tobytes rather than getdata: getdata is deprecated in Pillow 13, its successor absent before it
    data = image.convert("RGB").tobytes()
    return [(data[i], data[i + 1], data[i + 2]) for i in range(0, len(data), 3)]


def mean_rgb(image: Image.Image, box: tuple[int, int, int, int]) -> tuple[float, float, float]:
    pixels = rgb_pixels(image.crop(box))
    n = len(pixels)
    return (
        sum(p[0] for p in pixels) / n,
        sum(p[1] for p in pixels) / n,
        sum(p[2] for p in pixels) / n,
    )


def close(a: tuple[float, ...], b: tuple[float, ...], tolerance: float) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def test_a_render_is_h264_yuv420p_with_the_shots_total_length_size_and_fps(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"

    count = render_placeholder(path, [("first", 3), ("second", 4)], size=SIZE, fps=FPS)

    assert count == 7 * FPS
    assert info(path) == {
        "duration": pytest.approx(7.0, abs=0.15),
        "codec": "h264",
        "pix_fmt": "yuv420p",
        "size": SIZE,
        "fps": float(FPS),
        "audio": 0,
    }
    assert len(frames_of(path)) == count


def test_the_movie_index_comes_first_so_players_can_stream_it(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    render_placeholder(path, [("x", 3)], size=SIZE, fps=FPS)

    data = path.read_bytes()

    assert data[4:8] == b"ftyp"
    assert data.index(b"moov") < data.index(b"mdat")


@pytest.mark.parametrize("size", [(320, 180), (180, 320), (180, 180), (362, 202)])
def test_any_even_size_renders_exactly_even_when_rows_are_padded(tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / "clip.mp4"

    render_placeholder(path, [("x", 3)], size=size, fps=FPS)

    assert info(path)["size"] == size


def test_each_shot_has_its_own_colours(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    shots = [(f"shot {i}", 3.0) for i in range(5)]
    render_placeholder(path, shots, size=SIZE, fps=FPS)
    frames = frames_of(path)

    # a background patch away from the caption, label and moving square, in the middle of each shot
    colours = [mean_rgb(frames[i * 3 * FPS + FPS], (150, 30, 170, 45)) for i in range(len(shots))]

    for i, a in enumerate(colours):
        for b in colours[i + 1 :]:
            assert not close(a, b, 25), colours


def test_frames_show_the_yellow_sandbox_label_and_a_moving_square(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    render_placeholder(path, [("caption", 3)], size=SIZE, fps=FPS)
    frames = frames_of(path)

    label = frames[5].crop((0, 0, 160, 25))
    yellow = [p for p in rgb_pixels(label) if p[0] > 180 and p[1] > 180 and p[2] < 110]
    assert len(yellow) > 20
    assert (
        frames[1].convert("RGB").crop((0, 120, 320, 160)).tobytes()
        != frames[-1].convert("RGB").crop((0, 120, 320, 160)).tobytes()
    )


def test_the_caption_is_drawn_in_the_middle_of_the_frame(tmp_path: Path) -> None:
    plain, captioned = tmp_path / "plain.mp4", tmp_path / "captioned.mp4"
    render_placeholder(plain, [("", 3)], size=SIZE, fps=FPS)
    render_placeholder(captioned, [("A RED FOX RUNS", 3)], size=SIZE, fps=FPS)

    middle = (60, 80, 260, 100)
    a = frames_of(plain)[0].convert("L").crop(middle)
    b = frames_of(captioned)[0].convert("L").crop(middle)

    changed = sum(1 for x, y in zip(a.tobytes(), b.tobytes(), strict=True) if abs(x - y) > 60)
    assert changed > 200


def test_image_to_video_opens_on_the_input_image_then_captions_over_it(tmp_path: Path) -> None:
    picture = Image.new("RGB", (640, 360))
    quadrants = {(0, 0): (220, 40, 40), (320, 0): (40, 200, 40), (0, 180): (40, 40, 220), (320, 180): (230, 230, 230)}
    for (x, y), colour in quadrants.items():
        picture.paste(colour, (x, y, x + 320, y + 180))
    path = tmp_path / "i2v.mp4"

    render_placeholder(path, [("over the image", 3), ("second shot", 3)], size=SIZE, fps=FPS, first_image=picture)
    frames = frames_of(path)

    assert len(frames) == 6 * FPS
    for (x, y), colour in quadrants.items():
        box = (x // 2 + 20, y // 2 + 20, x // 2 + 60, y // 2 + 60)
        assert close(mean_rgb(frames[0], box), colour, 10), (box, mean_rgb(frames[0], box), colour)
    # the first shot keeps the picture as background; the second has its own gradient
    assert close(mean_rgb(frames[FPS], (200, 100, 300, 110)), quadrants[(320, 180)], 20)
    assert not close(mean_rgb(frames[4 * FPS], (200, 100, 300, 110)), quadrants[(320, 180)], 40)


def test_an_input_image_of_another_shape_is_cropped_to_fill_the_frame(tmp_path: Path) -> None:
    picture = Image.new("RGB", (400, 400), (30, 30, 200))
    picture.paste((200, 30, 30), (0, 0, 200, 400))
    path = tmp_path / "i2v.mp4"

    render_placeholder(path, [("x", 3)], size=SIZE, fps=FPS, first_image=picture)
    first = frames_of(path)[0]

    assert close(mean_rgb(first, (10, 10, 60, 170)), (200, 30, 30), 12)
    assert close(mean_rgb(first, (260, 10, 310, 170)), (30, 30, 200), 12)


@pytest.mark.parametrize(
    ("shots", "size", "fps"),
    [([("x", 3)], (321, 180), FPS), ([("x", 3)], (8, 8), FPS), ([], SIZE, FPS), ([("x", 3)], SIZE, 0)],
)
def test_bad_arguments_are_refused_before_anything_is_written(
    tmp_path: Path, shots: list[tuple[str, float]], size: tuple[int, int], fps: int
) -> None:
    with pytest.raises(ValueError, match=r"size|shot|fps"):
        render_placeholder(tmp_path / "x.mp4", shots, size=size, fps=fps)

    assert list(tmp_path.iterdir()) == []


def test_should_stop_cancels_the_render_and_leaves_no_file(tmp_path: Path) -> None:
    calls = 0

    def stop_after_a_few_frames() -> bool:
        nonlocal calls
        calls += 1
        return calls > 5

    with pytest.raises(RenderCancelled):
        render_placeholder(tmp_path / "x.mp4", [("x", 15)], size=SIZE, fps=FPS, should_stop=stop_after_a_few_frames)

    assert list(tmp_path.iterdir()) == []


def test_a_render_replaces_the_destination_in_one_step(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"old")

    render_placeholder(path, [("x", 3)], size=SIZE, fps=FPS)

    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    assert path.read_bytes()[4:8] == b"ftyp"


def test_non_ascii_captions_render(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"

    render_placeholder(path, [("Café – “déjà vu” 東京", 3)], size=SIZE, fps=FPS)

    assert info(path)["size"] == SIZE


@settings(max_examples=25, deadline=None)
@given(caption=st.text(max_size=200))
def test_any_prompt_text_renders(caption: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"

        assert render_placeholder(path, [(caption, 1)], size=(64, 36), fps=2) == 2


def test_importing_the_sandbox_package_does_not_load_pyav_or_pillow() -> None:
    code = "import sys, kling_mcp.sandbox; sys.exit(('av' in sys.modules) * 1 + ('PIL' in sys.modules) * 2)"

    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], timeout=60, check=False)

    assert result.returncode == 0, "1 = av loaded, 2 = PIL loaded, 3 = both"
