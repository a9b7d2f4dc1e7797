"""The decoder's source loop: frames from files or RTSP, guarded by the watchdog.

:class:`LiveSource` wraps :func:`pipeline.video.iter_frames` with the pure
state machine :class:`stages.watchdog.Watchdog` and a
:class:`stages.watchdog.PtsUnwrapper`, and yields :class:`SourceFrame`s.
The decoder only sends what it gets; everything about connections lives here.

RTSP (and any live URL):
- A reader thread per connection opens the URL (TCP, PyAV open/read timeouts)
  and decodes into a small queue; the loop here waits on that queue with a
  short timeout and feeds the watchdog (``on_frame``, ``on_error``,
  ``on_eos``, ``tick``) with ``time.monotonic()``. A server that stops
  sending is therefore caught by the watchdog's stall/lost timers even while
  FFmpeg is still blocked in a read (Savant-style stall detection); the stale
  reader is abandoned (its frames are ignored by generation number) and exits
  on its own read timeout.
- Lost connections are retried with exponential backoff and jitter up to
  ``max_attempts`` (then ``failed``, raised as :class:`SourceFailed`). A source
  that has not delivered a single frame yet gets only ``initial_attempts``
  (default 2): a wrong URL, path or password at start-up is reported within
  seconds as an error, while a camera that streamed once is retried for as long
  as ``max_attempts`` allows (default: forever, like Frigate).
- Every watchdog transition goes to the ``status`` callback with a reason:
  ``connecting``, ``connected``, ``stalled``, ``recovered``, ``lost``,
  ``reconnecting``, ``failed`` (and ``eos`` for files when ``emit_eos``).
  ``connected`` after a reconnect carries ``down_s``: seconds from the loss to
  the first new frame.
- Nothing is ever invented: while the source is down no frame is yielded
  (no blank frames), only status events.
- If the consumer is slower than the camera, the oldest frame waiting in the
  reader queue is dropped (live, latest-frame semantics) and counted in
  :attr:`LiveSource.dropped`.

Files: read in order (list, glob, loop); by default a file source reports no
``connecting``/``connected`` events (``file_events=True`` turns them on) and
``eos`` only with ``emit_eos`` (the decoder sends its own with frame counts).
Permanent errors (missing, truncated,
not video, unsupported codec) raise :class:`pipeline.errors.UserError` at once
(retrying a bad file cannot help); ``skip`` resumes after the first ``skip``
decoded frames; ``realtime`` paces a live file camera at its own rate.

PTS: ``pts`` is monotonic across reconnects, PTS resets, file boundaries and
loops (re-based by the unwrapper); ``pts_raw`` is the container's own value.
"""

from __future__ import annotations

import dataclasses
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.backoff import Backoff
from pipeline.errors import UserError
from pipeline.redis_conn import REDIS_DOWN
from pipeline.video import iter_frames, source_label
from stages.watchdog import (
    PtsUnwrapper,
    SourceState,
    Transition,
    Watchdog,
    WatchdogConfig,
)

StatusFn = Callable[..., None]  # status(event, **info)

# Watchdog state -> status event name (the vocabulary of status:{cam}).
_EVENT = {
    SourceState.CONNECTING: "connecting",
    SourceState.STREAMING: "connected",
    SourceState.STALLED: "stalled",
    SourceState.LOST: "lost",
    SourceState.RECONNECTING: "reconnecting",
    SourceState.FAILED: "failed",
    SourceState.EOS: "eos",
}


@dataclass
class SourceFrame:
    pts: float  # monotonic timeline (seconds)
    pts_raw: float  # the container's own PTS
    image: np.ndarray  # HxWx3 BGR
    pos: int  # 1-based position in the concatenated decoded sequence (resume point)
    source: str  # label of the source (password hidden)


class SourceFailed(UserError):
    """The watchdog gave up on a live source (reconnect attempts exhausted)."""


def explain(reason: str) -> str:
    """Name the likely problem behind an FFmpeg/RTSP error line."""
    low = reason.lower()
    if "401" in low or "unauthorized" in low:
        return f"wrong credentials (RTSP 401 Unauthorized): {reason}"
    if "404" in low or "not found" in low and "rtsp" in low:
        return f"wrong path (RTSP 404 Not Found): {reason}"
    if "refused" in low:
        return f"connection refused (nothing listens there): {reason}"
    if "timed out" in low or "timeout" in low:
        return f"timeout: {reason}"
    return reason


