"""The frame schedule: rate levels, periods, the hyperperiod, staggered phases, the
:class:`Plan` every policy returns, and the :class:`Reselector` that says when to re-plan.

A rate is ``1/k`` with ``k`` a power of two (or 0); a model at rate ``1/k`` runs on frame
``f`` when ``(f + phase) % k == 0`` (see the package docstring of :mod:`links.policies`).
Pure numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from links.budget import ModelCost, ResolvedBudget

FILLS: tuple[str, ...] = ("missing", "prior", "hold", "link", "reducto")


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


def rate_period(rate: float) -> int | None:
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
        rate_period(rate)
    except ValueError:
        return False
    return True


def hyperperiod(rates: Mapping[str, float]) -> int:
    """Length after which the schedule repeats: the largest period among active models."""
    ks = [k for k in (rate_period(r) for r in rates.values()) if k is not None]
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
        k = rate_period(rates[m])
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
        k = rate_period(r)
        if k is None:
            continue
        load[(-int(phases.get(m, 0))) % k :: k] += float(weights.get(m, 0.0))
    return load


def stagger_weights(budget: ResolvedBudget, costs: Mapping[str, ModelCost]) -> dict[str, float]:
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
        return rate_period(self.rates[model])

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
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
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
    ) -> Plan:
        """A plan with staggered phases, average and peak budget use filled in."""
        rates = dict(rates)
        used = budget.used(rates.keys(), costs, rates)
        phases: dict[str, int] = {}
        if fill == "reducto":
            # Runs depend on content: the worst case is every active model on one frame.
            peak = sum(budget.amount(costs[m]) for m, r in rates.items() if r > 0)
        else:
            weights = stagger_weights(budget, costs)
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
