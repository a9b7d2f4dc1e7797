"""Following result and status streams: the read side used by run, replay and tail.

Records are keyed by (camera, frame). A frame re-processed after a worker crash
can appear twice in ``results:{cam}``; the collector shows each key once.
"""

from __future__ import annotations

import json
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis

from pipeline.keys import results_key, status_key
from pipeline.redis_conn import is_cluster


class SeenSet:
    """Bounded memory of (camera, frame) keys already shown."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._d: OrderedDict[tuple[str, int], None] = OrderedDict()

    def add(self, key: tuple[str, int]) -> bool:
        """True when new."""
        if key in self._d:
            return False
        self._d[key] = None
        if len(self._d) > self.capacity:
            self._d.popitem(last=False)
        return True


@dataclass
class CameraProgress:
    records: int = 0
    duplicates: int = 0
    ended: bool = False  # eos, error or failed seen
    expected: int | None = None  # frames the decoder sent (known at eos)
    error: str | None = None
    failed_by_worker: bool = False  # a worker gave up on the camera: its unread frames stay unread
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.ended and (self.expected is None or self.records >= self.expected)


class ResultCollector:
    def __init__(self, r: redis.Redis, cameras: list[str], from_start: bool = True) -> None:
        self.r = r
        self.cameras = cameras
        start = "0-0" if from_start else "$"
        self.ids: dict[str, str] = {results_key(c): start for c in cameras}
        self.status_ids: dict[str, str] = {status_key(c): start for c in cameras}
        self.seen = SeenSet()
        self.progress: dict[str, CameraProgress] = defaultdict(CameraProgress)
        if not from_start:
            # Resolve "$" now so nothing added between calls is missed.
            for ids in (self.ids, self.status_ids):
                for k in list(ids):
                    last = r.xrevrange(k, count=1)
                    ids[k] = last[0][0].decode() if last else "0-0"

    def _xread(self, ids: dict[str, str], count: int, block_ms: int) -> list[Any]:
        """XREAD over several cameras; on Redis Cluster one key per command (no CROSSSLOT)."""
        if not is_cluster(self.r) or len(ids) <= 1:
            return self.r.xread(ids, count=count, block=block_ms or None) or []
        out: list[Any] = []
        for k, v in ids.items():
            out.extend(self.r.xread({k: v}, count=count) or [])
        if not out and block_ms:
            first = next(iter(ids))
            out.extend(self.r.xread({first: ids[first]}, count=count, block=max(10, block_ms // len(ids))) or [])
        return out

    def poll_records(self, block_ms: int = 200, count: int = 500) -> list[dict[str, Any]]:
        # BLOCK 0 would mean 'forever' to Redis: 0 here means 'do not block'.
        resp = self._xread(self.ids, count, block_ms)
        out = []
        for key, items in resp or []:
            k = key.decode() if isinstance(key, bytes) else key
            for eid, fields in items:
                self.ids[k] = eid.decode() if isinstance(eid, bytes) else eid
                raw = fields.get(b"json") or fields.get("json")
                if raw is None:
                    continue
                rec = json.loads(raw)
                cam = rec["camera"]
                if self.seen.add((cam, int(rec["frame"]))):
                    self.progress[cam].records += 1
                    out.append(rec)
                else:
                    self.progress[cam].duplicates += 1
        return out

    def poll_status(self) -> list[dict[str, Any]]:
        resp = self._xread(self.status_ids, 1000, 0)
        out = []
        for key, items in resp or []:
            k = key.decode() if isinstance(key, bytes) else key
            for eid, fields in items:
                self.status_ids[k] = eid.decode() if isinstance(eid, bytes) else eid
                raw = fields.get(b"json") or fields.get("json")
                if raw is None:
                    continue
                ev = json.loads(raw)
                cam = ev.get("camera", k)
                p = self.progress[cam]
                p.events.append(ev)
                if ev["event"] in ("eos", "error", "failed", "stopped"):
                    if "frames" in ev:
                        p.expected = int(ev["frames"]) - int(ev.get("first_frame", 0)) - int(ev.get("dropped", 0))
                    if ev["event"] in ("error", "failed"):
                        p.error = ev.get("reason")
                    if ev["event"] == "failed" and ev.get("worker") is not None:
                        p.failed_by_worker = True
                    p.ended = True
                out.append(ev)
        return out

    def all_complete(self) -> bool:
        return all(self.progress[c].complete for c in self.cameras)
