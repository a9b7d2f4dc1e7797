"""The ``mlink`` command line (the console script's ``main``).

Every user error surfaces as ``mlink: error: <one line>`` and exit code 1 (2 for
usage errors, from argparse); tracebacks are for bugs only. Heavy modules (torch,
the stages) are imported inside the commands that need them, so ``mlink --help``
and the read-only commands start fast.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from links.errors import LinksError
from pipeline.config import Config
from pipeline.errors import UserError, say_stderr
from pipeline.exitcodes import ExitCode
from pipeline.home import quiet_third_party
from pipeline.redis_conn import REDIS_DOWN, first_line

DEFAULT_CONFIG = "cameras.yaml"
POLICY_HELP = "scheduling policy: all, standalone, prior, hold-last, reducto, mlink, ours, cascade"
BUDGET_HELP = "33%% (of all models' compute), 120ms, 4096MB, gpu:4096MB or 3models"
WEB_BIND = "127.0.0.1:8080"  # the web view's default: this machine only


# ------------------------------------------------------------------ helpers
class _Redis:
    """--redis URL, or an embedded server owned by this command."""

    def __init__(self, url: str | None) -> None:
        self.given = url
        self.embedded: Any = None

    def __enter__(self) -> str:
        from pipeline.redis_conn import EmbeddedRedis, connect

        if self.given:
            connect(self.given).close()
            return self.given
        self.embedded = EmbeddedRedis().start()
        print(f"mlink: embedded redis at {self.embedded.url} (stopped on exit)", file=sys.stderr)
        return str(self.embedded.url)

    def __exit__(self, *exc: object) -> None:
        if self.embedded is not None:
            self.embedded.stop()


class _Interrupt:
    """SIGINT/SIGTERM become a flag so a command's loop stops cleanly (no traceback)."""

    def __init__(self) -> None:
        self.flag = False
        signal.signal(signal.SIGINT, self._set)
        signal.signal(signal.SIGTERM, self._set)

    def _set(self, *_: object) -> None:
        if self.flag:  # second Ctrl-C: the user really means it
            raise KeyboardInterrupt
        self.flag = True


def _check_sources(cfg: Config) -> None:
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


def _finish(res: Any, summary: Any, out: Path | None, jsonl: Any) -> int:
    """What a run/replay prints at the end, and its exit code.

    A session that produced no record and failed says only its error (already
    printed): no summary, no "records written", nothing that looks like success.
    """
    if res.total == 0 and not res.ok:
        return ExitCode.USER_ERROR
    print(summary.text(res), file=sys.stderr)
    if out is not None and jsonl is not None and jsonl.written:
        print(f"records written to {out}", file=sys.stderr)
    if res.interrupted:
        print("mlink: stopped by user", file=sys.stderr)
        return ExitCode.OK
    if res.timed_out:
        print(f"mlink: stopped after {res.wall_s:.0f} s (--duration)", file=sys.stderr)
    return ExitCode.OK if res.ok else ExitCode.USER_ERROR


# ----------------------------------------------------------------- commands
def cmd_run(a: argparse.Namespace) -> int:
    from pipeline.app.session import JsonlSink, PrintSink, SessionOptions, SummarySink, run_session
    from pipeline.config import load_config

    if a.duration is not None and not a.duration > 0:
        raise UserError(f"--duration must be a positive number of seconds, not {a.duration:g}")
    web = None
    if a.web is not None:
        from pipeline.app.web import check_bind, parse_bind

        web = check_bind(*parse_bind(a.web, "--web"), "--web")  # a port in use fails here, before anything starts
    cfg = load_config(a.config)
    cfg.override_scheduler("--policy/--budget", policy=a.policy, budget=a.budget)
    _check_sources(cfg)
    summary, jsonl = SummarySink(), (JsonlSink(a.out) if a.out else None)
    sinks: list[Any] = [summary]
    if jsonl is not None:
        sinks.append(jsonl)
    if not a.quiet:
        sinks.append(PrintSink("json" if a.json else "compact"))
    with _Redis(a.redis) as url:
        opts = SessionOptions(fresh=False, workers=a.workers, metrics_port=a.metrics_port, show_status=not (a.json or a.quiet),
                              web=web, duration_s=a.duration)
        res = run_session(cfg, url, sinks, opts)
    return _finish(res, summary, a.out, jsonl)