def watchdog_config_for(cam: Any) -> WatchdogConfig:
    """Watchdog settings for a :class:`pipeline.config.CameraConfig`.

    Reads optional ``cam.rtsp`` fields (``stall_after_s``, ``lost_after_s``,
    ``backoff_initial_s``, ``backoff_max_s``, ``max_attempts``,
    ``connect_timeout_s``) when the config schema has them; defaults otherwise.
    """
    rt = getattr(cam, "rtsp", None)
    read_timeout = float(getattr(rt, "read_timeout_s", 5.0))
    open_timeout = float(getattr(rt, "open_timeout_s", 10.0))
    stall = float(getattr(rt, "stall_after_s", None) or max(2.0, read_timeout))
    kw: dict[str, Any] = {
        "stall_after_s": stall,
        "lost_after_s": getattr(rt, "lost_after_s", None),
        "backoff_initial_s": float(getattr(rt, "backoff_initial_s", 0.5)),
        "backoff_max_s": float(getattr(rt, "backoff_max_s", 30.0)),
        "max_attempts": getattr(rt, "max_attempts", None),  # default: retry forever (after the first frame)
        # Opening includes RTSP setup and the wait for a keyframe.
        "connect_timeout_s": getattr(rt, "connect_timeout_s", None) or open_timeout + stall,
    }
    if kw["lost_after_s"] is not None:
        kw["lost_after_s"] = max(float(kw["lost_after_s"]), stall)
    return WatchdogConfig(**kw)


def source_options(cam: Any) -> dict[str, Any]:
    """:class:`LiveSource` keyword arguments for a :class:`pipeline.config.CameraConfig`."""
    rt = getattr(cam, "rtsp", None)
    live = getattr(getattr(cam, "mode", None), "value", "replay") == "live"
    return {
        "fps": cam.fps,
        "resize": cam.resize,
        "rtsp_transport": getattr(rt, "transport", "tcp"),
        "open_timeout_s": float(getattr(rt, "open_timeout_s", 10.0)),
        "read_timeout_s": float(getattr(rt, "read_timeout_s", 5.0)),
        "watchdog": watchdog_config_for(cam),
        "initial_attempts": getattr(rt, "initial_attempts", 2),
        "loop": bool(getattr(cam, "loop", False)),
        "realtime": live and not cam.is_rtsp,
    }


