"""Vectorised evaluation over aligned samples: the heads of one link or of a target's
ensemble on every sample (:func:`pair_heads`, :func:`ensemble_heads`), the fields
:meth:`~links.linkset.LinkSet.derive` would output (:func:`ensemble_fields`), and the
accuracies the planner uses (:func:`pairwise_scores`, :func:`estimate_accuracy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from links import nets
from links.link_state import LinkState, age_bucket, default_gate, encoded, held_index
from links.metrics import correct
from links.samples import AlignedSamples

#: (id and length of the samples, executed models, target, age): what an estimate depends on.
EstimateKey = tuple[int, int, frozenset[str], str, int | None]


@dataclass
class EstimateCache:
    """Accuracy estimates of one link set, valid while ``token`` marks the samples.

    The samples carry the token of the cache that holds their estimates (under
    ``("linkset-est", id(link set))``): a new samples object, or one whose cache was
    cleared by an append, does not, so its estimates are computed afresh. Training makes a
    new cache (and token), so estimates of older weights are never reused.
    """

    values: dict[EstimateKey, float] = field(default_factory=dict)
    token: object = field(default_factory=object)


def pair_heads(state: LinkState, samples: AlignedSamples, source: str, target: str) -> np.ndarray:
    """The link ``source -> target``'s heads on every sample."""
    s = state.sources(target).index(source)
    return nets.pair_forward(state.pairs[target], s, state.standardised(samples, source))


def ensemble_heads(
    state: LinkState,
    samples: AlignedSamples,
    target: str,
    executed: frozenset[str] | set[str] | Sequence[str],
    age: int | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Ensemble heads on every sample given executed sources (and held outputs ``age`` frames old)."""
    n = len(samples)
    srcs = state.sources(target)
    ex = set(executed)
    xl: list[np.ndarray | None] = []
    zl: list[np.ndarray | None] = []
    for s in srcs:
        if s in ex:
            x = state.standardised(samples, s)
            xl.append(x)
            zl.append(nets.pair_forward(state.pairs[target], srcs.index(s), x))
        else:
            xl.append(None)
            zl.append(None)
    v = state.view[target]
    hx = hz = hm = ages = None
    if age is not None and state.temporal:
        idx, ages = held_index(samples, age)
        rows = np.maximum(idx, 0)
        hx = state.standardised(samples, target)[rows]
        hz = v.held_head(encoded(samples, v)[rows])
        hm = (idx >= 0).astype(np.float32)
    return nets.ens_forward(
        state.ens[target], xl, zl, n, held=hx, held_z=hz, held_mask=hm, age=ages, temporal=state.temporal, src_dims=state.src_dims[target], mask=mask, target_dim=v.dim
    )


def ensemble_fields(
    state: LinkState,
    samples: AlignedSamples,
    target: str,
    executed: frozenset[str] | set[str] | Sequence[str],
    age: int | None = None,
) -> dict[str, np.ndarray]:
    """Metric fields (and ``confidence``) of what :meth:`LinkSet.derive` would output on every sample.

    With ``age`` (and temporal links) the gate applies: where the temporal ensemble's
    confidence is below the gate's tau for that age, the held output itself is used.
    """
    v = state.view[target]
    f = v.head_fields(ensemble_heads(state, samples, target, executed, age))
    if age is None or not state.temporal:
        return f
    idx, ages = held_index(samples, age)
    g = state.gates.get(target) or default_gate()
    b = age_bucket(ages)
    use = (idx >= 0) & (f["confidence"] < g["tau"][b])
    if not use.any():
        return f
    hf = state.true_fields(samples, target)
    rows = np.maximum(idx, 0)
    out = dict(f)
    for k, a in hf.items():
        sel = use.reshape((-1,) + (1,) * (a.ndim - 1))
        out[k] = np.where(sel, a[rows], np.asarray(f[k], a.dtype) if f[k].shape == a.shape else f[k])
    out["confidence"] = np.where(use, g["hold_acc"][b], f["confidence"])
    out["held_used"] = use
    return out


def heads_correct(state: LinkState, samples: AlignedSamples, target: str, heads: np.ndarray) -> np.ndarray:
    """Per sample, whether ``heads`` decode to what ``target`` itself output."""
    v = state.view[target]
    return correct(v.kind, v.head_fields(heads), state.true_fields(samples, target))


def pairwise_scores(state: LinkState, samples: AlignedSamples) -> np.ndarray:
    """p(g_ij): accuracy of the single link i -> j on ``samples``; (k, k), diagonal 1."""
    state.check_samples(samples)
    k = len(state.names)
    P = np.eye(k)
    if not len(samples):
        return P
    for jj, j in enumerate(state.names):
        for ii, i in enumerate(state.names):
            if i != j:
                P[ii, jj] = float(heads_correct(state, samples, j, pair_heads(state, samples, i, j)).mean())
    return P


def estimate_accuracy(state: LinkState, cache: EstimateCache, samples: AlignedSamples, executed: frozenset[str], target: str, age: int | None = None) -> float:
    """Accuracy of ``target`` on ``samples`` when ``executed`` run (1.0 if it runs itself).

    ``age``: also use the target's own output ``age`` frames earlier (temporal context).
    """
    if target in executed:
        return 1.0
    ex = frozenset(executed)
    key = (id(samples), len(samples), ex, target, age)
    slot = ("linkset-est", id(state))
    hit = cache.values.get(key)
    if hit is not None and samples.cache.get(slot) is cache.token:
        return hit
    state.check_samples(samples)
    if not len(samples):
        return float("nan")
    v = state.view[target]
    acc = float(correct(v.kind, ensemble_fields(state, samples, target, ex, age), state.true_fields(samples, target)).mean())
    if samples.cache.get(slot) is not cache.token:
        # new samples object (or its cache was cleared by an append): start afresh
        cache.values.clear()
        samples.cache[slot] = cache.token
    cache.values[key] = acc
    return acc
