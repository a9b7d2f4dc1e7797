"""One typed container per model output kind, and its JSON record form.

Every adapter in the model zoo returns :class:`ModelOutput`; nothing else in the
pipeline touches framework objects (ultralytics results, torch tensors, ONNX arrays,
OpenCV rectangles...). The same container is what links derive, so a derived output
comes back in the same record fields as an executed one.

Boxes are stored in *normalised* xyxy coordinates (0..1 of the frame width and
height) so that outputs are comparable across resize settings and cameras.

Kinds and their fields (``*`` = only in records written with boxes):

=================  ==========================================================================
``detections``     ``count``, ``counts`` (per class), ``boxes``\\* ``[x1, y1, x2, y2, score, class]``
``segmentation``   as detections, plus ``coverage``: per class, the fraction of the frame its
                   instance masks cover (union of the masks)
``keypoints``      as detections (the people), plus ``visible_keypoints``: mean number of
                   keypoints per person seen with confidence >= 0.5 (0 with nobody), and
                   ``keypoints``\\*: per box, K ``[x, y, confidence]`` (normalised)
``probs``          ``label`` (top-1) and ``probs`` (every class; they sum to 1)
``topk``           a classifier over many classes (e.g. ImageNet-1k): ``label`` (top-1) and
                   ``top5`` (the five most probable classes with their probabilities, best
                   first); the full vector stays in the :class:`ModelOutput`
``scalar``         ``value`` and an optional coarse ``grid``
=================  ==========================================================================
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

VISIBLE_KP_CONF = 0.5  # a keypoint counts as visible from this confidence on
TOPK_RECORD = 5  # how many classes a topk output lists in a record


class OutputKind(str, Enum):
    """What a model outputs; decides its record fields and its link view."""

    DETECTIONS = "detections"  # a variable-size set of labelled boxes
    SEGMENTATION = "segmentation"  # boxes + per-class mask coverage of the frame
    KEYPOINTS = "keypoints"  # boxes (people) + K keypoints each
    PROBS = "probs"  # one probability per class (single-label classifier, few classes)
    TOPK = "topk"  # a classifier over many classes, reported as its top 5
    SCALAR = "scalar"  # one number (e.g. foreground fraction)

    @property
    def has_boxes(self) -> bool:
        """Detections, segmentation and keypoints: a set of labelled boxes (counts, presence)."""
        return self in _BOX_KINDS

    @property
    def has_probs(self) -> bool:
        """probs and topk: a probability vector whose top-1 label is what agreement means."""
        return self in _PROB_KINDS


_BOX_KINDS = frozenset({OutputKind.DETECTIONS, OutputKind.SEGMENTATION, OutputKind.KEYPOINTS})
_PROB_KINDS = frozenset({OutputKind.PROBS, OutputKind.TOPK})


class Origin(str, Enum):
    """Where a model's output in a record came from."""

    EXECUTED = "executed"
    LINKED = "linked"
    HELD = "held"
    MISSING = "missing"


