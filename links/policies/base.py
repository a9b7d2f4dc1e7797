"""What every policy shares: the :class:`PlanInputs`, the :class:`Policy` base class, the
greedy helpers of the rate-1 policies, and the accuracy estimate of a link-filled plan
(:class:`Objective`, :func:`estimate_accuracy`) that ``ours`` maximises and that compares
any plan on equal terms. Pure numpy.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np

from links.budget import ModelCost, ResolvedBudget
from links.policies.schedule import Plan, hyperperiod, rate_period, stagger_phases, stagger_weights

#: estimate(executed_set, target, age) -> accuracy of ``target`` in [0, 1] on a frame
#: where it does not run, given the models executed on that frame and the age in frames
#: of the target's own last output (None = the target never runs: no temporal context).
EstimateFn = Callable[[frozenset, str, "int | None"], float]


class AccuracyEstimate(NamedTuple):
    """What :class:`Objective` and :func:`estimate_accuracy` return."""

    value: float  # the (weighted) mean over all models
    per_model: dict[str, float]


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


def greedy_add(
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


def cheapest_first(inp: PlanInputs) -> list[str]:
    """Models by increasing use of the budget's resource (then compute, then given order)."""
    idx = {m: i for i, m in enumerate(inp.models)}
    return sorted(
        inp.models,
        key=lambda m: (inp.budget.amount(inp.costs[m]), inp.costs[m].ms, idx[m]),
    )



# --------------------------------------------------------------------------- accuracy estimate


def pairwise_estimate(models: Sequence[str], pairwise: np.ndarray) -> EstimateFn:
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


class Objective:
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
        self._cache: dict[tuple[float, ...], AccuracyEstimate] = {}

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

    def __call__(self, rates: Mapping[str, float]) -> AccuracyEstimate:
        """(weighted mean accuracy, per-model accuracy)."""
        key = tuple(rates.get(m, 0.0) for m in self.models)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        phases = stagger_phases(rates, self.stagger)
        length = hyperperiod(rates)
        periods = {m: rate_period(rates.get(m, 0.0)) for m in self.models}
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
        result = AccuracyEstimate(value, per_model)
        self._cache[key] = result
        return result


def estimator(inp: PlanInputs, who: str) -> EstimateFn:
    """The link library's estimator, else the best single pairwise link; ``who`` names
    the caller in the error when there is neither."""
    if inp.estimate is not None:
        return inp.estimate
    if inp.pairwise is not None:
        return pairwise_estimate(inp.models, inp.pairwise)
    raise ValueError(f"{who} needs PlanInputs.estimate or PlanInputs.pairwise")


def estimate_accuracy(inp: PlanInputs, rates: Mapping[str, float]) -> AccuracyEstimate:
    """Estimated (mean accuracy over all models, per-model accuracy) of running ``rates``
    with links filling the rest, on the staggered schedule :meth:`Plan.build` would use.

    The same estimate ``ours`` maximises; use it to compare any link-filled plan (e.g.
    mlink's) on equal terms. Uses ``inp.estimate``, else the best single pairwise link.
    """
    objective = Objective(
        inp.models, estimator(inp, "estimate_accuracy"), dict.fromkeys(inp.models, 1.0),
        stagger_weights(inp.budget, inp.costs),
    )
    full = {m: float(rates.get(m, 0.0)) for m in inp.models}
    return objective(full)

