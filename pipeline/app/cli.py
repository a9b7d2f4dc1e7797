"""The ``mlink`` command line.

Every user error surfaces as ``mlink: error: <one line>`` and exit code 1 (2
for usage errors, from argparse); tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

DEFAULT_CONFIG = "cameras.yaml"


# ------------------------------------------------------------------ helpers
class _Redis:
    """--redis URL, or an embedded server owned by this command."""

    def __init__(self, url: str | None) -> None:
        self.given = url
        self.embedded = None

    def __enter__(self) -> str:
        if self.given:
            from pipeline.redis_conn import connect

            connect(self.given).close()
            return self.given
        from pipeline.redis_conn import EmbeddedRedis

        self.embedded = EmbeddedRedis().start()
        print(f"mlink: embedded redis at {self.embedded.url} (stopped on exit)", file=sys.stderr)
        return self.embedded.url

    def __exit__(self, *exc: object) -> None:
        if self.embedded is not None:
            self.embedded.stop()


class _Interrupt:
    """Turns SIGINT/SIGTERM into a flag so loops stop cleanly (no traceback)."""

    def __init__(self) -> None:
        self.flag = False
        signal.signal(signal.SIGINT, self._set)
        signal.signal(signal.SIGTERM, self._set)

    def _set(self, *_: object) -> None:
        if self.flag:  # second Ctrl-C: the user really means it
            raise KeyboardInterrupt
        self.flag = True


def _compact(rec: dict[str, Any]) -> str:
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


def _summary(records_by_cam: dict[str, int], model_ms: dict[str, list[float]], origins: dict[str, dict[str, int]], wall_s: float, errors: dict[str, str], duplicates: int) -> str:
    total = sum(records_by_cam.values())
    lines = [f"summary: {total} records from {len(records_by_cam)} camera(s) in {wall_s:.1f}s = {total / max(wall_s, 1e-9):.1f} frames/s" + (f"; {duplicates} duplicate deliveries hidden" if duplicates else "")]
    for cam, n in sorted(records_by_cam.items()):
        lines.append(f"  camera {cam}: {n} records" + (f"  ERROR: {errors[cam]}" if cam in errors else ""))
    for cam in sorted(set(errors) - set(records_by_cam)):
        lines.append(f"  camera {cam}: 0 records  ERROR: {errors[cam]}")
    if model_ms:
        lines.append(f"  {'model':18s} {'runs':>6s} {'ms/frame':>9s} {'total s':>8s}  origins")
        for m, v in model_ms.items():
            o = ", ".join(f"{k}={c}" for k, c in sorted(origins[m].items()))
            lines.append(f"  {m:18s} {len(v):6d} {sum(v) / max(len(v), 1):9.1f} {sum(v) / 1000:8.1f}  {o}")
    return "\n".join(lines)


def _frames_pending(r: Any, cams: list[str]) -> int:
    from pipeline.keys import frames_key

    return sum(int(r.xlen(frames_key(c))) for c in cams)


def _pipeline_session(cfg: Any, redis_url: str, *, fresh: bool, workers: int | None, batch: int | None, policy: str | None,
                      out: Path | None, show: str, progress_total: int | None, stop_when_done: bool,
                      metrics_port: int | None = None) -> int:
    """Start decoders + workers, follow results until done (or Ctrl-C), print a summary."""
    from pipeline.app.collect import ResultCollector
    from pipeline.app.supervisor import Supervisor
    from pipeline.redis_conn import connect
    from stages.decoder import prepare_camera
    from stages.scheduler import make_frame_policy

    r = connect(redis_url)
    policy = policy or cfg.scheduler.runtime_options()
    make_frame_policy(policy)  # unknown policy -> error before anything starts
    if cfg.scheduler.policy != "all":
        measure_config_costs(cfg, r, check_budget=True)
    cams = list(cfg.cameras)
    for c in cams:
        prepare_camera(r, c, fresh=fresh)
    coll = ResultCollector(r, cams, from_start=fresh)
    sup = Supervisor(cfg, redis_url, workers=workers, batch=batch, policy=policy).start()
    if metrics_port is not None:
        print(f"mlink: metrics on http://127.0.0.1:{sup.serve_metrics(metrics_port)}/metrics", file=sys.stderr)
    stop = _Interrupt()
    bar = None
    if show == "progress":
        from tqdm import tqdm

        bar = tqdm(total=progress_total, unit="frame", desc="replay", dynamic_ncols=True, file=sys.stderr)
    sink = open(out, "w") if out else None
    model_ms: dict[str, list[float]] = defaultdict(list)
    origins: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    t0 = time.monotonic()
    done_since: float | None = None
    try:
        while not stop.flag:
            for ev in sup.poll():
                print(f"mlink: {ev}", file=sys.stderr)
            for ev in coll.poll_status():
                if ev["event"] == "error":  # a "failed" watchdog event is always followed by the decoder's error
                    msg = f"mlink: camera {ev['camera']}: {ev['event']}: {ev.get('reason', '')}"
                    if bar is not None:
                        bar.write(msg, file=sys.stderr)
                    else:
                        print(msg, file=sys.stderr)
                elif show == "compact":
                    print(f"[status] {ev['camera']}: {ev['event']}" + (f" ({ev.get('reason')})" if ev.get("reason") else ""), file=sys.stderr)
            recs = coll.poll_records(block_ms=100)
            for rec in recs:
                for m, o in rec["outputs"].items():
                    origins[m][o["origin"]] += 1
                    if o["origin"] == "executed":
                        model_ms[m].append(o.get("ms", 0.0))
                line = json.dumps(rec, separators=(",", ":"))
                if sink:
                    sink.write(line + "\n")
                if show == "json":
                    print(line, flush=True)
                elif show == "compact":
                    print(_compact(rec), flush=True)
            if bar is not None and recs:
                bar.update(len(recs))
            if stop_when_done and sup.decoders_done():
                if _frames_pending(r, cams) == 0:
                    # Decoders ended and every frame is deleted, i.e. has a record: drain and finish.
                    done_since = done_since or time.monotonic()
                    if time.monotonic() - done_since > 0.3:
                        coll.poll_status()
                        for rec in coll.poll_records(block_ms=0, count=100_000):
                            for m, o in rec["outputs"].items():
                                origins[m][o["origin"]] += 1
                                if o["origin"] == "executed":
                                    model_ms[m].append(o.get("ms", 0.0))
                            if sink:
                                sink.write(json.dumps(rec, separators=(",", ":")) + "\n")
                            if show == "json":
                                print(json.dumps(rec, separators=(",", ":")))
                            elif show == "compact":
                                print(_compact(rec))
                            if bar is not None:
                                bar.update(1)
                        break
    finally:
        sup.stop()
        if bar is not None:
            bar.close()
        if sink:
            sink.close()
    wall = time.monotonic() - t0
    errors = {c: p.error for c, p in coll.progress.items() if p.error}
    per_cam = {c: coll.progress[c].records for c in cams}
    dups = sum(p.duplicates for p in coll.progress.values())
    print(_summary(per_cam, model_ms, origins, wall, errors, dups), file=sys.stderr)
    if out:
        print(f"records written to {out}", file=sys.stderr)
    if stop.flag:
        print("mlink: stopped by user", file=sys.stderr)
        return 130 if not stop_when_done else 0
    return 1 if errors else 0


# ----------------------------------------------------------------- commands
def apply_policy_args(cfg: Any, policy: str | None, budget: str | None) -> None:
    """--policy/--budget override the config's scheduler section (validated the same way)."""
    from pydantic import ValidationError

    from pipeline.config import SchedulerConfig, _first_error

    if policy is None and budget is None:
        return
    d = cfg.scheduler.model_dump()
    if policy is not None:
        d["policy"] = policy
    if budget is not None:
        d["budget"] = budget
    try:
        cfg.scheduler = SchedulerConfig(**d)
    except ValidationError as exc:
        raise UserError(f"--policy/--budget: {_first_error(exc)}") from None