@dataclass
class ModelOutput:
    """The output of one model on one frame.

    box kinds: ``boxes`` (N,4) normalised xyxy, ``scores`` (N,), ``class_ids`` (N,);
    segmentation also ``coverage`` (C,); keypoints also ``keypoints`` (N,K,3) (None when
    not known, e.g. derived) and ``value`` = mean visible keypoints per person.
    probs / topk: ``probs`` (C,).
    scalar: ``value``; ``grid`` is an optional coarse spatial map (e.g. motion).
    """

    kind: OutputKind
    classes: tuple[str, ...] = ()
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    class_ids: np.ndarray | None = None
    probs: np.ndarray | None = None
    value: float | None = None
    grid: np.ndarray | None = None
    coverage: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = OutputKind(self.kind)
        self.classes = tuple(self.classes)
        if self.kind.has_boxes:
            n = 0 if self.boxes is None else len(self.boxes)
            self.boxes = np.zeros((0, 4), np.float32) if self.boxes is None else np.asarray(self.boxes, np.float32).reshape(n, 4)
            self.scores = np.ones(n, np.float32) if self.scores is None else np.asarray(self.scores, np.float32).reshape(n)
            self.class_ids = np.zeros(n, np.int64) if self.class_ids is None else np.asarray(self.class_ids, np.int64).reshape(n)
            if not self.classes:
                raise ValueError(f"{self.kind.value} need at least one class name")
            if n and (self.class_ids.min() < 0 or self.class_ids.max() >= len(self.classes)):
                raise ValueError(f"class id out of range for classes {self.classes}")
            if self.kind is OutputKind.SEGMENTATION:
                c = len(self.classes)
                cov = np.zeros(c, np.float32) if self.coverage is None else np.asarray(self.coverage, np.float32).reshape(-1)
                if len(cov) != c:
                    raise ValueError(f"{len(cov)} coverage values for {c} classes")
                self.coverage = np.clip(cov, 0.0, 1.0)
            elif self.kind is OutputKind.KEYPOINTS:
                if self.keypoints is not None:
                    kp = np.asarray(self.keypoints, np.float32)
                    if kp.ndim != 3 or kp.shape[0] != n or kp.shape[2] != 3:
                        raise ValueError(f"keypoints must be (boxes, K, 3), got {kp.shape} for {n} boxes")
                    self.keypoints = kp
                    self.value = float((kp[:, :, 2] >= VISIBLE_KP_CONF).sum(axis=1).mean()) if n else 0.0
                self.value = float(self.value or 0.0)
        elif self.kind.has_probs:
            if self.probs is None:
                raise ValueError(f"{self.kind.value} output needs a probability vector")
            self.probs = np.asarray(self.probs, np.float32).reshape(-1)
            if len(self.probs) != len(self.classes):
                raise ValueError(f"{len(self.probs)} probabilities for {len(self.classes)} classes")
        elif self.kind is OutputKind.SCALAR:
            if self.value is None:
                raise ValueError("scalar output needs a value")
            self.value = float(self.value)

    # -- derived fields -------------------------------------------------
    @property
    def count(self) -> int:
        return 0 if self.boxes is None else len(self.boxes)

    @property
    def counts(self) -> dict[str, int]:
        ids = self.class_ids if self.class_ids is not None else np.zeros(0, np.int64)
        binc = np.bincount(ids, minlength=len(self.classes))
        return {c: int(binc[i]) for i, c in enumerate(self.classes)}

    @property
    def label(self) -> str:
        assert self.probs is not None
        return self.classes[int(np.argmax(self.probs))]

    def top(self, k: int = TOPK_RECORD) -> list[tuple[str, float]]:
        """The ``k`` most probable classes with their probabilities, best first."""
        assert self.probs is not None
        k = min(k, len(self.probs))
        idx = np.argpartition(-self.probs, k - 1)[:k]
        idx = idx[np.argsort(-self.probs[idx], kind="stable")]
        return [(self.classes[int(i)], float(self.probs[i])) for i in idx]

    def to_record(self, *, include_boxes: bool = True) -> dict[str, Any]:
        """The JSON fields of this output in an analytics record (schema v1)."""
        rec: dict[str, Any] = {"kind": self.kind.value}
        if self.kind.has_boxes:
            rec["count"] = self.count
            rec["counts"] = self.counts
            if include_boxes:
                assert self.boxes is not None and self.scores is not None and self.class_ids is not None
                rec["boxes"] = [
                    [round(float(v), 4) for v in b] + [round(float(s), 3), self.classes[int(c)]]
                    for b, s, c in zip(self.boxes, self.scores, self.class_ids)
                ]
            if self.kind is OutputKind.SEGMENTATION:
                assert self.coverage is not None
                rec["coverage"] = {c: round(float(v), 4) for c, v in zip(self.classes, self.coverage)}
            elif self.kind is OutputKind.KEYPOINTS:
                rec["visible_keypoints"] = round(float(self.value or 0.0), 3)
                if include_boxes and self.keypoints is not None:
                    rec["keypoints"] = np.round(self.keypoints.astype(np.float64), 3).tolist()
        elif self.kind is OutputKind.PROBS:
            assert self.probs is not None
            rec["label"] = self.label
            rec["probs"] = {c: round(float(p), 4) for c, p in zip(self.classes, self.probs)}
        elif self.kind is OutputKind.TOPK:
            rec["label"] = self.label
            rec["top5"] = {c: round(p, 4) for c, p in self.top(TOPK_RECORD)}
        else:
            rec["value"] = round(float(self.value or 0.0), 5)
            if self.grid is not None:
                rec["grid"] = np.round(np.asarray(self.grid, np.float64), 3).tolist()  # float64: no 0.006000000052 in JSON
        for k, v in self.extra.items():
            # Extras never overwrite a schema field (e.g. a note about approximate boxes).
            rec[f"{k}_note" if k in rec else k] = v
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any], classes: tuple[str, ...] | None = None) -> "ModelOutput":
        """Inverse of :meth:`to_record` (used by evaluation on JSONL output).

        A topk record lists only its top 5: the rest of the probability mass is spread
        evenly over the other classes (so the top-1 label is kept).
        """
        kind = OutputKind(rec["kind"])
        if kind.has_boxes:
            names = tuple(classes or rec.get("counts", {}).keys())
            boxes = rec.get("boxes", [])
            kw: dict[str, Any] = {}
            if kind is OutputKind.SEGMENTATION:
                cov = rec.get("coverage", {})
                kw["coverage"] = np.array([float(cov.get(c, 0.0)) for c in names], np.float32)
            elif kind is OutputKind.KEYPOINTS:
                kp = rec.get("keypoints")
                if kp is not None and len(kp) == len(boxes) and len(kp):
                    kw["keypoints"] = np.asarray(kp, np.float32)
                else:
                    kw["value"] = float(rec.get("visible_keypoints", 0.0))
            return cls(
                kind,
                names,
                boxes=np.array([b[:4] for b in boxes], np.float32).reshape(-1, 4),
                scores=np.array([b[4] for b in boxes], np.float32),
                class_ids=np.array([names.index(b[5]) for b in boxes], np.int64),
                **kw,
            )
        if kind is OutputKind.PROBS:
            names = tuple(classes or rec["probs"].keys())
            return cls(kind, names, probs=np.array([rec["probs"][c] for c in names], np.float32))
        if kind is OutputKind.TOPK:
            top = rec["top5"]
            names = tuple(classes or top.keys())
            probs = np.zeros(len(names), np.float32)
            idx = [names.index(c) for c in top]
            probs[idx] = [float(top[c]) for c in top]
            rest = [i for i in range(len(names)) if i not in set(idx)]
            if rest:
                least = min(float(v) for v in top.values()) if top else 1.0
                probs[rest] = min(max(0.0, 1.0 - float(probs.sum())) / len(rest), 0.999 * least)
            return cls(kind, names, probs=probs)
        grid = rec.get("grid")
        return cls(kind, tuple(classes or ()), value=rec["value"], grid=None if grid is None else np.asarray(grid, np.float32))