class LiveSource:
    def __init__(
        self,
        sources: list[str] | str,
        *,
        fps: float | None = None,
        resize: int | tuple[int, int] | None = None,
        rtsp_transport: str = "tcp",
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 5.0,
        watchdog: WatchdogConfig | None = None,
        status: StatusFn | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        loop: bool = False,
        skip: int = 0,
        realtime: bool = False,
        emit_eos: bool = False,
        file_events: bool = False,
        initial_attempts: int | None = 2,
        max_queue: int = 4,
        poll_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.sources = [sources] if isinstance(sources, (str, Path)) else [str(s) for s in sources]
        if not self.sources:
            raise UserError("no source given")
        self.is_live = str(self.sources[0]).startswith(("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "srt://"))
        self.fps, self.resize = fps, resize
        self.open_kwargs = {"rtsp_transport": rtsp_transport, "open_timeout_s": open_timeout_s, "read_timeout_s": read_timeout_s}
        self.wd_cfg = watchdog or WatchdogConfig(stall_after_s=max(2.0, read_timeout_s), max_attempts=None,
                                                 connect_timeout_s=open_timeout_s + max(2.0, read_timeout_s))
        self.status_fn = status or (lambda event, **info: None)
        self.should_stop = should_stop
        self.loop, self.skip, self.realtime, self.emit_eos = loop, skip, realtime, emit_eos
        self.file_events = file_events
        self.initial_attempts = initial_attempts
        self.max_queue, self.poll_s = max_queue, poll_s
        self.clock = clock
        self.rng = rng
        self.unwrap = PtsUnwrapper(1.0 / fps if fps else 1.0 / 25)
        self.watchdog: Watchdog | None = None
        self.dropped = 0  # frames dropped because the consumer was slower than the camera
        self.reconnects = 0
        self.frames = 0
        self._lost_at: float | None = None
        self._readers: list[threading.Thread] = []

    # ------------------------------------------------------------ status
    def _emit(self, transitions: list[Transition]) -> None:
        for t in transitions:
            if t.state is SourceState.EOS and not self.emit_eos:
                continue
            event = _EVENT[t.state]
            info: dict[str, Any] = {"reason": t.reason, "prev": t.prev.value, "attempt": t.attempt, "source": self.label}
            if t.state is SourceState.STREAMING and t.prev is SourceState.STALLED:
                event = "recovered"
            if t.state is SourceState.LOST and self._lost_at is None:
                self._lost_at = t.at
            if t.state is SourceState.STREAMING and t.prev is SourceState.CONNECTING and self._lost_at is not None:
                info["down_s"] = round(t.at - self._lost_at, 3)
                self._lost_at = None
            if t.state is SourceState.CONNECTING:
                self.reconnects += 1
            self.status_fn(event, **info)

    @property
    def label(self) -> str:
        return source_label(self.sources[0]) if len(self.sources) == 1 else f"{len(self.sources)} files"

    def __iter__(self) -> Iterator[SourceFrame]:
        return self._live() if self.is_live else self._files()

    def close(self) -> None:
        """Nothing to release: readers are daemon threads that end on their own."""

    # ------------------------------------------------------------- files
    def _files(self) -> Iterator[SourceFrame]:
        wd = self.watchdog = Watchdog(self.wd_cfg, is_file=True, rng=self.rng, now=self.clock())
        emit_all = self.file_events
        if emit_all:
            self.status_fn("connecting", reason=f"opening {self.label}", source=self.label, attempt=0, prev="")
        pos = 0
        while True:
            for src in self.sources:
                t0: float | None = None
                pts0 = 0.0
                for vf in iter_frames(src, fps=self.fps, resize=self.resize):
                    if self.should_stop():
                        return
                    pos += 1
                    if pos <= self.skip:
                        continue
                    trs = wd.on_frame(self.clock())
                    if emit_all:
                        self._emit(trs)
                    if self.realtime:
                        if t0 is None:
                            t0, pts0 = time.monotonic(), vf.pts
                        delay = (vf.pts - pts0) - (time.monotonic() - t0)
                        while delay > 0 and not self.should_stop():
                            time.sleep(min(delay, 0.2))
                            delay = (vf.pts - pts0) - (time.monotonic() - t0)
                    self.frames += 1
                    yield SourceFrame(self.unwrap(vf.pts), vf.pts, vf.image, pos, source_label(src))
                self.unwrap.on_reconnect()  # the next file starts its own timeline
            if not self.loop or self.should_stop():
                break
        self._emit(wd.on_eos(self.clock()))

    # -------------------------------------------------------------- live
    def _reader(self, gen: int, url: str, q: "queue.Queue[tuple[int, str, Any]]", stop: threading.Event) -> None:
        try:
            for vf in iter_frames(url, fps=self.fps, resize=self.resize, **self.open_kwargs):
                if stop.is_set():
                    return
                if q.qsize() >= self.max_queue:
                    try:  # latest-frame semantics: drop the oldest waiting frame
                        old = q.get_nowait()
                        if old[1] != "frame":
                            q.put(old)
                        else:
                            self.dropped += 1
                    except queue.Empty:
                        pass
                q.put((gen, "frame", vf))
            q.put((gen, "eos", None))
        except UserError as exc:
            q.put((gen, "error", explain(str(exc).split(": ", 1)[-1]) if ": " in str(exc) else str(exc)))
        except Exception as exc:  # a reader must never die silently
            q.put((gen, "error", f"{type(exc).__name__}: {exc}"))

    def _start_reader(self, gen: int, q: "queue.Queue[tuple[int, str, Any]]") -> threading.Event:
        stop = threading.Event()
        t = threading.Thread(target=self._reader, args=(gen, self.sources[0], q, stop), name=f"rtsp-reader-{gen}", daemon=True)
        t.start()
        self._readers = [r for r in self._readers if r.is_alive()] + [t]
        return stop

    def _live(self) -> Iterator[SourceFrame]:
        first_cfg = self.wd_cfg
        if self.initial_attempts is not None and (self.wd_cfg.max_attempts is None or self.initial_attempts < self.wd_cfg.max_attempts):
            first_cfg = dataclasses.replace(self.wd_cfg, max_attempts=self.initial_attempts)
        wd = self.watchdog = Watchdog(first_cfg, is_file=False, rng=self.rng, now=self.clock())
        self.status_fn("connecting", reason=f"opening {self.label}", source=self.label, attempt=0, prev="")
        q: queue.Queue[tuple[int, str, Any]] = queue.Queue()
        gen = 0
        stop = self._start_reader(gen, q)
        try:
            while True:
                if self.should_stop():
                    return
                now = self.clock()
                if wd.state is SourceState.RECONNECTING:
                    if wd.should_reconnect(now):
                        self._emit(wd.on_reconnect_attempt(now))
                        gen += 1
                        self.unwrap.on_reconnect()
                        stop = self._start_reader(gen, q)
                    else:
                        wait = (wd.next_attempt_at or now) - now
                        time.sleep(max(0.0, min(self.poll_s, wait)))
                        self._drain_stale(q, gen)
                    continue
                try:
                    g, kind, payload = q.get(timeout=self.poll_s)
                except queue.Empty:
                    self._after(wd, wd.tick(self.clock()), stop)
                    continue
                if g != gen:
                    continue  # a straggler from an abandoned connection
                now = self.clock()
                if kind == "frame":
                    if wd.cfg is not self.wd_cfg and wd.state is not SourceState.FAILED:
                        wd.cfg = self.wd_cfg  # it streamed once: from now on the full reconnect budget
                    trs = wd.on_frame(now)
                    self._after(wd, trs, stop)
                    if wd.state is SourceState.STREAMING:
                        self.frames += 1
                        yield SourceFrame(self.unwrap(payload.pts), payload.pts, payload.image, self.frames, self.label)
                elif kind == "error":
                    self._after(wd, wd.on_error(now, str(payload)), stop)
                elif kind == "eos":
                    self._after(wd, wd.on_eos(now), stop)
                self._after(wd, wd.tick(self.clock()), stop)
        finally:
            stop.set()

    def _after(self, wd: Watchdog, trs: list[Transition], stop: threading.Event) -> None:
        self._emit(trs)
        if any(t.state is SourceState.LOST for t in trs):
            stop.set()  # abandon the current reader (it may still be blocked in FFmpeg)
        if wd.state is SourceState.FAILED:
            raise SourceFailed(f"{self.label}: {wd.last_error or 'source lost'}; gave up after {wd.attempt} reconnect attempts")

    @staticmethod
    def _drain_stale(q: "queue.Queue[tuple[int, str, Any]]", gen: int) -> None:
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                return
            if item[0] == gen:
                q.put(item)
                return


class RedisGuard:
    """The decoder's side of a Redis outage.

    ``send(fn)`` runs one write (the frame's XADD pipeline). When Redis is
    unreachable: a live camera drops the frame (counted in :attr:`dropped`,
    the source keeps its connection to the camera) and returns False; a replay
    camera waits and retries the same frame with capped backoff until Redis is
    back or ``should_stop()``. The first successful write after an outage calls
    ``on_restore(dropped_during_outage, down_s)``, where the decoder
    re-registers its camera (Redis may have come back empty), adds the drops to
    the metrics and emits a status event.
    """

    def __init__(self, live: bool, on_restore: Callable[[int, float], None] | None = None,
                 should_stop: Callable[[], bool] = lambda: False, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> None:
        self.live = live
        self.on_restore = on_restore or (lambda n, s: None)
        self.should_stop = should_stop
        self.clock, self.sleep = clock, sleep
        self.backoff = Backoff(initial=0.05, maximum=1.0, rng=rng or random.Random())
        self.down_since: float | None = None
        self.dropped = 0  # over the lifetime
        self._dropped_now = 0  # in the current outage
        self.outages = 0

    def send(self, fn: Callable[[], Any]) -> bool:
        while True:
            try:
                fn()
            except REDIS_DOWN:
                if self.down_since is None:
                    self.down_since = self.clock()
                    self.outages += 1
                if self.live:
                    self.dropped += 1
                    self._dropped_now += 1
                    return False
                if self.should_stop():
                    return False
                self.backoff.wait(self.sleep)
                continue
            self.backoff.reset()
            if self.down_since is not None:
                down_s, n = self.clock() - self.down_since, self._dropped_now
                self.down_since, self._dropped_now = None, 0
                self.on_restore(n, down_s)
            return True
