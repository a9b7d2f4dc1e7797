"""One typed container per model output kind, and its JSON record form.

Every adapter in the model zoo returns :class:`ModelOutput`; nothing else in the
pipeline touches framework objects (ultralytics results, OpenCV rectangles...).
The same container is what links derive, so a derived output comes back in the
same record fields as an executed one.

Boxes are stored in *normalised* xyxy coordinates (0..1 of the frame width and
height) so that outputs are comparable across resize settings and cameras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class OutputKind(str, Enum):
    """What a model outputs; decides its record fields and its link view."""

    DETECTIONS = "detections"  # a variable-size set of labelled boxes
    PROBS = "probs"  # one probability per class (single-label classifier)
    SCALAR = "scalar"  # one number (e.g. foreground fraction)


class Origin(str, Enum):
    """Where a model's output in a record came from."""

    EXECUTED = "executed"
    LINKED = "linked"
    HELD = "held"
    MISSING = "missing"


@dataclass
class ModelOutput:
    """The output of one model on one frame.

    detections: ``boxes`` (N,4) normalised xyxy, ``scores`` (N,), ``class_ids`` (N,)
    probs: ``probs`` (C,)
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
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind is OutputKind.DETECTIONS:
            n = 0 if self.boxes is None else len(self.boxes)
            self.boxes = np.zeros((0, 4), np.float32) if self.boxes is None else np.asarray(self.boxes, np.float32).reshape(n, 4)
            self.scores = np.ones(n, np.float32) if self.scores is None else np.asarray(self.scores, np.float32).reshape(n)
            self.class_ids = np.zeros(n, np.int64) if self.class_ids is None else np.asarray(self.class_ids, np.int64).reshape(n)
            if not self.classes:
                raise ValueError("detections need at least one class name")
            if n and (self.class_ids.min() < 0 or self.class_ids.max() >= len(self.classes)):
                raise ValueError(f"class id out of range for classes {self.classes}")
        elif self.kind is OutputKind.PROBS:
            if self.probs is None:
                raise ValueError("probs output needs a probability vector")
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

    def to_record(self, *, include_boxes: bool = True) -> dict[str, Any]:
        """The JSON fields of this output in an analytics record (schema v1)."""
        rec: dict[str, Any] = {"kind": self.kind.value}
        if self.kind is OutputKind.DETECTIONS:
            rec["count"] = self.count
            rec["counts"] = self.counts
            if include_boxes:
                assert self.boxes is not None and self.scores is not None and self.class_ids is not None
                rec["boxes"] = [
                    [round(float(v), 4) for v in b] + [round(float(s), 3), self.classes[int(c)]]
                    for b, s, c in zip(self.boxes, self.scores, self.class_ids)
                ]
        elif self.kind is OutputKind.PROBS:
            assert self.probs is not None
            rec["label"] = self.label
            rec["probs"] = {c: round(float(p), 4) for c, p in zip(self.classes, self.probs)}
        else:
            rec["value"] = round(float(self.value or 0.0), 5)
            if self.grid is not None:
                rec["grid"] = np.round(self.grid, 3).tolist()
        for k, v in self.extra.items():
            # Extras never overwrite a schema field (e.g. a note about approximate boxes).
            rec[f"{k}_note" if k in rec else k] = v
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any], classes: tuple[str, ...] | None = None) -> "ModelOutput":
        """Inverse of :meth:`to_record` (used by evaluation on JSONL output)."""
        kind = OutputKind(rec["kind"])
        if kind is OutputKind.DETECTIONS:
            names = tuple(classes or rec.get("counts", {}).keys())
            boxes = rec.get("boxes", [])
            return cls(
                kind,
                names,
                boxes=np.array([b[:4] for b in boxes], np.float32).reshape(-1, 4),
                scores=np.array([b[4] for b in boxes], np.float32),
                class_ids=np.array([names.index(b[5]) for b in boxes], np.int64),
            )
        if kind is OutputKind.PROBS:
            names = tuple(classes or rec["probs"].keys())
            return cls(kind, names, probs=np.array([rec["probs"][c] for c in names], np.float32))
        grid = rec.get("grid")
        return cls(kind, tuple(classes or ()), value=rec["value"], grid=None if grid is None else np.asarray(grid, np.float32))
