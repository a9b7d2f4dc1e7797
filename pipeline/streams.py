"""The codecs for what travels through the streams: frames, records, status events.

Frames are Redis stream entries with flat fields; records and status events are
JSON in one field. Key names live in :mod:`pipeline.keys`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import cv2
import numpy as np

SCHEMA_VERSION = 1


def consumer_name(pid: int | None = None) -> str:
    """A worker's name (consumer group member, owner of cameras): host and process id, this
    process's unless ``pid`` names another on this host."""
    return f"{socket.gethostname()}-{os.getpid() if pid is None else pid}"


# ------------------------------------------------------------------ frames
def _decode_image(data: bytes, enc: str, w: int, h: int) -> np.ndarray:
    if enc == "jpeg":
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise BadFrame("corrupt JPEG image")
        return img
    if enc == "raw":
        try:
            return np.frombuffer(data, np.uint8).reshape(h, w, 3)
        except ValueError as exc:
            raise BadFrame(f"malformed frame entry: {exc}") from None
    raise BadFrame(f"unknown image encoding {enc!r}")


class FrameMsg:
    """One frame: camera, index, times, size and its pixels (BGR uint8).

    A frame read from Redis keeps its encoded image (``data``, ``enc``) and decodes it on
    first access to :attr:`image`, once: a worker that runs no model on a frame (no models,
    or all of them derived) never pays for the JPEG decode. A corrupt image raises
    :class:`BadFrame` there.
    """

    __slots__ = ("camera", "frame", "pts", "pts_raw", "wall", "width", "height", "_image", "data", "enc")

    def __init__(self, camera: str, frame: int, pts: float, pts_raw: float, wall: float, width: int, height: int,
                 image: np.ndarray | None = None, *, data: bytes | None = None, enc: str = "raw") -> None:
        if image is None and data is None:
            raise ValueError("a frame needs its image or its encoded data")
        self.camera, self.frame, self.pts, self.pts_raw, self.wall = camera, frame, pts, pts_raw, wall  # wall: capture time (time.time())
        self.width, self.height = width, height
        self._image = image
        self.data, self.enc = data, enc

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            assert self.data is not None
            self._image = _decode_image(self.data, self.enc, self.width, self.height)
        return self._image

    @image.setter
    def image(self, value: np.ndarray) -> None:
        self._image = value

    @property
    def decoded(self) -> bool:
        """Whether the pixels have been decoded (or were given)."""
        return self._image is not None

    def __repr__(self) -> str:
        return f"FrameMsg({self.camera!r}, frame={self.frame}, pts={self.pts}, {self.width}x{self.height}, {'decoded' if self.decoded else self.enc})"


def encode_frame(msg: FrameMsg, encoding: str = "jpeg", quality: int = 90) -> dict[str, Any]:
    if encoding == "jpeg":
        ok, buf = cv2.imencode(".jpg", msg.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        img = buf.tobytes()
    else:
        img = np.ascontiguousarray(msg.image).tobytes()
    return {
        "camera": msg.camera,
        "frame": msg.frame,
        "pts": f"{msg.pts:.6f}",
        "pts_raw": f"{msg.pts_raw:.6f}",
        "wall": f"{msg.wall:.6f}",
        "w": msg.width,
        "h": msg.height,
        "enc": encoding,
        "img": img,
    }


class BadFrame(ValueError):
    """A frame entry that cannot be decoded (missing fields, corrupt image)."""


REQUIRED_FRAME_FIELDS = (b"camera", b"frame", b"pts", b"wall", b"w", b"h", b"enc", b"img")


def decode_frame(fields: dict[bytes, bytes], *, lazy: bool = False) -> FrameMsg:
    """A frame entry -> :class:`FrameMsg`. ``lazy``: keep the image encoded until a reader
    needs the pixels (a corrupt image is then found at that first access)."""
    missing = [f.decode() for f in REQUIRED_FRAME_FIELDS if f not in fields]
    if missing:
        raise BadFrame(f"frame entry lacks field(s) {', '.join(missing)}")
    try:
        w, h = int(fields[b"w"]), int(fields[b"h"])
        enc = fields[b"enc"].decode()
        if enc not in ("jpeg", "raw"):
            raise BadFrame(f"unknown image encoding {enc!r}")
        if enc == "raw" and len(fields[b"img"]) != w * h * 3:
            raise BadFrame(f"malformed frame entry: raw image of {len(fields[b'img'])} bytes for {w}x{h}")
        msg = FrameMsg(
            camera=fields[b"camera"].decode(),
            frame=int(fields[b"frame"]),
            pts=float(fields[b"pts"]),
            pts_raw=float(fields.get(b"pts_raw", fields[b"pts"])),
            wall=float(fields[b"wall"]),
            width=w,
            height=h,
            data=fields[b"img"],
            enc=enc,
        )
    except BadFrame:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadFrame(f"malformed frame entry: {exc}") from None
    if not lazy:
        msg.image  # noqa: B018 - decode now: a corrupt image fails here
    return msg


# ------------------------------------------------------------------ status
def status_event(event: str, camera: str, **info: Any) -> dict[str, str]:
    body = {"event": event, "camera": camera, "time": time.time(), **info}
    return {"event": event, "json": json.dumps(body)}


def parse_json_field(fields: dict[Any, Any], key: str = "json") -> dict[str, Any]:
    raw = fields.get(key) if key in fields else fields.get(key.encode())
    if raw is None:
        return {}
    return dict(json.loads(raw))
