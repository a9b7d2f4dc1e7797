"""ModelOutput: validation per kind, record fields, record round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from links.outputs import ModelOutput, OutputKind

D, P, S = OutputKind.DETECTIONS, OutputKind.PROBS, OutputKind.SCALAR


def test_detections_record() -> None:
    o = ModelOutput(D, ("person", "car"), boxes=[[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 1.0]], scores=[0.9, 0.55555], class_ids=[1, 1])
    rec = o.to_record()
    assert rec == {
        "kind": "detections",
        "count": 2,
        "counts": {"person": 0, "car": 2},
        "boxes": [[0.1, 0.2, 0.3, 0.4, 0.9, "car"], [0.5, 0.5, 0.9, 1.0, 0.556, "car"]],
    }
    assert "boxes" not in o.to_record(include_boxes=False)
    json.dumps(rec)  # plain JSON types only


def test_empty_detections_default_fields() -> None:
    o = ModelOutput(D, ("face",))
    assert o.count == 0 and o.counts == {"face": 0}
    assert o.boxes.shape == (0, 4) and o.scores.shape == (0,)
    assert o.to_record() == {"kind": "detections", "count": 0, "counts": {"face": 0}, "boxes": []}


def test_probs_record_and_label() -> None:
    o = ModelOutput(P, ("dark", "dim", "bright"), probs=[0.1, 0.2, 0.7])
    assert o.label == "bright"
    assert o.to_record() == {"kind": "probs", "label": "bright", "probs": {"dark": 0.1, "dim": 0.2, "bright": 0.7}}


def test_scalar_record_with_grid() -> None:
    o = ModelOutput(S, ("foreground",), value=0.123456789, grid=np.array([[0.5, 0.25], [0, 1]]))
    assert o.to_record() == {"kind": "scalar", "value": 0.12346, "grid": [[0.5, 0.25], [0.0, 1.0]]}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind=D, classes=()), "at least one class"),
        (dict(kind=D, classes=("a",), boxes=[[0, 0, 1, 1]], class_ids=[1]), "class id out of range"),
        (dict(kind=D, classes=("a",), boxes=[[0, 0, 1, 1]], class_ids=[-1]), "class id out of range"),
        (dict(kind=P, classes=("a", "b")), "needs a probability vector"),
        (dict(kind=P, classes=("a", "b"), probs=[1.0]), "1 probabilities for 2 classes"),
        (dict(kind=S, classes=("v",)), "needs a value"),
    ],
)
def test_invalid_outputs_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelOutput(**kwargs)


@pytest.mark.parametrize(
    "out",
    [
        ModelOutput(D, ("Normal", "Fall"), boxes=[[0.1, 0.1, 0.2, 0.3]], scores=[0.8], class_ids=[1]),
        ModelOutput(P, ("x", "y"), probs=[0.25, 0.75]),
        ModelOutput(S, ("foreground",), value=0.5, grid=np.eye(2, dtype=np.float32)),
    ],
    ids=["detections", "probs", "scalar"],
)
def test_record_round_trip(out: ModelOutput) -> None:
    rec = json.loads(json.dumps(out.to_record()))
    back = ModelOutput.from_record(rec, classes=out.classes)
    assert back.to_record() == out.to_record()
