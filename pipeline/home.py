"""``$MLINK_HOME`` (default ``~/.cache/mlink``): where mlink keeps its state on this machine
(the cost cache, the embedded Redis's address) and where third-party libraries keep theirs.

Ultralytics writes a settings file under the user's home and prints a settings
banner on first use; :func:`quiet_third_party` points it at ``$MLINK_HOME/ultralytics``,
turns its logging down and keeps it offline, before it is imported.
"""

from __future__ import annotations

import os
from pathlib import Path


def mlink_home() -> Path:
    d = Path(os.environ.get("MLINK_HOME", Path.home() / ".cache" / "mlink"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def quiet_third_party() -> None:
    """Environment for libraries that read it at import time; a user's own setting wins."""
    os.environ.setdefault("YOLO_CONFIG_DIR", str(mlink_home() / "ultralytics"))
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_OFFLINE", "1")
