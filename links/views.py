"""Fixed-length views of model outputs, and link heads that decode back to outputs.

A *view* turns one :class:`ModelOutput` into a fixed-length float vector (what a
link reads) and knows how a link's raw output (its *head*, pre-activation) maps
back to the record fields an executed model gives, with a confidence.

Encoded vector (``View.encode``), per output kind:

detections (C classes, grid G):  ``[counts (C), presence (C), occupancy (G*G), mean score (1)]``
    occupancy cell = number of box centres in that cell of a GxG grid over the frame.
segmentation:                    the detections vector, then ``[mask coverage per class (C)]``
keypoints:                       the detections vector, then ``[mean visible keypoints per person (1)]``
probs (C classes):               ``[p_1 .. p_C]``
topk (vocabulary V):             ``[p_v for v in vocabulary (V), best other class's p (1)]``
    A classifier over many classes (ImageNet-1k) is viewed through a *vocabulary*: the
    (at most ``VOCAB``) labels that are most often its top-1 on the training samples,
    chosen once when the view is made (:func:`make_view`) and kept with the links. The
    last slot holds the probability of the best class outside the vocabulary, so the
    vector's arg-max is the top-1 label (or "other").
scalar:                          ``[value, grid cells (g*g, only when the model has a grid)]``

Link head (``View.head_dim`` pre-activation numbers) and its loss, by target kind:

detections  per class c a categorical over counts 0..K_c (K_c = largest count seen in
            training, the last bin meaning "K_c or more"): softmax + cross-entropy. This is
            the "ordinal/categorical count head": the arg-max is the count most likely to be
            exactly right, which is what the |pred-true| < 0.5 metric rewards (a linear MAE
            head predicts the median, a Poisson head the mean; neither was measured against
            it here -- a design choice, not a measured win).
            Then G*G occupancy logits (sigmoid + BCE on "any box centre in the cell"),
            used to place approximate boxes.
segmentation  the detections head, then C coverage values (linear, Huber on standardised
            coverage; decoded clipped to [0, 1]).
keypoints   the detections head, then the mean visible keypoints (linear, Huber).
probs       C logits: softmax + cross-entropy on the target's soft probabilities.
topk        V + 1 logits: softmax + cross-entropy on the one-hot top-1 label in vocabulary
            space ("other" when it is outside the vocabulary). A derived label is always a
            vocabulary label (the arg-max over the first V), so a frame whose true label is
            outside the vocabulary counts as wrong, which is what it is.
scalar      standardised value mean and log-scale (Laplace NLL, i.e. a learned-scale L1),
            then the grid cells (linear, Huber).

Metric fields (:meth:`View.head_fields`, :func:`output_fields`; compared by
:func:`links.metrics.correct`): box kinds ``counts``; probs ``probs``; topk ``label`` (the
index of the top-1 class among all classes); scalar ``value``.

Decoded outputs are ordinary :class:`ModelOutput` objects, so a derived record has the
same fields (count, counts, coverage, visible_keypoints, label, probs, top5, value) as an
executed one. A derived box output carries as many boxes as the predicted counts; their
positions are approximate (cells of the predicted occupancy grid, or boxes from a box
link) and are marked with ``extra["boxes"] = "approx"``; derived keypoints have no
per-person keypoints, only ``visible_keypoints``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from links.metrics import scalar_tolerance
from links.outputs import ModelOutput, OutputKind
from links.samples import ModelMeta

GRID = 3  # coarse occupancy grid of detectors (GxG cells)
KMAX = 12  # largest count bin of a count head
LOG_EPS = 0.005  # scalar log transform offset (the metric's absolute tolerance)
VOCAB = 16  # largest vocabulary of a topk view

# Segment kinds of a head.
CAT = "cat"  # categorical (softmax + CE), target = class index or soft distribution
BCE = "bce"  # independent sigmoids + BCE
LAPLACE = "laplace"  # (mu, log b) pairs, Laplace NLL on standardised target
HUBER = "huber"  # linear, Huber on standardised target


@dataclass(frozen=True)
class Segment:
    name: str
    kind: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _full_probs(vocab_p: np.ndarray, vocab: Sequence[int], n_classes: int, rest: float | None = None) -> np.ndarray:
    """A probability vector over all classes from vocabulary probabilities: the mass left
    over is spread evenly on the other classes, never above the best vocabulary class
    (so the arg-max stays a vocabulary label)."""
    p = np.zeros(n_classes, np.float32)
    vp = np.clip(np.asarray(vocab_p, np.float64), 0.0, None)
    if vp.sum() <= 0:
        vp = np.zeros(len(vocab))
        vp[0] = 1.0
    p[list(vocab)] = vp
    others = n_classes - len(vocab)
    if others > 0:
        left = max(0.0, 1.0 - float(vp.sum())) if rest is None else max(0.0, float(rest))
        mask = np.ones(n_classes, bool)
        mask[list(vocab)] = False
        p[mask] = min(left / others, 0.999 * float(vp.max()))
    return p


@dataclass
class View:
    """Encoder/decoder of one model's outputs; ``fit`` learns head sizes and scales."""

    meta: ModelMeta
    grid: int = GRID
    kmax: list[int] = field(default_factory=list)  # box kinds: per-class top count bin
    scalar_grid: int = 0  # scalar: side of the model's own grid (0 = none)
    vocab: list[int] = field(default_factory=list)  # topk: class indices of the vocabulary
    in_mean: np.ndarray | None = None  # input standardisation (encoded space)
    in_std: np.ndarray | None = None
    log_value: bool = False  # scalar: value handled as log(value + LOG_EPS) (non-negative in training)
    value_range: tuple[float, float] = (-np.inf, np.inf)  # scalar: transformed training range (predictions are clipped to it)

    # ------------------------------------------------------------ layout
    @property
    def kind(self) -> OutputKind:
        return self.meta.kind

    @property
    def n_classes(self) -> int:
        return len(self.meta.classes)

    @property
    def _box_dim(self) -> int:
        return 2 * self.n_classes + self.grid * self.grid + 1

    @property
    def _aux_dim(self) -> int:
        """Box kinds: encoded values after the detections part (coverage / visible keypoints)."""
        if self.kind is OutputKind.SEGMENTATION:
            return self.n_classes
        if self.kind is OutputKind.KEYPOINTS:
            return 1
        return 0

    @property
    def dim(self) -> int:
        c = self.n_classes
        if self.kind.has_boxes:
            return self._box_dim + self._aux_dim
        if self.kind is OutputKind.PROBS:
            return c
        if self.kind is OutputKind.TOPK:
            return len(self.vocab) + 1
        return 1 + self.scalar_grid * self.scalar_grid

    @property
    def cache_key(self) -> tuple[Any, ...]:
        """What the encoded vectors depend on besides the outputs (for caches of encodings)."""
        return (self.meta.name, self.grid, self.scalar_grid, tuple(self.vocab))

    @property
    def segments(self) -> list[Segment]:
        key = (self.kind, tuple(self.kmax), self.grid, self.scalar_grid, self.n_classes, len(self.vocab))
        memo = self.__dict__.get("_seg_memo")
        if memo is not None and memo[0] == key:
            return memo[1]
        segs = self._segments()
        self.__dict__["_seg_memo"] = (key, segs)
        return segs

    def _segments(self) -> list[Segment]:
        segs: list[Segment] = []
        pos = 0
        if self.kind.has_boxes:
            for ci, name in enumerate(self.meta.classes):
                k = self.kmax[ci] if ci < len(self.kmax) else 1
                segs.append(Segment(f"count:{name}", CAT, pos, pos + k + 1))
                pos += k + 1
            segs.append(Segment("occupancy", BCE, pos, pos + self.grid * self.grid))
            pos += self.grid * self.grid
            if self._aux_dim:
                name = "coverage" if self.kind is OutputKind.SEGMENTATION else "visible"
                segs.append(Segment(name, HUBER, pos, pos + self._aux_dim))
        elif self.kind is OutputKind.PROBS:
            segs.append(Segment("probs", CAT, 0, self.n_classes))
        elif self.kind is OutputKind.TOPK:
            segs.append(Segment("label", CAT, 0, len(self.vocab) + 1))
        else:
            segs.append(Segment("value", LAPLACE, 0, 2))
            if self.scalar_grid:
                segs.append(Segment("grid", HUBER, 2, 2 + self.scalar_grid**2))
        return segs

    @property
    def head_dim(self) -> int:
        return self.segments[-1].stop

    def _aux_fields(self, head: np.ndarray) -> np.ndarray:
        """Box kinds: the aux head segment back in value units (coverage in [0, 1], keypoints >= 0)."""
        assert self.in_mean is not None and self.in_std is not None
        s = self.segments[-1]
        a, b = self._box_dim, self._box_dim + self._aux_dim
        vals = head[:, s.start : s.stop] * self.in_std[a:b] + self.in_mean[a:b]
        return np.clip(vals, 0.0, 1.0) if self.kind is OutputKind.SEGMENTATION else np.maximum(vals, 0.0)

    # ------------------------------------------------------------ encoding
    def encode(self, out: ModelOutput) -> np.ndarray:
        """One output -> its fixed-length vector (see module docstring)."""
        c = self.n_classes
        v = np.zeros(self.dim, np.float32)
        if self.kind.has_boxes:
            n = out.count
            if n:
                ids = np.asarray(out.class_ids, np.int64)
                v[:c] = np.bincount(ids, minlength=c)[:c]
                v[c : 2 * c] = v[:c] > 0
                b = np.asarray(out.boxes, np.float32)
                cx = np.clip((b[:, 0] + b[:, 2]) / 2, 0, 0.999999)
                cy = np.clip((b[:, 1] + b[:, 3]) / 2, 0, 0.999999)
                g = self.grid
                cell = (cy * g).astype(np.int64) * g + (cx * g).astype(np.int64)
                v[2 * c : 2 * c + g * g] = np.bincount(cell, minlength=g * g)
                v[self._box_dim - 1] = float(np.mean(out.scores)) if out.scores is not None and len(out.scores) else 0.0
            if self.kind is OutputKind.SEGMENTATION and out.coverage is not None:
                v[self._box_dim :] = np.asarray(out.coverage, np.float32).reshape(-1)[:c]
            elif self.kind is OutputKind.KEYPOINTS:
                v[self._box_dim] = float(out.value or 0.0)
        elif self.kind is OutputKind.PROBS:
            v[:] = np.asarray(out.probs, np.float32)
        elif self.kind is OutputKind.TOPK:
            p = np.asarray(out.probs, np.float32)
            vocab = np.asarray(self.vocab, np.int64)
            v[: len(vocab)] = p[vocab]
            rest = p.copy()
            rest[vocab] = -1.0
            v[-1] = max(0.0, float(rest.max())) if len(rest) else 0.0
        else:
            v[0] = float(out.value or 0.0)
            if self.scalar_grid:
                if out.grid is not None and np.size(out.grid) == self.scalar_grid**2:
                    v[1:] = np.asarray(out.grid, np.float32).reshape(-1)
        return v

    def encode_many(self, outs: Sequence[ModelOutput]) -> np.ndarray:
        if not len(outs):
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.encode(o) for o in outs]).astype(np.float32)

    def decode_vector(self, vec: np.ndarray) -> ModelOutput:
        """An encoded vector -> a ModelOutput with the same record fields.

        Box kinds get ``counts`` boxes placed at the occupied grid cells (positions
        are approximate: the view keeps only the coarse grid).
        """
        vec = np.asarray(vec, np.float32)
        if self.kind.has_boxes:
            c = self.n_classes
            counts = np.maximum(np.rint(vec[:c]), 0).astype(np.int64)
            occ = vec[2 * c : 2 * c + self.grid**2]
            aux = vec[self._box_dim :]
            score = vec[self._box_dim - 1] if counts.sum() else 0.0
            return self._make_detections(counts, occ, np.full(int(counts.sum()), score), aux=aux)
        if self.kind is OutputKind.PROBS:
            p = np.clip(vec, 0, None)
            p = p / p.sum() if p.sum() > 0 else np.full(len(p), 1.0 / len(p))
            return ModelOutput(self.kind, self.meta.classes, probs=p)
        if self.kind is OutputKind.TOPK:
            return ModelOutput(self.kind, self.meta.classes, probs=_full_probs(vec[:-1], self.vocab, self.n_classes))
        grid = vec[1:].reshape(self.scalar_grid, self.scalar_grid) if self.scalar_grid else None
        return ModelOutput(self.kind, self.meta.classes, value=float(vec[0]), grid=grid)

    def _make_detections(self, counts: np.ndarray, occ: np.ndarray, scores: np.ndarray, boxes: np.ndarray | None = None,
                         aux: np.ndarray | None = None) -> ModelOutput:
        """Boxes for the given per-class counts, at the most occupied cells (or given boxes)."""
        total = int(counts.sum())
        kw: dict[str, Any] = {}
        if self.kind is OutputKind.SEGMENTATION:
            kw["coverage"] = np.zeros(self.n_classes, np.float32) if aux is None or not total else np.clip(aux, 0.0, 1.0)
        elif self.kind is OutputKind.KEYPOINTS:
            kw["value"] = float(aux[0]) if aux is not None and len(aux) and total else 0.0
        if total == 0:
            return ModelOutput(self.kind, self.meta.classes, **kw)
        ids = np.repeat(np.arange(len(counts)), counts)
        if boxes is None or len(boxes) < total:
            g = self.grid
            order = np.argsort(-np.asarray(occ, np.float64), kind="stable")
            cells = order[np.arange(total) % len(order)]
            r, col = cells // g, cells % g
            grid_boxes = np.stack([col / g, r / g, (col + 1) / g, (r + 1) / g], axis=1).astype(np.float32)
            if boxes is not None and len(boxes):
                grid_boxes[: len(boxes)] = boxes
            boxes = grid_boxes
        return ModelOutput(
            self.kind, self.meta.classes, boxes=np.asarray(boxes[:total], np.float32), scores=np.asarray(scores[:total], np.float32), class_ids=ids,
            extra={"boxes": "approx"}, **kw,
        )

    # ------------------------------------------------------------ fitting
    def fit(self, vecs: np.ndarray, outs: Sequence[ModelOutput] | None = None) -> "View":
        """Learn head sizes (count bins, grid) and input standardisation from training vectors."""
        vecs = np.asarray(vecs, np.float32).reshape(-1, self.dim)
        if self.kind.has_boxes:
            c = self.n_classes
            mx = vecs[:, :c].max(axis=0) if len(vecs) else np.zeros(c)
            self.kmax = [int(min(KMAX, max(1, m))) for m in mx]
        if self.kind is OutputKind.SCALAR:
            self.log_value = bool(len(vecs)) and bool(np.all(vecs[:, 0] >= 0))
            tv = self._tv(vecs[:, 0]) if len(vecs) else np.zeros(1)
            span = float(tv.max() - tv.min()) if len(tv) else 0.0
            self.value_range = (float(tv.min()) - 0.1 * span, float(tv.max()) + 0.1 * span)
            vecs = self._transform(vecs)
        self.in_mean = vecs.mean(axis=0) if len(vecs) else np.zeros(self.dim, np.float32)
        std = vecs.std(axis=0) if len(vecs) else np.ones(self.dim, np.float32)
        self.in_std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        return self

    def _tv(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float64)
        return np.log(np.maximum(v, 0.0) + LOG_EPS) if self.log_value else v

    def _itv(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, np.float64)
        return np.maximum(np.exp(t) - LOG_EPS, 0.0) if self.log_value else t

    def _transform(self, vecs: np.ndarray) -> np.ndarray:
        vecs = np.asarray(vecs, np.float32)
        if self.kind is OutputKind.SCALAR and self.log_value:
            vecs = vecs.copy()
            vecs[:, 0] = self._tv(vecs[:, 0])
        return vecs

    def standardise(self, vecs: np.ndarray) -> np.ndarray:
        assert self.in_mean is not None and self.in_std is not None, "view not fitted"
        return ((self._transform(vecs) - self.in_mean) / self.in_std).astype(np.float32)

    # ------------------------------------------------------------ training targets
    def targets(self, vecs: np.ndarray) -> np.ndarray:
        """Encoded vectors -> per-row head targets (same width as the head).

        cat segments hold a distribution (one-hot counts or labels, or the soft
        probabilities), bce segments 0/1, laplace (z, 0), huber standardised values.
        """
        vecs = np.asarray(vecs, np.float32)
        t = np.zeros((len(vecs), self.head_dim), np.float32)
        segs = self.segments
        if self.kind.has_boxes:
            c = self.n_classes
            for ci in range(c):
                s = segs[ci]
                k = s.size - 1
                idx = np.clip(np.rint(vecs[:, ci]), 0, k).astype(np.int64)
                t[np.arange(len(vecs)), s.start + idx] = 1.0
            occ = segs[c]
            t[:, occ.start : occ.stop] = vecs[:, 2 * c : 2 * c + self.grid**2] > 0
            if self._aux_dim:
                z = self.standardise(vecs)
                aux = segs[-1]
                t[:, aux.start : aux.stop] = z[:, self._box_dim : self._box_dim + self._aux_dim]
        elif self.kind is OutputKind.PROBS:
            p = np.clip(vecs, 0, None)
            t[:] = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-9)
        elif self.kind is OutputKind.TOPK:
            t[np.arange(len(vecs)), np.argmax(vecs, axis=1)] = 1.0
        else:
            z = self.standardise(vecs)
            t[:, 0] = z[:, 0]
            if self.scalar_grid:
                t[:, 2:] = z[:, 1:]
        return t

    def ideal_head(self, vecs: np.ndarray) -> np.ndarray:
        """A head output that decodes to exactly these vectors' fields (for tests)."""
        t = self.targets(vecs)
        h = np.zeros_like(t)
        for s in self.segments:
            seg = t[:, s.start : s.stop]
            if s.kind == CAT:
                h[:, s.start : s.stop] = np.log(np.clip(seg, 1e-6, 1.0))
            elif s.kind == BCE:
                h[:, s.start : s.stop] = np.where(seg > 0.5, 8.0, -8.0)
            elif s.kind == LAPLACE:
                h[:, s.start] = seg[:, 0]
                h[:, s.start + 1] = -8.0
            else:
                h[:, s.start : s.stop] = seg
        return h

    def held_head(self, vecs: np.ndarray) -> np.ndarray:
        """A mild head that says "same as this output" (the held output's vote in an ensemble).

        Like :meth:`ideal_head` but with finite confidence: categorical bins at log(0.02)
        off the held value, occupancy logits +-3, scalar scale = one standard deviation.
        """
        t = self.targets(vecs)
        h = np.zeros_like(t)
        for s in self.segments:
            seg = t[:, s.start : s.stop]
            if s.kind == CAT:
                h[:, s.start : s.stop] = np.log(np.clip(seg, 0.02, 1.0))
            elif s.kind == BCE:
                h[:, s.start : s.stop] = np.where(seg > 0.5, 3.0, -3.0)
            elif s.kind == LAPLACE:
                h[:, s.start] = seg[:, 0]
                h[:, s.start + 1] = 0.0
            else:
                h[:, s.start : s.stop] = seg
        return h

    # ------------------------------------------------------------ decoding heads
    def head_fields(self, head: np.ndarray) -> dict[str, np.ndarray]:
        """Vectorised decode of link heads -> metric fields plus confidence.

        box kinds: ``counts`` (n,C) int, ``occupancy`` (n,G*G) probabilities, segmentation
        also ``coverage`` (n,C), keypoints ``visible`` (n,); probs: ``probs`` (n,C); topk:
        ``label`` (n,) class index (always a vocabulary class) and ``vocab_probs`` (n,V+1);
        scalar: ``value`` (n,), ``scale`` (n,) Laplace b, ``grid``; always ``confidence`` (n,)
        = the head's probability of being exactly right.
        """
        head = np.asarray(head, np.float64).reshape(-1, self.head_dim)
        n = len(head)
        segs = self.segments
        if self.kind.has_boxes:
            c = self.n_classes
            counts = np.zeros((n, c), np.int64)
            conf = np.ones(n)
            for ci in range(c):
                s = segs[ci]
                p = _softmax(head[:, s.start : s.stop])
                counts[:, ci] = p.argmax(axis=1)
                conf *= p.max(axis=1)
            occ = _sigmoid(head[:, segs[c].start : segs[c].stop])
            out = {"counts": counts, "occupancy": occ, "confidence": conf}
            if self.kind is OutputKind.SEGMENTATION:
                out["coverage"] = self._aux_fields(head)
            elif self.kind is OutputKind.KEYPOINTS:
                out["visible"] = self._aux_fields(head)[:, 0]
            return out
        if self.kind is OutputKind.PROBS:
            p = _softmax(head)
            return {"probs": p, "confidence": p.max(axis=1)}
        if self.kind is OutputKind.TOPK:
            p = _softmax(head)
            best = p[:, :-1].argmax(axis=1)
            return {"label": np.asarray(self.vocab, np.int64)[best], "vocab_probs": p, "confidence": p[np.arange(n), best]}
        assert self.in_mean is not None and self.in_std is not None
        lo, hi = self.value_range
        mu_t = np.clip(head[:, 0] * self.in_std[0] + self.in_mean[0], lo, hi)
        b_t = np.exp(np.clip(head[:, 1], -12, 6)) * self.in_std[0]
        mu = self._itv(mu_t)
        tol = scalar_tolerance(mu)
        if self.log_value:  # P(|err| <= tol) with a Laplace in log space
            half = np.log((mu + tol + LOG_EPS) / (mu + LOG_EPS))
            b = b_t * (mu + LOG_EPS)  # the scale in value units, to first order
        else:
            half, b = tol, b_t
        out = {"value": mu, "scale": b, "confidence": 1.0 - np.exp(-half / np.maximum(b_t, 1e-12))}
        if self.scalar_grid:
            out["grid"] = head[:, 2:] * self.in_std[1:] + self.in_mean[1:]
        return out

    def decode(self, head: np.ndarray, boxes: list[np.ndarray | None] | None = None) -> list[tuple[ModelOutput, float]]:
        """Link heads -> (ModelOutput, confidence) per row."""
        f = self.head_fields(head)
        res = []
        for i in range(len(f["confidence"])):
            conf = float(f["confidence"][i])
            if self.kind.has_boxes:
                counts = f["counts"][i]
                bx = boxes[i] if boxes is not None else None
                aux = f["coverage"][i] if "coverage" in f else (f["visible"][i : i + 1] if "visible" in f else None)
                o = self._make_detections(counts, f["occupancy"][i], np.full(int(counts.sum()), conf), bx, aux=aux)
            elif self.kind is OutputKind.PROBS:
                o = ModelOutput(self.kind, self.meta.classes, probs=f["probs"][i].astype(np.float32))
            elif self.kind is OutputKind.TOPK:
                vp = f["vocab_probs"][i]
                o = ModelOutput(self.kind, self.meta.classes, probs=_full_probs(vp[:-1], self.vocab, self.n_classes, rest=vp[-1]))
            else:
                g = f["grid"][i].reshape(self.scalar_grid, self.scalar_grid).astype(np.float32) if self.scalar_grid else None
                o = ModelOutput(self.kind, self.meta.classes, value=float(f["value"][i]), grid=g)
            res.append((o, conf))
        return res

    # ------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta.to_json(),
            "grid": self.grid,
            "kmax": list(self.kmax),
            "scalar_grid": self.scalar_grid,
            "vocab": [int(x) for x in self.vocab],
            "in_mean": None if self.in_mean is None else [float(x) for x in self.in_mean],
            "in_std": None if self.in_std is None else [float(x) for x in self.in_std],
            "log_value": self.log_value,
            "value_range": [float(x) for x in self.value_range],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "View":
        v = cls(ModelMeta.from_json(d["meta"]), grid=int(d["grid"]), kmax=[int(k) for k in d["kmax"]], scalar_grid=int(d["scalar_grid"]),
                vocab=[int(x) for x in d.get("vocab", [])])
        if v.kind is OutputKind.TOPK and (not v.vocab or max(v.vocab) >= v.n_classes or min(v.vocab) < 0):
            raise ValueError(f"view {v.meta.name}: vocabulary {v.vocab[:4]}... does not fit {v.n_classes} classes")
        v.log_value = bool(d.get("log_value", False))
        v.value_range = tuple(float(x) for x in d.get("value_range", (-np.inf, np.inf)))  # type: ignore[assignment]
        if d.get("in_mean") is not None:
            v.in_mean = np.array(d["in_mean"], np.float32)
            v.in_std = np.array(d["in_std"], np.float32)
            if len(v.in_mean) != v.dim or len(v.in_std) != v.dim:
                raise ValueError(f"view {v.meta.name}: standardisation has {len(v.in_mean)} dims, expected {v.dim}")
        return v