_ARRAY_FIELDS = ("boxes", "scores", "class_ids", "probs", "grid", "coverage", "keypoints")


def output_to_bytes(o: ModelOutput) -> bytes:
    """A lossless, code-free serialisation of ``o`` (every array in full, unlike a record,
    which lists only a topk's top 5): how workers share held outputs through Redis."""
    arrays = {k: np.asarray(v) for k in _ARRAY_FIELDS if (v := getattr(o, k)) is not None}
    meta = {"kind": o.kind.value, "n_classes": len(o.classes), "value": o.value, "extra": o.extra}
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    return buf.getvalue()


def output_from_bytes(data: bytes, classes: tuple[str, ...]) -> ModelOutput:
    """Inverse of :func:`output_to_bytes`, for a model with these ``classes`` (the reader knows
    them; they are not repeated in every copy). Reads arrays only (``allow_pickle=False``):
    bytes from Redis never run code. Raises ValueError on anything else."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            arrays = {k: z[k] for k in _ARRAY_FIELDS if k in z.files}
        if int(meta["n_classes"]) != len(classes):
            raise ValueError(f"{meta['n_classes']} classes, the model has {len(classes)}")
        return ModelOutput(OutputKind(meta["kind"]), tuple(classes), value=meta.get("value"), extra=dict(meta.get("extra") or {}), **arrays)
    except (OSError, EOFError, KeyError, TypeError, ValueError, json.JSONDecodeError, zipfile.BadZipFile) as exc:
        raise ValueError(f"not a serialised model output: {exc}") from None
