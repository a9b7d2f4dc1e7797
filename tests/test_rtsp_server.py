"""End-to-end checks of the test RTSP server (scripts/rtsp_server.py) with PyAV.

These pin down both that the server works and how PyAV/FFmpeg reports the
failure modes the decoder's watchdog has to classify: refused connection,
404 (wrong path), 401 (credentials), and a server that goes away mid-stream.
The server runs under /usr/bin/python3 (system GStreamer bindings).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import av.error
import pytest
from conftest import CAR_MP4, VIDEOS_DIR
from rtsp_fixture import RtspServerError, RtspServerHandle, free_port, start_rtsp_server

# rtsp_deps: the GStreamer RTSP server can run, else every test here FAILS with the reason.
pytestmark = [pytest.mark.rtsp, pytest.mark.usefixtures("rtsp_deps")]

VIDEO = VIDEOS_DIR / CAR_MP4  # H.264 Baseline 768x432 12.5 fps, a keyframe every 25 frames (2 s)

# What the decoder is expected to use: TCP interleaving (no UDP port games),
# a 5 s socket I/O timeout (microseconds) and PyAV open/read timeouts.
OPTIONS = {"rtsp_transport": "tcp", "timeout": "5000000"}
TIMEOUT = (10, 5)


def open_rtsp(url: str) -> av.container.InputContainer:
    return av.open(url, options=OPTIONS, timeout=TIMEOUT)


def decode_n(url: str, n: int) -> list[av.VideoFrame]:
    with open_rtsp(url) as c:
        frames = []
        for frame in c.decode(video=0):
            frames.append(frame)
            if len(frames) >= n:
                break
    return frames


@pytest.fixture(scope="module")
def deps(rtsp_deps: None, car_mp4: Path) -> None:
    """The server can run (installed once if needed) and the clip is there; else the tests FAIL."""


@pytest.fixture(scope="module")
def server(deps: None) -> Iterator[RtspServerHandle]:
    with start_rtsp_server(VIDEO, loop=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def auth_server(deps: None) -> Iterator[RtspServerHandle]:
    with start_rtsp_server(VIDEO, loop=True, user="alice", password="s3cr3t") as srv:
        yield srv


def test_decodes_live_stream(server: RtspServerHandle) -> None:
    t0 = time.monotonic()
    frames = decode_n(server.url, 20)
    elapsed = time.monotonic() - t0
    print(f"20 frames in {elapsed:.2f}s (includes FFmpeg stream probing)")
    assert len(frames) == 20
    assert {(f.width, f.height) for f in frames} == {(768, 432)}
    # FFmpeg gives the first RTSP frame no pts; the rest must be 1/12.5 s apart.
    pts = [f.time for f in frames if f.time is not None]
    assert len(pts) >= 18
    steps = [b - a for a, b in zip(pts, pts[1:], strict=False)]
    assert steps == pytest.approx([0.08] * len(steps), abs=1e-3)


def test_url_and_port(server: RtspServerHandle) -> None:
    assert server.url == f"rtsp://127.0.0.1:{server.port}/cam"
    assert server.running
    assert server.port is not None and server.port > 0


def test_concurrent_clients_share_the_stream(server: RtspServerHandle) -> None:
    results: dict[int, int | Exception] = {}

    def client(i: int) -> None:
        try:
            results[i] = len(decode_n(server.url, 10))
        except Exception as e:  # reported by the assertion below
            results[i] = e

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # A client that joins the shared live stream mid-GOP waits for the next
    # keyframe (up to 2 s with this sample), like with a real camera.
    assert results == {0: 10, 1: 10}


def test_closed_port_fails_fast(deps: None) -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(av.error.ConnectionRefusedError):
        open_rtsp(f"rtsp://127.0.0.1:{port}/cam")
    assert time.monotonic() - t0 < 3.0


def test_wrong_path_fails(server: RtspServerHandle) -> None:
    t0 = time.monotonic()
    with pytest.raises(av.error.HTTPNotFoundError):
        open_rtsp(server.url.replace("/cam", "/nope"))
    assert time.monotonic() - t0 < 3.0


def test_auth_required(auth_server: RtspServerHandle) -> None:
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_rtsp(auth_server.url)  # no credentials
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_rtsp(auth_server.url_with("alice", "wrong"))
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_rtsp(auth_server.url_with("mallory", "s3cr3t"))


def test_auth_right_credentials(auth_server: RtspServerHandle) -> None:
    assert auth_server.auth_url == f"rtsp://alice:s3cr3t@127.0.0.1:{auth_server.port}/cam"
    frames = decode_n(auth_server.auth_url, 20)
    assert len(frames) == 20
    assert (frames[0].width, frames[0].height) == (768, 432)


def test_restart_and_reconnect(deps: None) -> None:
    srv = start_rtsp_server(VIDEO, loop=True)
    try:
        port = srv.port
        container = open_rtsp(srv.url)
        it = container.decode(video=0)
        for _ in range(5):
            next(it)

        t_restart = time.monotonic()
        srv.stop()
        # How the decoder sees the server vanishing: PyAV usually just stops
        # yielding (EOF, hence "live EOS == loss" in the watchdog); it may
        # also raise. Either way it must happen promptly, not hang.
        ended = "eof"
        try:
            for _ in it:
                pass
        except av.error.FFmpegError as e:
            ended = f"raised {type(e).__name__}"
        container.close()
        t_noticed = time.monotonic() - t_restart
        assert t_noticed < 7.0

        srv.start()
        t_up = time.monotonic() - t_restart
        assert srv.port == port  # same URL as before: the camera came back
        frames = decode_n(srv.url, 1)
        t_frame = time.monotonic() - t_restart
        print(
            f"server stop noticed in {t_noticed:.2f}s ({ended}); server up again "
            f"after {t_up:.2f}s; first frame after reconnect at {t_frame:.2f}s"
        )
        assert len(frames) == 1
        assert t_frame < 10.0

        # restart() does stop+start in one call.
        t0 = time.monotonic()
        srv.restart()
        assert srv.port == port
        assert len(decode_n(srv.url, 3)) == 3
        print(f"restart() -> 3 frames in {time.monotonic() - t0:.2f}s")
    finally:
        srv.stop()


def test_sigterm_exits_cleanly_and_frees_port(deps: None) -> None:
    srv = start_rtsp_server(VIDEO, loop=True)
    url = srv.url
    assert srv.stop() == 0
    assert not srv.running
    with pytest.raises(av.error.ConnectionRefusedError):
        open_rtsp(url)


def test_non_looping_file_mode(deps: None) -> None:
    # The plain filesrc ! qtdemux ! h264parse ! rtph264pay pipeline.
    with start_rtsp_server(VIDEO, loop=False, path="clip") as srv:
        assert srv.url.endswith("/clip")
        frames = decode_n(srv.url, 5)
        assert len(frames) == 5
        assert (frames[0].width, frames[0].height) == (768, 432)


def test_missing_video_raises(deps: None, tmp_path: Path) -> None:
    with pytest.raises(RtspServerError, match="video not found"):
        start_rtsp_server(tmp_path / "nope.mp4")
