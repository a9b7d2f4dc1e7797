"""Measured model costs on the current device, cached on disk.

Budgets are checked against what models cost HERE (2 CPU cores and a 720p
frame are a different world from a GPU), so costs are measured, never typed
in, on the device each model runs on:

- ``ms``: milliseconds per frame, the median of timed batches after a warm-up (the batch
  is the measuring frames, like a worker's read of several frames);
- ``single_ms``: one frame on its own, what a model costs when a budgeted policy runs it on
  one frame of a batch (the per-call overhead is not shared); the governor starts from it;
- ``mem_mb``: memory the model holds: its weights (parameters and buffers, or the ONNX
  file) plus the resident memory its forward passes added;
- ``gpu_mb`` (CUDA only, else 0): the model's weights on the GPU plus the peak CUDA memory
  its forward passes allocated on top (torch's allocator; for ONNX Runtime the drop in the
  device's free memory). What a ``gpu:NNNNMB`` budget is checked against.

Results are cached per (model spec, device, frame size) in ``$MLINK_HOME/costs.json``;
``--remeasure`` refreshes them. Each model's cost is also set on the model (``Model.cost``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import redis

from links.budget import ModelCost, parse_budget
from pipeline.config import Config, default_sample
from pipeline.errors import UserError
from pipeline.home import mlink_home
from pipeline.keys import COSTS_KEY
from pipeline.video import sample_images
from pipeline.zoo import Model, build_models


@dataclass
class MeasuredCost:
    name: str
    ms: float  # per frame, on this device
    mem_mb: float  # weights + resident memory added by running the model
    gpu_mb: float  # weights on the GPU + peak CUDA memory of a forward pass (0 on CPU)
    device: str
    frames: int  # frames timed per batch
    runtime: str = ""
    kind: str = ""
    single_ms: float = 0.0  # one frame on its own (a batch of 1 pays the per-call overhead alone); 0 = not measured


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss / 2**20
    except Exception:
        return 0.0


def weights_mb(model: Model) -> float:
    """Memory of the model's weights: torch parameters and buffers, or the ONNX file."""
    total = 0
    for attr in ("_net", "_sess"):
        obj = getattr(model, attr, None)
        if obj is None:
            continue
        mod = getattr(obj, "model", obj)  # an ultralytics YOLO wraps its torch module
        if hasattr(mod, "parameters") and hasattr(mod, "buffers"):
            try:
                total += sum(t.numel() * t.element_size() for t in list(mod.parameters()) + list(mod.buffers()))
            except Exception:
                pass
        elif attr == "_sess" and getattr(model, "path", None) is not None:
            total += os.path.getsize(model.path)
    return total / 2**20


def spec_key(spec: Any, device: str, shape: tuple[int, ...]) -> str:
    body = json.dumps(spec.model_dump(mode="json"), sort_keys=True) if hasattr(spec, "model_dump") else repr(spec)
    return hashlib.sha1(f"{body}|{device}|{shape[:2]}".encode()).hexdigest()[:16]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def measure_model(model: Model, frames: Sequence[np.ndarray], repeats: int = 3, batch: int | None = None) -> MeasuredCost:
    """Time ``model`` on ``frames`` in batches of ``batch`` (default: all frames at once)."""
    model.load()
    device = model.device
    cuda = device.startswith("cuda")
    frames = list(frames)
    batch = batch or len(frames)
    batches = [frames[i : i + batch] for i in range(0, len(frames), batch)] or [frames]
    gc.collect()
    before = _rss_mb()
    torch_mod: Any = None
    free_before = 0
    if cuda:
        import torch

        torch_mod = torch
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        alloc_before = torch.cuda.memory_allocated(device)
        free_before = torch.cuda.mem_get_info(device)[0]
    cams = ["__measure__"] * len(frames)
    warm = batches[0][:2]
    model.predict(warm, cams[: len(warm)])  # warm-up (lazy init, caches, cuDNN autotune)
    model.predict(batches[0], cams[: len(batches[0])])
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            model.predict(b, cams[: len(b)])
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000 / len(frames))
    single = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict(frames[:1], cams[:1])
        _sync(device)
        single.append((time.perf_counter() - t0) * 1000)
    w = weights_mb(model)
    gpu = 0.0
    if cuda:
        peak_torch = (torch_mod.cuda.max_memory_allocated(device) - alloc_before) / 2**20
        free_drop = (free_before - torch_mod.cuda.mem_get_info(device)[0]) / 2**20
        extra = peak_torch if model.runtime == "torch" else max(peak_torch, free_drop)
        gpu = w + max(0.0, extra)
    mem = (0.0 if cuda else w) + max(0.0, _rss_mb() - before)
    if hasattr(model, "_subs"):
        model._subs.pop("__measure__", None)  # measurement must not seed a real camera's state
    cost = MeasuredCost(model.name, float(np.median(times)), mem, gpu, device, len(batches[0]), model.runtime, model.kind.value,
                        single_ms=float(np.median(single)))
    model.cost = cost
    return cost


