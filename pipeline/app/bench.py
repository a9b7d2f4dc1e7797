"""``mlink bench``: every policy at every budget through the real pipeline, compared at equal
MEASURED compute.

1. Costs are measured on this machine (never a cache) and published, as ``mlink run`` does.
2. Reference: the footage is replayed with policy ``all`` (every model, every frame)
   through decoders -> Redis -> scheduler.
3. Each policy x budget x repeat (a different link-training seed) replays the same footage
   with production semantics: the camera cold-starts (every model on the first
   ``cold_start_frames`` frames, counted as spent compute), trains its links from those
   frames, then runs under the budget with periodic profiling and adaptation, exactly as in
   ``mlink run``. ``--warm-links F`` instead seeds links trained on the first F of each clip
   of the reference and evaluates the rest: an upper bound, labelled as such.
4. Every output of every frame is scored against the reference
   (:mod:`pipeline.app.bench_score`); compute is the run's measured model time over the
   reference's. A run with a restarted process, a frame without a record, or spending above
   its budget x 1.05 after the cold start is marked invalid, and its accuracy is not shown.
5. Policies are compared at equal compute: accuracy interpolated at exactly 1/5 and 1/3 of
   all's compute on each policy's accuracy-vs-compute curve, beside the exact hold-last
   curve (every model on every k-th frame) computed from the reference alone.
6. ``--concat`` plays the clips back to back as ONE camera (a scene change at each
   boundary) and reports accuracy in the 1st, 2nd and 3rd period after each change.

Outputs in ``--out``: ``bench.json`` (the command, commit, machine, measured costs, every
run), ``bench.md`` (tables, from :mod:`pipeline.app.bench_report`) and PNG plots; while it
runs, each finished run is printed and appended to ``runs.jsonl``.
"""

from __future__ import annotations

import math
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import redis

from links.budget import ModelCost, parse_budget
from links.linkset import LinkSet
from links.outputs import ModelOutput
from links.policies import frame_difference, thumbnail
from links.samples import AlignedSamples, ModelMeta
from pipeline.app.bench_report import format_tables, plot_bench
from pipeline.app.bench_score import (camera_moves, drift_periods, hold_last_curve, informative_targets, interpolate_at, overspend,
                                      prior_cover, score_run)
from pipeline.app.session import ProgressSink, RecordStore, SessionOptions, run_session
from pipeline.config import Config, SchedulerConfig, parse_config, replay_config_from
from pipeline.costs import measure_config_costs
from pipeline.errors import UserError
from pipeline.keys import camera_key, links_key
from pipeline.redis_conn import EmbeddedRedis, connect
from pipeline.video import iter_frames, probe_frame_count
from pipeline.zoo import build_models

Records = dict[str, dict[int, dict[str, Any]]]
SHARES = {"1/5": 0.2, "1/3": 1 / 3}  # where policies are compared


@dataclass
class BenchOptions:
    videos: list[str]
    budgets: list[str]
    policies: list[str]
    out_dir: Path
    config: Config | None = None
    redis_url: str | None = None
    fps: float | None = None
    repeats: int = 1
    concat: bool = False
    warm_links: float | None = None
    period_frames: int = 100
    profile_fraction: float = 0.05
    cold_start_frames: int = 60
    workers: int = 1  # scheduler workers per budgeted run (each camera has one owner among them, see stages.assignment)
    share_cameras: bool = False  # ...or every worker reads every camera (links, plans, held outputs shared through Redis)
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class Replay:
    records: Records
    fps: float
    wall_s: float
    restarts: int
    errors: dict[str, str]


def _replay(cfg: Config, url: str, *, seed: Callable[[redis.Redis], None] | None = None, desc: str = "replay",
            total: int | None = None, workers: int = 1) -> Replay:
    """One run of the real pipeline over ``cfg``'s cameras (the session engine of ``mlink replay``)."""
    store, progress = RecordStore(), ProgressSink(total, desc, leave=False)
    t0 = time.monotonic()
    res = run_session(cfg, url, [store, progress], SessionOptions(fresh=True, workers=workers, on_prepared=seed), say=progress.say)
    if res.interrupted:
        raise KeyboardInterrupt  # Ctrl-C stops the whole benchmark, not just this run
    done = [rec["wall"] + rec["latency_ms"]["total"] / 1000 for cr in store.records.values() for rec in cr.values()]
    span = (max(done) - min(done)) if len(done) > 1 else 0.0
    errors = dict(res.errors)
    errors.update({f"stage{i}": f for i, f in enumerate(res.stage_failures)})
    return Replay(dict(store.records), (len(done) - 1) / span if span > 0 else float("nan"), time.monotonic() - t0, res.restarts, errors)


