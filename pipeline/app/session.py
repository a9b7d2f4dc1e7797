"""The one session engine behind ``mlink run``, ``mlink replay`` and ``mlink bench``.

A session prepares each camera's Redis state, starts one decoder per camera and N
scheduler workers under a :class:`~pipeline.app.supervisor.Supervisor`, follows the
result and status streams, hands every record to its sinks, and ends when every file
camera has ended and every frame it sent has its record (or on Ctrl-C). What differs
between the commands is only which sinks they pass (printer, JSONL file, progress
bar, summary, in-memory store) and how they prepare the cameras.

Sinks are context managers with one method, ``record(rec)``; the engine enters them
for the session and leaves them when it ends, also on error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Protocol, TextIO

import redis

from pipeline.app.collect import ResultCollector, describe_ranges
from pipeline.app.supervisor import Supervisor
from pipeline.app.web import web_url
from pipeline.config import Config
from pipeline.costs import measure_config_costs
from pipeline.errors import say_stderr
from pipeline.keys import frames_key
from pipeline.redis_conn import connect, guard
from pipeline.registry import prepare_camera
from stages.policy_runtime import make_frame_policy

Record = dict[str, Any]
Say = Callable[[str], None]


# ------------------------------------------------------------------- sinks
class Sink(Protocol):
    def __enter__(self) -> "Sink": ...

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None: ...

    def record(self, rec: Record) -> None: ...


class _SinkBase:
    def __enter__(self) -> "_SinkBase":
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        return None


class JsonlSink(_SinkBase):
    """One JSON record per line. The file is created with the first record, so a run
    that produced nothing leaves no (empty, success-looking) file behind."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.written = 0
        self._f: TextIO | None = None

    def record(self, rec: Record) -> None:
        if self._f is None:
            self._f = open(self.path, "w")
        self._f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.written += 1

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._f is not None:
            self._f.close()


def compact_line(rec: Record) -> str:
    """One short line per record: ``cam #frame t=..s latency  model=value(origin) ...``."""
    parts = []
    for m, o in rec["outputs"].items():
        tag = "" if o["origin"] == "executed" else f"({o['origin'][0]})"
        if "count" in o:
            parts.append(f"{m}={o['count']}{tag}")
        elif "label" in o:
            parts.append(f"{m}={o['label']}{tag}")
        elif "value" in o:
            parts.append(f"{m}={o['value']:.3f}{tag}")
        else:
            parts.append(f"{m}=-{tag}")
    return f"{rec['camera']} #{rec['frame']} t={rec['pts']:.2f}s {rec['latency_ms']['total']:.0f}ms  " + " ".join(parts)


class PrintSink(_SinkBase):
    """Records on stdout: ``json`` (full records) or ``compact`` (one short line each)."""

    def __init__(self, mode: str, out: TextIO | None = None) -> None:
        if mode not in ("json", "compact"):
            raise ValueError(f"print mode must be json or compact, not {mode!r}")
        self.mode = mode
        self.out = out

    def record(self, rec: Record) -> None:
        line = json.dumps(rec, separators=(",", ":")) if self.mode == "json" else compact_line(rec)
        print(line, file=self.out or sys.stdout, flush=True)


class ProgressSink(_SinkBase):
    """A progress bar over records. It appears with the first record, so a session
    that fails before producing anything shows only its error."""

    def __init__(self, total: int | None, desc: str, *, leave: bool = True) -> None:
        self.total, self.desc, self.leave = total, desc, leave
        self.bar: Any = None

    def record(self, rec: Record) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="frame", desc=self.desc, leave=self.leave, dynamic_ncols=True, file=sys.stderr)
        self.bar.update(1)

    def say(self, msg: str) -> None:
        """Print a line without tearing the bar."""
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            say_stderr(msg)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.close()


