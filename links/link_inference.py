"""Inference: each target's output from the outputs of the models executed on one frame
(:func:`derive`), with held outputs and the temporal gate.

Everything of the nets that does not depend on the frame is computed once and cached in an
:class:`InferenceCache`: per source, its links to all targets fused into one matmul
(:class:`FastTable`); per (target, executed subset), the ensemble's slices
(:class:`EnsemblePlan`); per target, the last held output's contribution (:class:`HeldEntry`).
A cache belongs to one link set and is dropped when the weights change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from links import nets
from links.link_state import LinkState, age_bucket
from links.outputs import ModelOutput


@dataclass
class Derived:
    """A target's output derived through links (or passed through when executed)."""

    output: ModelOutput
    confidence: float  # probability that the output equals the target model's own
    via: tuple[str, ...]  # sources used; "held" when the last executed output was used; ("prior",) when nothing was


class FastTable(NamedTuple):
    """One source's links to every target, fused: ``relu(x @ W1 + b1) @ W2 + b2`` gives all
    their heads side by side (``W2`` is block-diagonal)."""

    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    b2: np.ndarray
    heads: dict[str, tuple[int, int]]  # target -> its head's columns [start, stop) in the output


class EnsemblePlan(NamedTuple):
    """Per (target, executed subset): everything of the ensemble that does not depend on the frame.

    ``C1`` is the ensemble's first layer (see :mod:`links.nets` for its row layout).
    """

    names: list[str]  # the executed sources, in slot order
    C1z: np.ndarray  # C1's rows for their link heads, stacked
    c1: np.ndarray  # c1 plus C1's rows for their masks (all 1)
    a_nohold: np.ndarray  # softmax of the base vote's weights (sources + prior) without a held output
    lz: np.ndarray  # the base vote's weight logits: sources, prior, held
    hx_rows: np.ndarray  # C1's rows for the held output's standardised view
    hm_row: np.ndarray  # C1's row for the held mask
    ag_rows: np.ndarray  # C1's rows for the age features


class HeldEntry(NamedTuple):
    """A target's last held output and what it contributes (recomputed when it changes)."""

    output: ModelOutput
    head: np.ndarray  # its vote in the base (View.held_head)
    pre: np.ndarray  # its first-layer contribution (standardised view @ hx_rows + hm_row)


@dataclass
class InferenceCache:
    """What :func:`derive` precomputes for one link set; a fresh one after any training."""

    fast: dict[str, FastTable] | None = None
    plans: dict[tuple[str, frozenset[str]], EnsemblePlan] = field(default_factory=dict)
    held: dict[str, HeldEntry] = field(default_factory=dict)


def fast_tables(state: LinkState, cache: InferenceCache) -> dict[str, FastTable]:
    """Per-source concatenated first layers so one matmul feeds all of a source's links."""
    if cache.fast is None:
        fast: dict[str, FastTable] = {}
        for i in state.names:
            d = state.view[i].dim
            blocks = []
            for j in state.names:
                if j == i:
                    continue
                s = state.sources(j).index(i)
                p = state.pairs[j]
                blocks.append((j, p["W1"][s, :d], p["b1"][s], p["W2"][s], p["b2"][s]))
            W1 = np.concatenate([b[1] for b in blocks], axis=1)
            b1 = np.concatenate([b[2] for b in blocks])
            hs = [b[1].shape[1] for b in blocks]
            hos = [b[3].shape[1] for b in blocks]
            W2 = np.zeros((sum(hs), sum(hos)), np.float32)
            r = c = 0
            for (_, _, _, w2, _), h, o in zip(blocks, hs, hos):
                W2[r : r + h, c : c + o] = w2
                r, c = r + h, c + o
            b2 = np.concatenate([b[4] for b in blocks])
            offs = np.concatenate([[0], np.cumsum(hos)])
            fast[i] = FastTable(W1, b1, W2, b2, {b[0]: (int(offs[k]), int(offs[k + 1])) for k, b in enumerate(blocks)})
        cache.fast = fast
    return cache.fast


