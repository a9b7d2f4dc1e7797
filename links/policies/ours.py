"""The ``ours`` policy: per-model execution rates chosen greedily by the estimated gain in
mean accuracy over all models per unit of extra cost (see :class:`OursPolicy`), links
filling the frames a model does not run on. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from links.policies.base import Objective, PlanInputs, Policy, estimator
from links.policies.baselines import HoldLastPolicy, StandalonePolicy
from links.policies.mlink import MLinkPolicy
from links.policies.schedule import Plan, frame_loads, rate_levels, stagger_phases, stagger_weights


class Upgrade(NamedTuple):
    """One single-model rate increase that fits the budget."""

    model: str
    rate: float  # the model's new rate
    rates: dict[str, float]  # all models' rates after the upgrade
    used: float  # budget used by ``rates``


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
    models of the expected accuracy (executed = 1), computed by :class:`Objective`;
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
            weights = stagger_weights(b, inp.costs)
            phases = stagger_phases(rates, weights)
            peak = float(frame_loads(rates, phases, weights).max(initial=0.0))
            return b.within(peak)
        return True

    def _fitting_upgrades(self, inp: PlanInputs, rates: Mapping[str, float], levels: list[float]) -> Iterator[Upgrade]:
        """Every single-model rate increase that fits."""
        for m in inp.models:
            for r in levels:
                if r <= rates[m]:
                    continue
                cand = {**rates, m: r}
                if self._feasible(inp, cand):
                    yield Upgrade(m, r, cand, inp.budget.used(inp.models, inp.costs, cand))

    def _spend_rest(self, inp: PlanInputs, objective: Objective, rates: dict[str, float], weights: Mapping[str, float],
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
            best: Upgrade | None = None
            for up in self._fitting_upgrades(inp, rates, levels):
                extra = max(up.used - used, 1e-9)
                need = weights[up.model] * (1.0 - per_model[up.model] + 0.02) * (up.rate - rates[up.model])
                key = (need / extra, -order[up.model], -up.rate)
                if best_key is None or key > best_key:
                    best_key, best = key, up
            if best is None:
                return rates, value
            v, pm = objective(best.rates)
            if v < value - 1e-9:
                return rates, value
            rates, value, per_model, used = best.rates, v, pm, best.used

    def plan(self, inp: PlanInputs) -> Plan:
        estimate = estimator(inp, "policy 'ours'")
        weights = {
            m: (1.0 if inp.informative is None or inp.informative.get(m, True) else self.uninformative_weight)
            for m in inp.models
        }
        if sum(weights.values()) <= 0:
            weights = dict.fromkeys(inp.models, 1.0)
        objective = Objective(inp.models, estimate, weights, stagger_weights(inp.budget, inp.costs))
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