def bench_config(videos: list[str], base: Config | None, fps: float | None, concat: bool) -> tuple[Config, dict[str, list[int]]]:
    """The cameras to bench, and per camera the first frame of each clip after the first
    (scene changes; only with ``concat``, where all clips are one camera)."""
    if not concat:
        return replay_config_from(videos, base, fps=fps), {}
    tmpl = replay_config_from(videos[:1], base, fps=fps)
    cam = next(iter(tmpl.cameras.values())).model_dump(mode="json", exclude={"name", "source", "model_specs"})
    cfg = parse_config({"cameras": {"concat": {**cam, "source": list(videos), "mode": "replay"}}}, where="bench")
    cfg.scheduler = tmpl.scheduler
    counts = [probe_frame_count(v, fps=fps) or 0 for v in videos]
    return cfg, {"concat": [int(x) for x in np.cumsum(counts)[:-1]]}


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA install must not stop a CPU benchmark
        gpu = None
    return {"cores": os.cpu_count(), "cpu": cpu, "gpu": gpu, "python": platform.python_version()}


def _commit() -> tuple[str | None, bool]:
    """The commit of the code that runs (where this file lives) and whether its tree had
    uncommitted changes, taken when the bench STARTS (a checkout edited meanwhile must not
    relabel the runs)."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=root).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                                    timeout=10, cwd=root).stdout.strip())
        return head, dirty
    except (OSError, subprocess.SubprocessError):
        return None, False


def _warm_seeds(cfg: Config, ref: Replay, metas: dict[str, ModelMeta], names: list[str], frac: float) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """Links trained on the first ``frac`` of each camera's reference records (upper bound only)."""
    cut: dict[str, int] = {}
    seeds: dict[str, dict[str, Any]] = {}
    for cam, cc in cfg.cameras.items():
        frames = sorted(ref.records[cam])
        k = max(4, int(len(frames) * frac))
        cut[cam] = frames[k]
        s = AlignedSamples([metas[n] for n in names])
        for f in frames[:k]:
            rec = ref.records[cam][f]
            s.append(cam, f, float(rec["pts"]), {n: ModelOutput.from_record(rec["outputs"][n], metas[n].classes) for n in names})
        fit_n = max(2, int(k * 0.75))
        ls = LinkSet.train(s.subset(np.arange(fit_n)), seed=0, epochs=30)
        val = s.subset(np.arange(fit_n, k))
        diffs = _diffs_for_frames(cc.files(cfg.base_dir)[0], frames[fit_n:k], cc.resize)
        seeds[cam] = {"blob": ls.to_bytes(), "seed_samples": val.to_bytes(), "seed_diffs": json.dumps(diffs)}
    return cut, seeds