def cmd_run(a: argparse.Namespace) -> int:
    from pipeline.config import load_config

    cfg = load_config(a.config)
    apply_policy_args(cfg, a.policy, a.budget)
    _check_sources(cfg)
    with _Redis(a.redis) as url:
        show = "json" if a.json else ("quiet" if a.quiet else "compact")
        return _pipeline_session(cfg, url, fresh=False, workers=a.workers, batch=None, policy=None, out=a.out,
                                 show=show, progress_total=None, stop_when_done=True, metrics_port=a.metrics_port)


def cmd_replay(a: argparse.Namespace) -> int:
    from pipeline.config import load_config, replay_config_from
    from pipeline.video import probe_frame_count

    base = load_config(a.config) if a.config else None
    cfg = replay_config_from(a.videos, base, fps=a.fps)
    apply_policy_args(cfg, a.policy, a.budget)
    _check_sources(cfg)
    total = 0
    for cam in cfg.cameras.values():
        for f in cam.files(cfg.base_dir):
            n = probe_frame_count(f, fps=cam.fps)
            total += n or 0
    with _Redis(a.redis) as url:
        return _pipeline_session(cfg, url, fresh=True, workers=a.workers, batch=a.batch, policy=None, out=a.out,
                                 show="json" if a.print else "progress", progress_total=total or None, stop_when_done=True)


