"""Adaptation: fine-tuning a trained link set on fresh aligned samples, and choosing
which frames to fine-tune on (those the links are least sure of).
"""

from __future__ import annotations

import numpy as np

from links.errors import LinksError
from links.link_evaluation import ensemble_heads
from links.link_state import LinkState
from links.link_training import fit
from links.samples import AlignedSamples


def finetune(state: LinkState, samples: AlignedSamples, *, epochs: int, lr: float, progress: bool, seed: int | None) -> None:
    """Continue training every link and ensemble on fresh aligned samples (in place).

    Views (count bins, standardisation) stay as trained so saved heads keep their
    meaning; ``version`` goes up by one; ``seed`` None = the version before.
    """
    state.check_samples(samples)
    if len(samples) < 2:
        raise LinksError(f"need at least 2 aligned samples to fine-tune links, got {len(samples)}")
    seed = state.version if seed is None else seed
    fit(state, samples, epochs=epochs, ens_epochs=epochs, lr=lr, progress=progress, threads=1, seed=seed, desc="fine-tune links")
    state.version += 1
    state.sample_counts["finetune"] = int(state.sample_counts.get("finetune", 0)) + len(samples)


def uncertainty(state: LinkState, candidates: AlignedSamples) -> np.ndarray:
    """Per candidate frame: mean over targets of 1 - confidence of the ensemble that
    uses every other model present in ``candidates`` (the frames the links are least
    sure of score highest)."""
    have = [m.name for m in candidates.models if m.name in state.view]
    n = len(candidates)
    if not n:
        return np.zeros(0)
    unc = np.zeros(n)
    for j in state.names:
        heads = ensemble_heads(state, candidates, j, frozenset(s for s in have if s != j))
        unc += 1.0 - state.view[j].head_fields(heads)["confidence"]
    return unc / len(state.names)


def select_for_adaptation(state: LinkState, candidates: AlignedSamples, n: int) -> np.ndarray:
    """Indices (ascending) of the ``n`` candidate frames with the highest uncertainty.

    ``candidates`` may hold only the executed models' outputs.
    """
    if n <= 0 or not len(candidates):
        return np.zeros(0, np.int64)
    unc = uncertainty(state, candidates)
    order = np.argsort(-unc, kind="stable")[:n]
    return np.sort(order).astype(np.int64)
