"""Selection policies: which models run on which frames under a budget, and how the
outputs of the models that do not run are filled in.

Every policy takes the same :class:`PlanInputs` (model costs, a resolved budget, the
profiled pairwise link accuracies and/or an accuracy estimator from the link library)
and returns a :class:`Plan`: an execution RATE per model plus a fill strategy. Policies
are named and swappable through :data:`POLICIES` / :func:`make_policy`:

=============  ==========================================================================
``all``        every model on every frame; ignores the budget (the reference)
``standalone`` the cheapest models that fit run on every frame; the rest are missing
``prior``      standalone's set; the rest get their most common value (``fill="prior"``)
``hold-last``  as many models as possible (cheapest first, ideally all) at the largest
               common rate 1/k that fits; between runs each holds its last output
``reducto``    per-model frame-difference gating (Reducto, SIGCOMM'20): a model re-runs
               when the accumulated frame difference since its last run reaches a
               threshold tuned on the profiling sample; otherwise its last output is reused
``mlink``      the MLink paper's score-and-greedy (rate 1 for the chosen set, links fill)
``ours``       greedy on the estimated gain in MEAN accuracy over all models per unit
               of extra cost, over per-model rates {1, 1/2, ..., 1/16, 0}; links fill
=============  ==========================================================================

Rates and the frame schedule
----------------------------
A rate is ``1/k`` with ``k`` a power of two (or 0). A model at rate ``1/k`` runs on frame
``f`` when ``(f + phase) % k == 0``. Phases are chosen by :func:`stagger_phases` so that
expensive models with long periods do not all land on the same frame: the schedule repeats
every ``hyperperiod`` frames (the LCM of the periods = the largest period, since they are
powers of two), its AVERAGE cost is exactly ``sum(rate * cost)`` (what the budget checks),
and the staggering keeps the per-frame peak (``Plan.peak_used``) close to that average.
Peaks can still exceed the average: a compute budget is an average per frame, like a
frame-rate target. ``ours(strict_per_frame=True)`` additionally keeps every single frame
within the limit.

Budgets are checked with :class:`links.budget.ResolvedBudget`: compute and model-count
budgets count ``rate * cost``; memory budgets count any model with rate > 0 fully (a
loaded model holds its memory). Every policy except ``all`` returns a plan whose
``budget_used <= budget_limit``; ``reducto``'s is an expectation measured on the profiling
sample, since its runs depend on the content.

Re-selection (the paper's adaptation loop) is driven by :class:`Reselector`: every period
the pipeline runs all models on a few profiling frames, the link library re-scores the
links, and the policy is asked for a new plan.

This module is pure (numpy only): no Redis, no video I/O, no torch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

import numpy as np

from links.budget import ModelCost, ResolvedBudget

__all__ = [
    "FILLS",
    "POLICIES",
    "AllPolicy",
    "EstimateFn",
    "HoldLastPolicy",
    "MLinkPolicy",
    "OursPolicy",
    "Plan",
    "PlanInputs",
    "Policy",
    "PriorPolicy",
    "ReductoGate",
    "ReductoPolicy",
    "Reselector",
    "StandalonePolicy",
    "frame_difference",
    "frame_loads",
    "hyperperiod",
    "estimate_accuracy",
    "make_policy",
    "mlink_scores",
    "rate_levels",
    "reducto_accuracy",
    "simulate_reducto",
    "stagger_phases",
    "thumbnail",
    "tune_reducto_thresholds",
]

FILLS: tuple[str, ...] = ("missing", "prior", "hold", "link", "reducto")

#: estimate(executed_set, target, age) -> accuracy of ``target`` in [0, 1] on a frame
#: where it does not run, given the models executed on that frame and the age in frames
#: of the target's own last output (None = the target never runs: no temporal context).
EstimateFn = Callable[[frozenset, str, "int | None"], float]

_EPS = 1e-12


# --------------------------------------------------------------------------- rates


def rate_levels(max_period: int = 16) -> tuple[float, ...]:
    """Allowed rates, highest first: ``(1, 1/2, ..., 1/max_period, 0)``."""
    if max_period < 1 or max_period & (max_period - 1):
        raise ValueError(f"max_period must be a power of two >= 1, got {max_period!r}")
    levels = []
    k = 1
    while k <= max_period:
        levels.append(1.0 / k)
        k *= 2
    return tuple(levels) + (0.0,)


def _period(rate: float) -> int | None:
    """``k`` for a rate ``1/k`` (k a power of two), None for rate 0; ValueError otherwise."""
    if rate == 0:
        return None
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    k = round(1.0 / rate)
    if k < 1 or k & (k - 1) or abs(k * rate - 1.0) > 1e-9:
        raise ValueError(f"rate {rate!r} is not 1/k with k a power of two")
    return k


def _is_dyadic(rate: float) -> bool:
    try:
        _period(rate)
    except ValueError:
        return False
    return True


def hyperperiod(rates: Mapping[str, float]) -> int:
    """Length after which the schedule repeats: the largest period among active models."""
    ks = [k for k in (_period(r) for r in rates.values()) if k is not None]
    return max(ks, default=1)


def stagger_phases(rates: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, int]:
    """Phases that spread the models' executions evenly over the frames.

    Greedy "largest first" load balancing over one hyperperiod: models are placed in order
    of decreasing weight (per-execution cost), each at the phase that minimises the
    heaviest frame it touches (then the total load there, then the smallest phase).
    Deterministic: ties break by model name.
    """
    # Plain lists: the hyperperiod is at most a few dozen frames and this runs inside the
    # `ours` search loop, where numpy's per-call overhead dominated.
    length = hyperperiod(rates)
    load = [0.0] * length
    phases: dict[str, int] = {}
    order = sorted(
        (m for m, r in rates.items() if r > 0),
        key=lambda m: (-float(weights.get(m, 0.0)), m),
    )
    for m in order:
        k = _period(rates[m])
        assert k is not None
        w = float(weights.get(m, 0.0))
        best: tuple[float, float, int] | None = None
        for p in range(k):
            frames = load[(-p) % k :: k]  # frames t with (t + p) % k == 0
            key = (max(frames) + w, sum(frames), p)
            if best is None or key < best:
                best = key
        phase = best[2]  # type: ignore[index]
        for t in range((-phase) % k, length, k):
            load[t] += w
        phases[m] = phase
    return phases


def frame_loads(
    rates: Mapping[str, float], phases: Mapping[str, int], weights: Mapping[str, float]
) -> np.ndarray:
    """Per-frame total weight of the executed models over one hyperperiod."""
    length = hyperperiod(rates)
    load = np.zeros(length)
    for m, r in rates.items():
        k = _period(r)
        if k is None:
            continue
        load[(-int(phases.get(m, 0))) % k :: k] += float(weights.get(m, 0.0))
    return load


def _stagger_weights(budget: ResolvedBudget, costs: Mapping[str, ModelCost]) -> dict[str, float]:
    """What to balance across frames: the budget's resource when rates save it (so the
    per-frame peak is measured in budget units), otherwise compute ms (flat latency)."""
    if budget.rate_sensitive:
        return {m: budget.amount(c) for m, c in costs.items()}
    return {m: c.ms for m, c in costs.items()}


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """What to run: an execution rate per model, and how the rest is filled.

    ``rates[m]`` is 1 (every frame), 1/2, 1/4, ... or 0 (never). For ``fill="reducto"`` it
    is the EXPECTED fraction of frames (measured on the profiling sample) and the per-frame
    decision belongs to :class:`ReductoGate` with ``thresholds``.

    ``budget_used`` is the average use per frame (memory: the loaded models' total);
    ``peak_used`` the heaviest single frame of the staggered schedule in the same units.
    """

    rates: dict[str, float]
    fill: str
    budget_used: float
    budget_limit: float
    resource: str
    phases: dict[str, int] = field(default_factory=dict)
    peak_used: float | None = None
    expected_accuracy: float | None = None  # mean over all models, when the policy knows
    thresholds: dict[str, float] = field(default_factory=dict)  # reducto only
    policy: str = ""
    notes: dict[str, Any] = field(default_factory=dict)  # diagnostics (scores, per-model acc)

    def __post_init__(self) -> None:
        # Copy the mappings so a caller mutating its dict cannot change a frozen plan.
        object.__setattr__(self, "rates", {str(m): float(r) for m, r in self.rates.items()})
        object.__setattr__(self, "phases", {str(m): int(p) for m, p in self.phases.items()})
        object.__setattr__(self, "thresholds", {str(m): float(t) for m, t in self.thresholds.items()})
        object.__setattr__(self, "notes", dict(self.notes))
        if self.fill not in FILLS:
            raise ValueError(f"unknown fill {self.fill!r}; known: {', '.join(FILLS)}")
        for m, r in self.rates.items():
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"rate of model {m!r} must be in [0, 1], got {r!r}")
            if self.fill != "reducto" and not _is_dyadic(r):
                raise ValueError(f"rate of model {m!r} must be 1/k with k a power of two, or 0; got {r!r}")
        for m, p in self.phases.items():
            k = self.period(m) if m in self.rates else None
            if k is not None and not 0 <= p < k:
                raise ValueError(f"phase of model {m!r} must be in [0, {k}), got {p}")

    # -- schedule ---------------------------------------------------------------------

    def period(self, model: str) -> int | None:
        """``k`` for a model at rate 1/k; None for a model that never runs."""
        if model not in self.rates:
            raise ValueError(f"model {model!r} is not in this plan; it has: {', '.join(self.rates)}")
        return _period(self.rates[model])

    @property
    def hyperperiod(self) -> int:
        """The schedule repeats every this many frames (reducto plans: 1)."""
        if self.fill == "reducto":
            return 1
        return hyperperiod(self.rates)

    def executes(self, model: str, frame_index: int) -> bool:
        """Whether ``model`` runs on frame ``frame_index`` (deterministic).

        Rate ``1/k`` runs when ``(frame_index + phase) % k == 0``. Not defined for reducto
        plans, whose runs depend on the content: use :class:`ReductoGate`.
        """
        if self.fill == "reducto":
            raise ValueError(
                "a reducto plan decides per frame from the frame difference: use "
                "ReductoGate(plan.thresholds).step(diff) instead of Plan.executes"
            )
        k = self.period(model)
        if k is None:
            return False
        return (int(frame_index) + self.phases.get(model, 0)) % k == 0

    def executed_at(self, frame_index: int) -> list[str]:
        """The models that run on ``frame_index``, in plan order."""
        return [m for m in self.rates if self.executes(m, frame_index)]

    def active(self) -> list[str]:
        """Models with rate > 0 (the ones that must be loaded)."""
        return [m for m, r in self.rates.items() if r > 0]

    # -- (de)serialisation: plans travel through Redis as JSON ------------------------

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown plan field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def build(
        cls,
        rates: Mapping[str, float],
        fill: str,
        budget: ResolvedBudget,
        costs: Mapping[str, ModelCost],
        **extra: Any,
    ) -> "Plan":
        """A plan with staggered phases, average and peak budget use filled in."""
        rates = dict(rates)
        used = budget.used(rates.keys(), costs, rates)
        phases: dict[str, int] = {}
        if fill == "reducto":
            # Runs depend on content: the worst case is every active model on one frame.
            peak = sum(budget.amount(costs[m]) for m, r in rates.items() if r > 0)
        else:
            weights = _stagger_weights(budget, costs)
            phases = stagger_phases(rates, weights)
            if budget.rate_sensitive:
                amounts = {m: budget.amount(c) for m, c in costs.items()}
                peak = float(frame_loads(rates, phases, amounts).max(initial=0.0))
            else:
                peak = used
        return cls(
            rates=rates, fill=fill, budget_used=used, budget_limit=budget.limit,
            resource=budget.resource, phases=phases, peak_used=peak, **extra,
        )


@dataclass
class PlanInputs:
    """Everything a policy may use. Only ``models``, ``costs`` and ``budget`` are required.

    ``pairwise[i, j]`` = profiled accuracy of the link from ``models[i]`` (source) to
    ``models[j]`` (target); NaN = no such link (counted as 0). ``estimate`` is the link
    library's accuracy estimator (see :data:`EstimateFn`). ``informative[m]`` is False for
    targets dominated by one value (any predictor looks good on them). ``extra`` carries
    policy-specific data (reducto: ``reducto_diffs``, ``reducto_changes``, optionally
    ``reducto_thresholds``).
    """

    models: list[str]
    costs: dict[str, ModelCost]
    budget: ResolvedBudget
    pairwise: np.ndarray | None = None
    estimate: EstimateFn | None = None
    informative: dict[str, bool] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.models = list(self.models)
        if not self.models:
            raise ValueError("PlanInputs.models is empty")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"PlanInputs.models has duplicates: {self.models}")
        missing = [m for m in self.models if m not in self.costs]
        if missing:
            raise ValueError(f"PlanInputs.costs has no measured cost for: {', '.join(missing)}")
        if self.pairwise is not None:
            p = np.asarray(self.pairwise, dtype=float)
            k = len(self.models)
            if p.shape != (k, k):
                raise ValueError(f"PlanInputs.pairwise must be {k}x{k} (one row/column per model), got {p.shape}")
            self.pairwise = p

    def amounts(self) -> list[float]:
        """Each model's use of the budget's resource at rate 1, in ``models`` order."""
        return [self.budget.amount(self.costs[m]) for m in self.models]


class Policy(ABC):
    """A named selection policy: :meth:`plan` maps inputs to a :class:`Plan`."""

    name: ClassVar[str]

    @abstractmethod
    def plan(self, inp: PlanInputs) -> Plan:
        """Choose rates (and the fill) for ``inp.models`` under ``inp.budget``."""

    def _build(self, inp: PlanInputs, rates: Mapping[str, float], fill: str, **extra: Any) -> Plan:
        full = {m: float(rates.get(m, 0.0)) for m in inp.models}
        return Plan.build(full, fill, inp.budget, inp.costs, policy=self.name, **extra)


def _greedy_add(
    order: Iterable[str], inp: PlanInputs, skip_unfit: bool, start: Sequence[str] = ()
) -> list[str]:
    """Add models (rate 1) in ``order`` while they fit; on one that does not fit either
    stop (``skip_unfit=False``) or skip it and keep trying the next ones."""
    chosen = list(start)
    for m in order:
        if m in chosen:
            continue
        if inp.budget.fits(chosen + [m], inp.costs):
            chosen.append(m)
        elif not skip_unfit:
            break
    return chosen


def _cheapest_first(inp: PlanInputs) -> list[str]:
    """Models by increasing use of the budget's resource (then compute, then given order)."""
    idx = {m: i for i, m in enumerate(inp.models)}
    return sorted(
        inp.models,
        key=lambda m: (inp.budget.amount(inp.costs[m]), inp.costs[m].ms, idx[m]),
    )


# --------------------------------------------------------------------------- baselines


@dataclass
class AllPolicy(Policy):
    """Every model on every frame, whatever the budget: the accuracy reference."""

    name: ClassVar[str] = "all"

    def plan(self, inp: PlanInputs) -> Plan:
        # Nothing is left to fill; "missing" states that no derivation happens.
        return self._build(inp, {m: 1.0 for m in inp.models}, "missing", expected_accuracy=1.0)


@dataclass
class StandalonePolicy(Policy):
    """The cheapest models that fit run on every frame; the others are missing.

    Cheapest-first maximises the number of executed models. Sorted ascending, once a model
    does not fit the more expensive ones cannot either, except for ties, so we skip and
    continue rather than stop.
    """

    name: ClassVar[str] = "standalone"
    fill: ClassVar[str] = "missing"

    def plan(self, inp: PlanInputs) -> Plan:
        chosen = _greedy_add(_cheapest_first(inp), inp, skip_unfit=True)
        return self._build(inp, {m: 1.0 for m in chosen}, self.fill)


@dataclass
class PriorPolicy(StandalonePolicy):
    """Standalone's executed set; the others get their most common (prior) value."""

    name: ClassVar[str] = "prior"
    fill: ClassVar[str] = "prior"


@dataclass
class HoldLastPolicy(Policy):
    """Cover as many models as possible at one common rate; between runs, hold outputs.

    Tries all models (then all but the most expensive, and so on, cheapest first) at the
    largest common rate ``1/k`` (k = 1, 2, 4, ... ``max_period``) that fits. Models left out
    never run (nothing to hold: missing). Memory budgets gain nothing from rates, so there
    this reduces to standalone's set at rate 1 with ``fill="hold"``.
    """

    name: ClassVar[str] = "hold-last"
    max_period: int = 16

    def __post_init__(self) -> None:
        rate_levels(self.max_period)  # validates

    def plan(self, inp: PlanInputs) -> Plan:
        order = _cheapest_first(inp)
        levels = [r for r in rate_levels(self.max_period) if r > 0]
        for n in range(len(order), 0, -1):
            subset = order[:n]
            for r in levels:
                rates = {m: r for m in subset}
                if inp.budget.fits(subset, inp.costs, rates):
                    return self._build(inp, rates, "hold")
        return self._build(inp, {}, "hold")


# --------------------------------------------------------------------------- reducto


def thumbnail(frame: np.ndarray, width: int = 64, height: int = 36) -> np.ndarray:
    """Grey ``height x width`` float32 thumbnail in [0, 1] by area averaging.

    Accepts HxW or HxWxC (channels are averaged, so BGR vs RGB does not matter); integer
    frames are scaled by 255.
    """
    a = np.asarray(frame)
    if a.ndim == 3:
        g = a.astype(np.float32).mean(axis=2)
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
        for m in self.thresholds:
            self._acc[m] += float(frame_diff)
            if self.should_run(m, self._acc[m]):
                self._acc[m] = 0.0
                run.append(m)
        return run

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


# --------------------------------------------------------------------------- mlink


def mlink_scores(pairwise: np.ndarray, costs_list: Sequence[float]) -> np.ndarray:
    """The MLink paper's per-model score.

    ``P1_i = mean_{j != i} p(g_ij)`` (how well i predicts the others),
    ``P2_i = mean_{j != i} p(g_ji)`` (how well the others predict i),
    ``score_i = (1 + P1_i - P2_i) * min_c / (2 * c_i)``.

    NaN link accuracies (no link) count as 0; the diagonal is ignored. Costs of 0 (e.g. a
    CPU model under a GPU-memory budget) make the formula divide by zero: such models are
    free, get score ``inf`` and ``min_c`` is taken over the positive costs.
    """
    p = np.asarray(pairwise, dtype=float)
    c = np.asarray(costs_list, dtype=float).ravel()
    k = c.shape[0]
    if p.shape != (k, k):
        raise ValueError(f"pairwise must be {k}x{k} for {k} costs, got {p.shape}")
    if np.any(c < 0) or not np.all(np.isfinite(c)):
        raise ValueError("costs must be finite and >= 0")
    p = np.where(np.isnan(p), 0.0, p)
    off = ~np.eye(k, dtype=bool)
    if k > 1:
        p1 = np.where(off, p, 0.0).sum(axis=1) / (k - 1)
        p2 = np.where(off, p, 0.0).sum(axis=0) / (k - 1)
    else:
        p1 = p2 = np.zeros(k)
    scores = np.full(k, np.inf)
    pos = c > 0
    if pos.any():
        min_c = c[pos].min()
        scores[pos] = (1.0 + p1[pos] - p2[pos]) * min_c / (2.0 * c[pos])
    return scores


@dataclass
class MLinkPolicy(Policy):
    """The paper's heuristic: activate models by descending score while the budget allows.

    Costs are the budget's resource (ms, memory, or 1 per model). The paper leaves open
    what happens at the first model that does not fit; the literal reading "greedily
    activate by score until the budget is used" stops there (``skip_unfit=False``, the
    default). ``skip_unfit=True`` skips it and keeps trying lower-scored (cheaper) models.
    Ties in score go to the cheaper model, then to the given order.
    """

    name: ClassVar[str] = "mlink"
    skip_unfit: bool = False

    def plan(self, inp: PlanInputs) -> Plan:
        if inp.pairwise is None:
            raise ValueError("policy 'mlink' needs PlanInputs.pairwise (profiled link accuracies)")
        amounts = inp.amounts()
        scores = mlink_scores(inp.pairwise, amounts)
        order = sorted(range(len(inp.models)), key=lambda i: (-scores[i], amounts[i], i))
        chosen = _greedy_add([inp.models[i] for i in order], inp, self.skip_unfit)
        return self._build(
            inp, {m: 1.0 for m in chosen}, "link",
            notes={"scores": {m: float(s) for m, s in zip(inp.models, scores)}},
        )


# --------------------------------------------------------------------------- ours


def _pairwise_estimate(models: Sequence[str], pairwise: np.ndarray) -> EstimateFn:
    """Fallback estimator when the link library gives none: the best single profiled
    link from an executed source (an ensemble should do at least as well); no temporal
    context, nothing executed -> 0."""
    idx = {m: i for i, m in enumerate(models)}
    p = np.where(np.isnan(pairwise), 0.0, pairwise)

    def est(executed: frozenset, target: str, age: int | None) -> float:
        j = idx[target]
        vals = [p[idx[s], j] for s in executed if s != target and s in idx]
        return float(max(vals, default=0.0))

    return est


class _Objective:
    """Expected accuracy of every model under a rate assignment, by exact enumeration of
    one hyperperiod of the staggered schedule.

    On frame t a model that runs scores 1; one that does not scores
    ``estimate(S_t, target, age)`` with S_t the models run on frame t and ``age`` the
    frames since the target's own last run (None if it never runs). Enumerating the
    hyperperiod (at most ``max_period`` frames) is exact for the deterministic schedule,
    so no "(k-1)/2 average age" approximation is needed, and it sees which sources
    actually coincide on the target's off-frames. Sources that do not run on a frame
    are treated as absent (their held outputs are not assumed to feed the links): if the
    pipeline uses them, this estimate is conservative.
    """

    def __init__(self, models: Sequence[str], estimate: EstimateFn,
                 weights: Mapping[str, float], stagger: Mapping[str, float]) -> None:
        self.models = list(models)
        self.estimate = estimate
        self.weights = dict(weights)
        self.stagger = dict(stagger)
        self._est_cache: dict[tuple[frozenset, str, int | None], float] = {}
        self._cache: dict[tuple[float, ...], tuple[float, dict[str, float]]] = {}

    def _est(self, executed: frozenset, target: str, age: int | None) -> float:
        key = (executed, target, age)
        v = self._est_cache.get(key)
        if v is None:
            v = float(self.estimate(executed, target, age))
            # NaN = the link library could not tell (e.g. no profiling samples): no credit,
            # as for a missing pairwise link.
            v = 0.0 if math.isnan(v) else min(1.0, max(0.0, v))
            self._est_cache[key] = v
        return v

    def __call__(self, rates: Mapping[str, float]) -> tuple[float, dict[str, float]]:
        """(weighted mean accuracy, per-model accuracy)."""
        key = tuple(rates.get(m, 0.0) for m in self.models)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        phases = stagger_phases(rates, self.stagger)
        length = hyperperiod(rates)
        periods = {m: _period(rates.get(m, 0.0)) for m in self.models}
        acc = dict.fromkeys(self.models, 0.0)
        for t in range(length):
            run = {m for m in self.models
                   if periods[m] is not None and (t + phases[m]) % periods[m] == 0}  # type: ignore[operator]
            executed = frozenset(run)
            for m in self.models:
                if m in run:
                    acc[m] += 1.0
                else:
                    k = periods[m]
                    age = None if k is None else (t + phases[m]) % k
                    acc[m] += self._est(executed, m, age)
        per_model = {m: a / length for m, a in acc.items()}
        wsum = sum(self.weights.values())
        value = sum(self.weights[m] * per_model[m] for m in self.models) / wsum
        self._cache[key] = (value, per_model)
        return value, per_model


def _estimator(inp: PlanInputs, who: str) -> EstimateFn:
    if inp.estimate is not None:
        return inp.estimate
    if inp.pairwise is not None:
        return _pairwise_estimate(inp.models, inp.pairwise)
    raise ValueError(f"{who} needs PlanInputs.estimate or PlanInputs.pairwise")


def estimate_accuracy(inp: PlanInputs, rates: Mapping[str, float]) -> tuple[float, dict[str, float]]:
    """Estimated (mean accuracy over all models, per-model accuracy) of running ``rates``
    with links filling the rest, on the staggered schedule :meth:`Plan.build` would use.

    The same estimate ``ours`` maximises; use it to compare any link-filled plan (e.g.
    mlink's) on equal terms. Uses ``inp.estimate``, else the best single pairwise link.
    """
    objective = _Objective(
        inp.models, _estimator(inp, "estimate_accuracy"), dict.fromkeys(inp.models, 1.0),
        _stagger_weights(inp.budget, inp.costs),
    )
    full = {m: float(rates.get(m, 0.0)) for m in inp.models}
    return objective(full)


@dataclass
class OursPolicy(Policy):
    """Greedy rate allocation on the estimated gain in mean accuracy per unit cost.

    Start with nothing running. Repeatedly consider every single-model upgrade from its
    current rate to ANY higher level in ``{1/max_period, ..., 1/2, 1}`` (jumps, not only
    the next level, so a model whose value only shows at rate 1, e.g. under a memory
    budget where rates save nothing, is not stuck behind a low-gain first step); drop the
    ones that do not fit (skip-and-continue: cheaper upgrades are still tried); apply
    the one with the best gain / extra cost (zero extra cost: best gain first). Stop
    when no fitting upgrade improves the estimate. The objective is the mean over ALL
    models of the expected accuracy (executed = 1), computed by :class:`_Objective`;
    targets marked not informative can be down-weighted (``uninformative_weight``).

    With ``compare_baselines`` the greedy result is also compared, under the same
    estimate, with the mlink (skip-and-continue), standalone and hold-last plans, and the
    best is returned, so ours is never worse than those by its own estimate.

    ``strict_per_frame``: for compute/model-count budgets, also require that EVERY frame of
    the staggered schedule stays within the limit (not only the average).

    ``fill_budget``: afterwards, spend what is left of the budget on the models with the
    largest estimated shortfall (see :meth:`_spend_rest`); measured on our footage, the
    estimates from a small profiling sample are optimistic and unused budget is lost.
    """

    name: ClassVar[str] = "ours"
    max_period: int = 16
    strict_per_frame: bool = False
    uninformative_weight: float = 1.0
    compare_baselines: bool = True
    fill_budget: bool = True

    def __post_init__(self) -> None:
        rate_levels(self.max_period)
        if not self.uninformative_weight >= 0:
            raise ValueError(f"uninformative_weight must be >= 0, got {self.uninformative_weight!r}")

    def _feasible(self, inp: PlanInputs, rates: Mapping[str, float]) -> bool:
        b = inp.budget
        if not b.fits(inp.models, inp.costs, rates):
            return False
        if self.strict_per_frame and b.rate_sensitive:
            weights = _stagger_weights(b, inp.costs)
            phases = stagger_phases(rates, weights)
            peak = float(frame_loads(rates, phases, weights).max(initial=0.0))
            return b.within(peak)
        return True

    def _fitting_upgrades(self, inp: PlanInputs, rates: Mapping[str, float], levels: list[float]) -> Iterator[tuple[str, float, dict[str, float], float]]:
        """Every single-model rate increase that fits: (model, new rate, rates, budget used)."""
        for m in inp.models:
            for r in levels:
                if r <= rates[m]:
                    continue
                cand = {**rates, m: r}
                if self._feasible(inp, cand):
                    yield m, r, cand, inp.budget.used(inp.models, inp.costs, cand)

    def _spend_rest(self, inp: PlanInputs, objective: Any, rates: dict[str, float], weights: Mapping[str, float],
                    levels: list[float], order: Mapping[str, int]) -> tuple[dict[str, float], float]:
        """Use budget the greedy left unused (its estimates come from a small profiling
        sample and are optimistic): raise the rates of the models with the largest
        estimated shortfall (1 - accuracy, plus a small floor so the budget is spent)
        per unit extra cost, one fitting upgrade at a time, as long as the estimate of
        the whole objective does not drop."""
        value, per_model = objective(rates)
        used = inp.budget.used(inp.models, inp.costs, rates)
        while True:
            best_key: tuple | None = None
            best = None
            for m, r, cand, cand_used in self._fitting_upgrades(inp, rates, levels):
                extra = max(cand_used - used, 1e-9)
                need = weights[m] * (1.0 - per_model[m] + 0.02) * (r - rates[m])
                key = (need / extra, -order[m], -r)
                if best_key is None or key > best_key:
                    best_key, best = key, (cand, cand_used)
            if best is None:
                return rates, value
            cand, cand_used = best
            v, pm = objective(cand)
            if v < value - 1e-9:
                return rates, value
            rates, value, per_model, used = cand, v, pm, cand_used

    def plan(self, inp: PlanInputs) -> Plan:
        estimate = _estimator(inp, "policy 'ours'")
        weights = {
            m: (1.0 if inp.informative is None or inp.informative.get(m, True) else self.uninformative_weight)
            for m in inp.models
        }
        if sum(weights.values()) <= 0:
            weights = dict.fromkeys(inp.models, 1.0)
        objective = _Objective(inp.models, estimate, weights, _stagger_weights(inp.budget, inp.costs))
        levels = sorted(r for r in rate_levels(self.max_period) if r > 0)  # ascending
        order = {m: i for i, m in enumerate(inp.models)}

        rates = dict.fromkeys(inp.models, 0.0)
        value, _ = objective(rates)
        used = inp.budget.used(inp.models, inp.costs, rates)
        while True:
            best_key: tuple | None = None
            best: tuple[dict[str, float], float, float] | None = None
            for m, r, cand, cand_used in self._fitting_upgrades(inp, rates, levels):
                v, _ = objective(cand)
                gain = v - value
                if gain <= 1e-12:
                    continue
                extra = cand_used - used
                ratio = gain / extra if extra > 1e-12 else math.inf
                key = (ratio, gain, -extra, -order[m], -r)
                if best_key is None or key > best_key:
                    best_key, best = key, (cand, v, cand_used)
            if best is None:
                break
            rates, value, used = best

        chosen_from = "greedy"
        if self.compare_baselines:
            alternatives: list[tuple[str, Policy]] = [
                ("standalone", StandalonePolicy()),
                ("hold-last", HoldLastPolicy(max_period=self.max_period)),
            ]
            if inp.pairwise is not None:
                alternatives.insert(0, ("mlink", MLinkPolicy(skip_unfit=True)))
            for label, pol in alternatives:
                alt = pol.plan(inp).rates
                if not self._feasible(inp, alt):
                    continue
                v, _ = objective(alt)
                if v > value + 1e-12:
                    rates, value, chosen_from = dict(alt), v, label

        if self.fill_budget:
            rates, value = self._spend_rest(inp, objective, rates, weights, levels, order)
            chosen_from += "+fill"

        _, per_model = objective(rates)
        return self._build(
            inp, rates, "link",
            expected_accuracy=float(np.mean([per_model[m] for m in inp.models])),
            notes={"model_accuracy": per_model, "objective": value, "chosen_from": chosen_from},
        )


# --------------------------------------------------------------------------- registry


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (AllPolicy, StandalonePolicy, PriorPolicy, HoldLastPolicy, ReductoPolicy,
                MLinkPolicy, OursPolicy)
}