def cmd_replay(a: argparse.Namespace) -> int:
    from pipeline.app.session import JsonlSink, PrintSink, ProgressSink, SessionOptions, SummarySink, run_session
    from pipeline.config import load_config, replay_config_from
    from pipeline.video import probe_frame_count

    base = load_config(a.config) if a.config else None
    cfg = replay_config_from(a.videos, base, fps=a.fps)
    cfg.override_scheduler("--policy/--budget", policy=a.policy, budget=a.budget)
    _check_sources(cfg)
    total = sum(probe_frame_count(f, fps=cam.fps) or 0 for cam in cfg.cameras.values() for f in cam.files(cfg.base_dir))
    summary, jsonl = SummarySink(), (JsonlSink(a.out) if a.out else None)
    progress = None if a.print else ProgressSink(total or None, "replay")
    sinks: list[Any] = [summary, PrintSink("json") if a.print else progress]
    if jsonl is not None:
        sinks.append(jsonl)
    with _Redis(a.redis) as url:
        opts = SessionOptions(fresh=not a.keep_state, workers=a.workers, batch=a.batch)
        res = run_session(cfg, url, sinks, opts, say=progress.say if progress else say_stderr)
    return _finish(res, summary, a.out, jsonl)


def cmd_tail(a: argparse.Namespace) -> int:
    from pipeline.app.collect import ResultCollector
    from pipeline.keys import CAMERA_NAME_RULE, CAMERAS_KEY, results_key, valid_camera_name
    from pipeline.redis_conn import connect, guard, url_for_reader

    if not valid_camera_name(a.camera):
        raise UserError(f"camera {a.camera!r}: {CAMERA_NAME_RULE}")
    r = guard(connect(url_for_reader(a.redis)), "mlink tail")

    def known() -> bool:
        return bool(r.sismember(CAMERAS_KEY, a.camera) or r.exists(results_key(a.camera)))

    deadline = time.monotonic() + a.wait
    # A camera registers when its decoder starts: give a just-started `run` a moment.
    while not known() and time.monotonic() < deadline:
        time.sleep(0.2)
    if not known():
        cams = sorted(x.decode() for x in r.smembers(CAMERAS_KEY))
        raise UserError(f"camera {a.camera}: unknown (known cameras: {', '.join(cams) or 'none'})")
    coll = ResultCollector(r, [a.camera], from_start=a.from_start)
    stop = _Interrupt()
    n = 0
    try:
        while not stop.flag:
            for rec in coll.poll_records(block_ms=200):
                print(json.dumps(rec, separators=(",", ":")), flush=True)
                n += 1
                if a.count and n >= a.count:
                    return ExitCode.OK
    except BrokenPipeError:
        pass
    return ExitCode.OK


def cmd_web(a: argparse.Namespace) -> int:
    from pipeline.app.web import Board, bind_socket, parse_bind, serve, web_url
    from pipeline.redis_conn import redact, url_for_reader

    url = url_for_reader(a.redis)
    host, port = parse_bind(a.bind, "--bind")
    board = Board(url)
    away = board.check()  # a bad URL or password is an error now; Redis merely away is shown on the page
    sock = bind_socket(host, port, "--bind")
    port = int(sock.getsockname()[1])
    if away:
        print(f"mlink: redis {redact(url)} unreachable: {away}; the page says so and recovers when Redis is back", file=sys.stderr)
    print(f"mlink: web view on {web_url(host, port)}, reading {redact(url)} (Ctrl-C stops)", file=sys.stderr, flush=True)
    serve(board, sock)
    return ExitCode.OK


