"""Box-set links: a known geometric relation is learned; scored by F1 at IoU 0.5."""

import numpy as np

from links.boxes import BoxLink, match_pairs, rule_boxes
from links.outputs import ModelOutput, OutputKind
from links.samples import AlignedSamples, ModelMeta

PERSON = ModelMeta("person_det", OutputKind.DETECTIONS, ("person",))
UPPER = ModelMeta("upper_det", OutputKind.DETECTIONS, ("upper_body",))


def synthetic(n, seed):
    """Upper body = x 10-90 %, y 0-35 % of the person box, present only for tall boxes."""
    rng = np.random.default_rng(seed)
    s = AlignedSamples([PERSON, UPPER])
    for i in range(n):
        k = int(rng.integers(0, 4))
        x = rng.random(k) * 0.7
        y = rng.random(k) * 0.4
        h = 0.15 + rng.random(k) * 0.45
        w = h * (0.3 + 0.1 * rng.random(k))
        pb = np.stack([x, y, x + w, y + h], axis=1).astype(np.float32)
        tall = h > 0.35
        ub = np.stack([x + 0.1 * w, y, x + 0.9 * w, y + 0.35 * h], axis=1)[tall].astype(np.float32)
        s.append("cam", i, i / 10, {
            "person_det": ModelOutput(OutputKind.DETECTIONS, ("person",), boxes=pb, scores=np.full(k, 0.9, np.float32), class_ids=np.zeros(k, np.int64)),
            "upper_det": ModelOutput(OutputKind.DETECTIONS, ("upper_body",), boxes=ub, scores=np.full(len(ub), 0.9, np.float32), class_ids=np.zeros(len(ub), np.int64)),
        })
    return s


def test_match_pairs_by_containment():
    src = np.array([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]])
    tgt = np.array([[0.55, 0.0, 0.95, 0.3]])
    assert match_pairs(src, tgt).tolist() == [-1, 0]
    assert match_pairs(src, np.zeros((0, 4))).tolist() == [-1, -1]


def test_box_link_beats_nothing_and_the_fixed_rule():
    train, test = synthetic(200, 0), synthetic(100, 1)
    link = BoxLink.train(train, "person_det", "upper_det", seed=0, epochs=200)
    r = link.evaluate(test)
    assert r["empty"]["f1_micro"] == 0.0
    assert r["link"]["f1_micro"] > 0.8, r["link"]
    assert r["link"]["f1_micro"] > r["rule"]["f1_micro"] + 0.2  # the rule fires on short boxes too
    assert r["link"]["f1_frame"] > r["empty"]["f1_frame"]
    out = link.predict(test.outputs["person_det"][0], ("upper_body",))
    assert out.kind is OutputKind.DETECTIONS and out.count == len(link.predict_boxes(test.outputs["person_det"][0])[0])
    assert len(rule_boxes(test.outputs["person_det"][0], (0, 0, 1, 0.45))) == test.outputs["person_det"][0].count