class SummarySink(_SinkBase):
    """Per model: outputs executed, linked, held and missing, and time, for the summary printed
    at the end; and the compute a budget saved: the models' measured time against what every
    model on every frame would have taken (each model's mean measured time per run x records),
    over the whole session and after the cold start (records in the ``budgeted`` phase)."""

    def __init__(self) -> None:
        self.model_ms: dict[str, list[float]] = defaultdict(list)
        self.origins: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.budgeted: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))  # model -> outputs, executed ms

    def record(self, rec: Record) -> None:
        budgeted = (rec.get("policy") or {}).get("phase") == "budgeted"
        for m, o in rec["outputs"].items():
            self.origins[m][o["origin"]] += 1
            if o["origin"] == "executed":
                self.model_ms[m].append(float(o.get("ms", 0.0)))
            if budgeted:
                self.budgeted[m]["outputs"] += 1
                self.budgeted[m]["ms"] += float(o.get("ms", 0.0)) if o["origin"] == "executed" else 0.0

    def compute_saved(self) -> tuple[float, float, float | None, list[str]]:
        """(the models' measured seconds, the seconds every model on every frame would have taken,
        the share saved after the cold start or None, the models never executed: left out of both)."""
        ran = full = ran_after = full_after = 0.0
        unknown = []
        for m, by in self.origins.items():
            v = self.model_ms.get(m, [])
            if not v:
                unknown.append(m)
                continue
            mean = sum(v) / len(v)
            ran += sum(v)
            full += mean * sum(by.values())
            ran_after += self.budgeted[m]["ms"]
            full_after += mean * self.budgeted[m]["outputs"]
        return ran / 1000, full / 1000, (1 - ran_after / full_after) if full_after > 0 else None, unknown

    def text(self, res: "SessionResult") -> str:
        total = res.total
        head = f"summary: {total} records from {len(res.records)} camera(s) in {res.wall_s:.1f}s = {total / max(res.wall_s, 1e-9):.1f} frames/s"
        if res.duplicates:
            head += f"; {res.duplicates} duplicate deliveries hidden"
        lines = [head]
        for cam, n in sorted(res.records.items()):
            lines.append(f"  camera {cam}: {n} records" + (f"  ERROR: {res.errors[cam]}" if cam in res.errors else ""))
        for cam in sorted(set(res.errors) - set(res.records)):
            lines.append(f"  camera {cam}: 0 records  ERROR: {res.errors[cam]}")
        if self.origins:
            lines.append(f"  {'model':18s} {'executed':>8s} {'linked':>7s} {'held':>6s} {'missing':>7s} {'ms/run':>7s} {'total s':>8s}")
            for m in self.origins:
                v = self.model_ms.get(m, [])
                n = self.origins[m]
                lines.append(f"  {m:18s} {n['executed']:8d} {n['linked']:7d} {n['held']:6d} {n['missing']:7d} "
                             f"{sum(v) / max(len(v), 1):7.1f} {sum(v) / 1000:8.1f}")
            if any(n[o] for n in self.origins.values() for o in ("linked", "held", "missing")):
                ran, full, after, unknown = self.compute_saved()
                line = (f"  compute: the models ran {ran:.1f} s of the {full:.1f} s that every model on every frame would have taken "
                        f"(mean measured ms per run x records): {100 * (1 - ran / full) if full else 0:.0f}% saved")
                if after is not None:
                    line += f", {100 * after:.0f}% after the cold start"
                if unknown:
                    line += f" (never executed, so left out: {', '.join(unknown)})"
                lines.append(line)
        return "\n".join(lines)


