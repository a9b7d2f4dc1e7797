"""Link networks: per-pair MLPs and per-target masked ensembles.

Weights live in plain numpy arrays (what is saved, and what inference uses: a
link call is a couple of small matmuls, cheaper in numpy than a torch call).
Training builds torch tensors from the same arrays and writes them back.

Pairwise links of one target j (one per source i != j, trained together as a
batch of independent MLPs; inputs zero-padded to the widest source view):
    z_ij = W2_i relu(W1_i x_i + b1_i) + b2_i          hidden = max(2 * head_dim_j, 16)
  The paper's hidden width is 2 x output size with dropout 0.5; we keep a floor of 16 units
  and train links without dropout (default): on regression heads dropout biased the
  outputs and tiny (4-8 unit) links under-fitted a known linear relation (tests).
    ``pair`` arrays: W1 (S, Dmax, Hh), b1 (S, Hh), W2 (S, Hh, H), b2 (S, H)

Ensemble of target j, valid for ANY subset A of executed sources (m_i = 1 iff i in A):
    base = sum_{i in A, prior, held} softmax(w)_i * z_i   (the paper's learned weights, plus
           a learned "prior" pseudo-source z_0 that is always present, so A = {} works, and,
           with temporal context, the held output's own vote View.held_head(h) whose weight
           logit moves with age: w_held + wa . phi(age))
    corr = C2 relu(C1 [m_i z_ij ..., m_i ..., (m_h x_h, m_h, m_h phi(age))] + c1) + c2
  (the correction sees the sources only through their links' heads: fed the raw source
  views it memorised in-sample noise and out-voted the held output)
    head = base + corr
  ``x_h`` is the target's own last executed output (standardised view) and ``phi(age)``
  age features; the ensemble is trained with random source masks (each sample draws a
  keep-probability, then each source is kept with it) and, when temporal, a random held
  output 1..MAX_AGE frames old.
    ``ens`` arrays: w (S+2, H), wa (3, H), z0 (H), C1 (Din, Hc), c1 (Hc), C2 (Hc, H), c2 (H)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from links.views import BCE, CAT, HUBER, LAPLACE, View

MAX_AGE = 16  # held outputs seen in training are 1..MAX_AGE frames old
ENS_HIDDEN = 64
N_AGE = 3


def age_features(age: np.ndarray) -> np.ndarray:
    a = np.asarray(age, np.float32).reshape(-1, 1)
    return np.concatenate([np.exp(-a / 4.0), np.exp(-a / 16.0), np.minimum(a, 64.0) / 64.0], axis=1).astype(np.float32)


def pair_hidden(head_dim: int) -> int:
    return max(2 * head_dim, 16)


def ens_input_dim(src_dims: Sequence[int], head_dim: int, target_dim: int, temporal: bool) -> int:
    return len(src_dims) * head_dim + len(src_dims) + ((target_dim + 1 + N_AGE) if temporal else 0)


# ------------------------------------------------------------------ numpy forward
def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def pair_forward(p: dict[str, np.ndarray], s: int, x: np.ndarray) -> np.ndarray:
    """Link from source slot ``s`` on standardised views ``x`` (n, D_s) -> heads (n, H)."""
    d = x.shape[1]
    h = relu(x @ p["W1"][s, :d] + p["b1"][s])
    return h @ p["W2"][s] + p["b2"][s]


def ens_forward(
    e: dict[str, np.ndarray],
    xs: Sequence[np.ndarray | None],
    zs: Sequence[np.ndarray | None],
    n: int,
    *,
    src_dims: Sequence[int],
    target_dim: int,
    temporal: bool = False,
    held: np.ndarray | None = None,
    held_z: np.ndarray | None = None,
    held_mask: np.ndarray | None = None,
    age: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Ensemble heads (n, H). ``xs[s]``/``zs[s]`` are None for sources not executed.

    ``held`` (n, D_j) standardised view of the target's last executed output, ``held_z``
    its :meth:`View.held_head`, ``held_mask`` (n,) 1 where a held output exists, ``age``
    (n,) its age in frames. ``mask`` (n, S) may switch sources off per row.
    """
    S = len(xs)
    H = e["z0"].shape[0]
    m = np.zeros((n, S), np.float32)
    for s in range(S):
        if xs[s] is not None:
            m[:, s] = 1.0
    if mask is not None:
        m *= mask
    hm = np.zeros((n, 1), np.float32)
    if temporal and held is not None:
        hm = (np.ones((n, 1), np.float32) if held_mask is None else np.asarray(held_mask, np.float32).reshape(n, 1))
    ag = age_features(np.zeros(n) if age is None else age)
    # learned weights over present sources + the always-present prior + the held output
    logits = np.empty((n, S + 2, H), np.float32)
    logits[:] = e["w"]
    logits[:, S + 1] += ag @ e["wa"]
    present = np.concatenate([m, np.ones((n, 1), np.float32), hm], axis=1)
    logits[present == 0] = -np.inf
    logits -= logits.max(axis=1, keepdims=True)
    a = np.exp(logits)
    a /= a.sum(axis=1, keepdims=True)
    base = a[:, S] * e["z0"]
    if temporal and held is not None and held_z is not None:
        base = base + a[:, S + 1] * np.where(hm > 0, held_z, 0.0)
    parts_x, parts_z = [], []
    for s in range(S):
        if xs[s] is None:
            parts_x.append(np.zeros((n, src_dims[s]), np.float32))
            parts_z.append(np.zeros((n, H), np.float32))
        else:
            zs_s = zs[s]
            assert zs_s is not None
            base = base + a[:, s] * zs_s
            ms = m[:, s : s + 1]
            parts_x.append(xs[s] * ms)
            parts_z.append(zs_s * ms)
    feats = parts_z + [m]
    if temporal:
        hx = np.zeros((n, target_dim), np.float32) if held is None else held
        feats += [hx * hm, hm, ag * hm]
    f = np.concatenate(feats, axis=1).astype(np.float32)
    corr = relu(f @ e["C1"] + e["c1"]) @ e["C2"] + e["c2"]
    return base + corr