def choose_vocab(outs: Sequence[ModelOutput], n_classes: int, size: int = VOCAB) -> list[int]:
    """The ``size`` classes most often top-1 in ``outs`` (ties by first appearance), at least one."""
    tops = [int(np.argmax(o.probs)) for o in outs if o.probs is not None]
    ranked = [c for c, _ in Counter(tops).most_common()]
    if len(ranked) < size:  # fill with the best runner-up classes, so rare labels still have a slot
        extra: Counter[int] = Counter()
        for o in outs:
            if o.probs is not None:
                for c in np.argsort(-np.asarray(o.probs))[:5]:
                    extra[int(c)] += 1
        ranked += [c for c, _ in extra.most_common() if c not in ranked]
    if not n_classes:
        return []
    return ranked[:size] or [0]


def make_view(meta: ModelMeta, example: ModelOutput | None = None, grid: int = GRID, outputs: Sequence[ModelOutput] | None = None) -> View:
    """A view for a model; ``example`` tells whether a scalar model has a grid; ``outputs``
    (or the example) choose a topk model's vocabulary."""
    sg = 0
    if meta.kind is OutputKind.SCALAR and example is not None and example.grid is not None:
        side = int(round(np.sqrt(np.size(example.grid))))
        if side * side == np.size(example.grid):
            sg = side
    vocab: list[int] = []
    if meta.kind is OutputKind.TOPK:
        outs = list(outputs) if outputs is not None else ([example] if example is not None else [])
        vocab = choose_vocab(outs, len(meta.classes)) if outs else list(range(min(VOCAB, len(meta.classes))))
    return View(meta, grid=grid, scalar_grid=sg, vocab=vocab)


def output_fields(view: View, outs: Sequence[ModelOutput]) -> dict[str, np.ndarray]:
    """Metric fields of real outputs (same keys as :meth:`View.head_fields`, no confidence)."""
    if view.kind.has_boxes:
        c = view.n_classes
        counts = np.zeros((len(outs), c), np.int64)
        for i, o in enumerate(outs):
            if o.count:
                counts[i] = np.bincount(np.asarray(o.class_ids, np.int64), minlength=c)[:c]
        return {"counts": counts}
    if view.kind is OutputKind.PROBS:
        return {"probs": np.array([o.probs for o in outs], np.float64).reshape(len(outs), view.n_classes)}
    if view.kind is OutputKind.TOPK:
        return {"label": np.array([int(np.argmax(o.probs)) for o in outs], np.int64)}
    return {"value": np.array([o.value for o in outs], np.float64)}
