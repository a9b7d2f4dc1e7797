"""A trained set of model links: pairwise links, per-target ensembles, priors.

This is what the scheduler loads: given the outputs of the models it executed on
a frame (any subset, including none) and optionally each target's last executed
output and its age, :meth:`LinkSet.derive` returns every requested target's
output as a :class:`Derived` (a :class:`ModelOutput` with a confidence). Everything
is arrays in, arrays out (no Redis, no video).

:class:`LinkSet` is the one public face; the work is done, along its seams, by

==========================  ==============================================================
``links.link_state``        the trained arrays (:class:`LinkState`, which LinkSet extends),
                            encoded views, held-output indices, the gate's age buckets
``links.link_training``     training the links, ensembles and temporal gates
``links.link_inference``    :meth:`LinkSet.derive` and its frame-independent caches
``links.link_evaluation``   vectorised heads and fields over samples, accuracy estimates
``links.link_adaptation``   fine-tuning, uncertainty, choosing frames to adapt on
``links.link_files``        the saved form (documented there), bytes, save/load
==========================  ==============================================================

Each takes the :class:`LinkState` (and, for inference and estimates, the cache this
class owns), so none of them imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from links import link_adaptation, link_evaluation, link_files, link_inference, link_training
from links.link_evaluation import EstimateCache
from links.link_files import FORMAT, FORMAT_VERSION
from links.link_inference import Derived, InferenceCache
from links.link_state import AGE_EDGES, N_BUCKETS, LinkState, age_bucket, default_gate, encoded, held_index
from links.link_training import MIN_GATE_FRAMES, TAU_GRID, VAL_FRAC, torch_threads
from links.outputs import ModelOutput
from links.samples import AlignedSamples

# Names other code imports from here (they live in the modules above).
__all__ = [
    "AGE_EDGES",
    "FORMAT",
    "FORMAT_VERSION",
    "MIN_GATE_FRAMES",
    "N_BUCKETS",
    "TAU_GRID",
    "VAL_FRAC",
    "Derived",
    "LinkSet",
    "age_bucket",
    "default_gate",
    "encoded",
    "held_index",
    "torch_threads",
]


class LinkSet(LinkState):
    """Pairwise links + per-target ensembles over a fixed list of models.

    The trained arrays are those of :class:`LinkState`; this class adds the caches of
    inference and of accuracy estimates, made on first use and dropped whenever the
    weights change (training, fine-tuning).
    """

    @cached_property
    def _inference(self) -> InferenceCache:
        return InferenceCache()

    @cached_property
    def _estimates(self) -> EstimateCache:
        return EstimateCache()

    def _forget_caches(self) -> None:
        """After the weights changed: nothing computed from the old ones may be reused."""
        self._inference = InferenceCache()
        self._estimates = EstimateCache()

    _check_samples = LinkState.check_samples  # the name links.report calls

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
    ) -> LinkSet:
        """Train all pairwise links and every target's ensemble on aligned samples.

        ``ens_epochs`` None = ``epochs``; ``threads``: torch threads while training;
        ``oof``: the ensembles learn from out-of-fold link heads (see
        :func:`links.link_training.fit`).
        """
        return link_training.train(
            cls, samples, seed=seed, epochs=epochs, ens_epochs=ens_epochs, temporal=temporal, progress=progress,
            lr=lr, batch=batch, dropout=dropout, ens_dropout=ens_dropout, threads=threads, oof=oof,
        )

    # ------------------------------------------------------------ inference
    def derive(
        self,
        executed: dict[str, ModelOutput],
        targets: Sequence[str],
        held: dict[str, tuple[ModelOutput, int]] | None = None,
    ) -> dict[str, Derived]:
        """Each target's output from the executed models (any subset) and held outputs
        ``held[target] = (its last executed output, age in frames)``; see
        :func:`links.link_inference.derive`."""
        return link_inference.derive(self, self._inference, executed, targets, held)

    def prior_output(self, target: str) -> ModelOutput:
        """The target's most common value in training, as an output."""
        return self.view[target].decode_vector(self.priors[target])

    # ------------------------------------------------------------ vectorised evaluation
    # These need nothing but the trained arrays: the functions themselves are the methods.
    pair_heads = link_evaluation.pair_heads
    ensemble_heads = link_evaluation.ensemble_heads
    ensemble_fields = link_evaluation.ensemble_fields
    heads_correct = link_evaluation.heads_correct
    pairwise_scores = link_evaluation.pairwise_scores

    def estimate_accuracy(self, samples: AlignedSamples, executed: frozenset[str], target: str, age: int | None = None) -> float:
        """Accuracy of ``target`` on ``samples`` when ``executed`` run (1.0 if it runs itself);
        ``age``: also use the target's own output ``age`` frames earlier. Cached per samples."""
        return link_evaluation.estimate_accuracy(self, self._estimates, samples, executed, target, age)

    # ------------------------------------------------------------ adaptation
    def finetune(self, samples: AlignedSamples, *, epochs: int = 20, lr: float = 0.01, progress: bool = False, seed: int | None = None) -> None:
        """Continue training every link and ensemble on fresh aligned samples (in place);
        ``version`` goes up by one. See :func:`links.link_adaptation.finetune`."""
        link_adaptation.finetune(self, samples, epochs=epochs, lr=lr, progress=progress, seed=seed)
        self._forget_caches()

    uncertainty = link_adaptation.uncertainty
    select_for_adaptation = link_adaptation.select_for_adaptation

    # ------------------------------------------------------------ persistence
    metadata = link_files.metadata
    to_bytes = link_files.to_bytes
    save = link_files.save

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "links") -> LinkSet:
        """Inverse of :meth:`to_bytes`; anything wrong is a one-line LinksError."""
        return link_files.from_bytes(cls, data, where)

    @classmethod
    def load(cls, directory: str | Path) -> LinkSet:
        """Read ``DIR/links.npz`` (or a links ``.npz`` file given directly)."""
        return link_files.load(cls, directory)
