"""Link metrics, always against the target model's own output.

:func:`correct` is the ONE definition of "accuracy of a model on a frame"; the
single-output :func:`model_accuracy`, the vectorised scores in ``links.linkset``,
the report and the benchmark all go through it.

- detections, segmentation, keypoints (the box kinds): correct when every per-class
  count is within 0.5 of the true count (|pred - true| < 0.5 per class, hence also in
  total); a segmentation's mask coverage and a pose model's visible keypoints are
  reported and derived, but agreement is about what is there, i.e. the counts;
- probs and topk: top-1 label agreement (topk fields carry the label index itself);
- scalar: correct when |pred - true| <= max(0.005, 0.10 * |true|) (10 % relative with a
  small absolute floor, so a "no motion" 0.0 is matched by anything under 0.005).
  The scalars of the default zoo are fractions (foreground, edge pixels) in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from links.outputs import ModelOutput, OutputKind

SCALAR_ABS_TOL = 0.005
SCALAR_REL_TOL = 0.10


def scalar_tolerance(true: np.ndarray | float) -> np.ndarray:
    return np.maximum(SCALAR_ABS_TOL, SCALAR_REL_TOL * np.abs(np.asarray(true, np.float64)))


def correct(kind: OutputKind, pred: dict[str, np.ndarray], true: dict[str, np.ndarray]) -> np.ndarray:
    """Per-row 0/1 correctness from metric fields (``counts`` / ``probs`` / ``value``)."""
    if kind.has_boxes:
        p = np.asarray(pred["counts"], np.float64)
        t = np.asarray(true["counts"], np.float64)
        return np.all(np.abs(p - t) < 0.5, axis=1)
    if "label" in true and "label" in pred:  # topk: class indices
        return np.asarray(pred["label"]) == np.asarray(true["label"])
    if kind.has_probs:
        return np.argmax(pred["probs"], axis=1) == np.argmax(true["probs"], axis=1)
    p = np.asarray(pred["value"], np.float64)
    t = np.asarray(true["value"], np.float64)
    return np.abs(p - t) <= scalar_tolerance(t)


def _fields(o: ModelOutput, classes: tuple[str, ...]) -> dict[str, np.ndarray]:
    if o.kind.has_boxes:
        return {"counts": np.array([[o.counts.get(c, 0) for c in classes]], np.float64)}
    if o.kind.has_probs:
        return {"probs": np.asarray(o.probs, np.float64).reshape(1, -1)}
    return {"value": np.array([o.value], np.float64)}


def model_accuracy(pred: ModelOutput, true: ModelOutput) -> float:
    """1.0 when ``pred`` agrees with the model's own output ``true``, else 0.0."""
    if pred.kind is not true.kind:
        raise ValueError(f"cannot compare {pred.kind.value} with {true.kind.value}")
    classes = true.classes
    return float(correct(true.kind, _fields(pred, classes), _fields(true, classes))[0])


# ------------------------------------------------------------------ boxes
def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N,4) with every box of ``b`` (M,4), xyxy."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def box_matches(pred: np.ndarray, true: np.ndarray, thr: float = 0.5) -> int:
    """Greedy one-to-one matches at IoU >= thr (highest IoU first)."""
    iou = iou_matrix(pred, true)
    if not iou.size:
        return 0
    pairs = np.argwhere(iou >= thr)
    if not len(pairs):
        return 0
    order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_p: set[int] = set()
    used_t: set[int] = set()
    m = 0
    for i, j in pairs[order]:
        if i not in used_p and j not in used_t:
            used_p.add(int(i))
            used_t.add(int(j))
            m += 1
    return m


def f1_from(tp: int, n_pred: int, n_true: int) -> float:
    """F1 of box sets; 1.0 when both are empty (agreeing on 'nothing')."""
    if n_pred == 0 and n_true == 0:
        return 1.0
    return 2.0 * tp / (n_pred + n_true)


def box_f1(pred: ModelOutput, true: ModelOutput, thr: float = 0.5) -> float:
    """F1 of predicted vs true boxes at IoU >= ``thr``, class-aware."""
    tp = 0
    for c in range(len(true.classes)):
        pm = np.asarray(pred.class_ids) == c
        tm = np.asarray(true.class_ids) == c
        tp += box_matches(np.asarray(pred.boxes)[pm], np.asarray(true.boxes)[tm], thr)
    return f1_from(tp, pred.count, true.count)


def agreement(pred: ModelOutput, true: ModelOutput) -> dict[str, Any]:
    """All link metrics of one prediction against the target model's own output."""
    res: dict[str, Any] = {"accuracy": model_accuracy(pred, true)}
    if true.kind.has_boxes:
        pc, tc = pred.counts, true.counts
        per = {c: abs(pc.get(c, 0) - tc[c]) < 0.5 for c in true.classes}
        res.update(
            count_correct=abs(pred.count - true.count) < 0.5,
            count_correct_per_class=per,
            presence=(pred.count > 0) == (true.count > 0),
            presence_per_class={c: (pc.get(c, 0) > 0) == (tc[c] > 0) for c in true.classes},
            abs_count_err=float(abs(pred.count - true.count)),
            box_f1=box_f1(pred, true),
        )
    elif true.kind.has_probs:
        res["top1"] = pred.label == true.label
    else:
        assert pred.value is not None and true.value is not None
        res["abs_err"] = abs(pred.value - true.value)
        res["within_tol"] = bool(res["accuracy"])
    return res
