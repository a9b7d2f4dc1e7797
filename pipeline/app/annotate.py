"""Drawing a record on its frame: what the web view shows.

Pure functions over an image (BGR ``uint8``) and one analytics record (schema v1):
boxes of executed outputs are drawn solid (with their keypoints, for pose models),
derived ones (``linked``, ``held``) dashed and labelled with their origin and, for
linked ones, their confidence; ``missing`` outputs draw nothing. Each model keeps one
colour per camera (its position in the camera's model list), and :func:`model_colors`
gives the page the same colours for its legend. Outputs without boxes (class
probabilities, top-5 classifiers, scalars, derived counts without boxes) are described
in words by :func:`output_text` for the page, not drawn.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

Record = dict[str, Any]

# Distinct colours (Sasha Trubetskoy's list, minus the pale ones), as #rrggbb.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#469990", "#9a6324", "#800000", "#808000", "#000075", "#ffe119")
DERIVED = ("linked", "held")


def model_colors(models: list[str]) -> dict[str, str]:
    """``#rrggbb`` per model, by its position in the camera's model list."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}


def _bgr(hex_color: str) -> tuple[int, int, int]:
    v = hex_color.lstrip("#")
    return int(v[4:6], 16), int(v[2:4], 16), int(v[0:2], 16)


def output_text(o: dict[str, Any]) -> str:
    """One model output in a few words: ``2 person``, ``bright 0.93``, ``0.031``, ``-``."""
    if o.get("origin") == "missing":
        return "-"
    if "count" in o:
        counts = {k: v for k, v in (o.get("counts") or {}).items() if v}
        n = int(o["count"])
        if len(counts) == 1:
            return f"{n} {next(iter(counts))}"
        if len(counts) > 1:
            return f"{n} (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"
        return str(n)
    if "label" in o:
        p = (o.get("probs") or o.get("top5") or {}).get(o["label"])
        return f"{o['label']} {p:.2f}" if isinstance(p, (int, float)) else str(o["label"])
    if "value" in o and isinstance(o["value"], (int, float)):
        return f"{o['value']:.3g}"
    return "-"


def origin_text(o: dict[str, Any]) -> str:
    """``executed``, ``linked 0.93``, ``held``, ``missing``."""
    origin = str(o.get("origin", "missing"))
    conf = o.get("confidence")
    return f"{origin} {conf:.2f}" if origin == "linked" and isinstance(conf, (int, float)) else origin


def _dashed_rect(img: np.ndarray, p1: tuple[int, int], p2: tuple[int, int], color: tuple[int, int, int], thickness: int,
                 dash: int = 8, gap: int = 6) -> None:
    (x1, y1), (x2, y2) = p1, p2
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        if length == 0:
            continue
        for s in range(0, length, dash + gap):
            e = min(s + dash, length)
            cv2.line(img, (ax + (bx - ax) * s // length, ay + (by - ay) * s // length),
                     (ax + (bx - ax) * e // length, ay + (by - ay) * e // length), color, thickness, cv2.LINE_AA)


def _label(img: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int], scale: float) -> None:
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    w = img.shape[1]
    x = max(0, min(x, w - tw - 4))
    top = y - th - base - 4
    if top < 0:  # no room above the box: inside it
        top = y
    cv2.rectangle(img, (x, top), (x + tw + 4, top + th + base + 4), color, -1)
    lum = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
    cv2.putText(img, text, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0) if lum > 140 else (255, 255, 255), 1, cv2.LINE_AA)


def draw(image: np.ndarray, rec: Record) -> np.ndarray:
    """A copy of ``image`` with the record's boxes and a one-line header drawn on it."""
    img = np.ascontiguousarray(image).copy()
    h, w = img.shape[:2]
    outputs: dict[str, Any] = rec.get("outputs") or {}
    colors = model_colors(list(outputs))
    scale = max(0.3, min(0.6, w / 1400))
    thick = 2 if w >= 400 else 1
    # Derived boxes first, executed on top: what actually ran stays readable.
    order = sorted(outputs.items(), key=lambda kv: kv[1].get("origin") == "executed")
    for model, o in order:
        origin = o.get("origin")
        if origin not in ("executed", *DERIVED):
            continue
        color = _bgr(colors[model])
        for b in o.get("boxes") or []:
            try:
                x1, y1, x2, y2 = (round(float(v) * s) for v, s in zip(b[:4], (w, h, w, h)))
            except (TypeError, ValueError):
                continue
            x1, x2 = sorted((max(0, min(w - 1, x1)), max(0, min(w - 1, x2))))
            y1, y2 = sorted((max(0, min(h - 1, y1)), max(0, min(h - 1, y2))))
            name = model if len(b) < 6 or str(b[5]) == model else f"{model} {b[5]}"
            if origin == "executed":
                cv2.rectangle(img, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
                score = b[4] if len(b) > 4 and isinstance(b[4], (int, float)) else None
                text = f"{name} {score:.2f}" if score is not None else name
            else:
                _dashed_rect(img, (x1, y1), (x2, y2), color, thick)
                text = f"{name} {origin_text(o)}"
            _label(img, text, x1, y1, color, scale)
        for person in o.get("keypoints") or [] if origin == "executed" else []:
            for kp in person:
                if len(kp) >= 3 and isinstance(kp[2], (int, float)) and kp[2] >= 0.5:
                    cv2.circle(img, (int(float(kp[0]) * w), int(float(kp[1]) * h)), max(2, thick + 1), color, -1, cv2.LINE_AA)
    ran = sum(1 for o in outputs.values() if o.get("origin") == "executed")
    derived = sum(1 for o in outputs.values() if o.get("origin") in DERIVED)
    phase = (rec.get("policy") or {}).get("phase") or (rec.get("policy") or {}).get("name") or ""
    head = f"{rec.get('camera', '')} #{rec.get('frame', '')}  {phase}  executed {ran}, derived {derived} of {len(outputs)}"
    (tw, th), base = cv2.getTextSize(head, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    band = img[0:th + base + 6, 0:min(w, tw + 8)]
    band[:] = (band * 0.35).astype(np.uint8)
    cv2.putText(img, head, (4, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def encode_jpeg(img: np.ndarray, quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buf.tobytes())


def decode_jpeg(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None


def placeholder(text: str, width: int = 640, height: int = 360) -> bytes:
    """A grey JPEG saying ``text``: what a camera without frames (yet) shows."""
    img = np.full((height, width, 3), 48, np.uint8)
    scale = 0.7
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(img, text, (max(4, (width - tw) // 2), (height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (220, 220, 220), 1, cv2.LINE_AA)
    return encode_jpeg(img)
