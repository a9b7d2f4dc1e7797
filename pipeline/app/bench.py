"""``mlink bench``: every policy at every budget through the real pipeline, on real footage.

1. Reference: the whole footage is replayed with policy ``all`` (every model on
   every frame) through decoders -> Redis -> scheduler, as ``mlink replay`` does.
2. Links: for each clip, the first ``train_frac`` of its frames (in time) is the
   profiling sample: links are trained on it exactly as a cold-started camera
   would (first 75% fit, last 25% score the links and drive the planner), and
   stored in Redis as that camera's links (``links:{cam}``).
3. Each policy x budget replays the REST of each clip through the real pipeline,
   warm-started from those links, with periodic profiling and adaptation on.
4. Accuracy is agreement with the reference run's outputs on the same frames:
   counts within 0.5 per class, top-1 label, scalar within tolerance
   (:func:`links.metrics.model_accuracy`); executed models score 1, missing 0.
   Reported per model, as the mean over all models, and over informative
   targets only (those whose most common value covers < 90% of the frames).

Speed: frames/s is measured between the first and last record of a run
(process start-up excluded); compute saved is 1 - executed model time / the
reference's model time on the same frames; overhead share is the part of the
run's wall time not spent inside models (decode, Redis, links, records).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import redis

from links.budget import ModelCost, parse_budget
from links.linkset import LinkSet
from links.metrics import model_accuracy, scalar_tolerance
from links.outputs import ModelOutput
from links.policies import frame_difference, thumbnail
from links.samples import AlignedSamples, ModelMeta
from pipeline.app.session import ProgressSink, RecordStore, SessionOptions, run_session
from pipeline.config import Config, SchedulerConfig, replay_config_from
from pipeline.costs import measure_config_costs
from pipeline.errors import UserError
from pipeline.keys import camera_key, links_key
from pipeline.redis_conn import EmbeddedRedis, connect
from pipeline.video import iter_frames
from pipeline.zoo import build_models


@dataclass
class RunResult:
    policy: str
    budget: str | None
    records: dict[str, dict[int, dict[str, Any]]]  # camera -> frame -> record
    fps: float
    wall_s: float
    model_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def _replay(cfg: Config, url: str, *, seed: Callable[[redis.Redis], None] | None = None, desc: str = "replay", total: int | None = None) -> RunResult:
    """One run of the real pipeline over ``cfg``'s cameras (the session engine of ``mlink replay``).

    ``seed`` prepares Redis once the cameras are clean and before any stage starts
    (start frames, links trained from the reference run).
    """
    store, progress = RecordStore(), ProgressSink(total, desc, leave=False)
    res = run_session(cfg, url, [store, progress], SessionOptions(fresh=True, workers=1, on_prepared=seed), say=progress.say)
    if res.errors:
        cam, reason = next(iter(res.errors.items()))
        raise UserError(f"bench: camera {cam}: {reason}")
    if res.stage_failures:
        raise UserError(f"bench: {res.stage_failures[0]}")
    recs = store.records
    done = [rec["wall"] + rec["latency_ms"]["total"] / 1000 for cr in recs.values() for rec in cr.values()]
    n = len(done)
    span = (max(done) - min(done)) if n > 1 else float("nan")
    model_s = sum(o.get("ms", 0.0) for cr in recs.values() for rec in cr.values() for o in rec["outputs"].values() if o["origin"] == "executed") / 1000
    worker_s = sum(rec["latency_ms"].get("worker", 0.0) for cr in recs.values() for rec in cr.values()) / 1000
    links_s = sum(rec["latency_ms"].get("links", 0.0) for cr in recs.values() for rec in cr.values()) / 1000
    out = RunResult(cfg.scheduler.policy, cfg.scheduler.budget, dict(recs), (n - 1) / span if span == span and span > 0 else float("nan"), span, model_s)
    out.extra.update(worker_s=worker_s, links_s=links_s, restarts=res.restarts)
    return out


def _all(run: RunResult) -> list[dict[str, Any]]:
    return [rec for cr in run.records.values() for rec in cr.values()]


def _overhead(run: RunResult) -> float:
    """Share of the scheduler's processing time not spent inside models (frame decode,
    policy, links, records); decoders and Redis run in other processes besides."""
    w = run.extra.get("worker_s", 0.0)
    return 1 - run.model_s / w if w > 0 else float("nan")


def _samples_from_records(records: list[dict[str, Any]], metas: list[Any]) -> Any:

    s = AlignedSamples(metas)
    for rec in records:
        outs = {m.name: ModelOutput.from_record(rec["outputs"][m.name], m.classes) for m in metas}
        s.append(rec["camera"], int(rec["frame"]), float(rec["pts"]), outs)
    return s


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


def _value_key(o: dict[str, Any]) -> Any:
    if "counts" in o:
        return tuple(sorted(o["counts"].items()))
    if "label" in o:
        return o["label"]
    return o.get("value")


def informative_targets(ref: list[dict[str, Any]], models: list[str]) -> dict[str, bool]:
    """True where the model's most common value covers < 90% of the frames."""
    info = {}
    for m in models:
        outs = [rec["outputs"][m] for rec in ref]
        if outs and "value" in outs[0] and "counts" not in outs[0]:
            v = np.array([o["value"] for o in outs], float)
            tol = scalar_tolerance(v)
            cover = max(float(np.mean(np.abs(v - c) <= tol)) for c in v)
        else:
            keys = [_value_key(o) for o in outs]
            cover = max(keys.count(k) for k in set(keys)) / max(len(keys), 1)
        info[m] = cover < 0.9
    return info


