"""Scoring for ``mlink bench``: every output of a run against the reference run, pure.

Records in, numbers out (no Redis, no video), so every rule is tested with plain dicts:

- Every model's output on every evaluated frame is scored against the reference
  (``all``) run's output of the same model on the same frame, executed outputs
  included (a stateful model such as MOG2 that ran on fewer frames can differ).
  Agreement is :func:`links.metrics.model_accuracy` (counts within 0.5 per class,
  top-1 label, scalars within tolerance). A frame without a record scores 0 for
  every model and is counted; a ``missing`` output scores 0.
- Detections also get box F1 at IoU 0.5 (pooled over frames: true positives, predicted
  and true boxes summed before the F1) and the mean absolute count error.
- Compute share: every executed output priced at what that model measurably cost on that
  frame in the reference run, over the reference's total; one price list for every policy,
  so machine noise between runs does not move a policy along the compute axis. Also the
  run's own measured time over the reference's (``compute_share_measured``).
- The budget: after the cold start, the run's own measured model time per frame, in every
  window of ``window`` frames, against the limit its records report (what the runtime
  promises to hold).
- Informative targets: the model's most common reference value covers < 90% of frames.
- Policies are compared at equal compute by interpolating accuracy against measured
  compute share; the exact hold-last curve (every model on every k-th frame) comes
  from the reference run alone.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from links.metrics import box_matches, model_accuracy, scalar_tolerance
from links.outputs import ModelOutput, OutputKind

Record = dict[str, Any]
Records = Mapping[str, Mapping[int, Record]]  # camera -> frame -> record

__all__ = [
    "RunScore",
    "score_run",
    "informative_targets",
    "prior_cover",
    "interpolate_at",
    "hold_last_curve",
    "drift_periods",
    "overspend",
]


def _output(o: Mapping[str, Any], classes: tuple[str, ...]) -> ModelOutput:
    kind = OutputKind(o["kind"])
    if kind.has_boxes and "boxes" not in o:
        # Counts without boxes (a derived output, or a worker writing no boxes): score the
        # counts; the zero-size stand-in boxes can match no true box.
        ids = [i for i, c in enumerate(classes) for _ in range(int(o.get("counts", {}).get(c, 0)))]
        return ModelOutput(kind, classes, boxes=np.zeros((len(ids), 4), np.float32), class_ids=np.array(ids, np.int64))
    return ModelOutput.from_record(dict(o), classes)


def _executed_ms(rec: Record) -> float:
    return sum(float(o.get("ms", 0.0)) for o in rec["outputs"].values() if o["origin"] == "executed")


@dataclass
class _BoxTally:
    tp: int = 0
    n_pred: int = 0
    n_true: int = 0

    @property
    def f1(self) -> float:
        if self.n_pred == 0 and self.n_true == 0:
            return 1.0
        return 2.0 * self.tp / (self.n_pred + self.n_true)


@dataclass
class RunScore:
    per_model: dict[str, float]  # mean agreement over evaluated frames
    mean: float  # over models
    informative: float  # over informative models (nan when none)
    box_f1: dict[str, float]  # detections only
    count_mae: dict[str, float]  # detections only
    compute_share: float  # executed outputs priced at the reference's measured ms / the reference's total
    compute_share_measured: float  # the run's own measured model ms / the reference's
    frames: int
    missing_records: int
    origins: dict[str, dict[str, int]] = field(default_factory=dict)
    limit_ms: float = math.nan  # the budget per frame the records report (compute budgets)
    budgeted_ms: float = math.nan  # measured model ms per frame after the cold start
    worst_window_ms: float = math.nan  # the most measured ms in any window of `window` budgeted frames, per frame
    worst_window: dict[str, Any] = field(default_factory=dict)  # where: camera, first and last frame, its dearest frames
    full_frames: int = 0  # frames after the cold start on which every model ran (profiling, or a policy that chose them all)
    refused: dict[str, int] = field(default_factory=dict)  # model -> frames where the policy wanted it and the cap refused ("profile": whole profiling frames)

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": {"mean": self.mean, "informative": self.informative, "per_model": self.per_model},
            "box_f1": self.box_f1, "count_mae": self.count_mae,
            "compute_share": self.compute_share, "compute_share_measured": self.compute_share_measured,
            "spend": {"limit_ms": self.limit_ms, "budgeted_ms": self.budgeted_ms, "worst_window_ms": self.worst_window_ms,
                      "worst_window": self.worst_window},
            "frames": self.frames, "missing_records": self.missing_records, "origins": self.origins,
            "refused": self.refused, "full_frames": self.full_frames,
        }


def informative_targets(ref: Records, models: Sequence[str], frames: Mapping[str, Sequence[int]] | None = None) -> dict[str, bool]:
    """True where the model's most common reference value covers < 90% of the frames."""
    return {m: c < 0.9 for m, c in prior_cover(ref, models, frames).items()}


