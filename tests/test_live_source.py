"""stages.live_source: the decoder's source loop, against real files and a real RTSP server.

RTSP faults are real: the server is stopped and restarted on the same port,
frozen with SIGSTOP (a stall: the TCP connection stays open, nothing arrives),
or asked for a wrong path / with wrong credentials; a closed port is a port
nothing listens on. Watchdog timings are shortened so that the suite stays fast.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import av
import conftest
import numpy as np
import pytest
from rtsp_fixture import free_port, start_rtsp_server

from pipeline.errors import UserError
from stages.live_source import LiveSource, SourceFailed
from stages.watchdog import WatchdogConfig

CAR = conftest.VIDEOS_DIR / conftest.CAR_MP4  # 377 frames, 12.5 fps
GIF23 = conftest.VIDEOS_DIR / conftest.GIF23  # 23 frames, ~12.5 fps
GIF35 = conftest.VIDEOS_DIR / conftest.GIF35

FAST = WatchdogConfig(stall_after_s=1.0, lost_after_s=2.0, backoff_initial_s=0.2, backoff_max_s=1.0,
                      max_attempts=None, connect_timeout_s=8.0)

# Every test here reads the footage (the videos_dir fixture fails them, naming what is missing);
# the RTSP ones also need the GStreamer RTSP server (rtsp_deps fails them when it cannot run).
pytestmark = pytest.mark.usefixtures("videos_dir")
needs_rtsp = pytest.mark.usefixtures("rtsp_deps")


class Events:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.items: list[tuple[float, str, dict]] = []
        self.lock = threading.Lock()

    def __call__(self, event: str, **info: object) -> None:
        with self.lock:
            self.items.append((time.monotonic(), event, dict(info)))

    def names(self) -> list[str]:
        return [e for _, e, _ in self.items]

    def last(self, name: str) -> dict:
        return [i for _, e, i in self.items if e == name][-1]


def assert_real_frames(frames: list) -> None:
    for f in frames:
        assert f.image.ndim == 3 and f.image.shape[2] == 3 and f.image.size > 0
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:])), "PTS must strictly increase"


# --------------------------------------------------------------------- files
def test_file_loop_keeps_pts_monotonic_and_raw_pts() -> None:
    ev = Events()
    frames = []
    src = LiveSource([str(GIF23), str(GIF35)], status=ev, emit_eos=True, file_events=True)
    for f in src:
        frames.append(f)
    assert len(frames) == 23 + 35
    assert_real_frames(frames)
    assert frames[23].pts_raw < frames[22].pts_raw  # the second file starts its own clock again
    assert [f.pos for f in frames] == list(range(1, 59))
    assert ev.names() == ["connecting", "connected", "eos"]


def test_file_resume_skips_what_was_sent() -> None:
    frames = list(LiveSource(str(GIF23), skip=20))
    assert [f.pos for f in frames] == [21, 22, 23]


def test_live_file_is_paced_at_its_own_rate() -> None:
    t0 = time.monotonic()
    frames = list(LiveSource(str(GIF23), realtime=True))  # 23 frames at 12.5 fps
    assert len(frames) == 23
    assert time.monotonic() - t0 >= 22 / 12.5 - 0.2


def _unsupported_codec(tmp: Path) -> Path:
    c = av.open(str(tmp / "ok.avi"), "w")
    s = c.add_stream("mjpeg", rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuvj420p"
    for i in range(3):
        for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 60, np.uint8), format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    bad = tmp / "unknown_codec.avi"
    bad.write_bytes((tmp / "ok.avi").read_bytes().replace(b"MJPG", b"ZZ9Z"))  # a FourCC FFmpeg has no decoder for
    return bad


@pytest.mark.parametrize("kind,needle", [
    ("missing", "file not found"),
    ("empty", "file is empty"),
    ("text", "not a video file"),
    ("codec", "unsupported video codec"),
])
def test_bad_files_fail_at_once_with_one_line(tmp_path: Path, kind: str, needle: str) -> None:
    if kind == "codec":
        path = _unsupported_codec(tmp_path)
    else:
        path = tmp_path / f"{kind}.mp4"
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "text":
            path.write_text("hello, not a video\n" * 100)
    ev = Events()
    with pytest.raises(UserError) as ei:
        list(LiveSource(str(path), status=ev, watchdog=FAST))
    msg = str(ei.value)
    assert needle in msg and "\n" not in msg and str(path.name) in msg
    assert "connected" not in ev.names()  # no frame, blank or otherwise


# ---------------------------------------------------------------------- RTSP
@needs_rtsp
@pytest.mark.rtsp
def test_rtsp_server_restart_resumes_within_5s() -> None:
    ev = Events()
    with start_rtsp_server(CAR) as srv:
        frames = []
        stop = threading.Event()
        src = LiveSource(srv.url, status=ev, watchdog=FAST, open_timeout_s=5, read_timeout_s=2, should_stop=stop.is_set)

        def consume() -> None:
            for f in src:
                frames.append((time.monotonic(), f))

        th = threading.Thread(target=consume, daemon=True)
        th.start()
        deadline = time.monotonic() + 20
        while len(frames) < 10:
            assert time.monotonic() < deadline, f"no frames: {ev.names()}"
            time.sleep(0.05)
        srv.stop()
        t_down = time.monotonic()
        time.sleep(2.0)
        n_before = len(frames)
        srv.start()
        t_back = time.monotonic()
        while len(frames) <= n_before:
            assert time.monotonic() - t_back < 15, f"no frame after restart: {ev.names()}"
            time.sleep(0.02)
        resumed = frames[n_before][0] - t_back
        stop.set()
        th.join(10)
    names = ev.names()
    i_lost = names.index("lost")
    print(f"\nRTSP restart: down {t_back - t_down:.1f}s, first frame {resumed:.2f}s after the server returned; "
          f"events {names}; reconnect down_s={ev.last('connected').get('down_s')}")
    assert resumed < 5.0
    assert names[:2] == ["connecting", "connected"]
    assert "reconnecting" in names[i_lost:] and names[-1] == "connected"
    assert ev.last("connected")["down_s"] > 0
    assert all(i.get("reason") for _, _, i in ev.items)
    assert_real_frames([f for _, f in frames])


@needs_rtsp
@pytest.mark.rtsp
def test_rtsp_stall_detected_and_recovered() -> None:
    """SIGSTOP the server: the connection stays open but nothing arrives (a frozen camera)."""
    ev = Events()
    with start_rtsp_server(CAR) as srv:
        frames = []
        stop = threading.Event()
        src = LiveSource(srv.url, status=ev, watchdog=FAST, open_timeout_s=3, read_timeout_s=2, should_stop=stop.is_set)
        th = threading.Thread(target=lambda: [frames.append((time.monotonic(), f)) for f in src], daemon=True)
        th.start()
        deadline = time.monotonic() + 20
        while len(frames) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(srv.proc.pid, signal.SIGSTOP)
        t_freeze = time.monotonic()
        try:
            while "reconnecting" not in ev.names():
                assert time.monotonic() - t_freeze < 10, ev.names()
                time.sleep(0.05)
            t_detect = time.monotonic() - t_freeze
            t_lost = [t for t, e, _ in ev.items if e == "lost"][-1]
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        t_cont = time.monotonic()
        n = len(frames)
        while len(frames) <= n or ev.names()[-1] != "connected":
            assert time.monotonic() - t_cont < 20, ev.names()
            time.sleep(0.05)
        stop.set()
        th.join(10)
    names = ev.names()
    last_frame = max(t for t, _ in frames if t < t_lost)  # frames already in flight may arrive after the freeze
    print(f"\nstall: lost {t_lost - last_frame:.2f}s after the last frame ({t_detect:.2f}s after SIGSTOP); "
          f"streaming {time.monotonic() - t_cont:.2f}s after SIGCONT; {names}")
    assert "stalled" in names and names.index("stalled") < names.index("lost")
    assert "no frame for" in ev.last("stalled")["reason"]
    assert t_lost - last_frame < FAST.effective_lost_after_s + 0.5
    assert_real_frames([f for _, f in frames])


@needs_rtsp
@pytest.mark.rtsp
@pytest.mark.parametrize("case,needle", [
    ("closed_port", "connection refused"),
    ("wrong_path", "wrong path (RTSP 404"),
    ("wrong_credentials", "wrong credentials (RTSP 401"),
])
def test_rtsp_bad_source_fails_with_reason_while_other_camera_continues(case: str, needle: str) -> None:
    cfg = WatchdogConfig(stall_after_s=1.0, backoff_initial_s=0.1, backoff_max_s=0.3, max_attempts=2, connect_timeout_s=8.0)
    with start_rtsp_server(CAR) as good, start_rtsp_server(GIF35, user="alice", password="s3cr3t") as auth:
        bad_url = {
            "closed_port": f"rtsp://127.0.0.1:{free_port()}/cam",
            "wrong_path": good.url.replace("/cam", "/nope"),
            "wrong_credentials": auth.url_with("alice", "wrong"),
        }[case]
        good_frames: list = []
        stop = threading.Event()
        good_src = LiveSource(good.url, watchdog=FAST, should_stop=stop.is_set)
        th = threading.Thread(target=lambda: [good_frames.append(f) for f in good_src], daemon=True)
        th.start()
        ev = Events()
        t0 = time.monotonic()
        with pytest.raises(SourceFailed) as ei:
            for _ in LiveSource(bad_url, status=ev, watchdog=cfg, open_timeout_s=3, read_timeout_s=2):
                pytest.fail("a bad source yielded a frame")
        failed_after = time.monotonic() - t0
        n_at_fail = len(good_frames)
        deadline = time.monotonic() + 15
        while len(good_frames) < n_at_fail + 5:  # the other camera keeps streaming
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stop.set()
        th.join(10)
    msg = str(ei.value)
    print(f"\n{case}: failed after {failed_after:.2f}s: {msg}")
    assert needle in msg and "\n" not in msg
    assert "s3cr3t" not in msg and "wrong@" not in msg  # no password in messages
    names = ev.names()
    assert names[-1] == "failed" and names.count("reconnecting") == 2
    assert needle in ev.last("lost")["reason"]
