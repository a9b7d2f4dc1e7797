"""Reading video with PyAV: files and RTSP, PTS-based sampling, resize.

This is the only module that opens containers. It turns FFmpeg's many failure
modes (missing file, empty file, not a video, truncated data, refused RTSP
connection) into :class:`pipeline.errors.UserError` with a one-line reason.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import av
import cv2
import numpy as np

from pipeline.errors import UserError


@dataclass
class VideoFrame:
    index: int  # decoded-frame counter within this source (before sampling)
    pts: float  # presentation time in seconds, from the container
    image: np.ndarray  # HxWx3 uint8 BGR


class Sampler:
    """Keeps frames so that the output rate approaches ``fps``, judged by PTS.

    A frame is kept when its PTS reaches the next slot; slots advance by
    1/fps, so a 25 fps source sampled at 10 fps keeps 10 frames a second
    without drift. ``fps=None`` keeps every frame.
    """

    def __init__(self, fps: float | None) -> None:
        self.interval = None if not fps else 1.0 / fps
        self.next_slot: float | None = None

    def keep(self, pts: float) -> bool:
        if self.interval is None:
            return True
        if self.next_slot is None or pts + 1e-6 >= self.next_slot:
            base = pts if self.next_slot is None or pts - self.next_slot > self.interval else self.next_slot
            self.next_slot = base + self.interval
            return True
        return False


def resize_frame(img: np.ndarray, resize: int | tuple[int, int] | None) -> np.ndarray:
    if resize is None:
        return img
    h, w = img.shape[:2]
    if isinstance(resize, int):
        size = (resize, max(1, round(h * resize / w)))
    else:
        size = (int(resize[0]), int(resize[1]))
    if size == (w, h):
        return img
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def check_file(path: Path) -> None:
    """Cheap checks before FFmpeg sees the file, for clearer messages."""
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if not path.is_file():
        raise UserError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: file is not readable")


def open_source(src: str | Path, rtsp_transport: str = "tcp", open_timeout_s: float = 10.0, read_timeout_s: float = 5.0) -> Any:
    """Open a file or RTSP URL; return the PyAV container with one video stream."""
    s = str(src)
    is_rtsp = s.startswith(("rtsp://", "rtsps://"))
    if not is_rtsp:
        check_file(Path(s))
    options = {}
    if is_rtsp:
        # stimeout/timeout are in microseconds; without them a dead camera blocks forever.
        options = {"rtsp_transport": rtsp_transport, "timeout": str(int(read_timeout_s * 1e6))}
    try:
        container = av.open(s, options=options, timeout=(open_timeout_s, read_timeout_s))
    except av.error.InvalidDataError:
        if not is_rtsp and _looks_like_mp4(Path(s)):
            raise UserError(f"{source_label(s)}: truncated or corrupt video (FFmpeg cannot parse it)") from None
        raise UserError(f"{source_label(s)}: not a video file (FFmpeg cannot parse it)") from None
    except (av.error.FFmpegError, OSError) as exc:
        raise UserError(f"{source_label(s)}: cannot open: {_ffmpeg_reason(exc)}") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{source_label(s)}: contains no video stream")
    vs = container.streams.video[0]
    if vs.codec_context is None or vs.codec_context.name is None:
        container.close()
        raise UserError(f"{source_label(s)}: unsupported video codec")
    vs.thread_type = "AUTO"
    return container


def _looks_like_mp4(path: Path) -> bool:
    """An ISO-BMFF header (``ftyp`` box): a real mp4/mov whose index FFmpeg could not read."""
    try:
        with open(path, "rb") as f:
            return f.read(12)[4:8] == b"ftyp"
    except OSError:
        return False


def source_label(s: str) -> str:
    # Never print a password that is part of an RTSP URL.
    if "@" in s and "://" in s:
        scheme, rest = s.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return s


def _ffmpeg_reason(exc: BaseException) -> str:
    msg = getattr(exc, "strerror", None) or str(exc)
    return msg.strip().splitlines()[0] if msg else type(exc).__name__


def iter_frames(
    src: str | Path,
    fps: float | None = None,
    resize: int | tuple[int, int] | None = None,
    every: int = 1,
    **open_kwargs: Any,
) -> Iterator[VideoFrame]:
    """Decoded, sampled, resized BGR frames of one source, in order.

    ``every=k`` keeps every k-th decoded frame (after fps sampling). Decoding
    errors in the middle of a file (truncation) raise UserError after the
    frames decoded so far have been yielded, so nothing decoded is lost.
    """
    container = open_source(src, **open_kwargs)
    sampler = Sampler(fps)
    stream = container.streams.video[0]
    tb = float(stream.time_base) if stream.time_base else 1.0 / 25
    n = kept = 0
    last_pts = -1.0
    is_file = not str(src).startswith(("rtsp://", "rtsps://"))
    # With frame threading FFmpeg swallows the error of a packet cut short by
    # truncation and just ends; the demuxer flags that packet as corrupt.
    state = {"last_corrupt": False}
    try:
        try:
            for frame in _decode(container, stream, state):
                pts = float(frame.pts * tb) if frame.pts is not None else (last_pts + 1.0 / 25 if last_pts >= 0 else 0.0)
                last_pts = pts
                idx = n
                n += 1
                if not sampler.keep(pts):
                    continue
                kept += 1
                if (kept - 1) % every:
                    continue
                yield VideoFrame(idx, pts, resize_frame(frame.to_ndarray(format="bgr24"), resize))
        except av.error.EOFError:
            pass
        except (av.error.FFmpegError, OSError) as exc:
            raise UserError(f"{source_label(str(src))}: decoding failed after {n} frames: {_ffmpeg_reason(exc)}") from None
        if n == 0:
            raise UserError(f"{source_label(str(src))}: no decodable video frames")
        if is_file and state["last_corrupt"]:
            declared = f" of {stream.frames} declared" if stream.frames else ""
            raise UserError(f"{source_label(str(src))}: decoding failed after {n} frames{declared}: file is truncated (last packet incomplete)")
    finally:
        container.close()


def _decode(container: Any, stream: Any, state: dict[str, bool]) -> Iterator[Any]:
    """``container.decode(stream)``, noting whether the last data packet was corrupt."""
    for packet in container.demux(stream):
        if packet.size:
            state["last_corrupt"] = bool(packet.is_corrupt)
        yield from packet.decode()


def probe_frame_count(path: str | Path, fps: float | None = None) -> int | None:
    """The container's frame count estimate (for progress bars), or None.

    With ``fps`` (sampling), the estimate of the frames that sampling keeps.
    """
    try:
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            rate = float(vs.average_rate) if vs.average_rate else None
            n = None
            if vs.frames:
                n = int(vs.frames)
            elif vs.duration and rate:
                n = int(float(vs.duration * vs.time_base) * rate)
            if n is not None and fps and rate and fps < rate:
                n = math.ceil(n * fps / rate)
            return n
    except Exception:
        return None


def sample_images(src: str | Path, n: int, *, every: int = 5, resize: int | tuple[int, int] | None = None) -> list[np.ndarray]:
    """The first ``n`` of every ``every``-th frame of a source (what costs are measured on)."""
    return [vf.image for vf in itertools.islice(iter_frames(src, resize=resize, every=every), n)]
