"""Stands for code an attacker would name in a camera registration: importing it leaves a
marker file (MLINK_TEST_MARKER). A worker must refuse the spec before it ever imports it."""

import os
from pathlib import Path

Path(os.environ.get("MLINK_TEST_MARKER", "/nonexistent/marker")).write_text("imported")


def run(frame: object) -> float:
    return 0.0
