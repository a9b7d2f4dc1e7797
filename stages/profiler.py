"""Profiling: run every configured model on (every k-th) frame -> aligned samples.

This is the only place that joins video I/O and the model zoo to the link
library: it reads frames with :func:`pipeline.video.iter_frames`, runs every
model of the camera on the same frames (batched), and appends the outputs to a
:class:`links.samples.AlignedSamples`, which ``mlink links train`` consumes.

Stateful models (MOG2) see only the profiled frames, so profile with the same
``every`` the pipeline will run them at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from links.samples import AlignedSamples, ModelMeta
from pipeline.config import Config, load_config, replay_config
from pipeline.errors import UserError
from pipeline.video import iter_frames, probe_frame_count
from pipeline.zoo import Model, build_models


def _camera_models(cfg: Config) -> list[str]:
    """The model names every camera shares (aligned samples need one model set)."""
    sets = {name: [s.name for s in cam.model_specs] for name, cam in cfg.cameras.items()}
    first_cam, first = next(iter(sets.items()))
    for cam, names in sets.items():
        if sorted(names) != sorted(first):
            raise UserError(f"camera {cam}: models differ from camera {first_cam}'s; profile cameras with different models separately")
    return first


def profile_config(
    cfg: Config,
    *,
    every: int = 1,
    max_frames: int | None = None,
    batch: int = 8,
    progress: bool = True,
    models: dict[str, Model] | None = None,
) -> AlignedSamples:
    """Run every camera's models on its file frames; return aligned samples.

    ``every=k`` keeps every k-th frame (after the camera's fps sampling);
    ``max_frames`` caps the profiled frames per camera.
    """
    if every < 1:
        raise UserError("--every must be at least 1")
    if max_frames is not None and max_frames < 1:
        raise UserError("--max-frames must be at least 1")
    names = _camera_models(cfg)
    if models is None:
        models = build_models(cfg.all_model_specs())
    order = [models[n] for n in names]
    for m in order:
        m.load()
    samples = AlignedSamples([ModelMeta.of(m) for m in order])
    from tqdm import tqdm

    for cam in cfg.cameras.values():
        if cam.is_rtsp:
            raise UserError(f"camera {cam.name}: profiling reads files; record the RTSP stream to a file first")
        files = cam.files(cfg.base_dir)
        if not files:
            raise UserError(f"camera {cam.name}: source {cam.source!r} matches no files")
        total = sum((probe_frame_count(f) or 0) for f in files) // every or None
        if max_frames is not None and total is not None:
            total = min(total, max_frames)
        done = 0
        bar = tqdm(total=total, desc=f"profile {cam.name}", unit="frame", disable=not progress, leave=True)
        try:
            for f in files:
                buf: list[Any] = []
                for vf in iter_frames(f, fps=cam.fps, resize=cam.resize, every=every):
                    if max_frames is not None and done + len(buf) >= max_frames:
                        break
                    buf.append(vf)
                    if len(buf) >= batch:
                        _run_batch(samples, order, cam.name, buf)
                        done += len(buf)
                        bar.update(len(buf))
                        buf = []
                if buf:
                    _run_batch(samples, order, cam.name, buf)
                    done += len(buf)
                    bar.update(len(buf))
                if max_frames is not None and done >= max_frames:
                    break
        finally:
            bar.close()
    if len(samples) == 0:
        raise UserError("profiling produced no samples (no decodable frames)")
    return samples


def _run_batch(samples: AlignedSamples, models: Sequence[Model], camera: str, frames: list[Any]) -> None:
    imgs = [vf.image for vf in frames]
    cams = [camera] * len(imgs)
    outs = {m.name: m.predict(imgs, cams) for m in models}
    for i, vf in enumerate(frames):
        samples.append(camera, vf.index, vf.pts, {n: o[i] for n, o in outs.items()})


def profile_videos(
    videos: Sequence[str | Path],
    *,
    config: str | Path | None = None,
    model_names: Sequence[str] | None = None,
    every: int = 1,
    max_frames: int | None = None,
    progress: bool = True,
    out: str | Path | None = None,
) -> AlignedSamples:
    """``mlink profile``: videos (one replay camera each) or a config's cameras."""
    if config is not None:
        cfg = load_config(config)
        if videos:
            raise UserError("give either VIDEO files or --config, not both")
        if model_names:
            raise UserError("--models applies to VIDEO files; with --config the cameras list their models")
    else:
        if not videos:
            raise UserError("nothing to profile: give VIDEO files or --config")
        cfg = replay_config([str(v) for v in videos], models=list(model_names) if model_names else None)
    samples = profile_config(cfg, every=every, max_frames=max_frames, progress=progress)
    if out is not None:
        samples.save(out)
    return samples
