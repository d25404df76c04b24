"""Tests for kling_mcp.media on small real H.264 clips generated with PyAV.

Every video frame is one solid colour from a 27-colour grid (channel steps of 80), so a frame can be told apart
from any other by its mean colour, even after yuv420p rounding, scaling or JPEG compression.
"""

from __future__ import annotations

import io
import math
import subprocess
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import pytest
from av.audio.frame import AudioFrame
from av.video.frame import VideoFrame
from PIL import Image, ImageChops, ImageStat

from kling_mcp import media
from kling_mcp.errors import InvalidInputError
from kling_mcp.media import MediaError, _concat, _frames, _reencode

ROOT = Path(__file__).resolve().parent.parent
_LEVELS = (30, 110, 190)
# A permutation of the 27 grid colours (step 10 is coprime with 27) so that neighbouring frames differ a lot.
PALETTE = [(_LEVELS[k // 9], _LEVELS[(k // 3) % 3], _LEVELS[k % 3]) for k in ((i * 10 + 4) % 27 for i in range(27))]
TOLERANCE = 8.0  # mean absolute difference per channel, 0-255
SAMPLE_RATE = 48_000


def colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


@dataclass(frozen=True)
class Clip:
    path: Path
    colours: list[tuple[int, int, int]]
    size: tuple[int, int]
    fps: int

    @property
    def duration_s(self) -> float:
        return len(self.colours) / self.fps


def make_clip(
    path: Path,
    *,
    size: tuple[int, int] = (320, 180),
    fps: int = 8,
    frames: int = 24,
    first: int = 0,
    gop: int = 8,
    audio: bool = False,
    noise: bool = False,
) -> Clip:
    """H.264 yuv420p MP4 whose frame k is solid ``colour(first + k)`` (or RGB noise), optionally with AAC audio."""
    colours = [colour(first + k) for k in range(frames)]
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
        # scenecut=0: every frame is a new solid colour, and scene-cut detection would make each one a keyframe.
        vs = out.add_stream(
            "libx264", rate=fps, options={"preset": "veryfast", "crf": "18", "x264-params": "scenecut=0"}
        )
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        vs.codec_context.gop_size = gop
        astream = _audio_stream(out) if audio else None
        noise_image = _noise(size) if noise else None
        for k, rgb in enumerate(colours):
            image = (
                ImageChops.offset(noise_image, k * 37, k * 11)
                if noise_image is not None
                else Image.new("RGB", size, rgb)
            )
            frame = VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
            frame.pts = k
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if astream is not None:
            _write_tone(out, astream, frames / fps)
    return Clip(path=path, colours=colours, size=size, fps=fps)


def _noise(size: tuple[int, int]) -> Image.Image:
    return Image.merge("RGB", [Image.effect_noise(size, 90) for _ in range(3)])


def _audio_stream(out: av.container.OutputContainer) -> av.audio.stream.AudioStream:
    # Streams must all exist before the first packet is muxed (the header is written then).
    stream = out.add_stream("aac", rate=SAMPLE_RATE)
    stream.layout, stream.format = "stereo", "fltp"
    return stream


def _write_tone(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    total, pts = round(seconds * SAMPLE_RATE), 0
    while pts < total:
        n = min(1024, total - pts)
        samples = array("f", (0.3 * math.sin(2 * math.pi * 440 * (pts + i) / SAMPLE_RATE) for i in range(n)))
        frame = AudioFrame(format="fltp", layout="stereo", samples=n)
        for plane in frame.planes:
            plane.update(samples.tobytes())
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, pts, Fraction(1, SAMPLE_RATE)
        out.mux(stream.encode(frame))
        pts += n
    out.mux(stream.encode(None))


def decode_all(path: Path) -> list[Image.Image]:
    with av.open(str(path)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]  # type: ignore[no-untyped-call]


def decode_checked(path: Path) -> tuple[int, float]:
    """Decodes every video and audio frame; fails on any FFmpeg error log or corrupt frame.

    Returns (video frame count, seconds of audio).
    """
    frames, audio_samples = 0, 0
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # PyAV forwards no FFmpeg logs at all unless a level is set
    try:
        with av.logging.Capture() as logs, av.open(str(path)) as container:
            for frame in container.decode(*container.streams.video, *container.streams.audio):
                if isinstance(frame, AudioFrame):
                    audio_samples += frame.samples
                elif isinstance(frame, VideoFrame):
                    assert not frame.is_corrupt
                    frames += 1
    finally:
        av.logging.set_level(previous)
    assert logs == []
    return frames, audio_samples / SAMPLE_RATE


def diff(a: Image.Image, b: Image.Image) -> float:
    """Largest per-channel mean absolute difference between two same-size images."""
    assert a.size == b.size
    return max(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean)


def solid_diff(image: Image.Image, rgb: tuple[int, int, int]) -> float:
    return diff(image, Image.new("RGB", image.size, rgb))


def audio_rms(path: Path, start_s: float, end_s: float) -> float:
    """RMS of the first channel between two times of the decoded audio track."""
    total, count, pos = 0.0, 0, 0
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            samples = array("f", bytes(frame.planes[0]))[: frame.samples]
            for i, value in enumerate(samples):
                t = (pos + i) / frame.sample_rate
                if start_s <= t < end_s:
                    total += value * value
                    count += 1
            pos += frame.samples
    return math.sqrt(total / max(1, count))


def top_level_boxes(path: Path) -> list[str]:
    """MP4 top-level box types in file order."""
    boxes, data, pos = [], path.read_bytes(), 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        boxes.append(data[pos + 4 : pos + 8].decode("latin-1"))
        if size == 1:  # 64-bit size follows the type
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        if size < 8:
            break
        pos += size
    return boxes


def keyframe_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(
            float(p.pts * p.time_base) for p in container.demux(stream) if p.is_keyframe and p.pts is not None
        )


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name)


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Clip]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "land": make_clip(folder / "land.mp4", frames=24),
        "land2": make_clip(folder / "land2.mp4", frames=16, first=5),
        "land3": make_clip(folder / "land3.mp4", frames=12, first=11),
        "one_gop": make_clip(folder / "one_gop.mp4", frames=20, gop=1000),
        "portrait": make_clip(folder / "portrait.mp4", size=(180, 320), frames=8, first=3),
        "fast": make_clip(folder / "fast.mp4", fps=16, frames=16, first=7),
        "short": make_clip(folder / "short.mp4", frames=4, first=9),
        "sound": make_clip(folder / "sound.mp4", frames=16, audio=True),
        "sound2": make_clip(folder / "sound2.mp4", frames=8, first=13, audio=True),
        "noisy": make_clip(folder / "noisy.mp4", size=(1920, 1080), frames=8, gop=4, noise=True),
    }


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


# --------------------------------------------------------------------------------------------------- import


def test_importing_media_loads_neither_pyav_nor_pillow() -> None:
    code = (
        "import kling_mcp.media, sys; assert 'av' not in sys.modules and 'PIL' not in sys.modules, sorted(sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


# --------------------------------------------------------------------------------------------------- probe


def test_probe_reports_size_frame_rate_duration_codec_and_frame_count(clips: dict[str, Clip]) -> None:
    clip = clips["land"]
    info = media.probe(clip.path)
    assert (info.width, info.height) == (320, 180)
    assert info.fps == pytest.approx(8.0)
    assert info.duration_s == pytest.approx(3.0, abs=0.01)
    assert (info.codec, info.pix_fmt, info.frames) == ("h264", "yuv420p", 24)
    assert info.has_audio is False
    assert info.size_bytes == clip.path.stat().st_size


def test_probe_reports_an_audio_track_and_portrait_sizes(clips: dict[str, Clip]) -> None:
    assert media.probe(clips["sound"].path).has_audio is True
    portrait = media.probe(clips["portrait"].path)
    assert (portrait.width, portrait.height) == (180, 320)


@pytest.mark.parametrize("content", [None, b"", b"not a video at all" * 100], ids=["missing", "empty", "garbage"])
def test_probe_of_an_unreadable_file_raises_media_error_naming_the_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "broken.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MediaError, match=r"broken\.mp4") as caught:
        media.probe(path)
    assert caught.value.code == "media"
    assert caught.value.hint


# --------------------------------------------------------------------------------------------------- frames


@pytest.mark.parametrize("name", ["land", "one_gop", "portrait", "sound", "short"])
def test_last_frame_image_equals_the_final_frame_of_a_full_decode(clips: dict[str, Clip], name: str) -> None:
    clip = clips[name]
    reference = decode_all(clip.path)[-1]
    image = media.last_frame_image(clip.path)
    assert image.size == clip.size
    assert diff(image, reference) < 1.0
    assert solid_diff(image, clip.colours[-1]) < TOLERANCE


def test_last_frame_falls_back_to_a_full_decode_when_the_seek_finds_nothing(
    clips: dict[str, Clip], monkeypatch: pytest.MonkeyPatch
) -> None:
    def seek_past_the_end(
        container: av.container.InputContainer, stream: av.video.stream.VideoStream, at: float
    ) -> None:
        container.seek(10**9, stream=stream, backward=False)

    monkeypatch.setattr(_frames, "_seek", seek_past_the_end)
    clip = clips["land"]
    assert solid_diff(media.last_frame_image(clip.path), clip.colours[-1]) < TOLERANCE


@pytest.mark.parametrize(("suffix", "fmt"), [(".png", "PNG"), (".jpg", "JPEG"), (".JPEG", "JPEG")])
def test_last_frame_writes_png_or_jpeg_by_suffix(clips: dict[str, Clip], out_dir: Path, suffix: str, fmt: str) -> None:
    clip = clips["land"]
    written = media.last_frame(clip.path, out_dir / f"last{suffix}")
    assert written == out_dir / f"last{suffix}"
    with Image.open(written) as image:
        assert image.format == fmt
        assert image.size == clip.size
        assert solid_diff(image, clip.colours[-1]) < TOLERANCE
    assert leftovers(out_dir) == []


def test_last_frame_rejects_an_unknown_image_suffix(clips: dict[str, Clip], out_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="out_path"):
        media.last_frame(clips["land"].path, out_dir / "last.webp")


def test_first_frame_image_is_the_first_frame_of_the_clip(clips: dict[str, Clip]) -> None:
    clip = clips["land2"]
    image = media.first_frame_image(clip.path)
    assert diff(image, decode_all(clip.path)[0]) < 1.0
    assert solid_diff(image, clip.colours[0]) < TOLERANCE


# --------------------------------------------------------------------------------------------------- poster


def test_poster_of_a_noisy_1080p_clip_fits_200_kb_and_640_px(clips: dict[str, Clip], out_dir: Path) -> None:
    written = media.poster(clips["noisy"].path, out_dir / "poster.jpg")
    assert written.stat().st_size <= 200_000
    with Image.open(written) as image:
        assert image.format == "JPEG"
        assert max(image.size) <= 640
        assert abs(image.width / image.height - 16 / 9) < 0.02
    assert leftovers(out_dir) == []


def test_poster_shrinks_further_when_the_byte_budget_demands_it(clips: dict[str, Clip], out_dir: Path) -> None:
    written = media.poster(clips["noisy"].path, out_dir / "tiny.jpg", max_bytes=8_000, max_side=640)
    assert written.stat().st_size <= 8_000


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("land", 8),  # 3 s with keyframes every second: the keyframe at 1.0 s, exactly a third
        ("one_gop", 6),  # 2.5 s, one keyframe: no keyframe near 0.83 s, so the frame on screen then
    ],
)
def test_poster_shows_a_frame_about_a_third_of_the_way_in(
    clips: dict[str, Clip], out_dir: Path, name: str, index: int
) -> None:
    clip = clips[name]
    with Image.open(media.poster(clip.path, out_dir / "poster.jpg")) as image:
        assert solid_diff(image, clip.colours[index]) < TOLERANCE