def prior_cover(ref: Records, models: Sequence[str], frames: Mapping[str, Sequence[int]] | None = None) -> dict[str, float]:
    """Per model, the share of frames its most common reference value covers: the accuracy
    of always answering that value (an optimistic prior: it knows the whole run's mode)."""
    recs = [ref[c][f] for c in ref for f in (frames[c] if frames else ref[c])]
    info: dict[str, float] = {}
    for m in models:
        outs = [r["outputs"][m] for r in recs]
        if not outs:
            info[m] = 1.0
            continue
        if outs[0]["kind"] == OutputKind.SCALAR.value:
            v = np.array([o["value"] for o in outs], float)
            tol = scalar_tolerance(v)
            cover = max(float(np.mean(np.abs(v - c) <= tol)) for c in v)
        else:
            keys = [tuple(sorted(o["counts"].items())) if "counts" in o else o.get("label") for o in outs]
            cover = Counter(keys).most_common(1)[0][1] / len(keys)
        info[m] = float(cover)
    return info


def score_run(run: Records, ref: Records, classes: Mapping[str, tuple[str, ...]], frames: Mapping[str, Sequence[int]],
              informative: Mapping[str, bool], window: int = 100) -> RunScore:
    """Score ``run`` against ``ref`` on ``frames`` (camera -> frame indices of the reference)."""
    models = list(classes)
    acc: dict[str, list[float]] = {m: [] for m in models}
    boxes: dict[str, _BoxTally] = {}
    count_err: dict[str, list[float]] = {}
    origins: dict[str, Counter[str]] = {m: Counter() for m in models}
    refused: Counter[str] = Counter()
    full = 0
    priced = ref_ms = run_ms = 0.0
    missing = n = 0
    limits: list[float] = []
    budgeted: dict[str, list[tuple[int, float]]] = {}  # per camera: (frame, measured ms) of each frame after the cold start
    for cam, fs in frames.items():
        budgeted[cam] = []
        for f in fs:
            rrec = ref[cam][f]
            n += 1
            rec = run.get(cam, {}).get(f)
            r_ms = _executed_ms(rrec)
            ref_ms += r_ms
            if rec is None:
                missing += 1
                for m in models:
                    acc[m].append(0.0)
                    origins[m]["no record"] += 1
                    ro = rrec["outputs"][m]
                    if OutputKind(ro["kind"]).has_boxes:
                        t = boxes.setdefault(m, _BoxTally())
                        t.n_true += int(ro["count"])
                        count_err.setdefault(m, []).append(float(ro["count"]))
                continue
            ms = _executed_ms(rec)
            run_ms += ms
            pol = rec.get("policy", {})
            refused.update(pol.get("refused", ()))
            if pol.get("phase") == "budgeted" and all(o["origin"] == "executed" for o in rec["outputs"].values()):
                full += 1
            if pol.get("phase") == "budgeted" and pol.get("resource") == "ms":
                budgeted[cam].append((f, ms))
                limits.append(float(pol["limit"]))
            for m in models:
                ro, o = rrec["outputs"][m], rec["outputs"][m]
                origins[m][o["origin"]] += 1
                if o["origin"] == "executed":
                    priced += float(ro.get("ms", 0.0))
                det = OutputKind(ro["kind"]).has_boxes
                if o["origin"] == "missing" or "kind" not in o:
                    acc[m].append(0.0)
                    if det:
                        boxes.setdefault(m, _BoxTally()).n_true += int(ro["count"])
                        count_err.setdefault(m, []).append(float(ro["count"]))
                    continue
                true, pred = _output(ro, classes[m]), _output(o, classes[m])
                acc[m].append(model_accuracy(pred, true))
                if det:
                    t = boxes.setdefault(m, _BoxTally())
                    pb = np.asarray(pred.boxes) if "boxes" in o else np.zeros((0, 4), np.float32)  # counts only: no boxes
                    for c in range(len(true.classes)):
                        pm = np.asarray(pred.class_ids) == c if len(pb) else np.zeros(0, bool)
                        tm = np.asarray(true.class_ids) == c
                        t.tp += box_matches(pb[pm] if len(pb) else pb, np.asarray(true.boxes)[tm], 0.5)
                    t.n_pred += len(pb)
                    t.n_true += true.count
                    count_err.setdefault(m, []).append(abs(float(o.get("count", pred.count)) - float(true.count)))
    per_model = {m: float(np.mean(v)) if v else math.nan for m, v in acc.items()}
    inf = [per_model[m] for m in models if informative.get(m)]
    worst_ms, worst_at = _worst_window(budgeted, window)
    return RunScore(
        per_model=per_model,
        mean=float(np.mean(list(per_model.values()))) if per_model else math.nan,
        informative=float(np.mean(inf)) if inf else math.nan,
        box_f1={m: t.f1 for m, t in boxes.items()},
        count_mae={m: float(np.mean(v)) for m, v in count_err.items()},
        compute_share=priced / ref_ms if ref_ms > 0 else math.nan,
        compute_share_measured=run_ms / ref_ms if ref_ms > 0 else math.nan,
        frames=n,
        missing_records=missing,
        origins={m: dict(c) for m, c in origins.items()},
        limit_ms=float(np.mean(limits)) if limits else math.nan,
        budgeted_ms=float(np.mean([ms for b in budgeted.values() for _, ms in b])) if limits else math.nan,
        worst_window_ms=worst_ms,
        worst_window=worst_at,
        refused=dict(refused),
        full_frames=full,
    )


