"""Following result and status streams: the read side used by run, replay and tail.

Records are keyed by (camera, frame). A frame re-processed after a worker crash
can appear twice in ``results:{cam}``; the collector shows each key once.
"""

from __future__ import annotations

import json
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterator

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


class FrameRanges:
    """The frame indices seen, as sorted disjoint [start, end) ranges: memory grows with the
    gaps, not with the frames (a live camera runs for months)."""

    def __init__(self) -> None:
        self._r: list[list[int]] = []

    def add(self, i: int) -> None:
        r = self._r
        lo, hi = 0, len(r)
        while lo < hi:  # the first range that starts after i
            mid = (lo + hi) // 2
            if r[mid][0] <= i:
                lo = mid + 1
            else:
                hi = mid
        if lo and r[lo - 1][0] <= i < r[lo - 1][1]:
            return
        joins_left = lo > 0 and r[lo - 1][1] == i
        joins_right = lo < len(r) and r[lo][0] == i + 1
        if joins_left and joins_right:
            r[lo - 1][1] = r[lo][1]
            del r[lo]
        elif joins_left:
            r[lo - 1][1] = i + 1
        elif joins_right:
            r[lo][0] = i
        else:
            r.insert(lo, [i, i + 1])

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The [a, b) ranges of ``[start, end)`` that were not seen."""
        out, at = [], start
        for a, b in self._r:
            if b <= at:
                continue
            if a >= end:
                break
            if a > at:
                out.append((at, a))
            at = max(at, b)
        if at < end:
            out.append((at, end))
        return out


def describe_ranges(ranges: list[tuple[int, int]], most: int = 6) -> str:
    """``frames 3-5, 9`` — the ranges as a user reads them (the first ``most`` of them)."""
    parts = [f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in ranges[:most]]
    more = f" and {len(ranges) - most} more ranges" if len(ranges) > most else ""
    return ", ".join(parts) + more


@dataclass
class CameraProgress:
    records: int = 0
    duplicates: int = 0
    ended: bool = False  # eos, error or failed seen
    expected: int | None = None  # frames the decoder sent (known at eos)
    first_frame: int = 0  # the session's first frame index (known at eos)
    last_frame: int | None = None  # one past the last frame the decoder sent (known at eos)
    received: FrameRanges = field(default_factory=FrameRanges)
    dropped_or_skipped: bool = False  # a live camera: drops and skips are counted, not lost
    error: str | None = None
    failed_by_worker: bool = False  # a worker gave up on the camera: its unread frames stay unread
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.ended and (self.expected is None or self.records >= self.expected)

    def lost(self) -> list[tuple[int, int]]:
        """Frames the decoder sent that have no record ([a, b) ranges); known once it ended.
        Only a Redis that lost data (restarted empty) leaves any: the stages never drop a
        replay frame. Live cameras' own drops and skips are counted apart, not listed here."""
        if self.last_frame is None or self.dropped_or_skipped:
            return []
        return self.received.missing(self.first_frame, self.last_frame)


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

    def _entries(self, ids: dict[str, str], count: int, block_ms: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """(stream key, JSON body) of each new entry, advancing the read position in ``ids``."""
        for key, items in self._xread(ids, count, block_ms):
            k = key.decode() if isinstance(key, bytes) else key
            for eid, fields in items:
                ids[k] = eid.decode() if isinstance(eid, bytes) else eid
                raw = fields.get(b"json") or fields.get("json")
                if raw is not None:
                    yield k, json.loads(raw)

    def poll_records(self, block_ms: int = 200, count: int = 500) -> list[dict[str, Any]]:
        # BLOCK 0 would mean 'forever' to Redis: 0 here means 'do not block'.
        out = []
        for _, rec in self._entries(self.ids, count, block_ms):
            cam = rec["camera"]
            if self.seen.add((cam, int(rec["frame"]))):
                self.progress[cam].records += 1
                self.progress[cam].received.add(int(rec["frame"]))
                out.append(rec)
            else:
                self.progress[cam].duplicates += 1
        return out

    def poll_status(self) -> list[dict[str, Any]]:
        out = []
        for k, ev in self._entries(self.status_ids, 1000, 0):
            cam = ev.get("camera", k)
            p = self.progress[cam]
            p.events.append(ev)
            if ev["event"] in ("eos", "error", "failed", "stopped"):
                if "frames" in ev:
                    p.expected = int(ev["frames"]) - int(ev.get("first_frame", 0)) - int(ev.get("dropped", 0))
                    p.first_frame, p.last_frame = int(ev.get("first_frame", 0)), int(ev["frames"])
                    p.dropped_or_skipped = bool(ev.get("dropped")) or ev.get("mode") == "live"
                if ev["event"] in ("error", "failed"):
                    p.error = ev.get("reason")
                if ev["event"] == "failed" and ev.get("worker") is not None:
                    p.failed_by_worker = True
                p.ended = True
            out.append(ev)
        return out

    def all_complete(self) -> bool:
        return all(self.progress[c].complete for c in self.cameras)
