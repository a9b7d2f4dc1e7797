"""The ``reducto`` policy (Reducto, SIGCOMM'20): per-model frame-difference gating.

Frames are compared as 64x36 grey thumbnails (:func:`thumbnail`, :func:`frame_difference`);
a model re-runs when the difference accumulated since its last run reaches a threshold
tuned on the profiling clip (:func:`tune_reducto_thresholds`, simulated exactly by
:func:`simulate_reducto`). At run time :class:`ReductoGate` makes that decision per frame.
Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Iterable

import numpy as np

from links.budget import ModelCost, ResolvedBudget
from links.policies.base import PlanInputs, Policy
from links.policies.schedule import Plan

_EPS = 1e-12


def thumbnail(frame: np.ndarray, width: int = 64, height: int = 36) -> np.ndarray:
    """Grey ``height x width`` float32 thumbnail in [0, 1] by area averaging.

    Accepts HxW or HxWxC (channels are averaged, so BGR vs RGB does not matter); integer
    frames are scaled by 255.
    """
    a = np.asarray(frame)
    if a.ndim in (2, 3):
        # Averaging every pixel of a large frame costs milliseconds per frame; every s-th row and
        # column (still >= 4 samples per thumbnail pixel each way) gives the same picture.
        s = max(1, min(a.shape[0] // (4 * height), a.shape[1] // (4 * width)))
        a = a[::s, ::s]
    if a.ndim == 3:
        g = a.sum(axis=2, dtype=np.uint32 if np.issubdtype(a.dtype, np.integer) else np.float32).astype(np.float32) / a.shape[2]
    elif a.ndim == 2:
        g = a.astype(np.float32)
    else:
        raise ValueError(f"thumbnail expects an HxW or HxWxC frame, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.integer):
        g /= 255.0
    h, w = g.shape
    if h < height or w < width:  # upscaling: nearest neighbour is enough for a difference
        rows = (np.arange(height) * h) // height
        cols = (np.arange(width) * w) // width
        return g[np.ix_(rows, cols)].astype(np.float32)
    rows = (np.arange(height) * h) // height
    cols = (np.arange(width) * w) // width
    s = np.add.reduceat(np.add.reduceat(g, rows, axis=0), cols, axis=1)
    counts = np.diff(np.append(rows, h))[:, None] * np.diff(np.append(cols, w))[None, :]
    return (s / counts).astype(np.float32)


def frame_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference between two frames or thumbnails, in [0, 1].

    Meant for two :func:`thumbnail` outputs (64x36 grey); colour arrays are averaged to
    grey and integer arrays are scaled by 255, so any pair of same-shape frames works.
    """
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        raise ValueError(f"frame_difference needs same-shape arrays, got {x.shape} and {y.shape}")

    def grey(z: np.ndarray) -> np.ndarray:
        g = z.astype(np.float32)
        if g.ndim == 3:
            g = g.mean(axis=2)
        return g / 255.0 if np.issubdtype(z.dtype, np.integer) else g

    return float(np.abs(grey(x) - grey(y)).mean())


def simulate_reducto(diffs: np.ndarray, threshold: float) -> np.ndarray:
    """Which frames a model with ``threshold`` runs on, exactly as :class:`ReductoGate`
    would decide: the first frame always (nothing to reuse yet), then whenever the sum of
    per-frame differences since the last run reaches the threshold. ``inf`` = never.

    ``diffs[t]`` = difference between frame t and frame t-1 (``diffs[0]`` is ignored).
    """
    d = np.asarray(diffs, dtype=float).ravel()
    runs = np.zeros(d.shape[0], dtype=bool)
    if d.shape[0] == 0 or math.isinf(threshold):
        return runs
    gate = ReductoGate({"m": threshold})
    for t, x in enumerate(d.tolist()):
        runs[t] = bool(gate.step(0.0 if t == 0 else x))
    return runs


def reducto_accuracy(runs: np.ndarray, true_change: np.ndarray) -> float:
    """Fraction of frames with a correct output when reusing the last run's output.

    ``true_change[t]``: the model's output at frame t differs (by the metric) from frame
    t-1. A reused output from frame s is counted correct at t when no change happened in
    (s, t] (an output that changes and changes back is counted wrong: conservative).
    Frames before the first run have no output and count as wrong.
    """
    r = np.asarray(runs, dtype=bool).ravel()
    ch = np.asarray(true_change, dtype=bool).ravel()
    if r.shape != ch.shape:
        raise ValueError(f"runs and true_change differ in length: {r.shape[0]} vs {ch.shape[0]}")
    n = r.shape[0]
    if n == 0:
        return 1.0
    c = ch.copy()
    c[0] = False
    cum = np.cumsum(c)
    idx = np.where(r, np.arange(n), -1)
    last = np.maximum.accumulate(idx)
    ok = last >= 0
    correct = np.zeros(n, dtype=bool)
    correct[ok] = cum[ok] == cum[last[ok]]
    return float(correct.mean())