# ------------------------------------------------------------------ torch training
def _torch():
    import torch

    return torch


def head_loss(view: View, z, t):
    """Mean loss of heads ``z`` against targets ``t`` (torch tensors, (B, H))."""
    torch = _torch()
    F = torch.nn.functional
    total = z.new_zeros(())
    for s in view.segments:
        zs, ts = z[:, s.start : s.stop], t[:, s.start : s.stop]
        if s.kind == CAT:
            total = total + -(ts * F.log_softmax(zs, dim=1)).sum(1).mean()
        elif s.kind == BCE:
            total = total + 0.5 * F.binary_cross_entropy_with_logits(zs, ts)
        elif s.kind == LAPLACE:
            mu, logb = zs[:, 0], zs[:, 1].clamp(-6, 4)
            total = total + ((ts[:, 0] - mu).abs() / logb.exp() + logb).mean()
        elif s.kind == HUBER:
            total = total + F.smooth_l1_loss(zs, ts)
    return total


def init_pair(rng: np.random.Generator, S: int, dmax: int, hh: int, H: int) -> dict[str, np.ndarray]:
    return {
        "W1": (rng.standard_normal((S, dmax, hh)) * np.sqrt(2.0 / max(dmax, 1))).astype(np.float32),
        "b1": np.zeros((S, hh), np.float32),
        "W2": (rng.standard_normal((S, hh, H)) * np.sqrt(1.0 / hh)).astype(np.float32),
        "b2": np.zeros((S, H), np.float32),
    }


def init_ens(rng: np.random.Generator, S: int, din: int, H: int, hidden: int = ENS_HIDDEN) -> dict[str, np.ndarray]:
    w = np.zeros((S + 2, H), np.float32)
    w[S] = -3.0  # the prior pseudo-source only matters when nothing else is present
    w[S + 1] = 2.0  # start by trusting a held output (hold-last) where there is one
    return {
        "w": w,
        "wa": np.zeros((N_AGE, H), np.float32),
        "z0": np.zeros(H, np.float32),
        "C1": (rng.standard_normal((din, hidden)) * np.sqrt(2.0 / din)).astype(np.float32),
        "c1": np.zeros(hidden, np.float32),
        "C2": (rng.standard_normal((hidden, H)) * 0.01).astype(np.float32),
        "c2": np.zeros(H, np.float32),
    }