def test_poster_of_a_clip_under_a_second_shows_its_first_frame(clips: dict[str, Clip], out_dir: Path) -> None:
    clip = clips["short"]
    with Image.open(media.poster(clip.path, out_dir / "poster.jpg")) as image:
        assert solid_diff(image, clip.colours[0]) < TOLERANCE


def test_poster_must_be_written_as_jpeg(clips: dict[str, Clip], out_dir: Path) -> None:
    with pytest.raises(InvalidInputError):
        media.poster(clips["land"].path, out_dir / "poster.png")


# --------------------------------------------------------------------------------------------------- contact sheet


def tiles(sheet: Image.Image, count: int, cols: int, size: tuple[int, int]) -> list[Image.Image]:
    w, h = size
    # Skip a 4 px border so JPEG ringing between neighbouring tiles does not count.
    return [
        sheet.crop(((i % cols) * w + 4, (i // cols) * h + 4, (i % cols + 1) * w - 4, (i // cols + 1) * h - 4))
        for i in range(count)
    ]


def test_contact_sheet_with_shot_times_shows_the_frame_on_screen_at_each_time(
    clips: dict[str, Clip], out_dir: Path
) -> None:
    clip = clips["land"]
    times = [2.5, 0.5, 1.5, 0.0, 2.99]  # not sorted: tiles keep the caller's order
    written = media.contact_sheet(clip.path, out_dir / "sheet.png", times=times, cols=3, thumb_w=160)
    with Image.open(written) as sheet:
        assert sheet.size == (3 * 160, 2 * 90)
        for tile, t in zip(tiles(sheet, len(times), 3, (160, 90)), times, strict=True):
            assert solid_diff(tile, clip.colours[math.floor(t * clip.fps)]) < TOLERANCE, t


def test_contact_sheet_times_past_the_end_show_the_last_frame(clips: dict[str, Clip], out_dir: Path) -> None:
    clip = clips["land"]
    written = media.contact_sheet(clip.path, out_dir / "sheet.png", times=[-1.0, 99.0], thumb_w=160)
    with Image.open(written) as sheet:
        first, last = tiles(sheet, 2, 2, (160, 90))
        assert solid_diff(first, clip.colours[0]) < TOLERANCE
        assert solid_diff(last, clip.colours[-1]) < TOLERANCE


def test_contact_sheet_default_is_a_3x3_grid_of_evenly_spaced_frames(clips: dict[str, Clip], out_dir: Path) -> None:
    clip = clips["land"]
    written = media.contact_sheet(clip.path, out_dir / "sheet.jpg")
    with Image.open(written) as sheet:
        assert sheet.format == "JPEG"
        assert sheet.size == (960, 540)
        for i, tile in enumerate(tiles(sheet, 9, 3, (320, 180))):
            expected = clip.colours[math.floor((i + 0.5) * clip.duration_s / 9 * clip.fps)]
            assert solid_diff(tile, expected) < TOLERANCE, i


def test_contact_sheet_of_a_portrait_clip_keeps_its_aspect_ratio(clips: dict[str, Clip], out_dir: Path) -> None:
    with Image.open(
        media.contact_sheet(clips["portrait"].path, out_dir / "sheet.png", n=4, cols=2, thumb_w=90)
    ) as sheet:
        assert sheet.size == (180, 320)


def test_contact_sheet_jpeg_respects_max_bytes(clips: dict[str, Clip], out_dir: Path) -> None:
    written = media.contact_sheet(clips["noisy"].path, out_dir / "sheet.jpg", n=4, cols=2, max_bytes=60_000)
    assert written.stat().st_size <= 60_000
    assert leftovers(out_dir) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"times": []}, {"times": [float("nan")]}, {"n": 0}, {"cols": 0}, {"thumb_w": 4}],
    ids=["no-times", "nan-time", "no-frames", "no-columns", "tiny-thumbs"],
)
def test_contact_sheet_rejects_impossible_layouts(
    clips: dict[str, Clip], out_dir: Path, kwargs: dict[str, object]
) -> None:
    with pytest.raises(InvalidInputError):
        media.contact_sheet(clips["land"].path, out_dir / "sheet.png", **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------- concat


def test_can_stream_copy_accepts_matching_clips_and_rejects_other_sizes_rates_or_audio(clips: dict[str, Clip]) -> None:
    assert media.can_stream_copy([clips["land"].path, clips["land2"].path, clips["land3"].path])
    assert media.can_stream_copy([clips["land"].path])
    assert not media.can_stream_copy([clips["land"].path, clips["portrait"].path])
    assert not media.can_stream_copy([clips["land"].path, clips["fast"].path])
    assert not media.can_stream_copy([clips["land"].path, clips["sound"].path])


def test_concat_copies_matching_clips_keeping_every_frame_in_order(clips: dict[str, Clip], out_dir: Path) -> None:
    parts = [clips["land"], clips["land2"], clips["land3"]]
    result = media.concat([c.path for c in parts], out_dir / "joined.mp4")
    assert result.method == "copy"
    assert result.path == out_dir / "joined.mp4"
    assert result.duration_s == pytest.approx(sum(c.duration_s for c in parts), abs=0.05)
    assert (result.width, result.height) == (320, 180)
    assert result.size_bytes == result.path.stat().st_size
    assert result.duration_s == pytest.approx(media.probe(result.path).duration_s, abs=0.01)
    boxes = top_level_boxes(result.path)
    assert boxes.index("moov") < boxes.index("mdat")  # +faststart
    frames, _ = decode_checked(result.path)
    assert frames == sum(len(c.colours) for c in parts)
    decoded = decode_all(result.path)
    expected = [rgb for c in parts for rgb in c.colours]
    assert [
        i for i, (image, rgb) in enumerate(zip(decoded, expected, strict=True)) if solid_diff(image, rgb) >= TOLERANCE
    ] == []
    assert leftovers(out_dir) == []


def test_concat_copy_keeps_the_audio_track(clips: dict[str, Clip], out_dir: Path) -> None:
    parts = [clips["sound"], clips["sound2"], clips["sound"]]
    result = media.concat([c.path for c in parts], out_dir / "joined.mp4")
    assert result.method == "copy"
    assert media.probe(result.path).has_audio
    frames, audio_s = decode_checked(result.path)
    assert frames == sum(len(c.colours) for c in parts)
    total = sum(c.duration_s for c in parts)
    assert result.duration_s == pytest.approx(total, abs=0.1)
    # Each later clip loses its ~21 ms AAC priming packet, which overlaps the previous clip.
    assert audio_s == pytest.approx(total, abs=0.1)


def test_concat_of_mixed_aspect_ratios_reencodes_letterboxed_to_the_first_size(
    clips: dict[str, Clip], out_dir: Path
) -> None:
    parts = [clips["land2"], clips["portrait"], clips["land3"]]
    result = media.concat([c.path for c in parts], out_dir / "mixed.mp4")
    assert result.method == "reencode"
    assert (result.width, result.height) == (320, 180)
    assert result.duration_s == pytest.approx(sum(c.duration_s for c in parts), abs=0.05)
    info = media.probe(result.path)
    assert (info.fps, info.pix_fmt, info.has_audio) == (8.0, "yuv420p", False)
    assert result.duration_s == pytest.approx(info.duration_s, abs=0.01)
    boxes = top_level_boxes(result.path)
    assert boxes.index("moov") < boxes.index("mdat")
    assert {0.0, 2.0, 3.0} <= set(keyframe_times(result.path))  # every clip starts on a keyframe
    frames, _ = decode_checked(result.path)
    assert frames == 16 + 8 + 12
    decoded = decode_all(result.path)
    portrait_frame = decoded[16]
    # 180x320 scaled into 320x180 is ~102x180, centred: black bars on both sides.
    assert solid_diff(portrait_frame.crop((0, 0, 100, 180)), (0, 0, 0)) < TOLERANCE
    assert solid_diff(portrait_frame.crop((220, 0, 320, 180)), (0, 0, 0)) < TOLERANCE
    assert solid_diff(portrait_frame.crop((115, 10, 205, 170)), parts[1].colours[0]) < TOLERANCE
    assert solid_diff(decoded[0], parts[0].colours[0]) < TOLERANCE
    assert solid_diff(decoded[-1], parts[2].colours[-1]) < TOLERANCE


def test_concat_reencode_keeps_each_clips_speed_when_frame_rates_differ(clips: dict[str, Clip], out_dir: Path) -> None:
    parts = [clips["land3"], clips["fast"]]  # 12 frames at 8 fps, then 16 frames at 16 fps: 1.5 s + 1 s
    result = media.concat([c.path for c in parts], out_dir / "rates.mp4")
    assert result.method == "reencode"
    assert result.duration_s == pytest.approx(2.5, abs=0.05)
    decoded = decode_all(result.path)
    assert len(decoded) == 20
    # Output frame 12 + k (at 8 fps) shows the 16 fps clip's frame 2k.
    for k in range(8):
        assert solid_diff(decoded[12 + k], parts[1].colours[2 * k]) < TOLERANCE, k


def test_concat_reencode_with_some_silent_clips_keeps_audio_in_sync(clips: dict[str, Clip], out_dir: Path) -> None:
    parts = [clips["sound"], clips["land2"], clips["sound2"]]  # 2 s tone, 2 s silence, 1 s tone
    result = media.concat([c.path for c in parts], out_dir / "av.mp4", reencode=True)
    assert result.method == "reencode"
    assert result.duration_s == pytest.approx(media.probe(result.path).duration_s, abs=0.03)
    frames, audio_s = decode_checked(result.path)
    assert frames == 16 + 16 + 8
    assert audio_s == pytest.approx(5.0, abs=0.05)
    assert audio_rms(result.path, 0.2, 1.8) > 0.1
    assert audio_rms(result.path, 2.2, 3.8) < 0.01
    assert audio_rms(result.path, 4.2, 4.8) > 0.1


def test_concat_can_be_forced_to_reencode_matching_clips(clips: dict[str, Clip], out_dir: Path) -> None:
    result = media.concat([clips["land"].path, clips["land2"].path], out_dir / "forced.mp4", reencode=True)
    assert result.method == "reencode"
    assert decode_checked(result.path)[0] == 24 + 16


def test_concat_forced_copy_of_incompatible_clips_raises_naming_the_difference(
    clips: dict[str, Clip], out_dir: Path
) -> None:
    with pytest.raises(MediaError, match=r"portrait\.mp4 has size 180x320"):
        media.concat([clips["land"].path, clips["portrait"].path], out_dir / "bad.mp4", reencode=False)
    assert list(out_dir.iterdir()) == []


def test_concat_of_an_unreadable_clip_raises_media_error_naming_it(clips: dict[str, Clip], out_dir: Path) -> None:
    garbage = out_dir / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 1000)
    with pytest.raises(MediaError, match=r"garbage\.mp4"):
        media.concat([clips["land"].path, garbage], out_dir / "joined.mp4")
    assert sorted(p.name for p in out_dir.iterdir()) == ["garbage.mp4"]