def ensemble_plan(state: LinkState, cache: InferenceCache, j: str, present: frozenset[str]) -> EnsemblePlan:
    """Per (target, executed subset): everything of the ensemble that does not depend on the frame."""
    key = (j, present)
    plan = cache.plans.get(key)
    if plan is None:
        e = state.ens[j]
        srcs = state.sources(j)
        S, H = len(srcs), e["z0"].shape[0]
        slots = [s for s, n in enumerate(srcs) if n in present]
        names = [srcs[s] for s in slots]
        C1 = e["C1"]
        C1z = np.concatenate([C1[s * H : (s + 1) * H] for s in slots], axis=0) if slots else np.zeros((0, C1.shape[1]), np.float32)
        c1 = e["c1"] + C1[[S * H + s for s in slots]].sum(axis=0)
        w = e["w"]
        logits = w[slots + [S]]  # present sources + the prior pseudo-source
        lz = np.concatenate([logits, w[S + 1][None]], axis=0)
        o = S * H + S
        D = state.view[j].dim
        hx_rows, hm_row, ag_rows = C1[o : o + D], C1[o + D], C1[o + D + 1 : o + D + 1 + nets.N_AGE]
        ex = np.exp(logits - logits.max(axis=0))
        a_nohold = (ex / ex.sum(axis=0)).astype(np.float32)
        plan = EnsemblePlan(names, C1z, c1.astype(np.float32), a_nohold, lz, hx_rows, hm_row, ag_rows)
        cache.plans[key] = plan
    return plan


def derive(
    state: LinkState,
    cache: InferenceCache,
    executed: dict[str, ModelOutput],
    targets: Sequence[str],
    held: dict[str, tuple[ModelOutput, int]] | None = None,
) -> dict[str, Derived]:
    """Each target's output from the executed models (any subset) and held outputs.

    ``held[target] = (its last executed output, age in frames)``. Executed targets
    pass through with confidence 1. Unknown executed models are ignored. With temporal
    links, a held output whose age bucket's gate says so (the ensemble's confidence is
    below the gate's tau) is returned itself (``via == ("held",)``, confidence = the
    held output's validation accuracy at that age).
    """
    fast = fast_tables(state, cache)
    zall: dict[str, np.ndarray] = {}
    for name, o in executed.items():
        v = state.view.get(name)
        if v is None:
            continue
        x = v.standardise(v.encode(o)[None])
        W1, b1, W2, b2, _ = fast[name]
        h = x @ W1
        h += b1
        np.maximum(h, 0.0, out=h)
        zall[name] = (h @ W2 + b2)[0]
    present = frozenset(zall)
    res: dict[str, Derived] = {}
    for j in targets:
        v = state.view.get(j)
        if v is None:
            raise ValueError(f"no links for target {j!r} (links know {state.names})")
        if j in executed:
            res[j] = Derived(executed[j], 1.0, (j,))
            continue
        hage = None
        tau = 0.0
        if state.temporal and held and j in held:
            ho, hage = held[j]
            g = state.gates.get(j)
            if g is not None:
                bk = int(age_bucket(hage))
                tau = float(g["tau"][bk])
                if tau > 1.0:  # the gate always holds at this age: no ensemble needed
                    res[j] = Derived(ho, float(g["hold_acc"][bk]), ("held",))
                    continue
        names, C1z, c1, a_nohold, lz, hx_rows, hm_row, ag_rows = ensemble_plan(state, cache, j, present)
        e = state.ens[j]
        zs = [zall[n][slice(*fast[n].heads[j])] for n in names]
        via: tuple[str, ...] = tuple(names)
        if hage is not None:
            hc = cache.held.get(j)
            if hc is None or hc.output is not ho:
                hv = v.encode(ho)[None]
                hc = HeldEntry(ho, v.held_head(hv)[0], v.standardise(hv)[0] @ hx_rows + hm_row)
                cache.held[j] = hc
            ag = nets.age_features(np.array([hage], np.float32))[0]
            lz2 = lz.copy()
            lz2[-1] += ag @ e["wa"]
            ex_ = np.exp(lz2 - lz2.max(axis=0))
            a = ex_ / ex_.sum(axis=0)
            base = a[-2] * e["z0"] + a[-1] * hc.head
            pre = c1 + hc.pre + ag @ ag_rows
            via = via + ("held",)
        else:
            a = a_nohold
            base = a[-1] * e["z0"]
            pre = c1
        if zs:
            zc = np.concatenate(zs)
            pre = pre + zc @ C1z
            base = base + (a[: len(zs)] * np.stack(zs)).sum(axis=0)
        head = base + np.maximum(pre, 0.0) @ e["C2"] + e["c2"]
        out, conf = v.decode(head[None])[0]
        if hage is not None and conf < tau:
            g = state.gates[j]
            res[j] = Derived(ho, float(g["hold_acc"][int(age_bucket(hage))]), ("held",))
            continue
        res[j] = Derived(out, conf, via or ("prior",))
    return res
