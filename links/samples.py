"""Aligned samples: every model's output on the same frames.

Links are trained and scored only on aligned samples (the target model's own
output is the training target; no human labels). ``mlink profile`` makes them.

File format (``.npz``, written with :func:`numpy.savez`, no pickles, so a load
is one ``np.load`` plus array slicing):

``__meta__``      a 0-d unicode array holding JSON:
                  ``{"format": "mlink-aligned-samples", "format_version": 1, "n": N,
                  "models": [{"name", "kind", "classes"}...]}``
``camera``        (N,) unicode   camera name of each sample
``frame``         (N,) int64     decoded-frame index within its source
``pts``           (N,) float64   presentation time in seconds
Per model, in the order of ``models`` (``m`` = its position):
detections  ``m{m}.offsets`` (N+1,) int64 -- sample i owns rows offsets[i]:offsets[i+1] of
            ``m{m}.boxes`` (B,4) float32 normalised xyxy, ``m{m}.scores`` (B,) float32,
            ``m{m}.class_ids`` (B,) int64
segmentation  as detections, plus ``m{m}.coverage`` (N,C) float32
keypoints   as detections, plus ``m{m}.visible`` (N,) float64 and, when every sample has
            its keypoints, ``m{m}.keypoints`` (B,K,3) float32 (rows as the boxes)
probs, topk ``m{m}.probs`` (N,C) float32
scalar      ``m{m}.value`` (N,) float64 and, when every sample has a grid of one shape,
            ``m{m}.grid`` (N,g,g) float32
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from links.errors import LinksError
from links.outputs import ModelOutput, OutputKind

FORMAT = "mlink-aligned-samples"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelMeta:
    """What links need to know about a model: its name, output kind and classes."""

    name: str
    kind: OutputKind
    classes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind.value, "classes": list(self.classes)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ModelMeta":
        return cls(str(d["name"]), OutputKind(d["kind"]), tuple(str(c) for c in d["classes"]))

    @classmethod
    def of(cls, model: Any) -> "ModelMeta":
        """From a zoo model (anything with ``name``, ``kind`` and ``classes``)."""
        return cls(model.name, OutputKind(model.kind), tuple(model.classes))


class AlignedSamples:
    """All models' outputs on the same frames, with camera, frame index and PTS."""

    def __init__(self, models: Iterable[ModelMeta]) -> None:
        self.models: list[ModelMeta] = list(models)
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in {names}")
        self._camera = np.zeros(0, dtype="<U64")
        self._frame = np.zeros(0, np.int64)
        self._pts = np.zeros(0, np.float64)
        self.outputs: dict[str, list[ModelOutput]] = {m.name: [] for m in self.models}
        self._pending: list[tuple[str, int, float]] = []
        self.cache: dict[Any, Any] = {}  # encoded views etc., keyed by whoever computes them

    # ------------------------------------------------------------ building
    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def meta(self, name: str) -> ModelMeta:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def append(self, camera: str, frame: int, pts: float, outputs: dict[str, ModelOutput]) -> None:
        """Add one frame; ``outputs`` must hold every model's output."""
        missing = [n for n in self.names if n not in outputs]
        if missing:
            raise ValueError(f"aligned sample lacks outputs of {missing}")
        for m in self.models:
            o = outputs[m.name]
            if o.kind is not m.kind:
                raise ValueError(f"model {m.name}: output kind {o.kind.value}, expected {m.kind.value}")
            self.outputs[m.name].append(o)
        self._pending.append((str(camera), int(frame), float(pts)))
        self.cache.clear()

    def _flush(self) -> None:
        if self._pending:
            cams, frames, pts = zip(*self._pending)
            self._camera = np.concatenate([self._camera, np.array(cams, dtype=str)]).astype(str)
            self._frame = np.concatenate([self._frame, np.array(frames, np.int64)])
            self._pts = np.concatenate([self._pts, np.array(pts, np.float64)])
            self._pending = []

    @property
    def camera(self) -> np.ndarray:
        self._flush()
        return self._camera

    @camera.setter
    def camera(self, v: np.ndarray) -> None:
        self._flush()
        self._camera = np.asarray(v).astype(str)

    @property
    def frame(self) -> np.ndarray:
        self._flush()
        return self._frame

    @frame.setter
    def frame(self, v: np.ndarray) -> None:
        self._flush()
        self._frame = np.asarray(v, np.int64)

    @property
    def pts(self) -> np.ndarray:
        self._flush()
        return self._pts

    @pts.setter
    def pts(self, v: np.ndarray) -> None:
        self._flush()
        self._pts = np.asarray(v, np.float64)

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        cams = sorted(set(self.camera.tolist()))
        return f"AlignedSamples(n={len(self)}, cameras={cams}, models={self.names})"

    # ------------------------------------------------------------ selecting
    def subset(self, idx: Any) -> "AlignedSamples":
        """Samples at ``idx`` (integer indices or a boolean mask), in that order."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        out = AlignedSamples(self.models)
        out.camera = self.camera[idx]
        out.frame = self.frame[idx]
        out.pts = self.pts[idx]
        out.outputs = {n: [v[i] for i in idx] for n, v in self.outputs.items()}
        return out

    def cameras(self) -> list[str]:
        """Camera names in order of first appearance."""
        seen: dict[str, None] = {}
        for c in self.camera.tolist():
            seen.setdefault(c, None)
        return list(seen)

    def split_by_time(self, frac: float = 0.5) -> tuple["AlignedSamples", "AlignedSamples"]:
        """Per camera, the first ``frac`` of its samples in time (by PTS) and the rest."""
        if not 0.0 < frac < 1.0:
            raise ValueError("frac must be in (0, 1)")
        train: list[int] = []
        test: list[int] = []
        for cam in self.cameras():
            idx = np.flatnonzero(self.camera == cam)
            idx = idx[np.lexsort((self.frame[idx], self.pts[idx]))]
            cut = int(round(len(idx) * frac))
            train.extend(idx[:cut].tolist())
            test.extend(idx[cut:].tolist())
        return self.subset(np.array(train, np.int64)), self.subset(np.array(test, np.int64))

    def concat(self, other: "AlignedSamples") -> "AlignedSamples":
        if other.models != self.models:
            raise ValueError("cannot concatenate samples of different model sets")
        out = AlignedSamples(self.models)
        out.camera = np.concatenate([self.camera, other.camera])
        out.frame = np.concatenate([self.frame, other.frame])
        out.pts = np.concatenate([self.pts, other.pts])
        out.outputs = {n: self.outputs[n] + other.outputs[n] for n in self.names}
        return out

    # ------------------------------------------------------------ persistence
    def to_arrays(self) -> dict[str, np.ndarray]:
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "n": len(self), "models": [m.to_json() for m in self.models]}
        arrs: dict[str, np.ndarray] = {
            "__meta__": np.array(json.dumps(meta)),
            "camera": self.camera.astype(str),
            "frame": self.frame.astype(np.int64),
            "pts": self.pts.astype(np.float64),
        }
        for mi, m in enumerate(self.models):
            outs = self.outputs[m.name]
            key = f"m{mi}."
            if m.kind.has_boxes:
                counts = np.array([o.count for o in outs], np.int64)
                arrs[key + "offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
                arrs[key + "boxes"] = np.concatenate([o.boxes for o in outs] or [np.zeros((0, 4))]).astype(np.float32).reshape(-1, 4)
                arrs[key + "scores"] = np.concatenate([o.scores for o in outs] or [np.zeros(0)]).astype(np.float32)
                arrs[key + "class_ids"] = np.concatenate([o.class_ids for o in outs] or [np.zeros(0)]).astype(np.int64)
                if m.kind is OutputKind.SEGMENTATION:
                    arrs[key + "coverage"] = np.array([o.coverage for o in outs], np.float32).reshape(len(outs), len(m.classes))
                elif m.kind is OutputKind.KEYPOINTS:
                    arrs[key + "visible"] = np.array([o.value for o in outs], np.float64)
                    kps = [o.keypoints for o in outs]
                    if kps and all(k is not None for k in kps) and len({k.shape[1:] for k in kps}) == 1:
                        arrs[key + "keypoints"] = np.concatenate(kps).astype(np.float32)
            elif m.kind.has_probs:
                arrs[key + "probs"] = np.array([o.probs for o in outs], np.float32).reshape(len(outs), len(m.classes))
            else:
                arrs[key + "value"] = np.array([o.value for o in outs], np.float64)
                grids = [o.grid for o in outs]
                if grids and all(g is not None for g in grids) and len({np.shape(g) for g in grids}) == 1:
                    arrs[key + "grid"] = np.stack(grids).astype(np.float32)
        return arrs

    def save(self, path: str | Path) -> Path:
        """Write the documented ``.npz`` (the suffix is added when missing)."""
        p = Path(path)
        if p.suffix != ".npz":
            p = p.with_name(p.name + ".npz")
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **self.to_arrays())
        tmp.replace(p)
        return p

    @classmethod
    def from_arrays(cls, z: Any, where: str = "samples") -> "AlignedSamples":
        try:
            meta = json.loads(str(z["__meta__"][()]))
        except KeyError:
            raise LinksError(f"{where}: not an mlink aligned-samples file (no metadata)") from None
        except (ValueError, TypeError) as exc:
            raise LinksError(f"{where}: unreadable aligned-samples metadata: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise LinksError(f"{where}: not an mlink aligned-samples file")
        if meta.get("format_version") != FORMAT_VERSION:
            raise LinksError(f"{where}: aligned-samples format version {meta.get('format_version')} is not supported (expected {FORMAT_VERSION})")
        try:
            models = [ModelMeta.from_json(d) for d in meta["models"]]
            n = int(meta["n"])
            out = cls(models)
            out.camera = np.asarray(z["camera"]).astype(str)
            out.frame = np.asarray(z["frame"], np.int64)
            out.pts = np.asarray(z["pts"], np.float64)
            if not (len(out.camera) == len(out.frame) == len(out.pts) == n):
                raise ValueError(f"index arrays do not hold {n} samples")
            for mi, m in enumerate(models):
                key = f"m{mi}."
                if m.kind.has_boxes:
                    off = np.asarray(z[key + "offsets"], np.int64)
                    boxes = np.asarray(z[key + "boxes"], np.float32)
                    scores = np.asarray(z[key + "scores"], np.float32)
                    cids = np.asarray(z[key + "class_ids"], np.int64)
                    if len(off) != n + 1 or off[-1] != len(boxes) or len(scores) != len(boxes) or len(cids) != len(boxes) or np.any(np.diff(off) < 0):
                        raise ValueError(f"model {m.name}: inconsistent box arrays")
                    extra: list[dict[str, Any]] = [{} for _ in range(n)]
                    if m.kind is OutputKind.SEGMENTATION:
                        cov = np.asarray(z[key + "coverage"], np.float32)
                        if cov.shape != (n, len(m.classes)):
                            raise ValueError(f"model {m.name}: coverage shape {cov.shape}")
                        extra = [{"coverage": c} for c in cov]
                    elif m.kind is OutputKind.KEYPOINTS:
                        vis = np.asarray(z[key + "visible"], np.float64)
                        kps = np.asarray(z[key + "keypoints"], np.float32) if (key + "keypoints") in z.files else None
                        if vis.shape != (n,) or (kps is not None and (kps.ndim != 3 or len(kps) != len(boxes))):
                            raise ValueError(f"model {m.name}: inconsistent keypoint arrays")
                        extra = [{"keypoints": kps[a:b]} if kps is not None else {"value": float(v)} for a, b, v in zip(off[:-1], off[1:], vis)]
                    out.outputs[m.name] = [
                        ModelOutput(m.kind, m.classes, boxes=boxes[a:b], scores=scores[a:b], class_ids=cids[a:b], **ex)
                        for a, b, ex in zip(off[:-1], off[1:], extra)
                    ]
                elif m.kind.has_probs:
                    probs = np.asarray(z[key + "probs"], np.float32)
                    if probs.shape != (n, len(m.classes)):
                        raise ValueError(f"model {m.name}: probs shape {probs.shape}")
                    out.outputs[m.name] = [ModelOutput(m.kind, m.classes, probs=p) for p in probs]
                else:
                    vals = np.asarray(z[key + "value"], np.float64)
                    if vals.shape != (n,):
                        raise ValueError(f"model {m.name}: value shape {vals.shape}")
                    grid = np.asarray(z[key + "grid"], np.float32) if (key + "grid") in z.files else None
                    if grid is not None and len(grid) != n:
                        raise ValueError(f"model {m.name}: grid length {len(grid)}")
                    out.outputs[m.name] = [
                        ModelOutput(m.kind, m.classes, value=float(v), grid=None if grid is None else grid[i]) for i, v in enumerate(vals)
                    ]
        except KeyError as exc:
            raise LinksError(f"{where}: aligned-samples file is missing array {exc}") from None
        except (ValueError, TypeError) as exc:
            raise LinksError(f"{where}: corrupt aligned-samples file: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return out

    @classmethod
    def load(cls, path: str | Path) -> "AlignedSamples":
        """Read a file written by :meth:`save`; any problem is one-line LinksError."""
        p = Path(path)
        if not p.exists():
            raise LinksError(f"{p}: samples file not found")
        if not p.is_file():
            raise LinksError(f"{p}: not a regular file")
        try:
            with np.load(p, allow_pickle=False) as z:
                return cls.from_arrays(z, where=str(p))
        except LinksError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LinksError(f"{p}: not a readable .npz samples file ({msg})") from None

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **self.to_arrays())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "AlignedSamples":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return cls.from_arrays(z, where="samples")
        except LinksError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise LinksError(f"samples: not a readable .npz payload ({type(exc).__name__})") from None
