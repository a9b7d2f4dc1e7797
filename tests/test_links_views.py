"""Output views: encoders/decoders round-trip, heads decode to the same record fields."""

import numpy as np
import pytest

from links.metrics import agreement, box_f1, model_accuracy
from links.outputs import ModelOutput, OutputKind
from links.samples import ModelMeta
from links.views import View, make_view

DET = ModelMeta("det", OutputKind.DETECTIONS, ("person", "car"))
PROBS = ModelMeta("cls", OutputKind.PROBS, ("dark", "dim", "bright"))
SCAL = ModelMeta("motion", OutputKind.SCALAR, ("foreground",))


def det(boxes, ids, scores=None):
    return ModelOutput(OutputKind.DETECTIONS, DET.classes, boxes=np.array(boxes, np.float32).reshape(-1, 4), class_ids=ids, scores=scores)


CASES = [
    det([], []),
    det([[0.1, 0.1, 0.2, 0.3]], [0], [0.9]),
    det([[0.1, 0.1, 0.2, 0.3], [0.7, 0.7, 0.9, 0.95], [0.4, 0.4, 0.5, 0.6]], [0, 1, 1], [0.5, 0.6, 0.7]),
]


@pytest.mark.parametrize("out", CASES)
def test_detection_round_trip(out):
    v = make_view(DET)
    vec = v.encode(out)
    assert vec.shape == (v.dim,) == (2 * 2 + 9 + 1,)
    back = v.decode_vector(vec)
    assert back.counts == out.counts and back.count == out.count
    assert vec[2 + 0] == (out.counts["person"] > 0) and vec[2 + 1] == (out.counts["car"] > 0)
    assert vec[4:13].sum() == out.count  # occupancy holds every box centre
    v.fit(np.stack([v.encode(o) for o in CASES]))
    dec, conf = v.decode(v.ideal_head(vec[None]))[0]
    assert dec.counts == out.counts and conf > 0.99
    assert model_accuracy(dec, out) == 1.0
    assert dec.to_record(include_boxes=False)["counts"] == out.to_record(include_boxes=False)["counts"]


def test_detection_occupancy_cell():
    v = make_view(DET)
    vec = v.encode(det([[0.8, 0.8, 0.9, 0.9]], [1]))
    occ = vec[4:13].reshape(3, 3)
    assert occ[2, 2] == 1 and occ.sum() == 1


@pytest.mark.parametrize("p", [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
def test_probs_round_trip(p):
    v = make_view(PROBS)
    out = ModelOutput(OutputKind.PROBS, PROBS.classes, probs=np.array(p))
    back = v.decode_vector(v.encode(out))
    assert back.label == out.label and np.allclose(back.probs, p)
    v.fit(np.array([p, [0.2, 0.2, 0.6]], np.float32))
    dec, conf = v.decode(v.ideal_head(v.encode(out)[None]))[0]
    assert dec.label == out.label and np.allclose(dec.probs, p, atol=1e-4)
    assert conf == pytest.approx(max(p), abs=1e-4)


@pytest.mark.parametrize("value", [0.0, 0.0031, 0.25, 0.9])
def test_scalar_round_trip_with_grid(value):
    grid = np.full((4, 4), value, np.float32)
    out = ModelOutput(OutputKind.SCALAR, SCAL.classes, value=value, grid=grid)
    v = make_view(SCAL, out)
    assert v.scalar_grid == 4 and v.dim == 17
    back = v.decode_vector(v.encode(out))
    assert back.value == pytest.approx(value) and np.allclose(back.grid, grid)
    train = np.stack([v.encode(ModelOutput(OutputKind.SCALAR, SCAL.classes, value=x, grid=grid)) for x in (0.0, 0.01, 0.3, 1.0)])
    v.fit(train)
    assert v.log_value  # non-negative training values are modelled in log space
    dec, conf = v.decode(v.ideal_head(v.encode(out)[None]))[0]
    assert dec.value == pytest.approx(value, abs=1e-4) and conf > 0.99
    assert model_accuracy(dec, out) == 1.0


def test_view_json_round_trip():
    v = make_view(DET)
    v.fit(np.stack([v.encode(o) for o in CASES]))
    w = View.from_json(v.to_json())
    assert w.kmax == v.kmax and w.dim == v.dim and w.head_dim == v.head_dim and np.allclose(w.in_mean, v.in_mean)


def test_metrics_definitions():
    a = det([[0.1, 0.1, 0.3, 0.3]], [0])
    b = det([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.6, 0.6]], [0, 1])
    c = det([[0.5, 0.5, 0.6, 0.6]], [1])
    assert model_accuracy(a, a) == 1.0 and model_accuracy(a, b) == 0.0
    # same total, wrong class -> not correct (per-class counts must agree)
    assert model_accuracy(a, c) == 0.0 and agreement(a, c)["count_correct"]
    assert agreement(a, b)["abs_count_err"] == 1.0 and agreement(a, b)["presence"]
    assert box_f1(a, b) == pytest.approx(2 / 3)
    assert box_f1(det([], []), det([], [])) == 1.0
    s = lambda x: ModelOutput(OutputKind.SCALAR, SCAL.classes, value=x)  # noqa: E731
    assert model_accuracy(s(0.0), s(0.004)) == 1.0 and model_accuracy(s(0.0), s(0.006)) == 0.0
    assert model_accuracy(s(0.5), s(0.54)) == 1.0 and model_accuracy(s(0.5), s(0.6)) == 0.0
    p = lambda *x: ModelOutput(OutputKind.PROBS, PROBS.classes, probs=np.array(x))  # noqa: E731
    assert model_accuracy(p(0.5, 0.3, 0.2), p(0.9, 0.05, 0.05)) == 1.0
    assert model_accuracy(p(0.5, 0.3, 0.2), p(0.1, 0.8, 0.1)) == 0.0
