"""The baseline policies: ``all`` (the reference), ``standalone``, ``prior`` and
``hold-last``. None of them uses the links. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from links.policies.base import PlanInputs, Policy, cheapest_first, greedy_add
from links.policies.schedule import Plan, rate_levels


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
        chosen = greedy_add(cheapest_first(inp), inp, skip_unfit=True)
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
        order = cheapest_first(inp)
        levels = [r for r in rate_levels(self.max_period) if r > 0]
        for n in range(len(order), 0, -1):
            subset = order[:n]
            for r in levels:
                rates = {m: r for m in subset}
                if inp.budget.fits(subset, inp.costs, rates):
                    return self._build(inp, rates, "hold")
        return self._build(inp, {}, "hold")