def make_policy(name: str, **kw: Any) -> Policy:
    """Build the policy registered as ``name`` with options ``kw``.

    Unknown names and options raise ``ValueError`` listing what is known.
    """
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None
    options = [f.name for f in fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = sorted(set(kw) - set(options))
    if unknown:
        raise ValueError(
            f"policy {name!r} has no option {unknown[0]!r}; options: {', '.join(options) or 'none'}"
        )
    return cls(**kw)


# --------------------------------------------------------------------------- re-selection


@dataclass
class Reselector:
    """When to re-profile and re-plan: every ``period_frames`` frames from ``origin``.

    :meth:`due` is True on the first frame this instance sees of each new period, so a
    dropped boundary frame (live cameras drop frames) still triggers the re-plan; frames
    of an older period arriving late (several workers) do not.
    """

    period_frames: int
    origin: int = 0
    _last_period: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.period_frames, int) or self.period_frames < 1:
            raise ValueError(f"period_frames must be an integer >= 1, got {self.period_frames!r}")

    def period_index(self, frame_index: int) -> int:
        return (int(frame_index) - self.origin) // self.period_frames

    def period_start(self, frame_index: int) -> int:
        return self.origin + self.period_index(frame_index) * self.period_frames

    def is_period_start(self, frame_index: int) -> bool:
        """Pure: whether ``frame_index`` is the first frame of a period."""
        return (int(frame_index) - self.origin) % self.period_frames == 0

    def due(self, frame_index: int) -> bool:
        """True when ``frame_index`` opens a period not seen before by this instance."""
        p = self.period_index(frame_index)
        if self._last_period is None or p > self._last_period:
            self._last_period = p
            return True
        return False

    @staticmethod
    def profiling_frames(period_start: int, period_len: int, fraction: float) -> list[int]:
        """``max(1, round(fraction * period_len))`` frames spread evenly over the period,
        starting at ``period_start`` (so a cold start has an aligned sample at once)."""
        if period_len < 1:
            raise ValueError(f"period_len must be >= 1, got {period_len!r}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        n = min(period_len, max(1, round(fraction * period_len)))
        return [period_start + (i * period_len) // n for i in range(n)]