def _default_candidates(diffs: np.ndarray, num: int = 40) -> list[float]:
    d = np.asarray(diffs, dtype=float).ravel()[1:]
    pos = d[d > 0]
    if pos.size == 0:
        return [0.0]
    grid = np.geomspace(float(pos.min()), float(pos.sum()), num=num)
    return [0.0] + sorted(set(float(x) for x in grid))


def tune_reducto_thresholds(
    diffs: np.ndarray,
    per_model_true_change: Mapping[str, np.ndarray],
    costs: Mapping[str, ModelCost],
    budget: ResolvedBudget,
    target_acc: float = 0.95,
    candidates: Sequence[float] | None = None,
) -> dict[str, float]:
    """Per-model thresholds that reach ``target_acc`` as cheaply as possible, then fit
    ``budget`` on average.

    1. For each model pick, among the candidate thresholds whose simulated accuracy on the
       profiling frames is >= ``target_acc``, the one with the lowest run rate (ties: the
       largest threshold). Threshold 0 runs every frame (accuracy 1), so one always exists.
    2. Compute/model-count budgets: while the expected cost ``sum(rate * cost)`` is over the
       limit, move one model to a higher threshold, picking the move that loses the least
       accuracy per unit of cost saved (``inf`` = never run, always frees its share).
       Memory budgets: rates save nothing, so the cheapest models that fit keep their
       thresholds and the rest get ``inf``.

    ``diffs`` are per-frame differences of CONSECUTIVE frames over a contiguous clip;
    ``per_model_true_change[m][t]`` whether model m's output changed at frame t.
    """
    if not 0.0 < target_acc <= 1.0:
        raise ValueError(f"target_acc must be in (0, 1], got {target_acc!r}")
    d = np.asarray(diffs, dtype=float).ravel()
    if np.any(d < 0) or not np.all(np.isfinite(d)):
        raise ValueError("diffs must be finite and >= 0")
    models = list(per_model_true_change)
    for m in models:
        if m not in costs:
            raise ValueError(f"no measured cost for model {m!r}")
        if np.asarray(per_model_true_change[m]).ravel().shape[0] != d.shape[0]:
            raise ValueError(f"per_model_true_change[{m!r}] does not have one flag per diff ({d.shape[0]})")
    cands = sorted(set(float(c) for c in (candidates if candidates is not None else _default_candidates(d))))
    if any(c < 0 for c in cands):
        raise ValueError("reducto candidate thresholds must be >= 0")
    cands = [c for c in cands if not math.isinf(c)] + [math.inf]
    # The simulation depends only on the diffs: share it across models.
    runs = {c: simulate_reducto(d, c) for c in cands}
    rate = {c: float(r.mean()) if r.size else 0.0 for c, r in runs.items()}
    acc = {m: {c: reducto_accuracy(runs[c], per_model_true_change[m]) for c in cands} for m in models}

    chosen: dict[str, float] = {}
    for m in models:
        ok = [c for c in cands if acc[m][c] >= target_acc - 1e-12]
        chosen[m] = min(ok, key=lambda c: (rate[c], -c)) if ok else 0.0

    if not budget.rate_sensitive:
        keep: list[str] = []
        for m in sorted(models, key=lambda m: (budget.amount(costs[m]), m)):
            if budget.fits(keep + [m], costs):
                keep.append(m)
        return {m: (chosen[m] if m in keep else math.inf) for m in models}

    def cost() -> float:
        return sum(rate[chosen[m]] * budget.amount(costs[m]) for m in models)

    while not budget.within(cost()):
        best: tuple[float, float, str, float] | None = None
        for m in models:
            a = budget.amount(costs[m])
            cur = chosen[m]
            for c in cands:
                saved = (rate[cur] - rate[c]) * a
                if saved <= _EPS:
                    continue
                loss = acc[m][cur] - acc[m][c]
                key = (loss / saved, -saved, m, c)
                if best is None or key < best:
                    best = key
        if best is None:  # nothing left to save (cannot happen: inf has rate 0)
            break
        chosen[best[2]] = best[3]
    return chosen