def score_run(run: RunResult, ref: RunResult, metas: dict[str, Any], eval_frames: dict[str, list[int]]) -> dict[str, Any]:

    per_model: dict[str, list[float]] = defaultdict(list)
    exec_ms = ref_ms = 0.0
    origins: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    missing_records = 0
    for cam, frames in eval_frames.items():
        for f in frames:
            rrec = ref.records[cam][f]
            rec = run.records.get(cam, {}).get(f)
            if rec is None:
                missing_records += 1
                continue
            for m, ro in rrec["outputs"].items():
                ref_ms += ro.get("ms", 0.0)
                o = rec["outputs"][m]
                origins[m][o["origin"]] += 1
                if o["origin"] == "executed":
                    exec_ms += o.get("ms", 0.0)
                    per_model[m].append(1.0)
                elif o["origin"] == "missing":
                    per_model[m].append(0.0)
                else:
                    cls = metas[m].classes
                    per_model[m].append(model_accuracy(ModelOutput.from_record(o, cls), ModelOutput.from_record(ro, cls)))
    acc = {m: float(np.mean(v)) for m, v in per_model.items()}
    return {"acc": acc, "mean": float(np.mean(list(acc.values()))) if acc else float("nan"),
            "compute_saved": 1 - exec_ms / ref_ms if ref_ms else float("nan"),
            "origins": {m: dict(v) for m, v in origins.items()}, "missing_records": missing_records}


def run_bench(videos: list[str], budgets: list[str], policies: list[str], out_dir: Path, *, config: Any = None,
              redis_url: str | None = None, train_frac: float = 0.5, period_frames: int = 200, seed: int = 0) -> dict[str, Any]:
    from tqdm import tqdm


    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = replay_config_from(videos, config)
    specs = cfg.all_model_specs()
    models = build_models(specs)
    metas = {n: ModelMeta.of(m) for n, m in models.items()}
    names = list(models)
    emb = None if redis_url else EmbeddedRedis(publish=False).start()
    url = redis_url or emb.url  # type: ignore[union-attr]
    try:
        r = connect(url)
        costs = measure_config_costs(cfg, r, check_budget=False, remeasure=True)  # a benchmark measures, never trusts a cache
        total_ms = sum(c.ms for c in costs.values())
        mc = {n: ModelCost(n, c.ms, c.mem_mb, c.gpu_mb) for n, c in costs.items()}
        for b in budgets:
            try:
                parse_budget(b).resolve(mc).check_feasible(mc)
            except ValueError as exc:
                raise UserError(str(exc)) from None

        # 1. reference
        cfg.scheduler = SchedulerConfig(policy="all")
        t0 = time.time()
        ref = _replay(cfg, url, desc="all (reference)")
        ref.extra["seconds"] = time.time() - t0

        # 2. links per clip from the first part, as a cold start would train them
        cut: dict[str, int] = {}
        eval_frames: dict[str, list[int]] = {}
        seeds: dict[str, dict[str, Any]] = {}
        train_s = 0.0
        for cam, cc in cfg.cameras.items():
            frames = sorted(ref.records[cam])
            k = max(4, int(len(frames) * train_frac))
            cut[cam] = frames[k]
            eval_frames[cam] = frames[k:]
            train = _samples_from_records([ref.records[cam][f] for f in frames[:k]], [metas[n] for n in names])
            fit_n = max(2, int(k * 0.75))
            t1 = time.perf_counter()
            ls = LinkSet.train(train.subset(np.arange(fit_n)), seed=seed, epochs=30)
            train_s += time.perf_counter() - t1
            val = train.subset(np.arange(fit_n, k))
            diffs = _diffs_for_frames(cc.files(cfg.base_dir)[0], frames[fit_n:k], cc.resize)
            seeds[cam] = {"blob": ls.to_bytes(), "seed_samples": val.to_bytes(), "seed_diffs": json.dumps(diffs)}

        # 3. every policy x budget on the rest of each clip
        runs: list[dict[str, Any]] = []
        combos = [(p, b) for b in budgets for p in policies if p != "all"]
        for p, b in tqdm(combos, desc="bench runs", unit="run", dynamic_ncols=True):
            cfg.scheduler = SchedulerConfig(policy=p, budget=b, period_frames=period_frames, profile_fraction=0.02, cold_start_frames=120)

            def seed(r: redis.Redis) -> None:
                for cam in cfg.cameras:
                    # The decoder skips what "was already sent": the training part of the clip.
                    s = cut[cam]
                    r.hset(camera_key(cam), mapping={"next_frame": s, "session_first_frame": s, "source_pos": s})
                    r.hset(links_key(cam), mapping={"version": 1, **seeds[cam]})

            run = _replay(cfg, url, seed=seed, desc=f"{p} @ {b}", total=sum(len(v) for v in eval_frames.values()))
            sc = score_run(run, ref, metas, eval_frames)
            runs.append({"policy": p, "budget": b, "fps": run.fps, "wall_s": run.wall_s, "model_s": run.model_s,
                         "overhead_share": _overhead(run), "links_ms_per_frame": 1000 * run.extra["links_s"] / max(len(_all(run)), 1), **sc})
        ref_eval = score_run(ref, ref, metas, eval_frames)
        ref_row = {"policy": "all", "budget": "100%", "fps": ref.fps, "wall_s": ref.wall_s, "model_s": ref.model_s,
                   "overhead_share": _overhead(ref), "links_ms_per_frame": 0.0, **ref_eval}
        ref_list = [rec for cam in eval_frames for rec in (ref.records[cam][f] for f in eval_frames[cam])]
        info = informative_targets(ref_list, names)
        for row in [ref_row, *runs]:
            inf = [row["acc"][m] for m in names if info[m]]
            row["mean_informative"] = float(np.mean(inf)) if inf else float("nan")
        result = {"videos": videos, "models": names, "costs_ms": {n: c.ms for n, c in costs.items()}, "total_ms": total_ms,
                  "informative": info, "train_frac": train_frac, "link_train_s": train_s, "reference": ref_row, "runs": runs,
                  "eval_frames": sum(len(v) for v in eval_frames.values())}
        (out_dir / "bench.json").write_text(json.dumps(result, indent=1))
        table = format_table(result)
        (out_dir / "bench.md").write_text(table + "\n")
        plot_bench(result, out_dir)
        return result
    finally:
        if emb:
            emb.stop()


