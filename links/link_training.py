"""Training a link set: pairwise links, per-target ensembles and the temporal gate.

:func:`train` builds a new link set from aligned samples; :func:`fit` (re)trains one in
place (also what fine-tuning runs). The temporal gate of each target (:func:`fit_gate`)
is chosen on the last ``VAL_FRAC`` (in time) of the samples; too few samples to
validate it give a gate that always holds (:func:`hold_gate`). torch is imported only
inside the functions that train (a heavy import the pipeline's readers do not need).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from links import nets
from links.errors import LinksError
from links.link_state import N_BUCKETS, Arrays, LinkState, LinkT, age_bucket, default_gate, encoded, held_index
from links.metrics import correct
from links.samples import AlignedSamples
from links.views import View, make_view

TAU_GRID = np.array([0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01])
MIN_GATE_FRAMES = 16  # fewer validation frames than this: the temporal gate always holds
VAL_FRAC = 0.2  # the last 20 % (in time) of the training samples choose the temporal gate


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


def train(
    cls: type[LinkT],
    samples: AlignedSamples,
    *,
    seed: int,
    epochs: int,
    ens_epochs: int | None,
    temporal: bool,
    progress: bool,
    lr: float,
    batch: int,
    dropout: float,
    ens_dropout: float,
    threads: int | None,
    oof: bool,
) -> LinkT:
    """A new ``cls`` with all pairwise links and every target's ensemble trained on aligned
    samples (the defaults and their meaning: :meth:`links.linkset.LinkSet.train`)."""
    if len(samples) < 2:
        raise LinksError(f"need at least 2 aligned samples to train links, got {len(samples)}")
    if len(samples.models) < 2:
        raise LinksError("need at least 2 models to link")
    ens_epochs = epochs if ens_epochs is None else ens_epochs
    views = []
    for m in samples.models:
        v = make_view(m, samples.outputs[m.name][0], outputs=samples.outputs[m.name])
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
    fit(ls, samples, epochs=epochs, ens_epochs=ens_epochs, lr=lr, progress=progress, threads=threads, seed=seed, desc="train links", oof=oof)
    return ls


def fit(
    state: LinkState, samples: AlignedSamples, *, epochs: int, ens_epochs: int, lr: float, progress: bool, threads: int | None, seed: int, desc: str, oof: bool = False
) -> None:
    """Train ``state``'s links, ensembles and temporal gates on ``samples``, in place, from
    the current weights (fresh from :func:`train`, or already trained when fine-tuning)."""
    from tqdm import tqdm

    folds = _time_folds(samples) if oof and len(samples) >= 20 else None
    # The temporal gate is chosen on the last VAL_FRAC (in time) of the samples, with
    # the ensemble trained on the rest and out-of-fold link heads (so both are honest).
    val = _time_tail(samples, VAL_FRAC) if (state.temporal and folds is not None and len(samples) >= 40) else None

    batch = int(state.options.get("batch", 64))
    dropout = float(state.options.get("dropout", 0.0))
    ens_dropout = float(state.options.get("ens_dropout", 0.1))
    X = {n: state.standardised(samples, n) for n in state.names}
    held_idx = held_age = None
    if state.temporal:
        cols = [held_index(samples, a) for a in range(1, nets.MAX_AGE + 1)]
        held_idx = np.stack([c[0] for c in cols], axis=1)
        held_age = np.stack([c[1] for c in cols], axis=1)
    bar = tqdm(total=2 * len(state.names), desc=desc, unit="net", disable=not progress)
    with torch_threads(threads):
        for ti, v in enumerate(state.views):
            j = v.meta.name
            srcs = state.sources(j)
            T = v.targets(encoded(samples, v))
            p = state.pairs[j]
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
                state.ens[j],
                v,
                [X[n] for n in srcs],
                zs,
                T,
                held_x=X[j] if state.temporal else None,
                held_z=v.held_head(encoded(samples, v)) if state.temporal else None,
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
                state.gates[j] = fit_gate(state, samples, j, X, zs, np.flatnonzero(val), held_idx, held_age, seed=seed * 1000 + 900 + ti)
                # then let the ensemble see the validation rows too (a short warm-started pass)
                nets.train_ensemble(
                    state.ens[j], v, [X[n] for n in srcs], zs, T,
                    held_x=X[j], held_z=v.held_head(encoded(samples, v)), held_idx=held_idx, held_age=held_age,
                    epochs=max(1, ens_epochs // 4), lr=lr / 3, batch=batch, dropout=ens_dropout, seed=seed * 1000 + 700 + ti,
                )
            elif state.temporal and held_idx is not None and held_age is not None:
                # Too few samples to validate the temporal ensemble against the target's
                # own last output: hold it (hold-last is the safe default), and give the
                # held value its measured hold-last accuracy as confidence.
                state.gates[j] = hold_gate(state, samples, j, held_idx, held_age)
            elif j not in state.gates:
                state.gates[j] = default_gate()
            bar.update(1)
    bar.close()


def hold_gate(state: LinkState, samples: AlignedSamples, j: str, held_idx: np.ndarray, held_age: np.ndarray) -> Arrays:
    """A gate that always holds; ``hold_acc`` per age bucket measured on ``samples``."""
    gate = default_gate()
    gate["tau"][:] = TAU_GRID[-1]
    tf = state.true_fields(samples, j)
    r = np.repeat(np.arange(len(samples)), held_idx.shape[1])
    hi, ha = held_idx.reshape(-1), held_age.reshape(-1)
    ok = hi >= 0
    if ok.any():
        r, hi, ha = r[ok], hi[ok], ha[ok]
        hold_ok = correct(state.view[j].kind, {k: a[hi] for k, a in tf.items()}, {k: a[r] for k, a in tf.items()})
        b = age_bucket(ha)
        for k in range(N_BUCKETS):
            if (b == k).any():
                gate["hold_acc"][k] = float(hold_ok[b == k].mean())
    return gate


def fit_gate(
    state: LinkState,
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
) -> Arrays:
    """Per age bucket, the confidence below which the held output beats the temporal ensemble.

    On the validation rows, for held outputs 1..MAX_AGE frames old and for all sources plus
    ``n_subsets`` random source subsets: the ensemble's prediction is kept where its
    confidence is >= tau, else the held output is used; tau (from TAU_GRID, 1.01 = always
    hold) maximises validation accuracy (ties go to the larger tau, i.e. hold-last).
    ``hold_acc`` = validation accuracy of the held output per bucket (its confidence).
    """
    v = state.view[j]
    srcs = state.sources(j)
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
    true = {k: a[r] for k, a in state.true_fields(samples, j).items()}
    hold_f = {k: a[hi] for k, a in state.true_fields(samples, j).items()}
    hold_ok = correct(v.kind, hold_f, true).astype(np.float64)
    masks = [np.ones((len(r), S), np.float32)]
    for _ in range(n_subsets):
        keep = rng.random((len(r), 1))
        masks.append((rng.random((len(r), S)) < keep).astype(np.float32))
    bucket = age_bucket(ha)
    conf_l, ens_ok_l = [], []
    for m in masks:
        heads = nets.ens_forward(
            state.ens[j], [X[n][r] for n in srcs], [zs[s, r] for s in range(S)], len(r),
            held=X[j][hi], held_z=v.held_head(enc[hi]), age=ha.astype(np.float32), temporal=True,
            src_dims=state.src_dims[j], target_dim=v.dim, mask=m,
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
    if view.kind.has_boxes:
        c = view.n_classes
        keys, inv, cnt = np.unique(np.rint(vecs[:, :c]).astype(np.int64), axis=0, return_inverse=True, return_counts=True)
        mode = keys[np.argmax(cnt)]
        rows = vecs[np.asarray(inv).reshape(-1) == np.argmax(cnt)]
        out = rows.mean(axis=0)
        out[:c] = mode
        out[c : 2 * c] = mode > 0
        return out.astype(np.float32)
    if view.kind.has_probs:
        lab = vecs.argmax(axis=1)
        mode = np.bincount(lab, minlength=vecs.shape[1]).argmax()
        return vecs[lab == mode].mean(axis=0).astype(np.float32)
    return np.median(vecs, axis=0).astype(np.float32)
