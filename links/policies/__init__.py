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
``cascade``    per-frame: a cheap always-run set from ``ours``'s plan, then the models
               whose held output is most likely wrong now (scene change since they last
               ran, and age; learned from profiling) per unit cost, paced by a token
               bucket; links fill (:mod:`~links.policies.cascade`)
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

Modules: :mod:`~links.policies.schedule` (rates, phases, :class:`Plan`, :class:`Reselector`),
:mod:`~links.policies.base` (:class:`PlanInputs`, :class:`Policy`, the shared greedy helpers
and accuracy estimate), :mod:`~links.policies.baselines` (all, standalone, prior, hold-last),
:mod:`~links.policies.reducto`, :mod:`~links.policies.mlink`, :mod:`~links.policies.ours`;
this package holds the registry (:data:`POLICIES`, :func:`make_policy`) and re-exports
every public name, so ``from links.policies import ...`` sees one flat namespace.

This package is pure (numpy only): no Redis, no video I/O, no torch.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from links.policies.base import AccuracyEstimate, EstimateFn, PlanInputs, Policy, estimate_accuracy
from links.policies.baselines import AllPolicy, HoldLastPolicy, PriorPolicy, StandalonePolicy
from links.policies.cascade import CascadeDecider, CascadePolicy, ChangeRisk, Trigger, pair_observations
from links.policies.mlink import MLinkPolicy, mlink_scores
from links.policies.ours import OursPolicy
from links.policies.reducto import (
    ReductoGate,
    ReductoPolicy,
    frame_difference,
    reducto_accuracy,
    simulate_reducto,
    thumbnail,
    tune_reducto_thresholds,
)
from links.policies.schedule import FILLS, Plan, Reselector, frame_loads, hyperperiod, rate_levels, stagger_phases

__all__ = [
    "FILLS",
    "POLICIES",
    "AccuracyEstimate",
    "AllPolicy",
    "CascadeDecider",
    "CascadePolicy",
    "ChangeRisk",
    "Trigger",
    "pair_observations",
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
    "estimate_accuracy",
    "frame_difference",
    "frame_loads",
    "hyperperiod",
    "make_policy",
    "mlink_scores",
    "rate_levels",
    "reducto_accuracy",
    "simulate_reducto",
    "stagger_phases",
    "thumbnail",
    "tune_reducto_thresholds",
]


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (AllPolicy, StandalonePolicy, PriorPolicy, HoldLastPolicy, ReductoPolicy,
                MLinkPolicy, OursPolicy, CascadePolicy)
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

