"""Scheduler stage: consumer-group workers turning frames into analytics records.

Each worker reads the ``frames:{cam}`` of the cameras it owns (one owner per camera among
the live workers, :mod:`stages.assignment`; every camera with ``share_cameras``) through
the ``scheduler`` consumer group (XREADGROUP), asks the frame policy which models
execute on each frame, runs them batched across the frames (and cameras) of one
read, fills the remaining models through the policy (links, held values...),
XADDs one record per frame to ``results:{cam}``, and only then XACKs (and
XDELs) the frame. A worker that dies leaves its frames pending; its cameras' new owners
reclaim frames idle for longer than ``claim_idle_ms`` (XPENDING + XCLAIM in one script).

I/O that survives the field:
- Redis faults: a lost connection (Redis restarted, network blip) is retried
  with capped exponential backoff and jitter inside :meth:`Worker.run`; nothing
  is acked before its record is written, so a frame read but not finished is
  simply reclaimed. A consumer group lost with a restarted Redis (NOGROUP) is
  re-created.
- Redis Cluster: every key of one camera shares the hash tag ``{cam}``. On a
  cluster client the worker reads camera by camera (multi-key XREADGROUP would
  be CROSSSLOT): one non-blocking round-robin pass, then one short blocking read
  when nothing was waiting.
- Exactly one record per frame: a camera's writes are one Lua script (all its keys
  share a slot) that, per frame, XACKs and only if that acknowledged it (returned 1)
  XADDs the record, XDELs the frame and counts it. A worker too slow for
  ``claim_idle_ms`` whose frames another worker reclaimed and recorded meanwhile finds
  them acked and writes nothing: a record exists iff its frame was acked, once.
- Metrics: per-camera counters (``metrics:{cam}`` hash, see
  :mod:`pipeline.metrics`) are incremented in the same script as the
  records, so they survive worker restarts and add up across hosts.
- The web view's frame: the same script keeps ``preview:{cam}`` (one hash: the
  newest recorded frame's JPEG and its record, overwritten, so nothing grows), written
  at most every ``preview_every_s`` per camera and worker, only with its record and
  never with an older frame. A JPEG frame is stored as it came: no decode, no encode.
- Live cameras: a frame older than the camera's ``max_lag_s`` when a worker reads
  it is skipped (acked, deleted, counted as ``skipped``) without decoding it, so a
  scheduler slower than the camera keeps serving recent frames: record latency
  stays under ``max_lag_s`` plus one batch. Replay cameras keep every frame.
- User errors: a camera whose models cannot be built, or whose links or budget
  are unusable, is marked failed once (a ``failed`` status event naming the cause,
  see :func:`pipeline.registry.mark_failed`); the worker stops reading it and goes
  on with the other cameras. Nothing is restarted in a loop.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import redis

from links.errors import LinksError
from links.outputs import ModelOutput, Origin
from links.samples import ModelMeta
from pipeline.backoff import Backoff
from pipeline.config import Mode, TrustedCode, resolve_model_specs
from pipeline.errors import UserError, say_stderr
from pipeline.exitcodes import ExitCode
from pipeline.keys import (
    CAMERA_NAME_RULE,
    CAMERAS_KEY,
    GROUP,
    camera_key,
    camera_of,
    frames_key,
    held_key,
    metrics_key,
    preview_key,
    results_key,
    status_key,
    valid_camera_name,
)
from pipeline.metrics import count_origin
from pipeline.redis_conn import REDIS_DOWN, Outage, connect, is_cluster
from pipeline.registry import ensure_group, mark_failed
from pipeline.streams import (
    SCHEMA_VERSION,
    BadFrame,
    FrameMsg,
    consumer_name,
    decode_frame,
    status_event,
)
from pipeline.zoo import Model, build_model
from stages.assignment import Membership
from stages.frame_policy import AllPolicy, Filled, FramePolicy
from stages.policy_runtime import make_frame_policy

# Errors that concern one camera's input (its models, links, budget): the camera fails, the worker goes on.
CAMERA_ERRORS: tuple[type[BaseException], ...] = (UserError, LinksError)

Entry = tuple[str, bytes, dict[bytes, bytes]]  # (frames key, entry id, fields)

# KEYS: frames, results, metrics, preview of ONE camera. ARGV: group, results maxlen, n, then n x
# (entry id, frame, record json, counters), then m, m x (entry id, counter), then extra counters,
# then the preview's frame ("" for none) and JPEG. Counters are "field=n,field=n".
# Returns how many records were written.
_WRITE_LUA = """
local group, maxlen = ARGV[1], ARGV[2]
local pv_frame, pv_jpeg = ARGV[#ARGV - 1], ARGV[#ARGV]
local function count(spec)
  for f, n in string.gmatch(spec, '([^=,]+)=(%d+)') do redis.call('HINCRBY', KEYS[3], f, tonumber(n)) end
end
local function preview(frame, rec)
  local cur = redis.call('HGET', KEYS[4], 'frame')
  if not cur or tonumber(frame) > tonumber(cur) then
    redis.call('HSET', KEYS[4], 'frame', frame, 'json', rec, 'jpeg', pv_jpeg)
  end
end
local function hold(frame, model, blob)
  local cur = redis.call('HGET', KEYS[5], model .. '@')
  if not cur or tonumber(frame) > tonumber(cur) then
    redis.call('HSET', KEYS[5], model, blob, model .. '@', frame)
  end
end
local i, written = 4, 0
for _ = 1, tonumber(ARGV[3]) do
  local eid, frame, rec, counters, nheld = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  i = i + 5
  if redis.call('XACK', KEYS[1], group, eid) == 1 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'frame', frame, 'json', rec)
    redis.call('XDEL', KEYS[1], eid)
    count(counters)
    written = written + 1
    if frame == pv_frame then preview(frame, rec) end
    for k = 0, nheld - 1 do hold(frame, ARGV[i + 2 * k], ARGV[i + 2 * k + 1]) end
  end
  i = i + 2 * nheld