class ReductoGate:
    """Per-model frame-difference gate (stateful; one per camera stream).

    A model runs on the first frame it sees (nothing to reuse yet) and afterwards when the
    frame difference ACCUMULATED since its last run reaches its threshold. Threshold 0 runs
    every frame; ``inf`` never runs. Accumulating consecutive-frame differences (instead
    of diffing against each model's last executed frame) needs one difference per frame
    for all models, bounds the direct difference from above (triangle inequality) and
    lets :func:`tune_reducto_thresholds` simulate the gate exactly from a 1-D feature.
    """

    def __init__(self, thresholds: Mapping[str, float]) -> None:
        for m, t in thresholds.items():
            if math.isnan(t) or t < 0:
                raise ValueError(f"reducto threshold of model {m!r} must be >= 0 (or inf), got {t!r}")
        self.thresholds = dict(thresholds)
        self._ran: set[str] = set()
        self._acc: dict[str, float] = {m: 0.0 for m in self.thresholds}
        self._before: dict[str, float] = {}  # accumulators of the models the last step ran, before their reset

    def should_run(self, model: str, frame_diff_accumulated: float) -> bool:
        """Decide for one model given the accumulated difference since its last run.

        Records that the model ran when it answers True (the caller must then run it).
        """
        try:
            t = self.thresholds[model]
        except KeyError:
            raise ValueError(f"no reducto threshold for model {model!r}") from None
        if math.isinf(t):
            return False
        if model not in self._ran or frame_diff_accumulated >= t:
            self._ran.add(model)
            return True
        return False

    def step(self, frame_diff: float) -> list[str]:
        """Feed one frame's difference to the previous frame; return the models to run
        on it (their accumulators restart from 0)."""
        run = []
        self._before = {}
        for m in self.thresholds:
            self._acc[m] += float(frame_diff)
            if self.should_run(m, self._acc[m]):
                self._before[m] = self._acc[m]
                self._acc[m] = 0.0
                run.append(m)
        return run

    def postpone(self, models: Iterable[str]) -> None:
        """The caller could not run these models on the last stepped frame (a budget cap):
        they keep the difference they accumulated, so they run on the next frame that allows it."""
        for m in models:
            if m in self._before:
                self._acc[m] = self._before.pop(m)

    def reset(self) -> None:
        """Forget history (e.g. after a stream discontinuity)."""
        self._ran.clear()
        self._acc = {m: 0.0 for m in self.thresholds}


@dataclass
class ReductoPolicy(Policy):
    """Reducto-style filtering: re-run a model when the scene changed enough.

    Needs in ``PlanInputs.extra``: ``reducto_diffs`` (consecutive-frame differences over a
    contiguous profiling clip) and either ``reducto_changes`` (model -> bool per frame, for
    tuning) or ``reducto_thresholds`` (already tuned). The plan's rates are the expected
    run fractions on that clip; the pipeline drives :class:`ReductoGate` with
    ``plan.thresholds``.
    """

    name: ClassVar[str] = "reducto"
    target_acc: float = 0.95
    candidates: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.target_acc <= 1.0:
            raise ValueError(f"target_acc must be in (0, 1], got {self.target_acc!r}")

    def plan(self, inp: PlanInputs) -> Plan:
        if "reducto_diffs" not in inp.extra:
            raise ValueError("policy 'reducto' needs PlanInputs.extra['reducto_diffs'] (per-frame differences)")
        diffs = np.asarray(inp.extra["reducto_diffs"], dtype=float)
        if "reducto_thresholds" in inp.extra:
            thresholds = {m: float(inp.extra["reducto_thresholds"].get(m, math.inf)) for m in inp.models}
        elif "reducto_changes" in inp.extra:
            changes = inp.extra["reducto_changes"]
            missing = [m for m in inp.models if m not in changes]
            if missing:
                raise ValueError(f"PlanInputs.extra['reducto_changes'] lacks: {', '.join(missing)}")
            thresholds = tune_reducto_thresholds(
                diffs, {m: changes[m] for m in inp.models}, inp.costs, inp.budget,
                self.target_acc, self.candidates,
            )
        else:
            raise ValueError(
                "policy 'reducto' needs PlanInputs.extra['reducto_changes'] or ['reducto_thresholds']"
            )
        rates = {m: float(simulate_reducto(diffs, thresholds[m]).mean()) if diffs.size else 0.0
                 for m in inp.models}
        return self._build(inp, rates, "reducto", thresholds=thresholds)