class RecordStore(_SinkBase):
    """Every record in memory, by camera and frame (the benchmark scores them)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[int, Record]] = defaultdict(dict)

    def record(self, rec: Record) -> None:
        self.records[rec["camera"]][int(rec["frame"])] = rec


# ------------------------------------------------------------------ engine
@dataclass
class SessionOptions:
    fresh: bool  # replay/bench: each camera starts from a clean Redis state
    workers: int | None = None  # default: the config's scheduler.workers
    batch: int | None = None
    stop_when_done: bool = True  # end when every file camera ended and every frame has its record
    metrics_port: int | None = None
    show_status: bool = False  # print every status event (compact mode), not only errors
    remeasure_costs: bool = False
    # Called once every camera is prepared and before any stage starts (bench seeds links here).
    on_prepared: Callable[[redis.Redis], None] | None = None
    web: tuple[str, int] | None = None  # serve the web view on (host, port): one more supervised child
    duration_s: float | None = None  # stop after this long, as Ctrl-C would


@dataclass
class SessionResult:
    records: dict[str, int]
    errors: dict[str, str]
    duplicates: int
    wall_s: float
    restarts: int
    interrupted: bool
    stage_failures: list[str] = field(default_factory=list)
    lost: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # camera -> frames sent that have no record
    timed_out: bool = False  # stopped after SessionOptions.duration_s

    @property
    def total(self) -> int:
        return sum(self.records.values())

    @property
    def ok(self) -> bool:
        return not self.errors and not self.stage_failures and not self.lost


class _Interrupt:
    """SIGINT/SIGTERM become a flag so the loop stops cleanly; a second Ctrl-C means it."""

    def __init__(self) -> None:
        self.flag = False
        self._old = {s: signal.signal(s, self._set) for s in (signal.SIGINT, signal.SIGTERM)}

    def _set(self, *_: object) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _error_line(cam: str, reason: str) -> str:
    reason = reason or "failed"
    return f"mlink: error: {reason}" if reason.startswith(f"camera {cam}:") else f"mlink: error: camera {cam}: {reason}"


def run_session(cfg: Config, redis_url: str, sinks: list[Any], opts: SessionOptions, *, say: Say = say_stderr) -> SessionResult:
    """Run the pipeline for ``cfg``'s cameras on ``redis_url``; every record goes to every sink."""
    r = connect(redis_url)
    policy = cfg.scheduler.runtime_options()
    make_frame_policy(policy)  # an unknown policy or bad budget fails before anything starts
    if cfg.scheduler.policy != "all":
        measure_config_costs(cfg, r, check_budget=True, remeasure=opts.remeasure_costs)
    cams = list(cfg.cameras)
    for c in cams:
        prepare_camera(r, c, fresh=opts.fresh)
    if opts.on_prepared is not None:
        opts.on_prepared(r)
    coll = ResultCollector(r, cams, from_start=opts.fresh)
    sup = Supervisor(cfg, redis_url, workers=opts.workers, batch=opts.batch, policy=policy, web=opts.web)
    stop = _Interrupt()
    # From here on a Redis outage is waited out (one line when it starts, one when it ends),
    # never a traceback; Ctrl-C still stops the wait.
    guard(r, "mlink", say=say, should_stop=lambda: stop.flag)
    failures: list[str] = []
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        for s in sinks:
            stack.enter_context(s)
        stack.callback(sup.stop)
        sup.start()
        if opts.metrics_port is not None:
            say(f"mlink: metrics on http://127.0.0.1:{sup.serve_metrics(opts.metrics_port)}/metrics")
        if opts.web is not None:
            say(f"mlink: web view on {web_url(*opts.web)}")

        def deliver(recs: list[Record]) -> None:
            for rec in recs:
                for s in sinks:
                    s.record(rec)

        done_since: float | None = None
        timed_out = False
        while not stop.flag:
            if opts.duration_s is not None and time.monotonic() - t0 >= opts.duration_s:
                timed_out = True
                break
            for ev in sup.poll():
                say(f"mlink: {ev.text}")
                if ev.failed:
                    failures.append(ev.text)
            for ev in coll.poll_status():
                # A decoder's watchdog "failed" is always followed by its "error": say it once.
                if ev["event"] == "error" or (ev["event"] == "failed" and ev.get("worker") is not None):
                    say(_error_line(ev["camera"], str(ev.get("reason", ""))))
                elif opts.show_status:
                    say(f"[status] {ev['camera']}: {ev['event']}" + (f" ({ev.get('reason')})" if ev.get("reason") else ""))
            deliver(coll.poll_records(block_ms=100))
            if sup.workers_gone():
                say("mlink: error: every scheduler worker failed; stopping")
                break
            if opts.stop_when_done and sup.decoders_done():
                # A camera a worker gave up on keeps its unprocessed frames: do not wait for them.
                waiting = [c for c in cams if not coll.progress[c].failed_by_worker]
                if sum(int(r.xlen(frames_key(c))) for c in waiting) == 0:
                    # Decoders ended and every frame is deleted, i.e. has a record: drain and finish.
                    done_since = done_since or time.monotonic()
                    if time.monotonic() - done_since > 0.3:
                        coll.poll_status()
                        deliver(coll.poll_records(block_ms=0, count=1_000_000))
                        break
        restarts = sup.restarts()
    stop.restore()
    # Frames of a camera that failed are unrecorded for a reason already said; the others' gaps are losses.
    lost = {} if stop.flag else {c: rs for c in cams if not coll.progress[c].error and (rs := coll.progress[c].lost())}
    for c, rs in lost.items():
        n = sum(b - a for a, b in rs)
        say(f"mlink: error: camera {c}: {n} frame(s) sent have no record (frames {describe_ranges(rs, most=20)}): "
            "Redis lost them (it came back without the data; run it with AOF, see README)")
    return SessionResult(
        records={c: coll.progress[c].records for c in cams},
        errors={c: p.error for c, p in coll.progress.items() if p.error},
        duplicates=sum(p.duplicates for p in coll.progress.values()),
        wall_s=time.monotonic() - t0,
        restarts=restarts,
        interrupted=stop.flag,
        stage_failures=failures,
        timed_out=timed_out,
        lost=lost,
    )
