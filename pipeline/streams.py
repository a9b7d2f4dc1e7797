"""The codecs for what travels through the streams: frames, records, status events.

Frames are Redis stream entries with flat fields; records and status events are
JSON in one field. Key names live in :mod:`pipeline.keys`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

SCHEMA_VERSION = 1


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


# ------------------------------------------------------------------ frames
@dataclass
class FrameMsg:
    camera: str
    frame: int
    pts: float
    pts_raw: float
    wall: float  # capture wall-clock time (time.time())
    width: int
    height: int
    image: np.ndarray


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


def decode_frame(fields: dict[bytes, bytes]) -> FrameMsg:
    missing = [f.decode() for f in REQUIRED_FRAME_FIELDS if f not in fields]
    if missing:
        raise BadFrame(f"frame entry lacks field(s) {', '.join(missing)}")
    try:
        w, h = int(fields[b"w"]), int(fields[b"h"])
        enc = fields[b"enc"].decode()
        if enc == "jpeg":
            img = cv2.imdecode(np.frombuffer(fields[b"img"], np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                raise BadFrame("corrupt JPEG image")
        elif enc == "raw":
            img = np.frombuffer(fields[b"img"], np.uint8).reshape(h, w, 3)
        else:
            raise BadFrame(f"unknown image encoding {enc!r}")
        return FrameMsg(
            camera=fields[b"camera"].decode(),
            frame=int(fields[b"frame"]),
            pts=float(fields[b"pts"]),
            pts_raw=float(fields.get(b"pts_raw", fields[b"pts"])),
            wall=float(fields[b"wall"]),
            width=w,
            height=h,
            image=img,
        )
    except BadFrame:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadFrame(f"malformed frame entry: {exc}") from None


# ------------------------------------------------------------------ status
def status_event(event: str, camera: str, **info: Any) -> dict[str, str]:
    body = {"event": event, "camera": camera, "time": time.time(), **info}
    return {"event": event, "json": json.dumps(body)}


def parse_json_field(fields: dict[Any, Any], key: str = "json") -> dict[str, Any]:
    raw = fields.get(key) if key in fields else fields.get(key.encode())
    if raw is None:
        return {}
    return dict(json.loads(raw))