end
local m = tonumber(ARGV[i])
i = i + 1
for _ = 1, m do
  if redis.call('XACK', KEYS[1], group, ARGV[i]) == 1 then
    redis.call('XDEL', KEYS[1], ARGV[i])
    redis.call('HINCRBY', KEYS[3], ARGV[i + 1], 1)
  end
  i = i + 2
end
count(ARGV[i])
return written
"""


# KEYS: frames:{cam}, metrics:{cam}. ARGV: group, consumer, min idle ms, count.
# Claims frames whose worker went quiet (what XAUTOCLAIM does, spelled out because Redis
# versions differ in how it reports deleted entries). A frame the live bound trimmed while
# its worker held it (the decoder does not count those) and whose worker then died is gone:
# it is acked and counted (``trimmed`` in metrics:{cam}) here, atomically with the claim, so
# every lost frame counts once.
_RECLAIM_LUA = """
local out, lost = {}, 0
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])) do
  local id = p[1]
  if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    lost = lost + 1
  else
    for _, e in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], id)) do table.insert(out, e) end
  end
end
if lost > 0 then redis.call('HINCRBY', KEYS[2], 'trimmed', lost) end
return out
"""


def _counters(counts: dict[str, int]) -> str:
    return ",".join(f"{k}={n}" for k, n in counts.items() if n)


@dataclass
class CameraState:
    name: str
    models: list[str]
    results_max_len: int
    live: bool = False
    max_lag_s: float = 2.0


@dataclass
class WorkerStats:
    frames: int = 0
    bad_frames: int = 0
    skipped: int = 0  # live frames older than max_lag_s, acked without processing
    reclaimed: int = 0
    duplicates_avoided: int = 0  # records not written: another worker had reclaimed and recorded the frame
    redis_errors: int = 0  # connection failures survived (Redis restarts...)
    lease_lapses: int = 0  # beats that came later than the lease: meanwhile other workers could take its cameras
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
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        say: Callable[[str], None] = say_stderr,
        preview_every_s: float = 0.1,
        trusted: TrustedCode | None = None,
        share_cameras: bool = False,
        lease_ms: int = 5000,
        stall_s: float = 60.0,
    ) -> None:
        self.r = r
        self.preview_every_s = preview_every_s
        self._last_preview: dict[str, float] = {}  # camera -> when this worker last wrote its preview
        self.policy: FramePolicy = policy or AllPolicy()
        self.batch, self.block_ms, self.claim_idle_ms = batch, block_ms, claim_idle_ms
        self.include_boxes = include_boxes
        self.name = name or consumer_name()
        self.should_stop = should_stop
        self.clock, self.wall_clock, self.sleep = clock, wall_clock, sleep
        self.cameras: dict[str, CameraState] = {}
        self.failed: dict[str, str] = {}  # camera -> why this worker gave up on it
        self.models: dict[str, Model] = {}
        self.model_specs: dict[str, Any] = {}
        self.stats = WorkerStats()
        self.say = say
        self.trusted = trusted or TrustedCode.of()  # the packaged zoo and the built-ins only
        self.outage = Outage(f"worker {self.name}", say, clock)
        self._last_refresh = -1e9
        self._last_claim = clock()
        self._reclaimed_by_cam: dict[str, int] = {}
        self._rr = 0  # round-robin start for per-camera reads (cluster)
        self.cluster = is_cluster(r)
        self._write_script = r.register_script(_WRITE_LUA)
        self._reclaim_script = r.register_script(_RECLAIM_LUA)
        # One owner per camera (stages.assignment) unless the cameras are shared.
        self.share_cameras = share_cameras
        self.membership = Membership(r, self.name, lease_ms)
        self._owner: dict[str, str] = {}  # camera -> its worker, dealt when the registry or the live workers are read
        self._beat_at = -1e9  # when this worker last renewed its lease (monotonic)
        self.stall_s = stall_s  # a loop stuck this long stops renewing the lease: its cameras move
        self._loop_alive = time.monotonic()

    # -------------------------------------------------------------- cameras
    def refresh_cameras(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_refresh < 1.0:
            return
        self._last_refresh = now
        live = self._beat()
        registered = [raw.decode(errors="replace") if isinstance(raw, bytes) else raw for raw in self.r.smembers(CAMERAS_KEY)]
        added = False
        for cam in registered:
            if cam in self.cameras:
                continue
            if not valid_camera_name(cam):  # anyone who can write to Redis could register one
                if cam not in self.failed:
                    self.failed[cam] = f"camera {cam!r}: refused: {CAMERA_NAME_RULE}"
                    self.say(f"mlink: worker {self.name}: {self.failed[cam]}")
                continue
            info = self.r.hgetall(camera_key(cam))
            if cam in self.failed:
                if b"failed" in info:
                    continue  # still failed: said once, not again
                del self.failed[cam]  # a new session prepared the camera again
            if b"models" not in info:
                continue  # registered but its decoder has not published its models yet
            try:
                self._add_camera(cam, info)
                added = True
            except CAMERA_ERRORS as exc:
                self.fail_camera(cam, exc)
        if added:
            live = self._beat()  # loading models took a while: who else came up meanwhile
        if not self.share_cameras:
            # Dealt over what every worker sees alike (the registry), not over the cameras this
            # worker could build: otherwise a camera one host cannot serve shifts the others' owners.
            self._owner = self.membership.deal((c for c in registered if valid_camera_name(c)), live)

    def _beat(self) -> list[str]:
        """Renew this worker's lease; the live workers (just this one when cameras are shared)."""
        if self.share_cameras:
            return [self.name]
        gap = time.monotonic() - self._beat_at
        first = self._beat_at < 0
        live = self.membership.beat()
        self._beat_at = time.monotonic()
        if not first and gap * 1000 > self.membership.lease_ms:
            # Its cameras may have been dealt to another worker meanwhile (and stay there: owners
            # are sticky); said, so a camera that moved mid-run has a visible cause.
            self.stats.lease_lapses += 1
            self.say(f"mlink: worker {self.name}: lease lapsed: no beat for {gap:.1f} s (lease {self.membership.lease_ms / 1000:g} s); "
                     "other workers may have taken its cameras")
        return live

    def _add_camera(self, cam: str, info: dict[bytes, bytes]) -> None:
        # Re-checked on this host (its packages, its CUDA): a problem fails the camera with one line.
        raw = json.loads(info[b"models"])
        for item in raw:  # before validating: validation already resolves packages and reads files
            if (why := self.trusted.refusal(item)) is not None:
                raise UserError(f"camera {cam}: {why}")
        specs = resolve_model_specs(raw, f"camera {cam}")
        for s in specs:
            if s.name not in self.models:
                self.models[s.name] = build_model(s)
                self.model_specs[s.name] = s
        self.policy.bind({s.name: ModelMeta.of(self.models[s.name]) for s in specs})
        ensure_group(self.r, cam)
        self.cameras[cam] = CameraState(cam, [s.name for s in specs], int(info.get(b"results_max_len", 100_000)),
                                        live=info.get(b"mode") == Mode.LIVE.value.encode(),
                                        max_lag_s=float(info.get(b"max_lag_s", 2.0)))

    def serving(self) -> list[str]:
        """The cameras this worker reads: those it owns among the live workers (all of them when
        cameras are shared). Every record names the worker that made it (``worker``)."""
        if self.share_cameras:
            return list(self.cameras)
        return [c for c in self.cameras if self._owner.get(c, self.name) == self.name]

    def fail_camera(self, cam: str, exc: BaseException | str) -> None:
        """Give up on one camera for good (its input is wrong); the others go on."""
        reason = str(exc)
        if not reason.startswith(f"camera {cam}:"):
            reason = f"camera {cam}: {reason}"
        self.cameras.pop(cam, None)
        self.failed[cam] = reason
        mark_failed(self.r, cam, reason, worker=self.name)

    def _status(self, cam: str, event: str, **info: Any) -> None:
        self.r.xadd(status_key(cam), status_event(event, cam, worker=self.name, **info), maxlen=1000, approximate=True)

    # ----------------------------------------------------------------- loop
    def run(self, idle_exit_s: float | None = None) -> WorkerStats:
        """Serve until ``should_stop()``; with ``idle_exit_s``, also stop after that long idle.

        Redis connection errors never end the loop: the step is retried with
        backoff (0.1 s doubling to 2 s, jittered) until Redis is back.
        """
        last_work = self.clock()
        backoff = Backoff(initial=0.1, maximum=2.0)
        beating, beater = self._start_heartbeat()
        try:
            return self._loop(idle_exit_s, last_work, backoff)
        finally:
            beating.set()
            if beater is not None:
                beater.join(5.0)  # a beat in flight must not land after the leave
            if not self.share_cameras:
                try:
                    self.membership.leave()  # the cameras it served move now, not after the lease
                except REDIS_DOWN:
                    pass

    def _start_heartbeat(self) -> tuple[threading.Event, threading.Thread | None]:
        """Keep this worker's lease alive while one step runs for long (a cold start's link
        training takes seconds): a thread beats when the loop has not for a third of the lease."""
        stop = threading.Event()
        if self.share_cameras:
            return stop, None

        every_s = self.membership.lease_ms / 3000

        def beat() -> None:
            while not stop.wait(every_s):
                now = time.monotonic()
                if now - self._loop_alive > self.stall_s or now - self._beat_at < every_s:
                    continue  # hung (not merely busy): let the others take its cameras; or the loop just beat
                try:
                    self._beat()
                except redis.RedisError:
                    pass  # Redis away: the loop waits for it and says so

        t = threading.Thread(target=beat, name=f"lease:{self.name}", daemon=True)
        t.start()
        return stop, t

    def _loop(self, idle_exit_s: float | None, last_work: float, backoff: Backoff) -> WorkerStats:
        while not self.should_stop():
            self._loop_alive = time.monotonic()
            try:
                n = self.step()
            except REDIS_DOWN as exc:
                self.stats.redis_errors += 1
                self.outage.down(exc)
                backoff.wait(self.sleep)
                last_work = self.clock()
                continue
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Redis came back empty (no persistence): streams and groups are gone.
                for cam in self.cameras:
                    ensure_group(self.r, cam)
                continue
            if self.outage.up() is not None:
                backoff.reset()
            if n:
                last_work = self.clock()
            elif idle_exit_s is not None and self.clock() - last_work > idle_exit_s:
                break
        return self.stats

    def step(self) -> int:
        """One read (plus reclaim when due); returns how many frames were handled."""
        self.refresh_cameras()
        if not self.cameras:
            self.sleep(self.block_ms / 1000)
            self.refresh_cameras(force=True)
            return 0
        cams = self.serving()
        if not cams:  # a hot standby: every camera has a live owner
            self.sleep(self.block_ms / 1000)
            return 0
        entries = self._reclaim(cams) if self.clock() - self._last_claim > self.claim_idle_ms / 2000 else []
        if not entries:
            entries = self._read(cams)
        if entries:
            self.process(entries)
        return len(entries)

    def _read(self, cams: list[str]) -> list[Entry]:
        entries: list[Entry] = []

        def add(resp: Any) -> None:
            for key, items in resp or []:
                k = key.decode() if isinstance(key, bytes) else key
                entries.extend((k, eid, fields) for eid, fields in items)

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

    def _reclaim(self, cams: list[str]) -> list[Entry]:
        self._last_claim = self.clock()
        out = []
        for cam in cams:
            key = frames_key(cam)
            try:
                claimed = self._reclaim_script(keys=[key, metrics_key(cam)], args=[GROUP, self.name, self.claim_idle_ms, self.batch])
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                ensure_group(self.r, cam)
                continue
            for eid, flat in claimed:
                fields = dict(zip(flat[::2], flat[1::2]))
                out.append((key, eid, fields))
                self._reclaimed_by_cam[cam] = self._reclaimed_by_cam.get(cam, 0) + 1
        self.stats.reclaimed += len(out)
        return out

    # -------------------------------------------------------------- process
    def process(self, entries: list[Entry]) -> None:
        t_read = self.wall_clock()
        t_start = time.perf_counter()
        frames: list[tuple[str, bytes, FrameMsg]] = []
        done_bad: list[tuple[str, bytes]] = []
        skipped: list[tuple[str, bytes]] = []
        for key, eid, fields in entries:
            cam = camera_of(key)
            cs = self.cameras.get(cam)
            if cs is None:
                continue  # failed meanwhile: its frames stay where they are
            if cs.live and self._too_old(fields, t_read, cs.max_lag_s):
                skipped.append((key, eid))  # newest-frame semantics: never decoded
                continue
            try:
                msg = decode_frame(fields, lazy=True)  # the JPEG is decoded only if a model needs the pixels
            except BadFrame as exc:
                self._bad_frame(cam, key, eid, exc, done_bad)
                continue
            frames.append((key, eid, msg))

        # Which models run on which frame, then one batched call per model.
        self.policy.adopt_shared({msg.camera for _, _, msg in frames})
        jobs: dict[str, list[int]] = defaultdict(list)
        bad: set[int] = set()
        for i, (key, eid, msg) in enumerate(frames):
            cs = self.cameras.get(msg.camera)
            if cs is None:
                continue
            try:
                run = self.policy.decide(msg.camera, msg, cs.models)
            except BadFrame as exc:  # a policy that looks at the pixels (reducto) met a corrupt image
                self._bad_frame(msg.camera, key, eid, exc, done_bad)
                bad.add(i)
                continue
            except CAMERA_ERRORS as exc:
                self.fail_camera(msg.camera, exc)
                continue
            for m in cs.models:
                if m in run:
                    jobs[m].append(i)
        # Each frame's image is decoded once, and only where some model runs on it.
        for i in sorted({i for idx in jobs.values() for i in idx} - bad):
            key, eid, msg = frames[i]
            try:
                msg.image  # noqa: B018
            except BadFrame as exc:
                self._bad_frame(msg.camera, key, eid, exc, done_bad)
                bad.add(i)
        if bad:
            jobs = defaultdict(list, {m: [i for i in idx if i not in bad] for m, idx in jobs.items()})
        outputs: list[dict[str, ModelOutput]] = [{} for _ in frames]
        per_frame_ms: list[dict[str, float]] = [{} for _ in frames]
        for m, idx in jobs.items():
            idx = [i for i in idx if frames[i][2].camera in self.cameras]
            if not idx:
                continue
            t0 = time.perf_counter()
            try:
                outs = self.models[m].predict([frames[i][2].image for i in idx], [frames[i][2].camera for i in idx])
            except CAMERA_ERRORS as exc:  # e.g. weights that cannot be loaded: every camera using it fails
                for cam in {frames[i][2].camera for i in idx}:
                    self.fail_camera(cam, f"model {m}: {exc}")
                continue
            share = (time.perf_counter() - t0) * 1000 / len(idx)
            self.stats.model_ms[m] += share * len(idx)
            for i, o in zip(idx, outs):
                outputs[i][m] = o
                per_frame_ms[i][m] = share

        # Another worker's batch of earlier frames may have been written while these models ran:
        # fill from its outputs too (two workers on one camera then hold values as fresh as one).
        self.policy.adopt_shared({msg.camera for _, _, msg in frames if msg.camera in self.cameras})
        built = []
        for i, (key, eid, msg) in enumerate(frames):
            cs = self.cameras.get(msg.camera)
            if cs is None or i in bad:
                continue  # the camera failed in this batch (no record, its frame stays unacked), or a bad frame
            t_fill = time.perf_counter()
            try:
                self.policy.observe(msg.camera, msg, outputs[i], per_frame_ms[i])
                others = [m for m in cs.models if m not in outputs[i]]
                filled = self.policy.fill(msg.camera, msg, outputs[i], others) if others else {}
            except CAMERA_ERRORS as exc:
                self.fail_camera(msg.camera, exc)
                continue
            fill_ms = (time.perf_counter() - t_fill) * 1000
            rec = self.build_record(msg, cs.models, outputs[i], filled, per_frame_ms[i], t_read)
            rec["latency_ms"]["links"] = round(fill_ms, 3)
            built.append((key, eid, msg, cs, rec, self.policy.held_to_share(msg.camera, msg, outputs[i])))
        # The worker's processing time per frame (decode, policy, models, links, records),
        # so benchmarks can tell model time from overhead.
        worker_ms = round((time.perf_counter() - t_start) * 1000 / max(len(frames), 1), 3)
        self._write(built, worker_ms, done_bad, skipped)
        self.stats.frames += len(built)
        self.stats.skipped += len(skipped)

    def _bad_frame(self, cam: str, key: str, eid: bytes, exc: BaseException, done_bad: list[tuple[str, bytes]]) -> None:
        """A frame entry that cannot be decoded: reported once, then acked and deleted with the batch."""
        self.stats.bad_frames += 1
        self._status(cam, "bad_frame", reason=f"camera {cam}: bad frame entry {eid.decode() if isinstance(eid, bytes) else eid}: {exc}")
        done_bad.append((key, eid))

    @staticmethod
    def _too_old(fields: dict[bytes, bytes], now: float, max_lag_s: float) -> bool:
        try:
            return now - float(fields[b"wall"]) > max_lag_s
        except (KeyError, ValueError):
            return False  # a malformed entry is reported by decode_frame

    def _write(self, built: list[tuple[str, bytes, FrameMsg, CameraState, dict[str, Any], dict[str, bytes]]], worker_ms: float,
               done_bad: list[tuple[str, bytes]], skipped: list[tuple[str, bytes]]) -> None:
        """Records, acks and counters, one atomic script per camera (one slot: all its keys
        share the hash tag). A frame's record is written only by the worker whose XACK
        acknowledged it: a worker that was too slow and whose frames another worker
        reclaimed meanwhile writes nothing for them, so every frame has exactly one record.
        The same script publishes the frame's executed outputs as the camera's held outputs
        (``held:{cam}``, only where newer than what is there), so the shared temporal context
        never holds an output whose record was not written."""
        per_cam: dict[str, list[list[Any]]] = defaultdict(list)
        acks: dict[str, list[tuple[bytes, str]]] = defaultdict(list)
        newest: dict[str, FrameMsg] = {}  # per camera, the newest frame of this batch (the preview candidate)
        for key, eid, msg, cs, rec, held in built:
            if cs.name not in newest or msg.frame > newest[cs.name].frame:
                newest[cs.name] = msg
            rec["latency_ms"]["worker"] = worker_ms
            counts: dict[str, int] = defaultdict(int)
            counts["processed"] = 1
            for m, o in rec["outputs"].items():
                counts[count_origin(o["origin"], m)] += 1
            args: list[Any] = [eid, str(msg.frame), json.dumps(rec, separators=(",", ":")), _counters(counts), len(held)]
            for m, blob in held.items():
                args.extend((m, blob))
            per_cam[cs.name].append(args)
        for field_name, done in (("bad_frames", done_bad), ("skipped", skipped)):
            for key, eid in done:
                acks[camera_of(key)].append((eid, field_name))
        for cam in set(per_cam) | set(acks) | set(self._reclaimed_by_cam):
            recs, plain = per_cam.get(cam, []), acks.get(cam, [])
            cs = self.cameras.get(cam)
            argv: list[Any] = [GROUP, cs.results_max_len if cs else 100_000, len(recs)]
            for r in recs:
                argv.extend(r)
            argv.append(len(plain))
            for eid, f in plain:
                argv.extend((eid, f))
            argv.append(_counters({"reclaimed": self._reclaimed_by_cam.pop(cam, 0)}))
            argv.extend(self._preview(cam, newest.get(cam)))
            written = self._write_script(keys=[frames_key(cam), results_key(cam), metrics_key(cam), preview_key(cam), held_key(cam)], args=argv)
            self.stats.duplicates_avoided += len(recs) - int(written)

    def _preview(self, cam: str, msg: FrameMsg | None) -> tuple[str, bytes]:
        """(frame, JPEG) for ``preview:{cam}`` when one is due for this camera, else ("", b"")."""
        now = self.clock()
        if msg is None or now - self._last_preview.get(cam, -1e9) < self.preview_every_s:
            return "", b""
        self._last_preview[cam] = now
        if msg.enc == "jpeg" and msg.data:
            jpeg = bytes(msg.data)  # as it came from the decoder
        else:  # a raw-encoded camera: encode this one frame
            ok, buf = cv2.imencode(".jpg", msg.image, [cv2.IMWRITE_JPEG_QUALITY, 80])
            jpeg = buf.tobytes() if ok else b""
        return (str(msg.frame), jpeg) if jpeg else ("", b"")

    def build_record(
        self,
        msg: FrameMsg,
        models: list[str],
        executed: dict[str, ModelOutput],
        filled: dict[str, Filled],
        ms: dict[str, float],
        t_read: float,
    ) -> dict[str, Any]:
        pol = self.policy.describe(msg.camera, msg)
        triggers = pol.pop("triggers", None) or {}
        outs: dict[str, Any] = {}
        for m in models:
            if m in executed:
                rec = {"origin": Origin.EXECUTED.value, **executed[m].to_record(include_boxes=self.include_boxes), "ms": round(ms.get(m, 0.0), 3)}
                if m in triggers:
                    rec["trigger"] = triggers[m]  # why it ran: plan, floor, change, uncertain, profile
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
        now = self.wall_clock()
        model_ms = sum(ms.values())
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


def worker_main(redis_url: str, batch: int = 8, policy_name: str = "all", claim_idle_ms: int = 10_000,
                allow: tuple[str, ...] = (), share_cameras: bool = False) -> int:
    """Process entry point (the supervisor starts N of these). ``allow``: the code and weight
    refs of the supervisor's own config, which this worker may load."""
    stop = {"flag": False}

    def _stop(*_: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    r = connect(redis_url)
    policy = make_frame_policy(policy_name, r)
    Worker(r, policy, batch=batch, claim_idle_ms=claim_idle_ms, should_stop=lambda: stop["flag"],
           trusted=TrustedCode.of(allow=allow), share_cameras=share_cameras).run()
    return ExitCode.OK
