"""Fixed-length views of model outputs, and link heads that decode back to outputs.

A *view* turns one :class:`ModelOutput` into a fixed-length float vector (what a
link reads) and knows how a link's raw output (its *head*, pre-activation) maps
back to the record fields an executed model gives, with a confidence.

Encoded vector (``View.encode``), per output kind:

detections (C classes, grid G):  ``[counts (C), presence (C), occupancy (G*G), mean score (1)]``
    occupancy cell = number of box centres in that cell of a GxG grid over the frame.
probs (C classes):               ``[p_1 .. p_C]``
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
probs       C logits: softmax + cross-entropy on the target's soft probabilities.
scalar      standardised value mean and log-scale (Laplace NLL, i.e. a learned-scale L1),
            then the grid cells (linear, Huber).

Decoded outputs are ordinary :class:`ModelOutput` objects, so a derived record has the
same fields (count, counts, label, probs, value) as an executed one. A derived detector
output carries as many boxes as the predicted counts; their positions are approximate
(cells of the predicted occupancy grid, or boxes from a box link) and are marked with
``extra["boxes"] = "approx"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from links.metrics import scalar_tolerance
from links.outputs import ModelOutput, OutputKind
from links.samples import ModelMeta

GRID = 3  # coarse occupancy grid of detectors (GxG cells)
KMAX = 12  # largest count bin of a count head
LOG_EPS = 0.005  # scalar log transform offset (the metric's absolute tolerance)

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


@dataclass
class View:
    """Encoder/decoder of one model's outputs; ``fit`` learns head sizes and scales."""

    meta: ModelMeta
    grid: int = GRID
    kmax: list[int] = field(default_factory=list)  # detections: per-class top count bin
    scalar_grid: int = 0  # scalar: side of the model's own grid (0 = none)
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
    def dim(self) -> int:
        c = self.n_classes
        if self.kind is OutputKind.DETECTIONS:
            return 2 * c + self.grid * self.grid + 1
        if self.kind is OutputKind.PROBS:
            return c
        return 1 + self.scalar_grid * self.scalar_grid

    @property
    def segments(self) -> list[Segment]:
        key = (self.kind, tuple(self.kmax), self.grid, self.scalar_grid, self.n_classes)
        memo = self.__dict__.get("_seg_memo")
        if memo is not None and memo[0] == key:
            return memo[1]
        segs = self._segments()
        self.__dict__["_seg_memo"] = (key, segs)
        return segs

    def _segments(self) -> list[Segment]:
        segs: list[Segment] = []
        pos = 0
        if self.kind is OutputKind.DETECTIONS:
            for ci, name in enumerate(self.meta.classes):
                k = self.kmax[ci] if ci < len(self.kmax) else 1
                segs.append(Segment(f"count:{name}", CAT, pos, pos + k + 1))
                pos += k + 1
            segs.append(Segment("occupancy", BCE, pos, pos + self.grid * self.grid))
        elif self.kind is OutputKind.PROBS:
            segs.append(Segment("probs", CAT, 0, self.n_classes))
        else:
            segs.append(Segment("value", LAPLACE, 0, 2))
            if self.scalar_grid:
                segs.append(Segment("grid", HUBER, 2, 2 + self.scalar_grid**2))
        return segs

    @property
    def head_dim(self) -> int:
        return self.segments[-1].stop

    # ------------------------------------------------------------ encoding
    def encode(self, out: ModelOutput) -> np.ndarray:
        """One output -> its fixed-length vector (see module docstring)."""
        c = self.n_classes
        v = np.zeros(self.dim, np.float32)
        if self.kind is OutputKind.DETECTIONS:
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
                v[-1] = float(np.mean(out.scores)) if out.scores is not None and len(out.scores) else 0.0
        elif self.kind is OutputKind.PROBS:
            v[:] = np.asarray(out.probs, np.float32)
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

        Detections get ``counts`` boxes placed at the occupied grid cells (positions
        are approximate: the view keeps only the coarse grid).
        """
        vec = np.asarray(vec, np.float32)
        if self.kind is OutputKind.DETECTIONS:
            c = self.n_classes
            counts = np.maximum(np.rint(vec[:c]), 0).astype(np.int64)
            occ = vec[2 * c : 2 * c + self.grid**2]
            return self._make_detections(counts, occ, np.full(int(counts.sum()), vec[-1] if counts.sum() else 0.0))
        if self.kind is OutputKind.PROBS:
            p = np.clip(vec, 0, None)
            p = p / p.sum() if p.sum() > 0 else np.full(len(p), 1.0 / len(p))
            return ModelOutput(self.kind, self.meta.classes, probs=p)
        grid = vec[1:].reshape(self.scalar_grid, self.scalar_grid) if self.scalar_grid else None
        return ModelOutput(self.kind, self.meta.classes, value=float(vec[0]), grid=grid)

    def _make_detections(self, counts: np.ndarray, occ: np.ndarray, scores: np.ndarray, boxes: np.ndarray | None = None) -> ModelOutput:
        """Boxes for the given per-class counts, at the most occupied cells (or given boxes)."""
        total = int(counts.sum())
        if total == 0:
            return ModelOutput(self.kind, self.meta.classes)
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
            self.kind, self.meta.classes, boxes=np.asarray(boxes[:total], np.float32), scores=np.asarray(scores[:total], np.float32), class_ids=ids, extra={"boxes": "approx"}
        )

    # ------------------------------------------------------------ fitting
    def fit(self, vecs: np.ndarray, outs: Sequence[ModelOutput] | None = None) -> "View":
        """Learn head sizes (count bins, grid) and input standardisation from training vectors."""
        vecs = np.asarray(vecs, np.float32).reshape(-1, self.dim)
        if self.kind is OutputKind.DETECTIONS:
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

        cat segments hold a distribution (one-hot counts or the soft probabilities),
        bce segments 0/1, laplace (z, 0), huber standardised values.
        """
        vecs = np.asarray(vecs, np.float32)
        t = np.zeros((len(vecs), self.head_dim), np.float32)
        segs = self.segments
        if self.kind is OutputKind.DETECTIONS:
            c = self.n_classes
            for ci in range(c):
                s = segs[ci]
                k = s.size - 1
                idx = np.clip(np.rint(vecs[:, ci]), 0, k).astype(np.int64)
                t[np.arange(len(vecs)), s.start + idx] = 1.0
            occ = segs[-1]
            t[:, occ.start : occ.stop] = vecs[:, 2 * c : 2 * c + self.grid**2] > 0
        elif self.kind is OutputKind.PROBS:
            p = np.clip(vecs, 0, None)
            t[:] = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-9)
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

        detections: ``counts`` (n,C) int, ``occupancy`` (n,G*G) probabilities;
        probs: ``probs`` (n,C); scalar: ``value`` (n,), ``scale`` (n,) Laplace b, ``grid``;
        always ``confidence`` (n,) = the head's probability of being exactly right.
        """
        head = np.asarray(head, np.float64).reshape(-1, self.head_dim)
        n = len(head)
        segs = self.segments
        if self.kind is OutputKind.DETECTIONS:
            c = self.n_classes
            counts = np.zeros((n, c), np.int64)
            conf = np.ones(n)
            for ci in range(c):
                s = segs[ci]
                p = _softmax(head[:, s.start : s.stop])
                counts[:, ci] = p.argmax(axis=1)
                conf *= p.max(axis=1)
            occ = _sigmoid(head[:, segs[-1].start : segs[-1].stop])
            return {"counts": counts, "occupancy": occ, "confidence": conf}
        if self.kind is OutputKind.PROBS:
            p = _softmax(head)
            return {"probs": p, "confidence": p.max(axis=1)}
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
            if self.kind is OutputKind.DETECTIONS:
                counts = f["counts"][i]
                bx = boxes[i] if boxes is not None else None
                o = self._make_detections(counts, f["occupancy"][i], np.full(int(counts.sum()), conf), bx)
            elif self.kind is OutputKind.PROBS:
                o = ModelOutput(self.kind, self.meta.classes, probs=f["probs"][i].astype(np.float32))
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
            "in_mean": None if self.in_mean is None else [float(x) for x in self.in_mean],
            "in_std": None if self.in_std is None else [float(x) for x in self.in_std],
            "log_value": self.log_value,
            "value_range": [float(x) for x in self.value_range],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "View":
        v = cls(ModelMeta.from_json(d["meta"]), grid=int(d["grid"]), kmax=[int(k) for k in d["kmax"]], scalar_grid=int(d["scalar_grid"]))
        v.log_value = bool(d.get("log_value", False))
        v.value_range = tuple(float(x) for x in d.get("value_range", (-np.inf, np.inf)))  # type: ignore[assignment]
        if d.get("in_mean") is not None:
            v.in_mean = np.array(d["in_mean"], np.float32)
            v.in_std = np.array(d["in_std"], np.float32)
            if len(v.in_mean) != v.dim or len(v.in_std) != v.dim:
                raise ValueError(f"view {v.meta.name}: standardisation has {len(v.in_mean)} dims, expected {v.dim}")
        return v


def make_view(meta: ModelMeta, example: ModelOutput | None = None, grid: int = GRID) -> View:
    """A view for a model; ``example`` tells whether a scalar model has a grid."""
    sg = 0
    if meta.kind is OutputKind.SCALAR and example is not None and example.grid is not None:
        side = int(round(np.sqrt(np.size(example.grid))))
        if side * side == np.size(example.grid):
            sg = side
    return View(meta, grid=grid, scalar_grid=sg)


def output_fields(view: View, outs: Sequence[ModelOutput]) -> dict[str, np.ndarray]:
    """Metric fields of real outputs (same keys as :meth:`View.head_fields`, no confidence)."""
    if view.kind is OutputKind.DETECTIONS:
        c = view.n_classes
        counts = np.zeros((len(outs), c), np.int64)
        for i, o in enumerate(outs):
            if o.count:
                counts[i] = np.bincount(np.asarray(o.class_ids, np.int64), minlength=c)[:c]
        return {"counts": counts}
    if view.kind is OutputKind.PROBS:
        return {"probs": np.array([o.probs for o in outs], np.float64).reshape(len(outs), view.n_classes)}
    return {"value": np.array([o.value for o in outs], np.float64)}