def _worst_window(budgeted: Mapping[str, list[tuple[int, float]]], window: int) -> tuple[float, dict[str, Any]]:
    """The most measured ms per frame in any ``window`` consecutive budgeted frames of a camera,
    and where it is (camera, first and last frame, its five dearest frames): an overspent run
    says which frames to look at."""
    worst, where = math.nan, {}
    for cam, b in budgeted.items():
        w = min(window, len(b))
        for i in range(len(b) - w + 1) if w else ():
            v = sum(ms for _, ms in b[i : i + w]) / w
            if not v <= worst:
                worst = v
                dearest = sorted(sorted(b[i : i + w], key=lambda x: -x[1])[:5])
                where = {"camera": cam, "first_frame": b[i][0], "last_frame": b[i + w - 1][0],
                         "dearest": [[f, round(ms, 2)] for f, ms in dearest]}
    return worst, where


def camera_moves(run: Records) -> dict[str, list[int]]:
    """Per camera, the frames where its records' worker changed from the frame before: a
    camera handed to another worker mid-run (a join, a leave, a lost lease). Each move
    starts the camera's in-process state (MOG2's background, loaded links) afresh there."""
    moves: dict[str, list[int]] = {}
    for cam, recs in run.items():
        prev = None
        moves[cam] = []
        for f in sorted(recs):
            w = recs[f].get("worker")
            if prev is not None and w is not None and w != prev:
                moves[cam].append(f)
            prev = w if w is not None else prev
    return moves