def _diffs_for_frames(video: Path, frames: list[int], resize: Any) -> list[float]:
    """Consecutive-frame differences (Reducto's feature) for the given frame indices."""
    want = set(frames)
    out: dict[int, float] = {}
    prev = None
    for i, vf in enumerate(iter_frames(video, resize=resize)):
        th = thumbnail(vf.image)
        if i in want:
            out[i] = 0.0 if prev is None else frame_difference(th, prev)
        prev = th
        if i >= max(frames):
            break
    return [out.get(i, 0.0) for i in frames]


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    (opts.out_dir / "runs.jsonl").unlink(missing_ok=True)  # this bench's runs only
    commit, dirty = _commit()
    cfg, boundaries = bench_config(opts.videos, opts.config, opts.fps, opts.concat)
    specs = cfg.all_model_specs()
    models = build_models(specs)
    metas = {n: ModelMeta.of(m) for n, m in models.items()}
    names = list(models)
    classes = {n: metas[n].classes for n in names}
    emb = None if opts.redis_url else EmbeddedRedis(publish=False).start()
    url = opts.redis_url or emb.url  # type: ignore[union-attr]
    timings: dict[str, Any] = {}
    try:
        r = connect(url)
        t = time.monotonic()
        measured = measure_config_costs(cfg, r, check_budget=False, remeasure=True)  # a benchmark measures, never trusts a cache
        timings["costs_s"] = time.monotonic() - t
        costs = {n: ModelCost(n, c.ms, c.mem_mb, c.gpu_mb) for n, c in measured.items()}
        for b in opts.budgets:
            try:
                parse_budget(b).resolve(costs).check_feasible(costs)
            except ValueError as exc:
                raise UserError(f"--budgets: {exc}") from None

        total_frames = sum(probe_frame_count(f, fps=c.fps) or 0 for c in cfg.cameras.values() for f in c.files(cfg.base_dir)) or None
        cfg.scheduler = SchedulerConfig(policy="all")
        ref = _replay(cfg, url, desc="all (reference)", total=total_frames)
        timings["reference_s"] = ref.wall_s
        if ref.errors:
            raise UserError(f"bench: the reference run failed: {next(iter(ref.errors.values()))}")

        cut: dict[str, int] = {}
        seeds: dict[str, dict[str, Any]] = {}
        if opts.warm_links is not None:
            t = time.monotonic()
            cut, seeds = _warm_seeds(cfg, ref, metas, names, opts.warm_links)
            timings["warm_links_training_s"] = time.monotonic() - t
        frames = {cam: [f for f in sorted(ref.records[cam]) if f >= cut.get(cam, 0)] for cam in cfg.cameras}
        n_eval = sum(len(v) for v in frames.values())
        informative = informative_targets(ref.records, names, frames)
        prior = prior_cover(ref.records, names, frames)

        runs: list[dict[str, Any]] = []
        combos = [(seed, b, p) for seed in range(opts.repeats) for b in opts.budgets for p in opts.policies if p != "all"]
        for i, (seed, b, p) in enumerate(combos, 1):
            cfg.scheduler = SchedulerConfig(policy=p, budget=b, period_frames=opts.period_frames, profile_fraction=opts.profile_fraction,
                                            cold_start_frames=opts.cold_start_frames, seed=seed, share_cameras=opts.share_cameras)

            def seed_links(rr: redis.Redis) -> None:
                for cam in cfg.cameras:
                    s = cut[cam]  # the decoder skips what "was already sent": the training part of the clip
                    rr.hset(camera_key(cam), mapping={"next_frame": s, "session_first_frame": s, "source_pos": s})
                    rr.hset(links_key(cam), mapping={"version": 1, **seeds[cam]})

            run = _replay(cfg, url, seed=seed_links if seeds else None, desc=f"[{i}/{len(combos)}] {p} @ {b} seed {seed}", total=n_eval,
                          workers=opts.workers)
            sc = score_run(run.records, ref.records, classes, frames, informative, window=opts.period_frames)
            reasons = [f"camera {c}: {e}" for c, e in run.errors.items()]
            if run.restarts:
                reasons.append(f"{run.restarts} process restart(s)")
            if sc.missing_records:
                reasons.append(f"{sc.missing_records} frame(s) without a record")
            if (why := overspend(sc)) is not None:
                reasons.append(why)
            row = {"policy": p, "budget": b, "seed": seed, "fps": run.fps, "wall_s": run.wall_s, "restarts": run.restarts,
                   "valid": not reasons, "invalid_reasons": reasons, **sc.to_json(), "camera_moves": camera_moves(run.records)}
            if boundaries:
                row["drift"] = {cam: drift_periods(run.records, ref.records, classes, cam, bs, opts.period_frames, informative)
                                for cam, bs in boundaries.items()}
            runs.append(row)
            # Each run as it ends: on the terminal, and in runs.jsonl (a bench stopped early keeps what it measured).
            verdict = "valid" if not reasons else "INVALID: " + "; ".join(reasons)
            print(f"  {p} @ {b} seed {seed}: compute {sc.compute_share:.1%} of all's, mean agreement {sc.mean:.3f}, {verdict}",
                  file=sys.stderr, flush=True)
            with (opts.out_dir / "runs.jsonl").open("a") as fh:
                fh.write(json.dumps(row) + "\n")

        curve = hold_last_curve(ref.records, classes, frames, informative)
        ref_score = score_run(ref.records, ref.records, classes, frames, informative)
        result: dict[str, Any] = {
            "command": opts.command, "commit": commit, "dirty": dirty, "machine": _machine(),
            "videos": opts.videos, "models": names, "costs_ms": {n: c.ms for n, c in costs.items()},
            "total_ms": sum(c.ms for c in costs.values()),
            "options": {"budgets": opts.budgets, "policies": opts.policies, "fps": opts.fps, "repeats": opts.repeats, "concat": opts.concat,
                        "warm_links": opts.warm_links, "period_frames": opts.period_frames, "profile_fraction": opts.profile_fraction,
                        "cold_start_frames": opts.cold_start_frames, "workers": opts.workers,
                        "share_cameras": opts.share_cameras},
            "semantics": "warm links (upper bound, not production)" if opts.warm_links is not None else "production (cold start counted)",
            "eval_frames": n_eval, "boundaries": boundaries, "informative": informative, "prior_accuracy": prior,
            "reference": {"fps": ref.fps, "wall_s": ref.wall_s, **ref_score.to_json()},
            "hold_last_curve": curve, "runs": runs,
            "timings": {**timings, "runs_s": sum(x["wall_s"] for x in runs)},
        }
        result["summary"] = summarize(result)
        (opts.out_dir / "bench.json").write_text(json.dumps(result, indent=1))
        (opts.out_dir / "bench.md").write_text(format_tables(result) + "\n")
        plot_bench(result, opts.out_dir)
        return result
    finally:
        if emb:
            emb.stop()


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Per policy: mean and spread over repeats per budget (valid runs only), and accuracy
    interpolated at 1/5 and 1/3 of all's compute on the curve through those means."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in result["runs"]:
        by[(row["policy"], row["budget"])].append(row)
    rows = []
    for (p, b), rs in by.items():
        ok = [x for x in rs if x["valid"]]

        def stat(get: Callable[[dict[str, Any]], float]) -> tuple[float, float]:
            v = [get(x) for x in ok]
            return (float(np.mean(v)), float(np.std(v))) if v else (float("nan"), float("nan"))

        det_f1 = lambda x: float(np.mean(list(x["box_f1"].values()))) if x["box_f1"] else float("nan")  # noqa: E731
        det_mae = lambda x: float(np.mean(list(x["count_mae"].values()))) if x["count_mae"] else float("nan")  # noqa: E731
        rows.append({"policy": p, "budget": b, "runs": len(rs), "valid": len(ok),
                     "compute_share": stat(lambda x: x["compute_share"]), "mean": stat(lambda x: x["accuracy"]["mean"]),
                     "informative": stat(lambda x: x["accuracy"]["informative"]), "box_f1": stat(det_f1), "count_mae": stat(det_mae),
                     "fps": stat(lambda x: x["fps"])})
    at: dict[str, dict[str, dict[str, float]]] = {}
    for p in dict.fromkeys(x["policy"] for x in rows):
        mine = [x for x in rows if x["policy"] == p and x["valid"]]
        at[p] = {key: {label: interpolate_at([(x["compute_share"][0], x[key][0]) for x in mine], share) for label, share in SHARES.items()}
                 for key in ("mean", "informative")}
    for p in list(at):
        # per budget: (mean compute share, mean accuracy per model) over the valid runs
        pts = [(float(np.mean([x["compute_share"] for x in ok])), {m: float(np.mean([x["accuracy"]["per_model"][m] for x in ok]))
                                                                   for m in result["models"]})
               for (pp, _), rs in by.items() if pp == p and (ok := [x for x in rs if x["valid"]])]
        at[p]["per_model"] = {m: {label: interpolate_at([(c, acc[m]) for c, acc in pts], share) for label, share in SHARES.items()}
                              for m in result["models"]}
        prior = result.get("prior_accuracy")
        inf = [m for m, v in result["informative"].items() if v]
        if prior and inf:
            base = float(np.mean([prior[m] for m in inf]))
            at[p]["prior_error_closed"] = {label: (v - base) / (1 - base) if not math.isnan(v) and base < 1 else math.nan
                                           for label, v in at[p]["informative"].items()}
    curve = result["hold_last_curve"]
    at["hold-last (exact, k=1..16)"] = {key: {label: interpolate_at([(c["compute_share"], c[key]) for c in curve], share)
                                              for label, share in SHARES.items()} for key in ("mean", "informative")}
    return {"rows": rows, "at": at}

