"""Small real models that ship with mlink itself, used as zoo callables.

No pretrained image classifier ships inside a package we can install offline,
so the default zoo's classifier is a deterministic scene-lighting classifier:
it turns the frame's luminance statistics into soft probabilities over
(dark, dim, bright). It is cheap, honest about what it is, and exercises the
classifier output kind end to end (labels, probabilities, links into it).
"""

from __future__ import annotations

import cv2
import numpy as np

LIGHT_CLASSES = ("dark", "dim", "bright")
_CENTRES = np.array([50.0, 110.0, 170.0], np.float32)


def scene_light(frame: np.ndarray) -> np.ndarray:
    """Soft lighting class from the mean grey level of a downscaled frame."""
    small = cv2.resize(frame, (64, 36), interpolation=cv2.INTER_AREA)
    mean = float(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).mean())
    logits = -((mean - _CENTRES) ** 2) / (2 * 25.0**2)
    p = np.exp(logits - logits.max())
    return (p / p.sum()).astype(np.float32)


def edge_density(frame: np.ndarray) -> float:
    """Fraction of Canny edge pixels: a cheap clutter/activity scalar."""
    small = cv2.resize(frame, (192, 108), interpolation=cv2.INTER_AREA)
    edges = cv2.Canny(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), 80, 160)
    return float((edges > 0).mean())