def overspend(score: RunScore, tolerance: float = 0.05) -> str | None:
    """Why a run broke its compute budget after the cold start, or None when it kept it:
    measured ms per frame, overall and in every window, against the limit its records report."""
    if math.isnan(score.limit_ms):
        return None
    cap = score.limit_ms * (1 + tolerance)
    if score.budgeted_ms > cap:
        return f"overspent: {score.budgeted_ms:.2f} ms/frame measured after the cold start for a limit of {score.limit_ms:.2f} (+{tolerance:.0%} allowed)"
    if score.worst_window_ms > cap:
        at = score.worst_window
        where = f" (camera {at['camera']}, frames {at['first_frame']}-{at['last_frame']})" if at else ""
        return f"overspent: {score.worst_window_ms:.2f} ms/frame in one window{where} for a limit of {score.limit_ms:.2f} (+{tolerance:.0%} allowed)"
    return None


def interpolate_at(points: Iterable[tuple[float, float]], x: float) -> float:
    """Accuracy at compute share ``x`` on the piecewise-linear curve through ``points``
    (compute, accuracy); nan when ``x`` is not bracketed by measured points."""
    pts = sorted((float(c), float(a)) for c, a in points if not (math.isnan(c) or math.isnan(a)))
    for (c0, a0), (c1, a1) in zip(pts, pts[1:]):
        if c0 <= x <= c1:
            return a0 if c1 == c0 else a0 + (a1 - a0) * (x - c0) / (c1 - c0)
    if pts and any(abs(c - x) < 1e-12 for c, _ in pts):
        return next(a for c, a in pts if abs(c - x) < 1e-12)
    return math.nan


def hold_last_curve(ref: Records, classes: Mapping[str, tuple[str, ...]], frames: Mapping[str, Sequence[int]],
                    informative: Mapping[str, bool], ks: Iterable[int] = range(1, 17)) -> list[dict[str, Any]]:
    """The exact hold-last policy from the reference alone: every model on every k-th frame
    (frame position ``i % k == 0`` within each camera's evaluated frames), the others hold
    the last executed output. Stateful models are taken as in the reference (as if they had
    seen every frame), which flatters hold-last slightly; no replay is needed."""
    out = []
    for k in ks:
        run: dict[str, dict[int, Record]] = {}
        for cam, fs in frames.items():
            run[cam] = {}
            last: Record | None = None
            for i, f in enumerate(fs):
                rrec = ref[cam][f]
                if i % k == 0 or last is None:
                    last = rrec
                    run[cam][f] = rrec
                else:
                    held = {m: {**{kk: vv for kk, vv in o.items() if kk != "ms"}, "origin": "held"} for m, o in last["outputs"].items()}
                    run[cam][f] = {**rrec, "outputs": held}
        s = score_run(run, ref, classes, frames, informative)
        out.append({"k": k, "compute_share": s.compute_share, "mean": s.mean, "informative": s.informative})
    return out


def drift_periods(run: Records, ref: Records, classes: Mapping[str, tuple[str, ...]], camera: str, boundaries: Sequence[int],
                  period: int, informative: Mapping[str, bool], periods: int = 3) -> list[list[float]]:
    """Mean accuracy in the 1st..``periods``-th period of ``period`` frames after each scene
    change (``boundaries``: first frame of each new clip in a --concat camera)."""
    out = []
    last = max(ref[camera]) if ref.get(camera) else -1
    for b in boundaries:
        row = []
        for p in range(periods):
            fs = [f for f in range(b + p * period, b + (p + 1) * period) if f in ref[camera] and f <= last]
            row.append(score_run(run, ref, classes, {camera: fs}, informative).mean if fs else math.nan)
        out.append(row)
    return out
