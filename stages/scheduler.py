"""Scheduler stage: consumer-group workers turning frames into analytics records.

Each worker reads every registered camera's ``frames:{cam}`` through the
``scheduler`` consumer group (XREADGROUP), asks the frame policy which models
execute on each frame, runs them batched across the frames (and cameras) of one
read, fills the remaining models through the policy (links, held values...),
XADDs one record per frame to ``results:{cam}``, and only then XACKs (and
XDELs) the frame. A worker that dies leaves its frames pending; live workers
reclaim frames idle for longer than ``claim_idle_ms`` (XAUTOCLAIM).

I/O that survives the field:
- Redis faults: a lost connection (Redis restarted, network blip) is retried
  with capped exponential backoff and jitter inside :meth:`Worker.run`; nothing
  is acked before its record is written, so a frame read but not finished is
  simply reclaimed. A consumer group lost with a restarted Redis (NOGROUP) is
  re-created.
- Redis Cluster: every key of one camera shares the hash tag ``{cam}``. On a
  cluster client the worker reads camera by camera (multi-key XREADGROUP would
  be CROSSSLOT): one non-blocking round-robin pass, then one short blocking read
  when nothing was waiting. Writes go through one MULTI/EXEC pipeline per camera
  (record XADD + XACK + XDEL + metric counters), so a record exists iff its frame
  is acked; on a single server all cameras share one MULTI/EXEC.
- Metrics: per-camera counters (``metrics:{cam}`` hash, see
  :mod:`pipeline.metrics`) are incremented in the same transaction as the
  records, so they survive worker restarts and add up across hosts.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import redis

from links.outputs import ModelOutput, Origin
from links.samples import ModelMeta
from pipeline.config import resolve_model_spec
from pipeline.errors import UserError
from pipeline.keys import (
    CAMERAS_KEY,
    GROUP,
    camera_key,
    frames_key,
    metrics_key,
    results_key,
    status_key,
)
from pipeline.metrics import count_origin
from pipeline.redis_conn import connect, is_cluster
from pipeline.streams import (
    SCHEMA_VERSION,
    BadFrame,
    FrameMsg,
    consumer_name,
    decode_frame,
    status_event,
)
from pipeline.zoo import Model, build_model
from stages.frame_policy import AllPolicy, Filled, FramePolicy
from stages.policy_runtime import make_frame_policy

# Errors that mean "Redis is (temporarily) unreachable": retried, never fatal.
_REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.SlotNotCoveredError,
    ConnectionError,
    OSError,
)


@dataclass
class CameraState:
    name: str
    models: list[str]
    results_max_len: int


@dataclass
class WorkerStats:
    frames: int = 0
    bad_frames: int = 0
    reclaimed: int = 0
    redis_errors: int = 0  # connection failures survived (Redis restarts...)
    model_ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))


class Worker:
    def __init__(
        self,
        r: redis.Redis,
        policy: FramePolicy | None = None,
        *,
        batch: int = 8,
        block_ms: int = 200,
        claim_idle_ms: int = 10_000,
        include_boxes: bool = True,
        name: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.r = r
        self.policy: FramePolicy = policy or AllPolicy()
        self.batch, self.block_ms, self.claim_idle_ms = batch, block_ms, claim_idle_ms
        self.include_boxes = include_boxes
        self.name = name or consumer_name()
        self.should_stop = should_stop
        self.cameras: dict[str, CameraState] = {}
        self.models: dict[str, Model] = {}
        self.model_specs: dict[str, Any] = {}
        self.stats = WorkerStats()
        self._last_refresh = 0.0
        self._last_claim = time.monotonic()
        self._reclaimed_by_cam: dict[str, int] = {}
        self._rr = 0  # round-robin start for per-camera reads (cluster)
        self.cluster = is_cluster(r)

    # -------------------------------------------------------------- cameras
    def refresh_cameras(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_refresh < 1.0:
            return
        self._last_refresh = now
        for raw in self.r.smembers(CAMERAS_KEY):
            cam = raw.decode() if isinstance(raw, bytes) else raw
            if cam in self.cameras:
                continue
            info = self.r.hgetall(camera_key(cam))
            if b"models" not in info:
                continue  # registered but its decoder has not published its models yet
            try:
                self._add_camera(cam, info)
            except UserError as exc:
                self._status(cam, "error", reason=str(exc))

    def _add_camera(self, cam: str, info: dict[bytes, bytes]) -> None:
        specs = [resolve_model_spec(s) for s in json.loads(info[b"models"])]
        for s in specs:
            if s.name not in self.models:
                self.models[s.name] = build_model(s)
                self.model_specs[s.name] = s
        if hasattr(self.policy, "bind"):
            self.policy.bind({s.name: ModelMeta.of(self.models[s.name]) for s in specs})
        self._ensure_group(cam)
        self.cameras[cam] = CameraState(cam, [s.name for s in specs], int(info.get(b"results_max_len", 100_000)))

    def _ensure_group(self, cam: str) -> None:
        try:
            self.r.xgroup_create(frames_key(cam), GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _status(self, cam: str, event: str, **info: Any) -> None:
        self.r.xadd(status_key(cam), status_event(event, cam, worker=self.name, **info), maxlen=1000, approximate=True)

    # ----------------------------------------------------------------- loop
    def run(self, idle_exit_s: float | None = None) -> WorkerStats:
        """Serve until ``should_stop()``; with ``idle_exit_s``, also stop after that long idle.

        Redis connection errors never end the loop: the step is retried with
        backoff (0.1 s doubling to 2 s, jittered) until Redis is back.
        """
        last_work = time.monotonic()
        down_since: float | None = None
        delay = 0.1
        while not self.should_stop():
            try:
                n = self.step()
            except _REDIS_DOWN as exc:
                self.stats.redis_errors += 1
                if down_since is None:
                    down_since = time.monotonic()
                    print(f"mlink: worker {self.name}: redis unavailable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); retrying", file=sys.stderr)
                time.sleep(delay * (1 - 0.3 * random.random()))
                delay = min(2.0, delay * 2)
                last_work = time.monotonic()
                continue
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Redis came back empty (no persistence): streams and groups are gone.
                for cam in self.cameras:
                    self._ensure_group(cam)
                continue
            if down_since is not None:
                print(f"mlink: worker {self.name}: redis back after {time.monotonic() - down_since:.1f}s", file=sys.stderr)
                down_since, delay = None, 0.1
            if n:
                last_work = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last_work > idle_exit_s:
                break
        return self.stats

    def step(self) -> int:
        """One read (plus reclaim when due); returns how many frames were handled."""
        self.refresh_cameras()
        if not self.cameras:
            time.sleep(self.block_ms / 1000)
            self.refresh_cameras(force=True)
            return 0
        entries = self._reclaim() if time.monotonic() - self._last_claim > self.claim_idle_ms / 2000 else []
        if not entries:
            entries = self._read()
        if entries:
            self.process(entries)
        return len(entries)

    def _read(self) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        entries: list[tuple[str, bytes, dict[bytes, bytes]]] = []

        def add(resp: Any) -> None:
            for key, items in resp or []:
                k = key.decode() if isinstance(key, bytes) else key
                entries.extend((k, eid, fields) for eid, fields in items)

        cams = list(self.cameras)
        if not self.cluster:
            add(self.r.xreadgroup(GROUP, self.name, {frames_key(c): ">" for c in cams}, count=self.batch, block=self.block_ms))
            return entries
        # Cluster: one key per command. A non-blocking round-robin pass...
        start = self._rr % len(cams)
        self._rr += 1
        for i in range(len(cams)):
            cam = cams[(start + i) % len(cams)]
            add(self.r.xreadgroup(GROUP, self.name, {frames_key(cam): ">"}, count=self.batch - len(entries)))
            if len(entries) >= self.batch:
                return entries
        if not entries:
            # ...then one short blocking read, rotating over the cameras.
            block = max(10, self.block_ms // len(cams))
            add(self.r.xreadgroup(GROUP, self.name, {frames_key(cams[start]): ">"}, count=self.batch, block=block))
        return entries

    def _reclaim(self) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        self._last_claim = time.monotonic()
        out = []
        for cam in self.cameras:
            key = frames_key(cam)
            try:
                res = self.r.xautoclaim(key, GROUP, self.name, min_idle_time=self.claim_idle_ms, start_id="0-0", count=self.batch)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self._ensure_group(cam)
                continue
            for eid, fields in res[1]:
                if fields:  # a trimmed (deleted) entry comes back empty: nothing to do
                    out.append((key, eid, fields))
                    self._reclaimed_by_cam[cam] = self._reclaimed_by_cam.get(cam, 0) + 1
                else:
                    self.r.xack(key, GROUP, eid)
        self.stats.reclaimed += len(out)
        return out

    # -------------------------------------------------------------- process
    def process(self, entries: list[tuple[str, bytes, dict[bytes, bytes]]]) -> None:
        t_read = time.time()
        t_start = time.perf_counter()
        frames: list[tuple[str, bytes, FrameMsg]] = []
        done_bad: list[tuple[str, bytes]] = []
        for key, eid, fields in entries:
            cam = key[len("frames:{") : -1]
            try:
                msg = decode_frame(fields)
            except BadFrame as exc:
                self.stats.bad_frames += 1
                self._status(cam, "error", reason=f"camera {cam}: bad frame entry {eid.decode() if isinstance(eid, bytes) else eid}: {exc}")
                done_bad.append((key, eid))
                continue
            frames.append((key, eid, msg))

        # Which models run on which frame, then one batched call per model.
        plan: list[set[str]] = []
        jobs: dict[str, list[int]] = defaultdict(list)
        for i, (_, _, msg) in enumerate(frames):
            cs = self.cameras.get(msg.camera)
            models = cs.models if cs else []
            run = self.policy.decide(msg.camera, msg, models)
            plan.append(run)
            for m in models:
                if m in run:
                    jobs[m].append(i)
        outputs: list[dict[str, ModelOutput]] = [{} for _ in frames]
        per_frame_ms: list[dict[str, float]] = [{} for _ in frames]
        for m, idx in jobs.items():
            model = self.models[m]
            t0 = time.perf_counter()
            outs = model.predict([frames[i][2].image for i in idx], [frames[i][2].camera for i in idx])
            share = (time.perf_counter() - t0) * 1000 / len(idx)
            self.stats.model_ms[m] += share * len(idx)
            for i, o in zip(idx, outs):
                outputs[i][m] = o
                per_frame_ms[i][m] = share

        # One MULTI/EXEC per camera on a cluster (one slot each), one for all on a single server:
        # a record exists iff its frame is acked and deleted.
        pipes: dict[str, Any] = {}

        def pipe_for(cam: str) -> Any:
            k = cam if self.cluster else ""
            if k not in pipes:
                pipes[k] = self.r.pipeline(transaction=True)
            return pipes[k]

        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        built = []
        for i, (key, eid, msg) in enumerate(frames):
            cs = self.cameras.get(msg.camera)
            models = cs.models if cs else []
            t_fill = time.perf_counter()
            self.policy.observe(msg.camera, msg, outputs[i])
            others = [m for m in models if m not in outputs[i]]
            filled = self.policy.fill(msg.camera, msg, outputs[i], others) if others else {}
            fill_ms = (time.perf_counter() - t_fill) * 1000
            rec = self.build_record(msg, models, outputs[i], filled, per_frame_ms[i], t_read)
            rec["latency_ms"]["links"] = round(fill_ms, 3)
            built.append((key, eid, msg, cs, rec))
        # The worker's processing time per frame (decode, policy, models, links, records),
        # so benchmarks can tell model time from overhead.
        worker_ms = round((time.perf_counter() - t_start) * 1000 / max(len(frames), 1), 3)
        for key, eid, msg, cs, rec in built:
            rec["latency_ms"]["worker"] = worker_ms
            cam = key[len("frames:{") : -1]
            maxlen = cs.results_max_len if cs else 100_000
            pipe = pipe_for(cam)
            # The record goes to the stream the frame came from (same slot as the frame).
            pipe.xadd(results_key(cam), {"frame": msg.frame, "json": json.dumps(rec, separators=(",", ":"))}, maxlen=maxlen, approximate=True)
            pipe.xack(key, GROUP, eid)
            pipe.xdel(key, eid)
            c = counts[cam]
            c["processed"] += 1
            for m, o in rec["outputs"].items():
                c[count_origin(o["origin"], m)] += 1
        for key, eid in done_bad:
            cam = key[len("frames:{") : -1]
            pipe = pipe_for(cam)
            pipe.xack(key, GROUP, eid)
            pipe.xdel(key, eid)
            counts[cam]["bad_frames"] += 1
        for cam, c in counts.items():
            if reclaimed_n := self._reclaimed_by_cam.pop(cam, 0):
                c["reclaimed"] += reclaimed_n
            pipe = pipe_for(cam)
            for f, n in c.items():
                pipe.hincrby(metrics_key(cam), f, n)
        for pipe in pipes.values():
            pipe.execute()
        self.stats.frames += len(frames)

    def build_record(
        self,
        msg: FrameMsg,
        models: list[str],
        executed: dict[str, ModelOutput],
        filled: dict[str, Filled],
        ms: dict[str, float],
        t_read: float,
    ) -> dict[str, Any]:
        outs: dict[str, Any] = {}
        for m in models:
            if m in executed:
                rec = {"origin": Origin.EXECUTED.value, **executed[m].to_record(include_boxes=self.include_boxes), "ms": round(ms.get(m, 0.0), 3)}
            else:
                f = filled.get(m, Filled(Origin.MISSING, None))
                rec = {"origin": f.origin.value}
                if f.output is not None:
                    rec.update(f.output.to_record(include_boxes=self.include_boxes))
                if f.via:
                    rec["via"] = list(f.via)
                if f.confidence is not None:
                    rec["confidence"] = round(float(f.confidence), 4)
            outs[m] = rec
        now = time.time()
        model_ms = sum(ms.values())
        pol = self.policy.describe(msg.camera)
        return {
            "v": SCHEMA_VERSION,
            "camera": msg.camera,
            "frame": msg.frame,
            "pts": round(msg.pts, 6),
            "pts_raw": round(msg.pts_raw, 6),
            "wall": round(msg.wall, 6),
            "width": msg.width,
            "height": msg.height,
            "outputs": outs,
            "policy": {**pol, "active": sorted(executed)},
            "latency_ms": {
                "queue": round((t_read - msg.wall) * 1000, 2),
                "models": round(model_ms, 2),
                "total": round((now - msg.wall) * 1000, 2),
            },
            "worker": self.name,
        }


def worker_main(redis_url: str, batch: int = 8, policy_name: str = "all", claim_idle_ms: int = 10_000) -> int:
    """Process entry point (the supervisor starts N of these)."""
    stop = {"flag": False}

    def _stop(*_: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    r = connect(redis_url)
    policy = make_frame_policy(policy_name, r)
    Worker(r, policy, batch=batch, claim_idle_ms=claim_idle_ms, should_stop=lambda: stop["flag"]).run()
    return 0