def _check_sources(cfg: Any) -> None:
    """Start-up checks: every file exists, is non-empty and opens as video."""
    from pipeline.video import open_source

    for cam in cfg.cameras.values():
        if cam.is_rtsp:
            continue
        files = cam.files(cfg.base_dir)
        if not files:
            raise UserError(f"camera {cam.name}: source matches no files: {cam.source}")
        for f in files:
            try:
                open_source(f).close()
            except UserError as exc:
                raise UserError(f"camera {cam.name}: {exc}") from None


def cmd_tail(a: argparse.Namespace) -> int:
    from pipeline.app.collect import ResultCollector
    from pipeline.keys import CAMERAS_KEY
    from pipeline.redis_conn import connect, url_for_reader

    r = connect(url_for_reader(a.redis))
    deadline = time.monotonic() + a.wait
    # A camera registers when its decoder starts: give a just-started `run` a moment.
    while not (r.sismember(CAMERAS_KEY, a.camera) or r.exists(f"results:{{{a.camera}}}")) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not r.sismember(CAMERAS_KEY, a.camera) and not r.exists(f"results:{{{a.camera}}}"):
        known = sorted(x.decode() for x in r.smembers(CAMERAS_KEY))
        raise UserError(f"camera {a.camera}: unknown (known cameras: {', '.join(known) or 'none'})")
    coll = ResultCollector(r, [a.camera], from_start=a.from_start)
    stop = _Interrupt()
    n = 0
    try:
        while not stop.flag:
            for rec in coll.poll_records(block_ms=200):
                print(json.dumps(rec, separators=(",", ":")), flush=True)
                n += 1
                if a.count and n >= a.count:
                    return 0
    except BrokenPipeError:
        pass
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from pipeline.config import default_sample, load_config, replay_config
    from pipeline.costs import measure_all
    from pipeline.video import iter_frames
    from pipeline.zoo import build_models, current_device

    if a.config:
        cfg = load_config(a.config)
    else:
        cfg = replay_config([a.video or default_sample()])
    specs = {s.name: s for s in cfg.all_model_specs()}
    models = build_models(specs.values())
    cam = next(iter(cfg.cameras.values()))
    src = a.video or (cam.files(cfg.base_dir) or [default_sample()])[0]
    frames = []
    for vf in iter_frames(src, resize=cam.resize):
        if vf.index % 5 == 0:
            frames.append(vf.image)
        if len(frames) >= a.frames:
            break
    costs = measure_all(models, specs, frames, remeasure=a.remeasure, progress=True)
    print(f"device: {current_device()}; frame {frames[0].shape[1]}x{frames[0].shape[0]} from {src}")
    print(f"{'model':18s} {'adapter':16s} {'kind':11s} {'ms/frame':>9s} {'mem MB':>7s} {'gpu MB':>7s}  classes")
    for n, m in models.items():
        c = costs[n]
        cls = ",".join(m.classes)
        print(f"{n:18s} {type(m).__name__:16s} {m.kind.value:11s} {c.ms:9.1f} {c.mem_mb:7.1f} {c.gpu_mb:7.1f}  {cls[:40]}")
    print(f"{'all models':18s} {'':16s} {'':11s} {sum(c.ms for c in costs.values()):9.1f}")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    from pipeline.keys import (
        CAMERAS_KEY,
        camera_key,
        frames_key,
        results_key,
        status_key,
    )
    from pipeline.redis_conn import connect, url_for_reader

    r = connect(url_for_reader(a.redis))
    cams = sorted(x.decode() for x in r.smembers(CAMERAS_KEY))
    if not cams:
        print("no cameras registered")
        return 0
    from pipeline.metrics import RedisMetricsCollector

    snap = RedisMetricsCollector(r).snapshot()
    print(f"{'camera':24s} {'state':12s} {'frames':>7s} {'records':>8s} {'queued':>7s} {'lag s':>6s} {'dropped':>7s} {'reconn':>6s}  last event")
    for c in cams:
        m = snap.get(c, {})
        last = r.xrevrange(status_key(c), count=1)
        ev = json.loads(last[0][1][b"json"]) if last else {}
        info = r.hgetall(camera_key(c))
        age = time.time() - ev.get("time", time.time())
        reason = f" {ev.get('reason')}" if ev.get("reason") else ""
        print(f"{c:24s} {ev.get('event', '-'):12s} {int(info.get(b'next_frame', 0)):7d} {r.xlen(results_key(c)):8d} {r.xlen(frames_key(c)):7d} "
              f"{m.get('lag_s', 0.0):6.1f} {m.get('dropped', 0):7d} {m.get('reconnects', 0):6d}  {age:.0f}s ago{reason}")
    return 0


