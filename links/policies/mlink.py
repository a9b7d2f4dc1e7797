"""The ``mlink`` policy: the MLink paper's per-model score (:func:`mlink_scores`) and
its greedy selection at rate 1, links filling the rest. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from links.policies.base import PlanInputs, Policy, greedy_add
from links.policies.schedule import Plan


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
        chosen = greedy_add([inp.models[i] for i in order], inp, self.skip_unfit)
        return self._build(
            inp, {m: 1.0 for m in chosen}, "link",
            notes={"scores": {m: float(s) for m, s in zip(inp.models, scores)}},
        )

