"""A model whose cost the tests choose: a real ``callable`` adapter target (``slow_model:slow``)
that takes ``MLINK_TEST_SLOW_S`` seconds per frame (default 0.25) and returns the frame's
mean brightness. It stands in for an expensive network where a test needs a scheduler
that is slower than its camera; nothing else in the pipeline is replaced."""

from __future__ import annotations

import os
import time

import numpy as np


def slow(frame: np.ndarray) -> float:
    time.sleep(float(os.environ.get("MLINK_TEST_SLOW_S", "0.25")))
    return float(frame.mean() / 255.0)