def cmd_worker(a: argparse.Namespace) -> int:
    from pipeline.redis_conn import connect, redact
    from stages.scheduler import Worker, make_frame_policy

    r = connect(a.redis)
    stop = _Interrupt()
    print(f"mlink: worker serving registered cameras on {redact(a.redis)} (Ctrl-C stops)", file=sys.stderr)
    if a.metrics_port is not None:
        from pipeline.metrics import serve_metrics

        server, _ = serve_metrics(r, a.metrics_port)
        print(f"mlink: metrics on http://127.0.0.1:{server.server_port}/metrics", file=sys.stderr)
    stats = Worker(r, make_frame_policy(a.policy, r), batch=a.batch, claim_idle_ms=a.claim_idle_ms,
                   should_stop=lambda: stop.flag).run()
    print(f"worker: {stats.frames} frames, {stats.reclaimed} reclaimed, {stats.bad_frames} bad", file=sys.stderr)
    return 0


def cmd_decoder(a: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.redis_conn import connect
    from stages.decoder import EXIT_FAILED, Decoder

    cfg = load_config(a.config)
    if a.camera not in cfg.cameras:
        raise UserError(f"camera {a.camera}: not in {a.config} (cameras: {', '.join(cfg.cameras)})")
    r = connect(a.redis)
    stop = _Interrupt()
    code = Decoder(cfg.cameras[a.camera], r, lambda: stop.flag, cfg.base_dir).run()
    return 1 if code == EXIT_FAILED else 0


def cmd_bench(a: argparse.Namespace) -> int:
    from pipeline.app.bench import format_table, run_bench
    from pipeline.config import load_config

    base = load_config(a.config) if a.config else None
    budgets = [b.strip() for b in a.budgets.split(",") if b.strip()]
    policies = [p.strip() for p in a.policies.split(",") if p.strip()]
    from links.budget import parse_budget
    from links.policies import POLICIES

    for p in policies:
        if p not in POLICIES:
            raise UserError(f"--policies: unknown policy {p!r} (available: {', '.join(POLICIES)})")
    for b in budgets:
        try:
            parse_budget(b)
        except ValueError as exc:
            raise UserError(f"--budgets: {exc}") from None
    for v in a.videos:
        from pipeline.video import open_source

        open_source(v).close()
    res = run_bench(a.videos, budgets, policies, a.out, config=base, redis_url=a.redis, train_frac=a.train_frac, period_frames=a.period)
    print(format_table(res))
    print(f"\nwritten: {a.out}/bench.md, bench.json and PNG plots")
    return 0


# --------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlink", description="Video analytics with model links: decoders -> Redis Streams -> budgeted scheduler -> records.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("run", help="start decoders and scheduler workers for a cameras.yaml")
    s.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    s.add_argument("--redis", help="redis URL (default: an embedded private server)")
    s.add_argument("--workers", type=int, help="scheduler worker processes (default: config)")
    s.add_argument("--policy", help="scheduling policy: all, standalone, prior, hold-last, reducto, mlink, ours (default: config)")
    s.add_argument("--budget", help="33%% (of all models' compute), 120ms, 4096MB, gpu:4096MB or 3models")
    s.add_argument("--out", type=Path, help="also write records to this JSONL file")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print full JSON records instead of compact lines")
    g.add_argument("--quiet", action="store_true", help="print only status and the summary")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on 127.0.0.1:PORT")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("replay", help="process every frame of recorded footage as fast as possible")
    s.add_argument("videos", nargs="+", metavar="VIDEO")
    s.add_argument("--config", help="take models and settings from this config's defaults")
    s.add_argument("--out", type=Path, help="write one JSON record per frame to this file")
    s.add_argument("--redis", help="redis URL (default: an embedded private server)")
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--batch", type=int)
    s.add_argument("--policy", help="scheduling policy: all, standalone, prior, hold-last, reducto, mlink, ours")
    s.add_argument("--budget", help="33%% (of all models' compute), 120ms, 4096MB, gpu:4096MB or 3models")
    s.add_argument("--fps", type=float, help="sample to this rate (default: every frame)")
    s.add_argument("--print", action="store_true", help="print records as JSON lines instead of a progress bar")
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("tail", help="follow results:{CAMERA}, one JSON record per line")
    s.add_argument("camera")
    s.add_argument("--redis")
    s.add_argument("--from-start", action="store_true")
    s.add_argument("--count", type=int, help="exit after this many records")
    s.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the camera to register")
    s.set_defaults(func=cmd_tail)

    s = sub.add_parser("models", help="list the configured models with measured cost on this machine")
    s.add_argument("--config")
    s.add_argument("--video", help="frames to measure on (default: the config's first source)")
    s.add_argument("--frames", type=int, default=8)
    s.add_argument("--remeasure", action="store_true")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("status", help="per-camera health from the status streams")
    s.add_argument("--redis")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("worker", help="run only scheduler workers (for other hosts)")
    s.add_argument("--redis", required=True)
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--policy", default="all")
    s.add_argument("--claim-idle-ms", type=int, default=10_000, help="reclaim frames a dead worker left pending this long")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on 127.0.0.1:PORT (all cameras, from Redis)")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("decoder", help="run only one camera's decoder")
    s.add_argument("camera")
    s.add_argument("--config", default=DEFAULT_CONFIG)
    s.add_argument("--redis", required=True)
    s.set_defaults(func=cmd_decoder)

    s = sub.add_parser("bench", help="replay footage once per policy and budget; accuracy vs budget table and plots")
    s.add_argument("videos", nargs="+", metavar="VIDEO")
    s.add_argument("--budgets", required=True, help="comma-separated, e.g. 33%%,50%%")
    s.add_argument("--policies", default="standalone,prior,hold-last,reducto,mlink,ours")
    s.add_argument("--out", type=Path, required=True, help="output directory")
    s.add_argument("--config", help="take models and settings from this config")
    s.add_argument("--redis")
    s.add_argument("--train-frac", type=float, default=0.5, help="first part of each clip used to train links")
    s.add_argument("--period", type=int, default=200, help="frames per adaptation period")
    s.set_defaults(func=cmd_bench)

    try:
        from pipeline.app import cli_links

        cli_links.add_parsers(sub)
    except ImportError:
        pass
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"mlink: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mlink: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
