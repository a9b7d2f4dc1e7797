"""The ``cascade`` policy: decide on EACH frame which models to run, from how likely each
model's held (and link-filled) output is to be wrong right now. Pure numpy.

Fixed rates (``ours``, ``hold-last``) spend compute on frames where nothing changed and
miss the frames where something did. ``cascade`` keeps a small always-run set (the
cheapest models the ``ours`` plan runs on every frame, within ``always_share`` of the
budget) and, on every frame, prices every other model by its *risk*: the expected error
of reusing its last executed output, given

- ``d``: how much the scene changed since that output (mean absolute difference of 64x36
  grey thumbnails between this frame and the frame the model last ran on), and
- ``age``: how many frames ago that was.

:class:`ChangeRisk` learns risk(model, d, age) from aligned samples: pairs of profiled
frames during the cold start, then every profiling frame of every period (where the
truth for every model is known and the held output is the one production would have
used). It is an isotonic fit of the error on the change, per age bucket, blended toward the
fit over all ages where a bucket is sparse, and monotone (more change or more age never
means less risk), so a handful of samples gives sane answers.

:class:`CascadeDecider` spends a token bucket over the budget's resource: refilled by the
per-frame budget, holding a few frames' worth, so quiet stretches bank compute for busy
ones. Per frame it runs the always set, any model whose floor (``min_every``) is due or
whose risk breaks its accuracy target (``min_accuracy``), then the other models by risk
per unit cost while the bucket allows and the risk clears a
threshold that falls as the bucket fills (a full bucket spends on anything; an empty one
only on near-certain errors). Each choice carries its trigger: ``plan``, ``floor``, ``target``,
``change`` (the scene changed more than usual for that model) or ``uncertain`` (age, or
no output yet). The runtime still passes the choice through the measured-compute
governor (:mod:`links.governor`), which holds every window to the cap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from links.policies.base import PlanInputs
from links.policies.ours import OursPolicy
from links.policies.reducto import frame_difference
from links.policies.schedule import Plan

__all__ = ["AGE_EDGES", "CascadeDecider", "CascadePolicy", "ChangeRisk", "Trigger", "isotonic", "pair_observations"]

AGE_EDGES = (1, 2, 4, 8, 16)  # age buckets: [1], [2, 3], [4, 7], [8, 15], [16, ...)


class Trigger:
    """Why an output was executed (records carry it as ``trigger``)."""

    PLAN = "plan"
    FLOOR = "floor"
    CHANGE = "change"
    UNCERTAIN = "uncertain"
    PROFILE = "profile"
    TARGET = "target"


def _age_bucket(age: int) -> int:
    return int(np.searchsorted(AGE_EDGES, max(int(age), 1), side="right") - 1)


def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of ``y`` on ``x`` (pool adjacent violators).
    Returns each block's mean x and its value; :func:`_curve` interpolates between them,
    so a query between two observed clusters gets a value between theirs."""
    order = np.argsort(x, kind="stable")
    vals: list[float] = []
    wts: list[float] = []
    xsum: list[float] = []
    for xi, yi in zip(x[order], y[order]):
        vals.append(float(yi))
        wts.append(1.0)
        xsum.append(float(xi))
        while len(vals) > 1 and vals[-2] >= vals[-1]:
            w = wts[-2] + wts[-1]
            vals[-2:] = [(vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w]
            xsum[-2:] = [xsum[-2] + xsum[-1]]
            wts[-2:] = [w]
    return np.array(xsum) / np.array(wts), np.array(vals)


def _curve(fit: tuple[np.ndarray, np.ndarray], x: float) -> float:
    centres, vals = fit
    return float(np.interp(x, centres, vals))


@dataclass
class ChangeRisk:
    """risk(model, d, age): the expected error of reusing a model's last output after scene
    change ``d`` and ``age`` frames, learned from observations (d, age, error in [0, 1]).

    Per model: an isotonic (non-decreasing) fit of error on ``d`` over all observations,
    and one per age bucket, blended toward the pooled one where the bucket has few
    observations; a query takes the maximum over its own and younger buckets, so more
    change or more age never lowers the risk.
    """

    models: list[str]
    strength: float = 10.0  # pseudo-observations pulling a sparse age bucket toward the pooled fit
    keep: int = 4000  # newest observations kept per model (a camera runs for months)
    _obs: dict[str, deque[tuple[float, int, float]]] = field(init=False, repr=False)
    _fits: dict[str, tuple[tuple[np.ndarray, np.ndarray], list[tuple[tuple[np.ndarray, np.ndarray] | None, int]]]] = field(
        init=False, repr=False)

    def __post_init__(self) -> None:
        self._obs = {m: deque(maxlen=self.keep) for m in self.models}
        self._fits = {}
        self._usual: dict[str, float] = {}

    def add(self, model: str, d: float, age: int, error: float) -> None:
        if age < 1 or not np.isfinite(d):
            return
        self._obs[model].append((float(d), int(age), float(min(max(error, 0.0), 1.0))))

    def fit(self) -> None:
        """Rebuild every model's fits from its observations."""
        for m in self.models:
            obs = np.array(self._obs[m], dtype=float).reshape(-1, 3)
            if not len(obs):
                self._fits.pop(m, None)
                self._usual.pop(m, None)
                continue
            d, age, err = obs[:, 0], obs[:, 1].astype(int), obs[:, 2]
            self._usual[m] = float(np.median(d))
            pooled = isotonic(d, err)
            bucket = np.array([_age_bucket(a) for a in age])
            per_age: list[tuple[tuple[np.ndarray, np.ndarray] | None, int]] = []
            for j in range(len(AGE_EDGES)):
                sel = bucket == j
                per_age.append((isotonic(d[sel], err[sel]) if sel.any() else None, int(sel.sum())))
            self._fits[m] = (pooled, per_age)

    def risk(self, model: str, d: float, age: int) -> float:
        """Expected error of the held output; 1.0 for a model never observed."""
        fits = self._fits.get(model)
        if fits is None:
            return 1.0
        pooled, per_age = fits
        base = _curve(pooled, d)
        out = 0.0
        for j in range(_age_bucket(age) + 1):
            f, n = per_age[j]
            r = base if f is None else (n * _curve(f, d) + self.strength * base) / (n + self.strength)
            out = max(out, r)
        return out

    def usual_change(self, model: str) -> float:
        """The median change in this model's observations at the last fit (above it, a run is change-triggered)."""
        return self._usual.get(model, 0.0)

    def calibration(self, observations: Mapping[str, Sequence[tuple[float, int, float]]]) -> dict[str, tuple[float, float, int]]:
        """Per model on held-out observations: (mean predicted risk, mean observed error, n)."""
        out = {}
        for m, obs in observations.items():
            if obs and m in self._fits:
                pred = [self.risk(m, d, a) for d, a, _ in obs]
                out[m] = (float(np.mean(pred)), float(np.mean([e for _, _, e in obs])), len(obs))
        return out


def pair_observations(frames: Sequence[int], thumbs: Sequence[np.ndarray], errors: Mapping[str, np.ndarray],
                      max_age: int = 16) -> dict[str, list[tuple[float, int, float]]]:
    """Observations from a run of aligned samples (every model on every listed frame):
    for every pair of frames i < j at most ``max_age`` apart, reusing frame i's output at
    frame j, per model. ``errors[m][i, j]`` = 1 - agreement of output i with output j."""
    out: dict[str, list[tuple[float, int, float]]] = {m: [] for m in errors}
    n = len(frames)
    for i in range(n):
        for j in range(i + 1, n):
            age = int(frames[j]) - int(frames[i])
            if age > max_age:
                break
            if age < 1:
                continue
            d = frame_difference(thumbs[j], thumbs[i])
            for m, e in errors.items():
                out[m].append((d, age, float(e[i, j])))
    return out


@dataclass
class CascadeDecider:
    """Per camera: which models run on each frame (see the module docstring)."""

    always: tuple[str, ...]
    candidates: tuple[str, ...]
    rate: float  # refill per frame, in the budget's resource (ms for a compute budget)
    capacity: float  # the bucket holds at most this much
    risk: ChangeRisk
    floors: dict[str, int] = field(default_factory=dict)  # model -> run at least every k frames
    targets: dict[str, float] = field(default_factory=dict)  # model -> least expected accuracy (run when the risk says less)
    max_threshold: float = 0.5  # the risk a model needs when the bucket is empty
    min_risk: float = 0.02  # below this expected error a run is not worth it, however full the bucket
    tokens: float = field(init=False)
    last: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)  # model -> (frame, thumbnail) of its last execution

    def __post_init__(self) -> None:
        if not self.rate > 0 or not self.capacity > 0:
            raise ValueError("cascade: rate and capacity must be > 0")
        self.tokens = self.capacity / 2

    @staticmethod
    def bucket_capacity(rate: float, costs: Iterable[float], frames: float = 4.0) -> float:
        """A few frames' worth, and at least enough for the dearest model (else it could never run)."""
        return max(frames * rate, 1.05 * max(costs, default=0.0))

    def decide(self, frame: int, thumb: np.ndarray, cost: Mapping[str, float]) -> dict[str, str]:
        """The models to run on ``frame``, in priority order, each with its trigger.
        Spends their estimated cost from the bucket (:meth:`correct` books the measured one).

        The user's guarantees come first: floors (``min_every``) and accuracy targets (a model
        whose risk exceeds 1 - its target runs, bucket or not; the governor still caps the
        measured spend); then the rest is spent for the mean."""
        self.tokens = min(self.capacity, self.tokens + self.rate)
        out: dict[str, str] = {m: Trigger.PLAN for m in self.always}
        for m, k in self.floors.items():
            if m not in out and (m not in self.last or frame - self.last[m][0] >= k):
                out[m] = Trigger.FLOOR
        risks: dict[str, tuple[float, str]] = {}
        for m in self.candidates:
            if m in out:
                continue
            if m not in self.last:
                risks[m] = (1.0, Trigger.UNCERTAIN)
            else:
                f, th = self.last[m]
                d = frame_difference(thumb, th)
                risks[m] = (self.risk.risk(m, d, frame - f), Trigger.CHANGE if d > self.risk.usual_change(m) else Trigger.UNCERTAIN)
        for m, target in self.targets.items():
            if m in risks and risks[m][0] > 1.0 - target:
                out[m] = Trigger.TARGET
        spend = sum(cost[m] for m in out)
        level = max(self.tokens - spend, 0.0) / self.capacity
        threshold = max(self.min_risk, self.max_threshold * (1.0 - level))
        scored = [(r / max(cost[m], 1e-6), r, m, why) for m, (r, why) in risks.items() if m not in out]
        for _, r, m, why in sorted(scored, key=lambda x: (-x[0], -x[1], x[2])):
            if r < threshold:
                continue
            if spend + cost[m] <= self.tokens:
                out[m] = why
                spend += cost[m]
        self.tokens -= spend
        return out

    def executed(self, frame: int, thumb: np.ndarray, models: Iterable[str]) -> None:
        for m in models:
            cur = self.last.get(m)
            if cur is None or frame >= cur[0]:
                self.last[m] = (frame, thumb)

    def correct(self, estimated: float, measured: float) -> None:
        """Book the difference between what a frame was estimated to cost and what it did."""
        self.tokens -= measured - estimated


