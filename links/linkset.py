"""A trained set of model links: pairwise links, per-target ensembles, priors.

This is what the scheduler loads: given the outputs of the models it executed on
a frame (any subset, including none) and optionally each target's last executed
output and its age, :meth:`LinkSet.derive` returns every requested target's
output as a :class:`ModelOutput` with a confidence. Everything is arrays in,
arrays out (no Redis, no video).

Saved form (``LinkSet.to_bytes`` / ``save``): one ``.npz`` (no pickles) with a
``__meta__`` JSON entry ``{"format": "mlink-links", "format_version": 1, "version",
"temporal", "models", "views", "sources", "sample_counts", "options"}`` and the
arrays ``pair/<target>/<W1|b1|W2|b2>``, ``ens/<target>/<w|z0|C1|c1|C2|c2>``,
``prior/<target>`` (the prior's encoded view) and, optional (older files lack them:
no gate), ``gate/<target>/<tau|hold_acc>`` (the temporal gate per age bucket, see
:meth:`LinkSet._fit_gate`). ``save(DIR)`` writes
``DIR/links.npz`` plus a human-readable ``DIR/links.json`` copy of the metadata.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from links import nets
from links.errors import LinksError
from links.metrics import correct
from links.outputs import ModelOutput, OutputKind
from links.samples import AlignedSamples, ModelMeta
from links.views import View, make_view, output_fields

FORMAT = "mlink-links"
FORMAT_VERSION = 1
_PAIR_KEYS = ("W1", "b1", "W2", "b2")
_ENS_KEYS = ("w", "wa", "z0", "C1", "c1", "C2", "c2")
_GATE_KEYS = ("tau", "hold_acc")  # optional (format 1 files lack them: no gate, always the ensemble)
# Age buckets of the temporal gate: ages 1, 2, 3-4, 5-8, 9-16, 17+ frames.
AGE_EDGES = np.array([1, 2, 3, 5, 9, 17])
N_BUCKETS = len(AGE_EDGES)
TAU_GRID = np.array([0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01])
MIN_GATE_FRAMES = 16  # fewer validation frames than this: the temporal gate always holds
VAL_FRAC = 0.2  # the last 20 % (in time) of the training samples choose the temporal gate


def age_bucket(age: np.ndarray | int) -> np.ndarray:
    """Gate bucket of held outputs ``age`` frames old (0..N_BUCKETS-1)."""
    return np.clip(np.searchsorted(AGE_EDGES, np.asarray(age), side="right") - 1, 0, N_BUCKETS - 1)


def default_gate() -> dict[str, np.ndarray]:
    """No gate: the temporal ensemble always decides (tau 0); hold-last confidence unknown (0.5)."""
    return {"tau": np.zeros(N_BUCKETS, np.float32), "hold_acc": np.full(N_BUCKETS, 0.5, np.float32)}


@dataclass
class Derived:
    """A target's output derived through links (or passed through when executed)."""

    output: ModelOutput
    confidence: float  # probability that the output equals the target model's own
    via: tuple[str, ...]  # sources used; "held" when the last executed output was used; ("prior",) when nothing was


# ------------------------------------------------------------------ sample helpers
def encoded(samples: AlignedSamples, view: View) -> np.ndarray:
    """Raw encoded views of one model over all samples (cached on the samples)."""
    key = ("enc", view.meta.name, view.grid, view.scalar_grid)
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


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch threads (tiny link nets train fastest on one)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n or 1))
    try:
        yield
    finally:
        torch.set_num_threads(old)


