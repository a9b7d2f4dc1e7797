"""The link report: per target, trivial baselines next to links, and a source x target matrix.

Every number is agreement with the target model's own output on held-out aligned
samples (``links.metrics.correct`` decides what "correct" means):

prior          the target's most common value in training, every frame
hold-last(k)   the target's own output k frames earlier (the prior where there is none)
best single    the best one-source link i -> j (the source is named)
ensemble       the ensemble of all other models (none of them is the target)
ens+temporal   the same plus the target's own output k frames earlier, through the
               temporal gate (the held output itself where the gate prefers it), i.e.
               exactly what ``LinkSet.derive`` returns
closed         (ens+temporal - prior) / (1 - prior): the share of the prior's error closed
dominance      share of test frames holding the single most common value (for scalars:
               within tolerance of the median); targets with dominance >= 0.9 are easy
               for any predictor.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from links.linkset import LinkSet, held_index
from links.metrics import correct, scalar_tolerance
from links.outputs import OutputKind
from links.samples import AlignedSamples
from links.views import output_fields


def _prior_fields(ls: LinkSet, target: str, n: int) -> dict[str, np.ndarray]:
    f = output_fields(ls.view[target], [ls.prior_output(target)])
    return {k: np.repeat(v, n, axis=0) for k, v in f.items()}


def _extra(kind: OutputKind, pred: dict[str, np.ndarray], true: dict[str, np.ndarray]) -> dict[str, float]:
    if kind.has_boxes:
        pt, tt = pred["counts"].sum(1), true["counts"].sum(1)
        return {
            "count_total": float(np.mean(np.abs(pt - tt) < 0.5)),
            "presence": float(np.mean((pt > 0) == (tt > 0))),
            "count_mae": float(np.mean(np.abs(pt - tt))),
        }
    if "label" in true:  # topk
        return {"top1": float(np.mean(np.asarray(pred["label"]) == np.asarray(true["label"])))}
    if kind.has_probs:
        return {"top1": float(np.mean(np.argmax(pred["probs"], 1) == np.argmax(true["probs"], 1)))}
    return {"mae": float(np.mean(np.abs(pred["value"] - true["value"])))}


def dominance(kind: OutputKind, true: dict[str, np.ndarray]) -> float:
    """Share of frames holding the most common value (scalars: within tolerance of the median)."""
    if kind.has_boxes:
        c = Counter(map(tuple, true["counts"].tolist()))
        return c.most_common(1)[0][1] / max(1, len(true["counts"]))
    if kind.has_probs:
        lab = np.asarray(true["label"]) if "label" in true else np.argmax(true["probs"], 1)
        return float(np.bincount(lab).max() / max(1, len(lab)))
    v = true["value"]
    med = np.median(v)
    return float(np.mean(np.abs(v - med) <= scalar_tolerance(v)))


def evaluate(ls: LinkSet, test: AlignedSamples, k: int = 4) -> list[dict[str, Any]]:
    """One row per target model (see the module docstring for the columns)."""
    ls._check_samples(test)
    n = len(test)
    P = ls.pairwise_scores(test)
    rows = []
    hidx, _ = held_index(test, k)
    for jj, j in enumerate(ls.names):
        v = ls.view[j]
        true = ls.true_fields(test, j)
        prior = _prior_fields(ls, j, n)
        hold = {key: np.where((hidx >= 0).reshape((-1,) + (1,) * (a.ndim - 1)), a[np.maximum(hidx, 0)], prior[key]) for key, a in true.items()}
        others = frozenset(ls.sources(j))
        ens_f = ls.ensemble_fields(test, j, others)
        enst_f = ls.ensemble_fields(test, j, others, age=k) if ls.temporal else ens_f
        col = P[:, jj].copy()
        col[jj] = -1
        best = int(np.argmax(col))
        acc = {
            "prior": float(correct(v.kind, prior, true).mean()),
            "hold_last": float(correct(v.kind, hold, true).mean()),
            "best_single": float(col[best]),
            "ensemble": float(correct(v.kind, ens_f, true).mean()),
            "ens_temporal": float(correct(v.kind, enst_f, true).mean()),
        }
        gap = 1.0 - acc["prior"]
        rows.append(
            {
                "target": j,
                "kind": v.kind.value,
                "n": n,
                "dominance": dominance(v.kind, true),
                "best_source": ls.names[best],
                **acc,
                "closed": (acc["ens_temporal"] - acc["prior"]) / gap if gap > 1e-9 else float("nan"),
                "ensemble_detail": _extra(v.kind, ens_f, true),
                "ens_temporal_detail": _extra(v.kind, enst_f, true),
                "prior_detail": _extra(v.kind, prior, true),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]], k: int = 4) -> str:
    head = f"{'target':18s} {'kind':10s} {'dom':>5s} {'prior':>6s} {f'hold{k}':>6s} {'single':>6s} {'(source)':18s} {'ens':>6s} {'ens+t':>6s} {'closed':>7s}  detail (ens+t)"
    lines = [head, "-" * len(head)]
    for r in rows:
        det = ", ".join(f"{a}={b:.3f}" for a, b in r["ens_temporal_detail"].items())
        closed = "   n/a" if np.isnan(r["closed"]) else f"{100 * r['closed']:6.0f}%"
        lines.append(
            f"{r['target']:18s} {r['kind']:10s} {r['dominance']:5.2f} {r['prior']:6.3f} {r['hold_last']:6.3f} {r['best_single']:6.3f} "
            f"{'(' + r['best_source'] + ')':18s} {r['ensemble']:6.3f} {r['ens_temporal']:6.3f} {closed}  {det}"
        )
    mean = {c: float(np.mean([r[c] for r in rows])) for c in ("prior", "hold_last", "best_single", "ensemble", "ens_temporal")}
    lines.append(
        f"{'mean':18s} {'':10s} {'':5s} {mean['prior']:6.3f} {mean['hold_last']:6.3f} {mean['best_single']:6.3f} {'':18s} {mean['ensemble']:6.3f} {mean['ens_temporal']:6.3f}"
    )
    return "\n".join(lines)


def draw_matrix(P: np.ndarray, names: list[str], path: str | Path, title: str = "link accuracy p(g_ij): source (row) -> target (column)") -> Path:
    """Heat map of pairwise link accuracies as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * k, 1.0 + 0.8 * k))
    im = ax.imshow(P, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("target")
    ax.set_ylabel("source")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{P[i, j]:.2f}", ha="center", va="center", color="white" if P[i, j] < 0.6 else "black", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p
