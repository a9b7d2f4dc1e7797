"""pipeline.video on the real footage: frame counts, indices, PTS, sampling, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import FRAME_COUNTS, TRUNCATED_CAR_FRAMES

from pipeline.errors import UserError
from pipeline.video import (
    Sampler,
    check_file,
    iter_frames,
    open_source,
    probe_frame_count,
    resize_frame,
    source_label,
)


@pytest.mark.parametrize("name", sorted(FRAME_COUNTS))
def test_every_frame_decoded_with_indices_and_monotonic_pts(videos_dir: Path, name: str) -> None:
    frames = list(iter_frames(videos_dir / name, resize=64))
    n = FRAME_COUNTS[name]
    assert len(frames) == n
    assert [f.index for f in frames] == list(range(n))
    pts = [f.pts for f in frames]
    assert pts[0] == 0.0
    assert all(b > a for a, b in zip(pts, pts[1:])), "PTS must strictly increase"
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape[1] == 64 and frames[0].image.shape[2] == 3


def test_native_size_and_pts_of_the_car_clip(car_mp4: Path) -> None:
    frames = list(iter_frames(car_mp4, every=100))
    assert [f.index for f in frames] == [0, 100, 200, 300]
    assert frames[0].image.shape == (432, 768, 3)  # native: no resize asked
    # 12.5 fps: frame i is shown at i * 0.08 s
    assert [round(f.pts, 3) for f in frames] == [0.0, 8.0, 16.0, 24.0]


def test_audio_stream_next_to_the_video_is_ignored(trimmed_mp4: Path) -> None:
    import av

    with av.open(str(trimmed_mp4)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]  # the clip really carries audio
    frames = list(iter_frames(trimmed_mp4, resize=32))
    assert [f.index for f in frames] == list(range(48))
    assert [f.pts for f in frames] == pytest.approx([i / 12 for i in range(48)])  # 12 fps, audio packets skipped


def test_fps_sampling_by_pts_keeps_the_right_frames(car_mp4: Path) -> None:
    # 12.5 fps sampled at 5 fps: one frame per 0.2 s slot -> frame ceil(2.5 k)
    frames = list(iter_frames(car_mp4, fps=5, resize=32))
    expected = [math.ceil(2.5 * k - 1e-9) for k in range(151)]
    assert [f.index for f in frames] == expected
    assert len(frames) == 151


def test_every_kth_and_resize_pair(car_mp4: Path) -> None:
    frames = list(iter_frames(car_mp4, every=10, resize=(100, 50)))
    assert len(frames) == 38 and frames[-1].index == 370
    assert frames[0].image.shape == (50, 100, 3)


def test_probe_frame_count(car_mp4: Path, gif23: Path, tmp_path: Path) -> None:
    assert probe_frame_count(car_mp4) == 377
    assert probe_frame_count(gif23) == 23
    assert probe_frame_count(tmp_path / "does-not-exist.mp4") is None
    assert probe_frame_count(car_mp4, fps=2) == 61  # what --fps 2 keeps (progress total)
    assert probe_frame_count(car_mp4, fps=50) == 377


# ---------------------------------------------------------------- units
@pytest.mark.parametrize(
    "fps, pts, kept",
    [
        (None, [0, 0.01, 0.02], [0, 0.01, 0.02]),
        (10, [i * 0.04 for i in range(10)], [0.0, 0.12, 0.2, 0.32]),  # 25 fps -> 10 fps, no drift
        (1, [0, 0.5, 1.0, 1.5, 2.0], [0, 1.0, 2.0]),
        (1, [0, 0.5, 5.0, 5.5, 6.0], [0, 5.0, 6.0]),  # a gap restarts the slots
    ],
)
def test_sampler(fps: float | None, pts: list[float], kept: list[float]) -> None:
    s = Sampler(fps)
    assert [p for p in pts if s.keep(p)] == pytest.approx(kept)


def test_resize_frame() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    assert resize_frame(img, None) is img
    assert resize_frame(img, 200) is img
    assert resize_frame(img, 50).shape == (25, 50, 3)
    assert resize_frame(img, (30, 40)).shape == (40, 30, 3)


def test_label_hides_rtsp_password() -> None:
    assert source_label("rtsp://admin:hunter2@10.0.0.1:554/s") == "rtsp://***@10.0.0.1:554/s"
    assert source_label("/data/a.mp4") == "/data/a.mp4"


# ---------------------------------------------------------------- errors
def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "missing.mp4"
    with pytest.raises(UserError, match=r"missing\.mp4: file not found"):
        list(iter_frames(p))


def test_directory_is_not_a_video(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a regular file"):
        check_file(tmp_path)


def test_zero_byte_file(zero_byte_file: Path) -> None:
    with pytest.raises(UserError, match=r"empty\.mp4: file is empty \(0 bytes\)"):
        open_source(zero_byte_file)


def test_text_file_named_mp4(not_video_file: Path) -> None:
    with pytest.raises(UserError, match=r"notes\.mp4: not a video file"):
        open_source(not_video_file)


def test_truncated_mp4_with_index_at_end_fails_at_open(truncated_at_open_mp4: Path) -> None:
    with pytest.raises(UserError) as ei:
        open_source(truncated_at_open_mp4)
    assert str(ei.value) == f"{truncated_at_open_mp4}: truncated or corrupt video (FFmpeg cannot parse it)"


def test_truncated_mp4_yields_decoded_frames_then_errors(truncated_mp4: Path) -> None:
    """FFmpeg opens it (index first) and fails mid-decode: nothing decoded is lost."""
    got = []
    with pytest.raises(UserError) as ei:
        for f in iter_frames(truncated_mp4, resize=32):
            got.append(f.index)
    assert got == list(range(TRUNCATED_CAR_FRAMES))
    msg = str(ei.value)
    assert msg == f"{truncated_mp4}: decoding failed after {TRUNCATED_CAR_FRAMES} frames of 377 declared: file is truncated (last packet incomplete)"


def test_refused_rtsp_is_a_user_error() -> None:
    from tests.rtsp_fixture import free_port

    url = f"rtsp://user:pw@127.0.0.1:{free_port()}/x"
    with pytest.raises(UserError) as ei:
        open_source(url, open_timeout_s=3, read_timeout_s=3)
    msg = str(ei.value)
    assert "cannot open" in msg and "127.0.0.1" in msg and "pw" not in msg, msg