def test_concat_rejects_no_clips_and_non_mp4_outputs(clips: dict[str, Clip], out_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="paths"):
        media.concat([], out_dir / "joined.mp4")
    with pytest.raises(InvalidInputError, match="out_path"):
        media.concat([clips["land"].path], out_dir / "joined.avi")


@pytest.mark.parametrize("reencode", [False, True], ids=["copy", "reencode"])
def test_a_failed_concat_keeps_the_previous_output_and_leaves_no_temporary_file(
    clips: dict[str, Clip], out_dir: Path, monkeypatch: pytest.MonkeyPatch, reencode: bool
) -> None:
    target = out_dir / "joined.mp4"
    target.write_bytes(b"previous")
    calls: list[int] = []

    def failing(original: Callable[..., None]) -> Callable[..., None]:
        def wrapper(*args: object) -> None:
            calls.append(1)
            if len(calls) > 10:
                raise OSError(28, "No space left on device")
            original(*args)

        return wrapper

    if reencode:
        monkeypatch.setattr(_reencode._VideoJoin, "emit", failing(_reencode._VideoJoin.emit))
    else:

        def copy_then_crash(paths: object, tmp: Path, fmt: str) -> None:
            tmp.write_bytes(b"partial")  # half a file on disk, as a real failure would leave
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(_concat, "_concat_copy", copy_then_crash)
    with pytest.raises(MediaError, match="No space left on device"):
        media.concat([clips["land"].path, clips["land2"].path], target, reencode=reencode)
    assert target.read_bytes() == b"previous"
    assert leftovers(out_dir) == []