class LinkSet:
    """Pairwise links + per-target ensembles over a fixed list of models."""

    def __init__(
        self,
        views: list[View],
        pairs: dict[str, dict[str, np.ndarray]],
        ens: dict[str, dict[str, np.ndarray]],
        priors: dict[str, np.ndarray],
        *,
        temporal: bool,
        version: int = 1,
        sample_counts: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        gates: dict[str, dict[str, np.ndarray]] | None = None,
    ) -> None:
        self.views = views
        self.view = {v.meta.name: v for v in views}
        self.pairs, self.ens, self.priors = pairs, ens, priors
        self.temporal = temporal
        self.version = version
        self.sample_counts = dict(sample_counts or {})
        self.options = dict(options or {})
        self.gates: dict[str, dict[str, np.ndarray]] = {j: default_gate() for j in (v.meta.name for v in views)}
        if gates:
            self.gates.update(gates)
        self._fast: dict[str, Any] | None = None
        self._plans: dict[Any, tuple[Any, ...]] = {}
        self._held_cache: dict[str, tuple[Any, ...]] = {}
        self._est_cache: dict[Any, float] = {}
        self._est_token = object()  # marks samples whose estimates are cached (reset by training)
        self._src_dims = {j: [self.view[s].dim for s in self.sources(j)] for j in self.names}

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

    def _std(self, samples: AlignedSamples, name: str) -> np.ndarray:
        v = self.view[name]
        return v.standardise(encoded(samples, v))

    def _check_samples(self, samples: AlignedSamples) -> None:
        have = {m.name: m for m in samples.models}
        for m in self.models:
            if m.name not in have:
                raise LinksError(f"samples lack model {m.name} that the links need")
            if have[m.name].kind is not m.kind or tuple(have[m.name].classes) != tuple(m.classes):
                raise LinksError(f"samples: model {m.name} differs from the one the links were trained on")

    # ------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        samples: AlignedSamples,
        *,
        seed: int = 0,
        epochs: int = 40,
        ens_epochs: int | None = None,
        temporal: bool = True,
        progress: bool = False,
        lr: float = 0.01,
        batch: int = 64,
        dropout: float = 0.0,
        ens_dropout: float = 0.1,
        threads: int | None = 1,
        oof: bool = True,
    ) -> "LinkSet":
        """Train all pairwise links and every target's ensemble on aligned samples."""
        if len(samples) < 2:
            raise LinksError(f"need at least 2 aligned samples to train links, got {len(samples)}")
        if len(samples.models) < 2:
            raise LinksError("need at least 2 models to link")
        ens_epochs = epochs if ens_epochs is None else ens_epochs
        views = []
        for m in samples.models:
            v = make_view(m, samples.outputs[m.name][0])
            v.fit(encoded(samples, v))
            views.append(v)
        priors = {v.meta.name: _prior_vector(v, encoded(samples, v)) for v in views}
        cams = {c: int(np.sum(samples.camera == c)) for c in samples.cameras()}
        ls = cls(
            views,
            {},
            {},
            priors,
            temporal=temporal,
            sample_counts={"train": len(samples), "finetune": 0, "cameras": cams},
            options={"seed": seed, "oof": oof, "epochs": epochs, "ens_epochs": ens_epochs, "lr": lr, "batch": batch, "dropout": dropout, "ens_dropout": ens_dropout, "max_age": nets.MAX_AGE},
        )
        rng = np.random.default_rng(seed)
        for v in views:
            j = v.meta.name
            S = len(ls.sources(j))
            dmax = max(ls.view[s].dim for s in ls.sources(j))
            ls.pairs[j] = nets.init_pair(rng, S, dmax, nets.pair_hidden(v.head_dim), v.head_dim)
            din = nets.ens_input_dim([ls.view[s].dim for s in ls.sources(j)], v.head_dim, v.dim, temporal)
            ls.ens[j] = nets.init_ens(rng, S, din, v.head_dim)
        ls._fit(samples, epochs=epochs, ens_epochs=ens_epochs, lr=lr, progress=progress, threads=threads, seed=seed, desc="train links", oof=oof)
        return ls

    def _fit(
        self, samples: AlignedSamples, *, epochs: int, ens_epochs: int, lr: float, progress: bool, threads: int | None, seed: int, desc: str, oof: bool = False
    ) -> None:
        from tqdm import tqdm

        folds = _time_folds(samples) if oof and len(samples) >= 20 else None
        # The temporal gate is chosen on the last VAL_FRAC (in time) of the samples, with
        # the ensemble trained on the rest and out-of-fold link heads (so both are honest).
        val = _time_tail(samples, VAL_FRAC) if (self.temporal and folds is not None and len(samples) >= 40) else None

        batch = int(self.options.get("batch", 64))
        dropout = float(self.options.get("dropout", 0.0))
        ens_dropout = float(self.options.get("ens_dropout", 0.1))
        X = {n: self._std(samples, n) for n in self.names}
        held_idx = held_age = None
        if self.temporal:
            cols = [held_index(samples, a) for a in range(1, nets.MAX_AGE + 1)]
            held_idx = np.stack([c[0] for c in cols], axis=1)
            held_age = np.stack([c[1] for c in cols], axis=1)
        bar = tqdm(total=2 * len(self.names), desc=desc, unit="net", disable=not progress)
        with torch_threads(threads):
            for ti, v in enumerate(self.views):
                j = v.meta.name
                srcs = self.sources(j)
                T = v.targets(encoded(samples, v))
                p = self.pairs[j]
                dmax = p["W1"].shape[1]
                xpad = np.zeros((len(srcs), len(samples), dmax), np.float32)
                for s, name in enumerate(srcs):
                    xpad[s, :, : X[name].shape[1]] = X[name]
                if oof and folds is not None:
                    # Out-of-fold link heads for the ensemble: links trained on one half (in
                    # time) predict the other, so the ensemble learns how far to trust links
                    # on frames they have not seen (in-sample heads are over-confident).
                    zs = np.zeros((len(srcs), len(samples), v.head_dim), np.float32)
                    for f in (0, 1):
                        pf = {k: a.copy() for k, a in p.items()}
                        tr = folds != f
                        nets.train_pairs(pf, v, xpad[:, tr], T[tr], epochs=2 * epochs, lr=lr, batch=batch, dropout=dropout, seed=seed * 1000 + ti + 100 * (f + 1))
                        for s, name in enumerate(srcs):
                            zs[s, ~tr] = nets.pair_forward(pf, s, X[name][~tr])
                nets.train_pairs(p, v, xpad, T, epochs=epochs, lr=lr, batch=batch, dropout=dropout, seed=seed * 1000 + ti)
                bar.update(1)
                if not (oof and folds is not None):
                    zs = np.stack([nets.pair_forward(p, s, X[name]) for s, name in enumerate(srcs)])
                rows = np.flatnonzero(~val) if val is not None else None
                nets.train_ensemble(
                    self.ens[j],
                    v,
                    [X[n] for n in srcs],
                    zs,
                    T,
                    held_x=X[j] if self.temporal else None,
                    held_z=v.held_head(encoded(samples, v)) if self.temporal else None,
                    held_idx=held_idx,
                    held_age=held_age,
                    epochs=ens_epochs,
                    lr=lr,
                    batch=batch,
                    dropout=ens_dropout,
                    seed=seed * 1000 + 500 + ti,
                    rows=rows,
                )
                if val is not None and held_idx is not None and held_age is not None:
                    self.gates[j] = self._fit_gate(samples, j, X, zs, np.flatnonzero(val), held_idx, held_age, seed=seed * 1000 + 900 + ti)
                    # then let the ensemble see the validation rows too (a short warm-started pass)
                    nets.train_ensemble(
                        self.ens[j], v, [X[n] for n in srcs], zs, T,
                        held_x=X[j], held_z=v.held_head(encoded(samples, v)), held_idx=held_idx, held_age=held_age,
                        epochs=max(1, ens_epochs // 4), lr=lr / 3, batch=batch, dropout=ens_dropout, seed=seed * 1000 + 700 + ti,
                    )
                elif self.temporal and held_idx is not None and held_age is not None:
                    # Too few samples to validate the temporal ensemble against the target's
                    # own last output: hold it (hold-last is the safe default), and give the
                    # held value its measured hold-last accuracy as confidence.
                    self.gates[j] = self._hold_gate(samples, j, held_idx, held_age)
                elif j not in self.gates:
                    self.gates[j] = default_gate()
                bar.update(1)
        bar.close()
        self._fast = None
        self._plans = {}
        self._held_cache = {}
        self._est_cache = {}
        self._est_token = object()

    def _hold_gate(self, samples: AlignedSamples, j: str, held_idx: np.ndarray, held_age: np.ndarray) -> dict[str, np.ndarray]:
        """A gate that always holds; ``hold_acc`` per age bucket measured on ``samples``."""
        gate = default_gate()
        gate["tau"][:] = TAU_GRID[-1]
        tf = self.true_fields(samples, j)
        r = np.repeat(np.arange(len(samples)), held_idx.shape[1])
        hi, ha = held_idx.reshape(-1), held_age.reshape(-1)
        ok = hi >= 0
        if ok.any():
            r, hi, ha = r[ok], hi[ok], ha[ok]
            hold_ok = correct(self.view[j].kind, {k: a[hi] for k, a in tf.items()}, {k: a[r] for k, a in tf.items()})
            b = age_bucket(ha)
            for k in range(N_BUCKETS):
                if (b == k).any():
                    gate["hold_acc"][k] = float(hold_ok[b == k].mean())
        return gate

    def _fit_gate(
        self,
        samples: AlignedSamples,
        j: str,
        X: dict[str, np.ndarray],
        zs: np.ndarray,
        vrows: np.ndarray,
        held_idx: np.ndarray,
        held_age: np.ndarray,
        *,
        seed: int,
        n_subsets: int = 3,
    ) -> dict[str, np.ndarray]:
        """Per age bucket, the confidence below which the held output beats the temporal ensemble.

        On the validation rows, for held outputs 1..MAX_AGE frames old and for all sources plus
        ``n_subsets`` random source subsets: the ensemble's prediction is kept where its
        confidence is >= tau, else the held output is used; tau (from TAU_GRID, 1.01 = always
        hold) maximises validation accuracy (ties go to the larger tau, i.e. hold-last).
        ``hold_acc`` = validation accuracy of the held output per bucket (its confidence).
        """
        v = self.view[j]
        srcs = self.sources(j)
        S = len(srcs)
        rng = np.random.default_rng(seed)
        A = held_idx.shape[1]
        r = np.repeat(vrows, A)
        hi = held_idx[vrows].reshape(-1)
        ha = held_age[vrows].reshape(-1)
        ok = hi >= 0
        r, hi, ha = r[ok], hi[ok], ha[ok]
        gate = default_gate()
        if not len(r):
            return gate
        enc = encoded(samples, v)
        true = {k: a[r] for k, a in self.true_fields(samples, j).items()}
        hold_f = {k: a[hi] for k, a in self.true_fields(samples, j).items()}
        hold_ok = correct(v.kind, hold_f, true).astype(np.float64)
        masks = [np.ones((len(r), S), np.float32)]
        for _ in range(n_subsets):
            keep = rng.random((len(r), 1))
            masks.append((rng.random((len(r), S)) < keep).astype(np.float32))
        bucket = age_bucket(ha)
        conf_l, ens_ok_l = [], []
        for m in masks:
            heads = nets.ens_forward(
                self.ens[j], [X[n][r] for n in srcs], [zs[s, r] for s in range(S)], len(r),
                held=X[j][hi], held_z=v.held_head(enc[hi]), age=ha.astype(np.float32), temporal=True,
                src_dims=self._src_dims[j], target_dim=v.dim, mask=m,
            )
            f = v.head_fields(heads)
            conf_l.append(f["confidence"])
            ens_ok_l.append(correct(v.kind, f, true).astype(np.float64))
        conf = np.concatenate(conf_l)
        ens_ok = np.concatenate(ens_ok_l)
        hok = np.tile(hold_ok, len(masks))
        bk = np.tile(bucket, len(masks))
        # Too few validation frames cannot show that the ensemble beats the target's own
        # last output (short clips: a handful of frames): then the gate always holds.
        few = len(np.unique(vrows)) < MIN_GATE_FRAMES
        last_tau, last_acc = (float(TAU_GRID[-1]) if few else 0.0), 0.5
        for b in range(N_BUCKETS):
            sel = bk == b
            if not sel.any():
                gate["tau"][b], gate["hold_acc"][b] = last_tau, last_acc
                continue
            accs = [np.mean(np.where(conf[sel] < t, hok[sel], ens_ok[sel])) for t in TAU_GRID]
            best = len(TAU_GRID) - 1 if few else max(range(len(TAU_GRID)), key=lambda k: (round(accs[k], 9), TAU_GRID[k]))
            last_tau, last_acc = float(TAU_GRID[best]), float(hok[sel].mean())
            gate["tau"][b], gate["hold_acc"][b] = last_tau, last_acc
        return gate

    # ------------------------------------------------------------ inference
    def _fast_tables(self) -> dict[str, Any]:
        """Per-source concatenated first layers so one matmul feeds all of a source's links."""
        if self._fast is None:
            fast: dict[str, Any] = {}
            for i in self.names:
                d = self.view[i].dim
                blocks = []
                for j in self.names:
                    if j == i:
                        continue
                    s = self.sources(j).index(i)
                    p = self.pairs[j]
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
                fast[i] = (W1, b1, W2, b2, {b[0]: (int(offs[k]), int(offs[k + 1])) for k, b in enumerate(blocks)})
            self._fast = fast
        return self._fast

    def _plan(self, j: str, present: frozenset[str]) -> tuple[Any, ...]:
        """Per (target, executed subset): everything of the ensemble that does not depend on the frame."""
        key = (j, present)
        plan = self._plans.get(key)
        if plan is None:
            e = self.ens[j]
            srcs = self.sources(j)
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
            D = self.view[j].dim
            hx_rows, hm_row, ag_rows = C1[o : o + D], C1[o + D], C1[o + D + 1 : o + D + 1 + nets.N_AGE]
            ex = np.exp(logits - logits.max(axis=0))
            a_nohold = (ex / ex.sum(axis=0)).astype(np.float32)
            plan = (names, C1z, c1.astype(np.float32), a_nohold, lz, hx_rows, hm_row, ag_rows)
            self._plans[key] = plan
        return plan

    def derive(
        self,
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
        fast = self._fast_tables()
        zall: dict[str, np.ndarray] = {}
        for name, o in executed.items():
            v = self.view.get(name)
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
            v = self.view.get(j)
            if v is None:
                raise ValueError(f"no links for target {j!r} (links know {self.names})")
            if j in executed:
                res[j] = Derived(executed[j], 1.0, (j,))
                continue
            hage = None
            tau = 0.0
            if self.temporal and held and j in held:
                ho, hage = held[j]
                g = self.gates.get(j)
                if g is not None:
                    bk = int(age_bucket(hage))
                    tau = float(g["tau"][bk])
                    if tau > 1.0:  # the gate always holds at this age: no ensemble needed
                        res[j] = Derived(ho, float(g["hold_acc"][bk]), ("held",))
                        continue
            names, C1z, c1, a_nohold, lz, hx_rows, hm_row, ag_rows = self._plan(j, present)
            e = self.ens[j]
            zs = [zall[n][slice(*fast[n][4][j])] for n in names]
            via: tuple[str, ...] = tuple(names)
            if hage is not None:
                hc = self._held_cache.get(j)
                if hc is None or hc[0] is not ho:
                    hv = v.encode(ho)[None]
                    hc = (ho, v.held_head(hv)[0], v.standardise(hv)[0] @ hx_rows + hm_row)
                    self._held_cache[j] = hc
                ag = nets.age_features(np.array([hage], np.float32))[0]
                lz2 = lz.copy()
                lz2[-1] += ag @ e["wa"]
                ex_ = np.exp(lz2 - lz2.max(axis=0))
                a = ex_ / ex_.sum(axis=0)
                base = a[-2] * e["z0"] + a[-1] * hc[1]
                pre = c1 + hc[2] + ag @ ag_rows
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
                g = self.gates[j]
                res[j] = Derived(ho, float(g["hold_acc"][int(age_bucket(hage))]), ("held",))
                continue
            res[j] = Derived(out, conf, via or ("prior",))
        return res

    def prior_output(self, target: str) -> ModelOutput:
        """The target's most common value in training, as an output."""
        return self.view[target].decode_vector(self.priors[target])

    # ------------------------------------------------------------ vectorised evaluation
    def pair_heads(self, samples: AlignedSamples, source: str, target: str) -> np.ndarray:
        s = self.sources(target).index(source)
        return nets.pair_forward(self.pairs[target], s, self._std(samples, source))

    def ensemble_heads(
        self,
        samples: AlignedSamples,
        target: str,
        executed: frozenset[str] | set[str] | Sequence[str],
        age: int | None = None,
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Ensemble heads on every sample given executed sources (and held outputs ``age`` frames old)."""
        n = len(samples)
        srcs = self.sources(target)
        ex = set(executed)
        xl: list[np.ndarray | None] = []
        zl: list[np.ndarray | None] = []
        for s in srcs:
            if s in ex:
                x = self._std(samples, s)
                xl.append(x)
                zl.append(nets.pair_forward(self.pairs[target], srcs.index(s), x))
            else:
                xl.append(None)
                zl.append(None)
        v = self.view[target]
        hx = hz = hm = ages = None
        if age is not None and self.temporal:
            idx, ages = held_index(samples, age)
            rows = np.maximum(idx, 0)
            hx = self._std(samples, target)[rows]
            hz = v.held_head(encoded(samples, v)[rows])
            hm = (idx >= 0).astype(np.float32)
        return nets.ens_forward(
            self.ens[target], xl, zl, n, held=hx, held_z=hz, held_mask=hm, age=ages, temporal=self.temporal, src_dims=self._src_dims[target], mask=mask, target_dim=v.dim
        )

    def ensemble_fields(
        self,
        samples: AlignedSamples,
        target: str,
        executed: frozenset[str] | set[str] | Sequence[str],
        age: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Metric fields (and ``confidence``) of what :meth:`derive` would output on every sample.

        With ``age`` (and temporal links) the gate applies: where the temporal ensemble's
        confidence is below the gate's tau for that age, the held output itself is used.
        """
        v = self.view[target]
        f = v.head_fields(self.ensemble_heads(samples, target, executed, age))
        if age is None or not self.temporal:
            return f
        idx, ages = held_index(samples, age)
        g = self.gates.get(target) or default_gate()
        b = age_bucket(ages)
        use = (idx >= 0) & (f["confidence"] < g["tau"][b])
        if not use.any():
            return f
        hf = self.true_fields(samples, target)
        rows = np.maximum(idx, 0)
        out = dict(f)
        for k, a in hf.items():
            sel = use.reshape((-1,) + (1,) * (a.ndim - 1))
            out[k] = np.where(sel, a[rows], np.asarray(f[k], a.dtype) if f[k].shape == a.shape else f[k])
        out["confidence"] = np.where(use, g["hold_acc"][b], f["confidence"])
        out["held_used"] = use
        return out

    def true_fields(self, samples: AlignedSamples, target: str) -> dict[str, np.ndarray]:
        key = ("true", target)
        if key not in samples.cache:
            samples.cache[key] = output_fields(self.view[target], samples.outputs[target])
        return samples.cache[key]

    def heads_correct(self, samples: AlignedSamples, target: str, heads: np.ndarray) -> np.ndarray:
        v = self.view[target]
        return correct(v.kind, v.head_fields(heads), self.true_fields(samples, target))

    def pairwise_scores(self, samples: AlignedSamples) -> np.ndarray:
        """p(g_ij): accuracy of the single link i -> j on ``samples``; (k, k), diagonal 1."""
        self._check_samples(samples)
        k = len(self.names)
        P = np.eye(k)
        if not len(samples):
            return P
        for jj, j in enumerate(self.names):
            for ii, i in enumerate(self.names):
                if i != j:
                    P[ii, jj] = float(self.heads_correct(samples, j, self.pair_heads(samples, i, j)).mean())
        return P

    def estimate_accuracy(self, samples: AlignedSamples, executed: frozenset[str], target: str, age: int | None = None) -> float:
        """Accuracy of ``target`` on ``samples`` when ``executed`` run (1.0 if it runs itself).

        ``age``: also use the target's own output ``age`` frames earlier (temporal context).
        """
        if target in executed:
            return 1.0
        ex = frozenset(executed)
        key = (id(samples), len(samples), ex, target, age)
        hit = self._est_cache.get(key)
        if hit is not None and samples.cache.get(("linkset-est", id(self))) is self._est_token:
            return hit
        self._check_samples(samples)
        if not len(samples):
            return float("nan")
        v = self.view[target]
        acc = float(correct(v.kind, self.ensemble_fields(samples, target, ex, age), self.true_fields(samples, target)).mean())
        if samples.cache.get(("linkset-est", id(self))) is not self._est_token:
            # new samples object (or its cache was cleared by an append): start afresh
            self._est_cache = {}
            samples.cache[("linkset-est", id(self))] = self._est_token
        self._est_cache[key] = acc
        return acc

    # ------------------------------------------------------------ adaptation
    def finetune(self, samples: AlignedSamples, *, epochs: int = 20, lr: float = 0.01, progress: bool = False, seed: int | None = None) -> None:
        """Continue training every link and ensemble on fresh aligned samples (in place).

        Views (count bins, standardisation) stay as trained so saved heads keep their
        meaning; ``version`` goes up by one.
        """
        self._check_samples(samples)
        if len(samples) < 2:
            raise LinksError(f"need at least 2 aligned samples to fine-tune links, got {len(samples)}")
        seed = self.version if seed is None else seed
        self._fit(samples, epochs=epochs, ens_epochs=epochs, lr=lr, progress=progress, threads=1, seed=seed, desc="fine-tune links")
        self.version += 1
        self.sample_counts["finetune"] = int(self.sample_counts.get("finetune", 0)) + len(samples)

    def uncertainty(self, candidates: AlignedSamples) -> np.ndarray:
        """Per candidate frame: mean over targets of 1 - confidence of the ensemble that
        uses every other model present in ``candidates`` (the frames the links are least
        sure of score highest)."""
        have = [m.name for m in candidates.models if m.name in self.view]
        n = len(candidates)
        if not n:
            return np.zeros(0)
        unc = np.zeros(n)
        for j in self.names:
            heads = self.ensemble_heads(candidates, j, frozenset(s for s in have if s != j))
            unc += 1.0 - self.view[j].head_fields(heads)["confidence"]
        return unc / len(self.names)

    def select_for_adaptation(self, candidates: AlignedSamples, n: int) -> np.ndarray:
        """Indices (ascending) of the ``n`` candidate frames with the highest uncertainty.

        ``candidates`` may hold only the executed models' outputs.
        """
        if n <= 0 or not len(candidates):
            return np.zeros(0, np.int64)
        unc = self.uncertainty(candidates)
        order = np.argsort(-unc, kind="stable")[:n]
        return np.sort(order).astype(np.int64)

    # ------------------------------------------------------------ persistence
    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "temporal": self.temporal,
            "models": [m.to_json() for m in self.models],
            "views": [v.to_json() for v in self.views],
            "sources": {j: self.sources(j) for j in self.names},
            "sample_counts": self.sample_counts,
            "options": self.options,
        }

    def to_bytes(self) -> bytes:
        arrs: dict[str, np.ndarray] = {"__meta__": np.array(json.dumps(self.metadata()))}
        for j in self.names:
            for k in _PAIR_KEYS:
                arrs[f"pair/{j}/{k}"] = self.pairs[j][k]
            for k in _ENS_KEYS:
                arrs[f"ens/{j}/{k}"] = self.ens[j][k]
            arrs[f"prior/{j}"] = self.priors[j]
            for k in _GATE_KEYS:
                arrs[f"gate/{j}/{k}"] = np.asarray(self.gates.get(j, default_gate())[k], np.float32)
        buf = io.BytesIO()
        np.savez(buf, **arrs)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "links") -> "LinkSet":
        """Inverse of :meth:`to_bytes`; anything wrong is a one-line LinksError."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return cls._from_npz(z, where)
        except LinksError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LinksError(f"{where}: not a readable links file ({msg})") from None

    @classmethod
    def _from_npz(cls, z: Any, where: str) -> "LinkSet":
        if "__meta__" not in z.files:
            raise LinksError(f"{where}: not an mlink links file (no metadata)")
        try:
            meta = json.loads(str(z["__meta__"][()]))
        except ValueError as exc:
            raise LinksError(f"{where}: unreadable links metadata ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise LinksError(f"{where}: not an mlink links file")
        if meta.get("format_version") != FORMAT_VERSION:
            raise LinksError(f"{where}: links format version {meta.get('format_version')} is not supported (expected {FORMAT_VERSION}); retrain with 'mlink links train'")
        try:
            views = [View.from_json(d) for d in meta["views"]]
            temporal = bool(meta["temporal"])
            names = [v.meta.name for v in views]
            pairs, ens, priors = {}, {}, {}
            gates: dict[str, dict[str, np.ndarray]] = {}
            for v in views:
                j = v.meta.name
                srcs = [n for n in names if n != j]
                if list(meta["sources"][j]) != srcs:
                    raise ValueError(f"sources of {j} do not match the model list")
                dims = [views[names.index(s)].dim for s in srcs]
                H = v.head_dim
                hh = nets.pair_hidden(H)
                expect = {"W1": (len(srcs), max(dims), hh), "b1": (len(srcs), hh), "W2": (len(srcs), hh, H), "b2": (len(srcs), H)}
                pairs[j] = {k: np.asarray(z[f"pair/{j}/{k}"], np.float32) for k in _PAIR_KEYS}
                e = {k: np.asarray(z[f"ens/{j}/{k}"], np.float32) for k in _ENS_KEYS}
                din = nets.ens_input_dim(dims, H, v.dim, temporal)
                hid = e["C1"].shape[1] if e["C1"].ndim == 2 else -1
                expect_e = {"w": (len(srcs) + 2, H), "wa": (nets.N_AGE, H), "z0": (H,), "C1": (din, hid), "c1": (hid,), "C2": (hid, H), "c2": (H,)}
                for k, shp in expect.items():
                    if pairs[j][k].shape != shp:
                        raise ValueError(f"array pair/{j}/{k} has shape {pairs[j][k].shape}, expected {shp}")
                for k, shp in expect_e.items():
                    if e[k].shape != shp:
                        raise ValueError(f"array ens/{j}/{k} has shape {e[k].shape}, expected {shp}")
                ens[j] = e
                if all(f"gate/{j}/{k}" in z.files for k in _GATE_KEYS):
                    g = {k: np.asarray(z[f"gate/{j}/{k}"], np.float32) for k in _GATE_KEYS}
                    for k, a in g.items():
                        if a.shape != (N_BUCKETS,) or not np.all(np.isfinite(a)):
                            raise ValueError(f"array gate/{j}/{k} has shape {a.shape} or non-finite values, expected ({N_BUCKETS},)")
                    gates[j] = g
                priors[j] = np.asarray(z[f"prior/{j}"], np.float32)
                if priors[j].shape != (v.dim,):
                    raise ValueError(f"array prior/{j} has shape {priors[j].shape}")
                if v.in_mean is None:
                    raise ValueError(f"view {j} has no standardisation")
                for a in list(pairs[j].values()) + list(e.values()):
                    if not np.all(np.isfinite(a)):
                        raise ValueError(f"non-finite weights for target {j}")
        except KeyError as exc:
            raise LinksError(f"{where}: links file is missing {exc}") from None
        except (ValueError, TypeError) as exc:
            raise LinksError(f"{where}: corrupt or mismatched links file: {exc}") from None
        return cls(
            views, pairs, ens, priors, temporal=temporal, version=int(meta.get("version", 1)), sample_counts=meta.get("sample_counts"), options=meta.get("options"), gates=gates
        )

    def save(self, directory: str | Path) -> Path:
        """Write ``DIR/links.npz`` (atomically) and ``DIR/links.json``; returns the .npz path."""
        d = Path(directory)
        if d.exists() and not d.is_dir():
            raise LinksError(f"{d}: exists and is not a directory")
        d.mkdir(parents=True, exist_ok=True)
        p = d / "links.npz"
        tmp = d / ".links.npz.tmp"
        tmp.write_bytes(self.to_bytes())
        os.replace(tmp, p)
        (d / "links.json").write_text(json.dumps(self.metadata(), indent=2) + "\n")
        return p

    @classmethod
    def load(cls, directory: str | Path) -> "LinkSet":
        """Read ``DIR/links.npz`` (or a links ``.npz`` file given directly)."""
        d = Path(directory)
        p = d / "links.npz" if d.is_dir() else d
        if not p.exists():
            raise LinksError(f"{p}: links file not found (train with 'mlink links train')")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise LinksError(f"{p}: cannot read: {exc.strerror or exc}") from None
        return cls.from_bytes(data, where=str(p))


def _time_tail(samples: AlignedSamples, frac: float) -> np.ndarray:
    """True for the last ``frac`` (by frame) of each camera's samples."""
    tail = np.zeros(len(samples), bool)
    for cam in samples.cameras():
        rows = np.flatnonzero(samples.camera == cam)
        rows = rows[np.argsort(samples.frame[rows], kind="stable")]
        k = int(round(len(rows) * frac))
        if k:
            tail[rows[len(rows) - k :]] = True
    return tail


def _time_folds(samples: AlignedSamples) -> np.ndarray:
    """0 for the first half (by frame) of each camera's samples, 1 for the rest."""
    folds = np.zeros(len(samples), np.int64)
    for cam in samples.cameras():
        rows = np.flatnonzero(samples.camera == cam)
        rows = rows[np.argsort(samples.frame[rows], kind="stable")]
        folds[rows[len(rows) // 2 :]] = 1
    return folds


def _prior_vector(view: View, vecs: np.ndarray) -> np.ndarray:
    """Encoded view of the target's most common value (median for scalars)."""
    if not len(vecs):
        return np.zeros(view.dim, np.float32)
    if view.kind is OutputKind.DETECTIONS:
        c = view.n_classes
        keys, inv, cnt = np.unique(np.rint(vecs[:, :c]).astype(np.int64), axis=0, return_inverse=True, return_counts=True)
        mode = keys[np.argmax(cnt)]
        rows = vecs[np.asarray(inv).reshape(-1) == np.argmax(cnt)]
        out = rows.mean(axis=0)
        out[:c] = mode
        out[c : 2 * c] = mode > 0
        return out.astype(np.float32)
    if view.kind is OutputKind.PROBS:
        lab = vecs.argmax(axis=1)
        mode = np.bincount(lab, minlength=view.n_classes).argmax()
        return vecs[lab == mode].mean(axis=0).astype(np.float32)
    return np.median(vecs, axis=0).astype(np.float32)


def timed_derive(ls: LinkSet, executed: dict[str, ModelOutput], targets: Sequence[str], repeat: int = 200) -> float:
    """Mean seconds per :meth:`LinkSet.derive` call (for benchmarks)."""
    ls.derive(executed, targets)
    t = time.perf_counter()
    for _ in range(repeat):
        ls.derive(executed, targets)
    return (time.perf_counter() - t) / repeat
