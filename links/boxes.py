"""Box-set links: a target detector's boxes from a source detector's boxes.

Issue 3, item 6 (going beyond the paper, which reduces a detector to one box). For each
SOURCE box (e.g. a person), a small MLP predicts whether the target detector has a box
"belonging" to it (existence probability) and where, as offsets in the source box's own
frame: ``((tx1 - sx1) / sw, (ty1 - sy1) / sh, (tx2 - sx1) / sw, (ty2 - sy1) / sh)``.
Per-box features: the source box (xyxy, width, height, centre, aspect), its score, the
number of source boxes on the frame. Training pairs come from matching target boxes to
source boxes on aligned samples by containment (share of the target box's area inside
the source box >= 0.5, greedy, largest first); unmatched source boxes teach "no target
box here". Target boxes outside every source box cannot be predicted (they count as
misses in the score).

Baselines (:func:`rule_boxes`): a fixed geometric rule per target (upper body = top 45 %
of the person box; face = top-centre, 30 % wide x 15 % high; full body / people = the
person box itself) emitted for EVERY source box, a rule FITTED on the footage (the
median matched offsets, emitted for every source box), and the empty prediction.

Scores: box F1 at IoU 0.5 (``links.metrics``), both per frame (mean of
:func:`links.metrics.box_f1`, where two empty sets agree = 1) and pooled over all boxes
(micro F1 = 2 TP / (#pred + #true), where predicting nothing scores 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from links.metrics import box_matches, f1_from
from links.outputs import ModelOutput, OutputKind
from links.samples import AlignedSamples

N_FEAT = 11
RULES: dict[str, tuple[float, float, float, float]] = {
    # target box in source-box coordinates (x1, y1, x2, y2), for a person source box
    "upper_body": (0.0, 0.0, 1.0, 0.45),
    "face": (0.35, 0.0, 0.65, 0.15),
    "full_body": (0.0, 0.0, 1.0, 1.0),
    "person": (0.0, 0.0, 1.0, 1.0),
}


def _feats(out: ModelOutput) -> np.ndarray:
    b = np.asarray(out.boxes, np.float32).reshape(-1, 4)
    if not len(b):
        return np.zeros((0, N_FEAT), np.float32)
    w = np.maximum(b[:, 2] - b[:, 0], 1e-4)
    h = np.maximum(b[:, 3] - b[:, 1], 1e-4)
    sc = np.asarray(out.scores, np.float32).reshape(-1) if out.scores is not None and len(out.scores) == len(b) else np.ones(len(b), np.float32)
    return np.stack([b[:, 0], b[:, 1], b[:, 2], b[:, 3], w, h, (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, np.log(h / w), sc, np.full(len(b), len(b), np.float32)], axis=1).astype(np.float32)


def _to_offsets(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    w = np.maximum(src[:, 2] - src[:, 0], 1e-4)
    h = np.maximum(src[:, 3] - src[:, 1], 1e-4)
    return np.stack([(tgt[:, 0] - src[:, 0]) / w, (tgt[:, 1] - src[:, 1]) / h, (tgt[:, 2] - src[:, 0]) / w, (tgt[:, 3] - src[:, 1]) / h], axis=1)


def _from_offsets(src: np.ndarray, off: np.ndarray) -> np.ndarray:
    w = src[:, 2] - src[:, 0]
    h = src[:, 3] - src[:, 1]
    return np.clip(np.stack([src[:, 0] + off[:, 0] * w, src[:, 1] + off[:, 1] * h, src[:, 0] + off[:, 2] * w, src[:, 1] + off[:, 3] * h], axis=1), 0.0, 1.0).astype(np.float32)


def match_pairs(src: np.ndarray, tgt: np.ndarray, min_contain: float = 0.5) -> np.ndarray:
    """For each source box, the index of the target box assigned to it (or -1)."""
    src = np.asarray(src, np.float64).reshape(-1, 4)
    tgt = np.asarray(tgt, np.float64).reshape(-1, 4)
    res = np.full(len(src), -1, np.int64)
    if not len(src) or not len(tgt):
        return res
    x1 = np.maximum(src[:, None, 0], tgt[None, :, 0])
    y1 = np.maximum(src[:, None, 1], tgt[None, :, 1])
    x2 = np.minimum(src[:, None, 2], tgt[None, :, 2])
    y2 = np.minimum(src[:, None, 3], tgt[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_t = np.maximum((tgt[:, 2] - tgt[:, 0]) * (tgt[:, 3] - tgt[:, 1]), 1e-12)
    contain = inter / area_t[None, :]
    used_t: set[int] = set()
    for flat in np.argsort(-contain, axis=None, kind="stable"):
        i, j = divmod(int(flat), len(tgt))
        if contain[i, j] < min_contain:
            break
        if res[i] < 0 and j not in used_t:
            res[i] = j
            used_t.add(j)
    return res


def _set_f1(preds: Sequence[np.ndarray], trues: Sequence[np.ndarray], thr: float = 0.5) -> dict[str, float]:
    tp = npred = ntrue = 0
    per = []
    for p, t in zip(preds, trues):
        m = box_matches(p, t, thr)
        tp, npred, ntrue = tp + m, npred + len(p), ntrue + len(t)
        per.append(f1_from(m, len(p), len(t)))
    micro = 2.0 * tp / (npred + ntrue) if (npred + ntrue) else 1.0
    return {"f1_frame": float(np.mean(per)) if per else float("nan"), "f1_micro": float(micro), "tp": tp, "n_pred": npred, "n_true": ntrue}


@dataclass
class BoxLink:
    """source boxes -> target boxes (one class each side; see the module docstring)."""

    source: str
    target: str
    W: dict[str, np.ndarray] = field(default_factory=dict)
    mu: np.ndarray = field(default_factory=lambda: np.zeros(N_FEAT, np.float32))
    sd: np.ndarray = field(default_factory=lambda: np.ones(N_FEAT, np.float32))
    threshold: float = 0.5
    fitted_rule: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0, 1.0], np.float32))
    n_pairs: int = 0

    @staticmethod
    def pairs(samples: AlignedSamples, source: str, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per source box: features, exists (0/1), offsets of its matched target box."""
        F, E, O = [], [], []
        for so, to in zip(samples.outputs[source], samples.outputs[target]):
            if not so.count:
                continue
            f = _feats(so)
            m = match_pairs(so.boxes, to.boxes)
            off = np.zeros((len(m), 4), np.float32)
            ok = m >= 0
            if ok.any():
                off[ok] = _to_offsets(np.asarray(so.boxes, np.float32)[ok], np.asarray(to.boxes, np.float32)[m[ok]])
            F.append(f)
            E.append(ok.astype(np.float32))
            O.append(off)
        if not F:
            return np.zeros((0, N_FEAT), np.float32), np.zeros(0, np.float32), np.zeros((0, 4), np.float32)
        return np.concatenate(F), np.concatenate(E), np.concatenate(O)

    @classmethod
    def train(cls, samples: AlignedSamples, source: str, target: str, *, seed: int = 0, epochs: int = 300, hidden: int = 32, lr: float = 0.01) -> "BoxLink":
        import torch

        F, E, O = cls.pairs(samples, source, target)
        link = cls(source, target)
        link.n_pairs = int(E.sum())
        if link.n_pairs:
            link.fitted_rule = np.median(O[E > 0], axis=0).astype(np.float32)
        else:
            link.fitted_rule = np.array(RULES.get(samples.meta(target).classes[0], (0.0, 0.0, 1.0, 1.0)), np.float32)
        if len(F):
            link.mu = F.mean(0)
            link.sd = np.where(F.std(0) > 1e-6, F.std(0), 1.0).astype(np.float32)
        rng = np.random.default_rng(seed)
        W = {
            "W1": (rng.standard_normal((N_FEAT, hidden)) * np.sqrt(2.0 / N_FEAT)).astype(np.float32),
            "b1": np.zeros(hidden, np.float32),
            "W2": (rng.standard_normal((hidden, 5)) * 0.01).astype(np.float32),
            "b2": np.concatenate([[-3.0], link.fitted_rule]).astype(np.float32),
        }
        if len(F) and E.sum() > 0:
            torch.manual_seed(seed)
            P = {k: torch.tensor(v, requires_grad=True) for k, v in W.items()}
            X = torch.from_numpy((F - link.mu) / link.sd)
            Et = torch.from_numpy(E)
            Ot = torch.from_numpy(O)
            pos = Et > 0
            opt = torch.optim.Adam(P.values(), lr=lr, weight_decay=1e-4)
            pw = torch.tensor(float(max(1.0, (len(E) - E.sum()) / max(E.sum(), 1.0)) ** 0.5))
            for _ in range(epochs):
                z = torch.relu(X @ P["W1"] + P["b1"]) @ P["W2"] + P["b2"]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], Et, pos_weight=pw)
                loss = loss + torch.nn.functional.smooth_l1_loss(z[pos, 1:], Ot[pos], beta=0.05) * 4.0
                opt.zero_grad()
                loss.backward()
                opt.step()
            W = {k: v.detach().numpy().astype(np.float32) for k, v in P.items()}
        link.W = W
        # the existence threshold that maximises pooled F1 on the training pairs' frames
        if len(F) and E.sum() > 0:
            best = (-1.0, 0.5)
            for thr in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
                link.threshold = thr
                f = link.evaluate(samples)["link"]["f1_micro"]
                if f > best[0] + 1e-9:
                    best = (f, thr)
            link.threshold = best[1]
        return link

    def _raw(self, out: ModelOutput) -> tuple[np.ndarray, np.ndarray]:
        f = (_feats(out) - self.mu) / self.sd
        z = np.maximum(f @ self.W["W1"] + self.W["b1"], 0.0) @ self.W["W2"] + self.W["b2"]
        return 1.0 / (1.0 + np.exp(-np.clip(z[:, 0], -30, 30))), z[:, 1:]

    def predict_boxes(self, out: ModelOutput) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (m, 4), existence probabilities (m,)) for one frame's source output."""
        if not out.count or not self.W:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        p, off = self._raw(out)
        keep = p >= self.threshold
        return _from_offsets(np.asarray(out.boxes, np.float32)[keep], off[keep]), p[keep].astype(np.float32)

    def predict(self, out: ModelOutput, classes: tuple[str, ...]) -> ModelOutput:
        """The target detector's derived output (boxes marked approximate)."""
        b, p = self.predict_boxes(out)
        if not len(b):
            return ModelOutput(OutputKind.DETECTIONS, classes)
        return ModelOutput(OutputKind.DETECTIONS, classes, boxes=b, scores=p, class_ids=np.zeros(len(b), np.int64), extra={"boxes": "link"})

    def evaluate(self, samples: AlignedSamples, rule: tuple[float, float, float, float] | None = None) -> dict[str, Any]:
        """F1 at IoU 0.5 of the link, the fixed rule, the fitted rule and 'no boxes'."""
        trues = [np.asarray(o.boxes, np.float32).reshape(-1, 4) for o in samples.outputs[self.target]]
        srcs = samples.outputs[self.source]
        if rule is None:
            rule = RULES.get(samples.meta(self.target).classes[0], (0.0, 0.0, 1.0, 1.0))
        link = [self.predict_boxes(o)[0] for o in srcs]
        fixed = [rule_boxes(o, rule) for o in srcs]
        fitted = [rule_boxes(o, tuple(self.fitted_rule)) for o in srcs]
        empty = [np.zeros((0, 4), np.float32) for _ in srcs]
        return {
            "link": _set_f1(link, trues),
            "rule": _set_f1(fixed, trues),
            "fitted_rule": _set_f1(fitted, trues),
            "empty": _set_f1(empty, trues),
            "frames": len(trues),
        }


def rule_boxes(out: ModelOutput, rule: Sequence[float]) -> np.ndarray:
    """One target box per source box at fixed offsets ``rule`` in the source box's frame."""
    b = np.asarray(out.boxes, np.float32).reshape(-1, 4)
    if not len(b):
        return np.zeros((0, 4), np.float32)
    return _from_offsets(b, np.tile(np.asarray(rule, np.float32), (len(b), 1)))