@dataclass
class CascadePolicy(OursPolicy):
    """The plan part of ``cascade``: the always-run set. The per-frame choice of the rest
    belongs to :class:`CascadeDecider`; the plan's rates are 1 for the always set and 0 for
    the others (their actual share depends on the content, as with reducto)."""

    name: ClassVar[str] = "cascade"
    always_share: float = 0.5  # at most this share of the budget goes to the always-run set

    def plan(self, inp: PlanInputs) -> Plan:
        base = super().plan(inp)
        if not inp.budget.rate_sensitive:  # a memory budget: what is loaded runs on every frame
            return self._build(inp, base.rates, "link", expected_accuracy=base.expected_accuracy, notes=dict(base.notes))
        amounts = dict(zip(inp.models, inp.amounts()))
        always: list[str] = []
        used = 0.0
        for m in sorted((m for m, r in base.rates.items() if r >= 1.0), key=lambda m: (amounts[m], inp.models.index(m))):
            if used + amounts[m] <= self.always_share * inp.budget.limit:
                always.append(m)
                used += amounts[m]
        rates = {m: 1.0 if m in always else 0.0 for m in inp.models}
        return self._build(inp, rates, "link", expected_accuracy=base.expected_accuracy,
                           notes={"always": always, "per_frame": [m for m in inp.models if m not in always],
                                  "ours_rates": dict(base.rates)})