class CostCache:
    def __init__(self, path: str | None = None) -> None:
        self.path = path or str(mlink_home() / "costs.json")
        try:
            with open(self.path) as f:
                self.data: dict[str, dict[str, Any]] = json.load(f)
        except (OSError, ValueError):
            self.data = {}

    def get(self, key: str) -> MeasuredCost | None:
        d = self.data.get(key)
        try:
            return MeasuredCost(**d) if d else None
        except TypeError:
            return None

    def put(self, key: str, cost: MeasuredCost) -> None:
        self.data[key] = asdict(cost)
        tmp = self.path + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


def measure_all(
    models: dict[str, Model], specs: dict[str, Any], frames: Sequence[np.ndarray], *, remeasure: bool = False, progress: bool = False
) -> dict[str, MeasuredCost]:
    """Costs for every model, from the cache unless ``remeasure``."""
    cache = CostCache()
    out: dict[str, MeasuredCost] = {}
    items: Iterable[str] = list(models)
    if progress:
        from tqdm import tqdm

        items = tqdm(list(models), desc="measuring models", unit="model")
    for name in items:
        m = models[name]
        key = spec_key(specs[name], m.device, frames[0].shape)
        cached = None if remeasure else cache.get(key)
        if cached is None or not cached.single_ms:  # (an older cache entry lacks the single-frame time)
            cached = measure_model(m, frames)
            cache.put(key, cached)
        m.cost = cached
        out[name] = cached
    return out


def load_costs(r: redis.Redis | None, models: list[str]) -> dict[str, ModelCost] | None:
    """The costs published in Redis for ``models``; None unless every one is there."""
    if r is None:
        return None
    raw = r.hgetall(COSTS_KEY)
    costs = {}
    for m in models:
        v = raw.get(m.encode())
        if v is None:
            return None
        d = json.loads(v)
        costs[m] = ModelCost(m, float(d["ms"]), float(d.get("mem_mb", 0.0)), float(d.get("gpu_mb", 0.0)))
    return costs


def store_costs(r: redis.Redis, costs: dict[str, Any]) -> None:
    """Publish measured costs so every worker on every host plans with the same numbers."""
    r.hset(COSTS_KEY, mapping={m: json.dumps({"ms": c.ms, "mem_mb": c.mem_mb, "gpu_mb": c.gpu_mb, "device": getattr(c, "device", ""),
                                              "single_ms": getattr(c, "single_ms", 0.0)})
                               for m, c in costs.items()})


def load_single_ms(r: redis.Redis | None, models: list[str]) -> dict[str, float]:
    """Per model, the published time of one frame on its own (0 where not measured): what a
    model costs when it runs on one frame of a batch, the budgeted case."""
    if r is None:
        return dict.fromkeys(models, 0.0)
    raw = r.hmget(COSTS_KEY, models)
    return {m: float(json.loads(v).get("single_ms", 0.0)) if v else 0.0 for m, v in zip(models, raw)}


def measure_config_costs(cfg: Config, r: redis.Redis, *, check_budget: bool, remeasure: bool = False) -> dict[str, MeasuredCost]:
    """Measure (or read cached) model costs on this device, publish them, check the budget."""
    specs = {s.name: s for s in cfg.all_model_specs()}
    cam = next(iter(cfg.cameras.values()))
    files = cam.files(cfg.base_dir)
    src = str(files[0]) if files else default_sample()
    frames = sample_images(src, 6, resize=cam.resize)
    costs = measure_all(build_models(list(specs.values())), specs, frames, remeasure=remeasure, progress=True)
    store_costs(r, costs)
    if check_budget and cfg.scheduler.budget:
        mc = {n: ModelCost(n, c.ms, c.mem_mb, c.gpu_mb) for n, c in costs.items()}
        try:
            parse_budget(cfg.scheduler.budget).resolve(mc).check_feasible(mc)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return costs