def train_pairs(
    p: dict[str, np.ndarray],
    view: View,
    xpad: np.ndarray,
    targets: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch: int,
    dropout: float,
    seed: int,
    weights: np.ndarray | None = None,
) -> float:
    """Train the S links into one target in place; ``xpad`` is (S, n, Dmax). Returns last loss."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    X = torch.from_numpy(np.ascontiguousarray(xpad, np.float32))
    T = torch.from_numpy(np.ascontiguousarray(targets, np.float32))
    S, n, _ = X.shape
    opt = torch.optim.Adam(P.values(), lr=lr)
    last = 0.0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for b0 in range(0, n, batch):
            idx = perm[b0 : b0 + batch]
            x = X[:, idx]
            h = torch.relu(torch.einsum("sbd,sdh->sbh", x, P["W1"]) + P["b1"][:, None])
            if dropout > 0:
                h = torch.nn.functional.dropout(h, dropout, training=True)
            z = torch.einsum("sbh,sho->sbo", h, P["W2"]) + P["b2"][:, None]
            t = T[idx]
            loss = head_loss(view, z.reshape(-1, z.shape[-1]), t.repeat(S, 1)) * S
            opt.zero_grad()
            loss.backward()
            opt.step()
            last = float(loss.detach()) / max(S, 1)
    for k in p:
        p[k] = P[k].detach().numpy().astype(np.float32)
    return last


def train_ensemble(
    e: dict[str, np.ndarray],
    view: View,
    xs: Sequence[np.ndarray],
    zs: np.ndarray,
    targets: np.ndarray,
    *,
    held_x: np.ndarray | None,
    held_z: np.ndarray | None,
    held_idx: np.ndarray | None,
    held_age: np.ndarray | None,
    epochs: int,
    lr: float,
    batch: int,
    dropout: float,
    seed: int,
    p_held: float = 0.6,
    weight_decay: float = 1e-4,
    rows: np.ndarray | None = None,
) -> float:
    """Train one target's ensemble in place with random source masks (and held outputs).

    ``xs[s]`` (n, D_s) standardised source views, ``zs`` (S, n, H) frozen link heads,
    ``held_x`` (n, D_j) the target's own standardised views and ``held_z`` their
    held heads; ``held_idx``/``held_age`` (n, A): for each sample the row (or -1) and
    age of a held output, one column per age choice.
    """
    torch = _torch()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in e.items()}
    S = len(xs)
    n, H = targets.shape
    ZA = torch.from_numpy(np.ascontiguousarray(zs.transpose(1, 0, 2), np.float32))  # (n, S, H)
    T = torch.from_numpy(np.ascontiguousarray(targets, np.float32))
    temporal = held_x is not None
    if temporal:
        assert held_z is not None and held_idx is not None and held_age is not None
        HX = torch.from_numpy(np.ascontiguousarray(held_x, np.float32))
        HZ = torch.from_numpy(np.ascontiguousarray(held_z, np.float32))
    opt = torch.optim.Adam(P.values(), lr=lr, weight_decay=weight_decay)
    last = 0.0
    pool = np.arange(n) if rows is None or not len(rows) else np.asarray(rows, np.int64)
    for _ in range(epochs):
        perm = rng.permutation(pool)
        for b0 in range(0, len(perm), batch):
            idx = perm[b0 : b0 + batch]
            B = len(idx)
            keep = rng.random((B, 1))
            u = rng.random(B)
            keep[u < 0.15, 0] = 1.0  # all sources
            keep[(u >= 0.15) & (u < 0.2), 0] = 0.0  # none
            m = torch.from_numpy((rng.random((B, S)) < keep).astype(np.float32))
            ti = torch.from_numpy(idx)
            z = ZA[ti] * m[:, :, None]  # (B, S, H)
            if temporal:
                col = rng.integers(0, held_idx.shape[1], B)
                hi = held_idx[idx, col]
                hm = torch.from_numpy(((hi >= 0) & (rng.random(B) < p_held)).astype(np.float32)[:, None])
                hrow = torch.from_numpy(np.maximum(hi, 0))
                ag = torch.from_numpy(age_features(held_age[idx, col]))
            else:
                hm = torch.zeros(B, 1)
                ag = torch.zeros(B, N_AGE)
            logits = P["w"][None].expand(B, S + 2, H).clone()
            logits[:, S + 1] = logits[:, S + 1] + ag @ P["wa"]
            present = torch.cat([m, torch.ones(B, 1), hm], dim=1)[:, :, None]
            logits = logits.masked_fill(present == 0, -1e9)
            a = torch.softmax(logits, dim=1)
            base = (a[:, :S] * z).sum(1) + a[:, S] * P["z0"]
            feats = [z.reshape(B, S * H), m]
            if temporal:
                base = base + a[:, S + 1] * HZ[hrow] * hm
                feats += [HX[hrow] * hm, hm, ag * hm]
            f = torch.cat(feats, dim=1)
            h = torch.relu(f @ P["C1"] + P["c1"])
            if dropout > 0:
                h = torch.nn.functional.dropout(h, dropout, training=True)
            out = base + h @ P["C2"] + P["c2"]
            loss = head_loss(view, out, T[ti])
            opt.zero_grad()
            loss.backward()
            opt.step()
            last = float(loss.detach())
    for k in e:
        e[k] = P[k].detach().numpy().astype(np.float32)
    return last