def cmd_models(a: argparse.Namespace) -> int:
    from pipeline.config import default_sample, load_config, replay_config
    from pipeline.costs import measure_all
    from pipeline.video import sample_images
    from pipeline.zoo import build_models, cuda_available

    cfg = load_config(a.config) if a.config else replay_config([a.video or default_sample()])
    specs = {s.name: s for s in cfg.all_model_specs()}
    models = build_models(list(specs.values()))
    cam = next(iter(cfg.cameras.values()))
    src = a.video or (cam.files(cfg.base_dir) or [default_sample()])[0]
    frames = sample_images(src, a.frames, resize=cam.resize)
    if not frames:
        raise UserError(f"{src}: no decodable frames to measure on")
    costs = measure_all(models, specs, frames, remeasure=a.remeasure, progress=not a.json)
    rows = [{"name": n, "adapter": type(m).__name__, "kind": m.kind.value, "runtime": m.runtime, "device": m.device, "half": m.half,
             "ms": round(costs[n].ms, 2), "mem_mb": round(costs[n].mem_mb, 1), "gpu_mb": round(costs[n].gpu_mb, 1),
             "n_classes": len(m.classes), "classes": list(m.classes)} for n, m in models.items()]
    info = {"cuda": cuda_available(), "frame": [frames[0].shape[1], frames[0].shape[0]], "batch": len(frames), "source": str(src),
            "models": rows, "total_ms": round(sum(c.ms for c in costs.values()), 2)}
    if a.json:
        print(json.dumps(info, indent=1))
        return ExitCode.OK
    print(f"CUDA: {'yes' if info['cuda'] else 'no'}; frame {frames[0].shape[1]}x{frames[0].shape[0]} from {src}; timed in batches of {len(frames)}")
    print(f"{'model':16s} {'adapter':22s} {'kind':12s} {'runtime':11s} {'device':7s} {'ms/frame':>9s} {'mem MB':>7s} {'gpu MB':>7s}  classes")
    for r in rows:
        cls = ",".join(r["classes"])
        cls = cls if len(cls) <= 40 else f"{cls[:32]}... ({r['n_classes']})"
        print(f"{r['name']:16s} {r['adapter']:22s} {r['kind']:12s} {r['runtime']:11s} {r['device']:7s} {r['ms']:9.1f} {r['mem_mb']:7.1f} {r['gpu_mb']:7.1f}  {cls}")
    print(f"{'all models':16s} {'':22s} {'':12s} {'':11s} {'':7s} {info['total_ms']:9.1f}")
    return ExitCode.OK


def cmd_status(a: argparse.Namespace) -> int:
    from pipeline.keys import CAMERAS_KEY, camera_key, frames_key, results_key, status_key
    from pipeline.metrics import RedisMetricsCollector
    from pipeline.redis_conn import connect, guard, url_for_reader

    r = guard(connect(url_for_reader(a.redis)), "mlink status")
    cams = sorted(x.decode() for x in r.smembers(CAMERAS_KEY))
    if not cams:
        print("no cameras registered")
        return ExitCode.OK
    snap = RedisMetricsCollector(r).snapshot()
    print(f"{'camera':24s} {'state':12s} {'frames':>7s} {'records':>8s} {'queued':>7s} {'lag s':>6s} {'dropped':>7s} {'skipped':>7s} {'reconn':>6s}  last event")
    for c in cams:
        m = snap.get(c, {})
        last = r.xrevrange(status_key(c), count=1)
        ev = json.loads(last[0][1][b"json"]) if last else {}
        info = r.hgetall(camera_key(c))
        age = time.time() - ev.get("time", time.time())
        reason = f" {ev.get('reason')}" if ev.get("reason") else ""
        print(f"{c:24s} {ev.get('event', '-'):12s} {int(info.get(b'next_frame', 0)):7d} {r.xlen(results_key(c)):8d} {r.xlen(frames_key(c)):7d} "
              f"{m.get('lag_s', 0.0):6.1f} {m.get('dropped', 0):7d} {m.get('skipped', 0):7d} {m.get('reconnects', 0):6d}  {age:.0f}s ago{reason}")
    return ExitCode.OK


def cmd_worker(a: argparse.Namespace) -> int:
    from pipeline.config import SchedulerConfig, TrustedCode, load_config
    from pipeline.costs import measure_config_costs
    from pipeline.metrics import serve_metrics
    from pipeline.redis_conn import connect, redact
    from stages.policy_runtime import make_frame_policy
    from stages.scheduler import Worker

    cfg = load_config(a.config) if a.config else Config(cameras={}, scheduler=SchedulerConfig())
    cfg.override_scheduler("--policy/--budget", policy=a.policy, budget=a.budget)
    r = connect(a.redis)
    policy = make_frame_policy(cfg.scheduler.runtime_options(), r)  # a bad policy or budget fails here, once
    if a.config and cfg.scheduler.policy != "all":
        measure_config_costs(cfg, r, check_budget=True)  # what a budget is measured against, for every worker
    stop = _Interrupt()
    print(f"mlink: worker serving registered cameras on {redact(a.redis)} (Ctrl-C stops)", file=sys.stderr)
    if a.metrics_port is not None:
        server, _ = serve_metrics(r, a.metrics_port)
        print(f"mlink: metrics on http://127.0.0.1:{server.server_port}/metrics", file=sys.stderr)
    trusted = TrustedCode.of(cfg.all_model_specs(), allow=a.allow or ())
    stats = Worker(r, policy, batch=a.batch or cfg.scheduler.batch, claim_idle_ms=a.claim_idle_ms, should_stop=lambda: stop.flag,
                   trusted=trusted, share_cameras=a.share_cameras or cfg.scheduler.share_cameras).run()
    print(f"worker: {stats.frames} frames, {stats.reclaimed} reclaimed, {stats.skipped} skipped, {stats.bad_frames} bad", file=sys.stderr)
    return ExitCode.OK


