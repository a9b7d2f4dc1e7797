"""The trained content of a link set, :class:`LinkState`, and the per-sample helpers
that training, inference, evaluation and adaptation all use: encoded views cached on the
samples, each sample's held (earlier) output, the temporal gate's age buckets.

:class:`links.linkset.LinkSet` is a :class:`LinkState` plus the caches of inference and
evaluation; the functions of ``links.link_training``, ``link_inference``,
``link_evaluation``, ``link_adaptation`` and ``link_files`` take a :class:`LinkState`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from links.errors import LinksError
from links.samples import AlignedSamples, ModelMeta
from links.views import View, output_fields

#: A net's or a gate's named arrays (``W1``, ``b1``, ... see :mod:`links.nets`; ``tau``, ``hold_acc``).
Arrays = dict[str, np.ndarray]

# Age buckets of the temporal gate: ages 1, 2, 3-4, 5-8, 9-16, 17+ frames.
AGE_EDGES = np.array([1, 2, 3, 5, 9, 17])
N_BUCKETS = len(AGE_EDGES)


def age_bucket(age: np.ndarray | int) -> np.ndarray:
    """Gate bucket of held outputs ``age`` frames old (0..N_BUCKETS-1)."""
    return np.clip(np.searchsorted(AGE_EDGES, np.asarray(age), side="right") - 1, 0, N_BUCKETS - 1)


def default_gate() -> Arrays:
    """No gate: the temporal ensemble always decides (tau 0); hold-last confidence unknown (0.5)."""
    return {"tau": np.zeros(N_BUCKETS, np.float32), "hold_acc": np.full(N_BUCKETS, 0.5, np.float32)}


# ------------------------------------------------------------------ sample helpers
def encoded(samples: AlignedSamples, view: View) -> np.ndarray:
    """Raw encoded views of one model over all samples (cached on the samples)."""
    key = ("enc", *view.cache_key)
    if key not in samples.cache:
        samples.cache[key] = view.encode_many(samples.outputs[view.meta.name])
    return samples.cache[key]


def held_index(samples: AlignedSamples, age: int) -> tuple[np.ndarray, np.ndarray]:
    """For each sample, the latest sample of the same camera at least ``age`` frames earlier.

    Returns (index or -1, actual age in frames).
    """
    n = len(samples)
    idx = np.full(n, -1, np.int64)
    ages = np.zeros(n, np.int64)
    cams = samples.camera
    frames = samples.frame
    for cam in samples.cameras():
        rows = np.flatnonzero(cams == cam)
        order = rows[np.argsort(frames[rows], kind="stable")]
        fs = frames[order]
        pos = np.searchsorted(fs, frames[rows] - age, side="right") - 1
        ok = pos >= 0
        idx[rows[ok]] = order[pos[ok]]
        ages[rows[ok]] = frames[rows[ok]] - fs[pos[ok]]
    return idx, ages


class LinkState:
    """Pairwise links + per-target ensembles over a fixed list of models: the arrays and
    metadata that training writes and the links file holds (no caches)."""

    def __init__(
        self,
        views: list[View],
        pairs: dict[str, Arrays],
        ens: dict[str, Arrays],
        priors: dict[str, np.ndarray],
        *,
        temporal: bool,
        version: int = 1,
        sample_counts: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        gates: dict[str, Arrays] | None = None,
    ) -> None:
        self.views = views
        self.view = {v.meta.name: v for v in views}
        self.pairs, self.ens, self.priors = pairs, ens, priors
        self.temporal = temporal
        self.version = version
        self.sample_counts = dict(sample_counts or {})
        self.options = dict(options or {})
        self.gates: dict[str, Arrays] = {j: default_gate() for j in (v.meta.name for v in views)}
        if gates:
            self.gates.update(gates)
        # Each target's source view widths, in slot order (the ensemble's input layout).
        self.src_dims = {j: [self.view[s].dim for s in self.sources(j)] for j in self.names}

    # ------------------------------------------------------------ basics
    @property
    def models(self) -> list[ModelMeta]:
        return [v.meta for v in self.views]

    @property
    def names(self) -> list[str]:
        return [v.meta.name for v in self.views]

    def sources(self, target: str) -> list[str]:
        """The source models of ``target``'s links and ensemble, in slot order."""
        return [n for n in self.names if n != target]

    def check_models(self, models: Sequence[ModelMeta], where: str = "links") -> None:
        """LinksError (one line) unless ``models`` are exactly the models these links know."""
        mine = {m.name: m for m in self.models}
        theirs = {m.name: m for m in models}
        if set(mine) != set(theirs):
            extra = sorted(set(theirs) - set(mine))
            missing = sorted(set(mine) - set(theirs))
            raise LinksError(f"{where}: links were trained for models {sorted(mine)}; got {sorted(theirs)} (unknown: {extra}, absent: {missing})")
        for n, m in theirs.items():
            if m.kind is not mine[n].kind or tuple(m.classes) != tuple(mine[n].classes):
                raise LinksError(f"{where}: model {n} is {m.kind.value} {list(m.classes)}, links expect {mine[n].kind.value} {list(mine[n].classes)}")

    def standardised(self, samples: AlignedSamples, name: str) -> np.ndarray:
        """Model ``name``'s standardised views over all samples (what its links take)."""
        v = self.view[name]
        return v.standardise(encoded(samples, v))

    def check_samples(self, samples: AlignedSamples) -> None:
        """LinksError (one line) unless ``samples`` hold every model these links know, as trained."""
        have = {m.name: m for m in samples.models}
        for m in self.models:
            if m.name not in have:
                raise LinksError(f"samples lack model {m.name} that the links need")
            if have[m.name].kind is not m.kind or tuple(have[m.name].classes) != tuple(m.classes):
                raise LinksError(f"samples: model {m.name} differs from the one the links were trained on")

    def true_fields(self, samples: AlignedSamples, target: str) -> dict[str, np.ndarray]:
        """The metric fields of ``target``'s own outputs on every sample (cached on the samples)."""
        key = ("true", target)
        if key not in samples.cache:
            samples.cache[key] = output_fields(self.view[target], samples.outputs[target])
        return samples.cache[key]


#: Any link-set class: what :func:`links.link_training.train` and :func:`links.link_files.load` build.
LinkT = TypeVar("LinkT", bound=LinkState)