# --------------------------------------------------------------------------------------------------- images


def image_bytes(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_info_reports_the_format_from_the_content(fmt: str) -> None:
    data = image_bytes(fmt)
    info = media.image_info(data)
    assert (info.format, info.width, info.height, info.size_bytes) == (fmt, 64, 48, len(data))


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "BMP", "TIFF"])
def test_other_formats_are_named_but_never_opened(fmt: str) -> None:
    with pytest.raises(MediaError, match=f"not a PNG or JPEG image \\({fmt}\\)"):
        media.image_info(image_bytes(fmt))


@pytest.mark.parametrize(
    "data",
    [b"", b"this is not an image" * 20, image_bytes("JPEG", (640, 480))[:600], image_bytes("PNG", (640, 480))[:200]],
    ids=["empty", "garbage", "truncated-jpeg", "truncated-png"],
)
def test_image_info_of_undecodable_data_raises_media_error(data: bytes) -> None:
    with pytest.raises(MediaError, match="image") as caught:
        media.image_info(data)
    assert caught.value.hint


def test_encode_jpeg_respects_max_side_and_max_bytes() -> None:
    image = _noise((1600, 900))
    data = media.encode_jpeg(image, max_bytes=30_000, max_side=800)
    assert len(data) <= 30_000
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "JPEG"
        assert max(decoded.size) <= 800


def test_encode_jpeg_accepts_images_with_alpha_and_no_limits() -> None:
    data = media.encode_jpeg(Image.new("RGBA", (50, 40), (1, 2, 3, 128)), max_bytes=None, max_side=None)
    assert media.image_info(data) == media.ImageInfo(format="JPEG", width=50, height=40, size_bytes=len(data))


def test_encode_png_round_trips_pixels() -> None:
    image = _noise((40, 30))
    with Image.open(io.BytesIO(media.encode_png(image))) as decoded:
        assert diff(decoded, image) == 0