def cmd_decoder(a: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.redis_conn import connect
    from stages.decoder import Decoder

    cfg = load_config(a.config)
    if a.camera not in cfg.cameras:
        raise UserError(f"camera {a.camera}: not in {a.config} (cameras: {', '.join(cfg.cameras)})")
    r = connect(a.redis)
    stop = _Interrupt()
    code = Decoder(cfg.cameras[a.camera], r, lambda: stop.flag, cfg.base_dir).guarded().run()
    if code == ExitCode.FAILED:
        # The decoder's status event holds the reason; say it here too, as one line.
        from pipeline.keys import status_key

        last = r.xrevrange(status_key(a.camera), count=1)
        reason = json.loads(last[0][1][b"json"]).get("reason", "failed") if last else "failed"
        raise UserError(reason if str(reason).startswith(f"camera {a.camera}:") else f"camera {a.camera}: {reason}")
    return ExitCode.OK


def cmd_bench(a: argparse.Namespace) -> int:
    from links.budget import parse_budget
    from links.policies import POLICIES
    from pipeline.app.bench import BenchOptions, run_bench
    from pipeline.app.bench_report import format_tables
    from pipeline.config import SchedulerConfig, load_config
    from pipeline.video import open_source

    base = load_config(a.config) if a.config else None
    budgets = [b.strip() for b in a.budgets.split(",") if b.strip()]
    policies = [p.strip() for p in a.policies.split(",") if p.strip()]
    for p in policies:
        if p not in POLICIES:
            raise UserError(f"--policies: unknown policy {p!r} (available: {', '.join(POLICIES)})")
    for b in budgets:
        try:
            parse_budget(b)
        except ValueError as exc:
            raise UserError(f"--budgets: {exc}") from None
    if a.repeats < 1:
        raise UserError("--repeats must be at least 1")
    if a.workers < 1:
        raise UserError("--workers must be at least 1")
    probe = Config(cameras={}, scheduler=SchedulerConfig())  # the period options, validated as in cameras.yaml
    probe.override_scheduler("--period/--cold-start/--profile-fraction", period_frames=a.period, cold_start_frames=a.cold_start,
                             profile_fraction=a.profile_fraction)
    if a.warm_links is not None and not 0 < a.warm_links < 1:
        raise UserError("--warm-links must be a fraction between 0 and 1")
    for v in a.videos:
        open_source(v).close()
    opts = BenchOptions(a.videos, budgets, policies, a.out, config=base, redis_url=a.redis, fps=a.fps, repeats=a.repeats,
                        concat=a.concat, warm_links=a.warm_links, period_frames=a.period, profile_fraction=a.profile_fraction,
                        cold_start_frames=a.cold_start, workers=a.workers, share_cameras=a.share_cameras,
                        command=["mlink", *sys.argv[1:]])
    res = run_bench(opts)
    print(format_tables(res))
    print(f"\nwritten: {a.out}/bench.md, bench.json and PNG plots")
    return ExitCode.OK


# --------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from pipeline.app import cli_links

    p = argparse.ArgumentParser(prog="mlink", description="Video analytics with model links: decoders -> Redis Streams -> budgeted scheduler -> records.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("run", help="start decoders and scheduler workers for a cameras.yaml")
    s.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    s.add_argument("--redis", help="redis URL (default: an embedded private server)")
    s.add_argument("--workers", type=int, help="scheduler worker processes (default: config)")
    s.add_argument("--policy", help=POLICY_HELP + " (default: config)")
    s.add_argument("--budget", help=BUDGET_HELP)
    s.add_argument("--out", type=Path, help="also write records to this JSONL file")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print full JSON records instead of compact lines")
    g.add_argument("--quiet", action="store_true", help="print only errors and the summary")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on 127.0.0.1:PORT")
    s.add_argument("--web", nargs="?", const=WEB_BIND, metavar="HOST:PORT",
                   help=f"also serve the live web view (default {WEB_BIND}; put it after CONFIG, or give it a value)")
    s.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds, as Ctrl-C would")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("replay", help="process every frame of recorded footage as fast as possible")
    s.add_argument("videos", nargs="+", metavar="VIDEO")
    s.add_argument("--config", help="take models and settings from this config's defaults")
    s.add_argument("--out", type=Path, help="write one JSON record per frame to this file")
    s.add_argument("--redis", help="redis URL (default: an embedded private server)")
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--batch", type=int)
    s.add_argument("--policy", help=POLICY_HELP)
    s.add_argument("--budget", help=BUDGET_HELP)
    s.add_argument("--fps", type=float, help="sample to this rate (default: every frame)")
    s.add_argument("--keep-state", action="store_true",
                   help="keep what Redis holds for these cameras (links, counters, frame numbers) instead of starting clean")
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
    s.add_argument("--json", action="store_true", help="print the table as JSON")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("web", help="serve the live web view of the cameras in a Redis (it reads only Redis)")
    s.add_argument("--redis", help="redis URL (default: the embedded server of a running `mlink run`)")
    s.add_argument("--bind", default=WEB_BIND, metavar="HOST:PORT", help=f"where to listen (default {WEB_BIND}: this machine only)")
    s.set_defaults(func=cmd_web)

    s = sub.add_parser("status", help="per-camera health from the status streams")
    s.add_argument("--redis")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("worker", help="run only a scheduler worker (for other hosts)")
    s.add_argument("--redis", required=True)
    s.add_argument("--config", help="take the scheduler section (policy, budget, periods) from this cameras.yaml, and measure its models' costs")
    s.add_argument("--batch", type=int, help="frames per read (default: config, 8)")
    s.add_argument("--policy", help=POLICY_HELP + " (default: config, all)")
    s.add_argument("--budget", help=BUDGET_HELP)
    s.add_argument("--claim-idle-ms", type=int, default=10_000, help="reclaim frames a dead worker left pending this long")
    s.add_argument("--share-cameras", action="store_true",
                   help="read every camera alongside the other workers (default: the cameras are dealt out, one owner each)")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on 127.0.0.1:PORT (all cameras, from Redis)")
    s.add_argument("--allow", action="append", metavar="REF",
                   help="a callable target (module:function) or weight file this worker may load for cameras registered in Redis "
                        "(repeatable; the packaged zoo and the models of --config are always allowed)")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("decoder", help="run only one camera's decoder")
    s.add_argument("camera")
    s.add_argument("--config", default=DEFAULT_CONFIG)
    s.add_argument("--redis", required=True)
    s.set_defaults(func=cmd_decoder)

    s = sub.add_parser("bench", help="every policy at every budget through the real pipeline, compared at equal measured compute")
    s.add_argument("videos", nargs="+", metavar="VIDEO")
    s.add_argument("--budgets", required=True, help="comma-separated, e.g. 15%%,25%%,33%%,50%% (bracket 1/5 and 1/3 of all's compute)")
    s.add_argument("--policies", default="standalone,prior,hold-last,reducto,mlink,ours,cascade")
    s.add_argument("--out", type=Path, required=True, help="output directory")
    s.add_argument("--config", help="take models and settings from this config")
    s.add_argument("--redis")
    s.add_argument("--fps", type=float, help="sample the footage to this rate (default: every frame)")
    s.add_argument("--repeats", type=int, default=1, help="runs per policy and budget, each with another link-training seed")
    s.add_argument("--concat", action="store_true", help="play the clips back to back as ONE camera (a scene change at each boundary)")
    s.add_argument("--warm-links", type=float, metavar="FRACTION",
                   help="upper bound, not production: seed links trained on the first FRACTION of each clip and evaluate the rest")
    s.add_argument("--period", type=int, default=100, help="frames per adaptation period (default 100)")
    s.add_argument("--cold-start", type=int, default=60, help="frames every model runs on before links exist (default 60)")
    s.add_argument("--profile-fraction", type=float, default=0.05, help="share of each period's frames profiled with every model (default 0.05)")
    s.add_argument("--workers", type=int, default=1, help="scheduler workers per budgeted run, the cameras dealt out among them "
                   "(default 1; the reference always runs one)")
    s.add_argument("--share-cameras", action="store_true", help="with --workers: every worker reads every camera")
    s.set_defaults(func=cmd_bench)

    cli_links.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UserError, LinksError) as exc:
        print(f"mlink: error: {exc}", file=sys.stderr)
        return ExitCode.USER_ERROR
    except REDIS_DOWN as exc:  # Redis went away before this command could guard its client
        print(f"mlink: error: redis unavailable: {first_line(exc)}", file=sys.stderr)
        return ExitCode.USER_ERROR
    except KeyboardInterrupt:
        print("mlink: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