def format_table(res: dict[str, Any]) -> str:
    names = res["models"]
    info = res["informative"]
    lines = [f"eval frames: {res['eval_frames']}; informative targets: {', '.join(m for m in names if info[m]) or 'none'}; "
             f"all models: {res['total_ms']:.1f} ms/frame measured here",
             "",
             "| policy | budget | mean acc | informative acc | compute saved | frames/s | x all fps | overhead share | links ms/frame |",
             "|---|---|---|---|---|---|---|---|---|"]
    ref = res["reference"]
    for row in [ref, *res["runs"]]:
        lines.append(f"| {row['policy']} | {row['budget']} | {row['mean']:.3f} | {row['mean_informative']:.3f} | {row['compute_saved']:.1%} | "
                     f"{row['fps']:.2f} | {row['fps'] / ref['fps']:.2f} | {row['overhead_share']:.1%} | {row.get('links_ms_per_frame', 0.0):.2f} |")
    lines += ["", "per-model accuracy:", "", "| policy | budget | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for row in res["runs"]:
        lines.append(f"| {row['policy']} | {row['budget']} | " + " | ".join(f"{row['acc'].get(m, float('nan')):.3f}" for m in names) + " |")
    return "\n".join(lines)


def plot_bench(res: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res["runs"]
    budgets = list(dict.fromkeys(r["budget"] for r in runs))
    policies = list(dict.fromkeys(r["policy"] for r in runs))

    def by(key: str) -> dict[str, list[float]]:
        return {p: [next((r[key] for r in runs if r["policy"] == p and r["budget"] == b), np.nan) for b in budgets] for p in policies}

    for key, title, fname in [("mean", "mean accuracy (all models)", "accuracy_vs_budget.png"),
                              ("mean_informative", "mean accuracy (informative targets)", "accuracy_informative_vs_budget.png"),
                              ("compute_saved", "compute saved vs all", "compute_saved.png"),
                              ("fps", "frames per second", "fps.png"),
                              ("overhead_share", "overhead share of the scheduler time (not models)", "overhead.png")]:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for p, ys in by(key).items():
            ax.plot(budgets, ys, marker="o", label=p)
        if key in ("fps",):
            ax.axhline(res["reference"]["fps"], color="k", ls="--", label="all")
        ax.set_xlabel("budget")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
    names = res["models"]
    fig, axes = plt.subplots(len(budgets), 1, figsize=(10, 3.2 * len(budgets)), squeeze=False)
    w = 0.8 / max(len(policies), 1)
    for bi, b in enumerate(budgets):
        ax = axes[bi][0]
        for pi, p in enumerate(policies):
            row = next((r for r in runs if r["policy"] == p and r["budget"] == b), None)
            if row:
                ax.bar(np.arange(len(names)) + pi * w, [row["acc"].get(m, np.nan) for m in names], w, label=p)
        ax.set_xticks(np.arange(len(names)) + 0.4 - w / 2, names, rotation=20, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"per-model accuracy at budget {b}")
        ax.legend(fontsize=7, ncol=6, loc="lower left", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(out_dir / "per_model.png", dpi=110)
    plt.close(fig)
