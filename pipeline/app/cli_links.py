"""``mlink profile`` and ``mlink links train|report``: the CLI around the link library.

Handlers raise :class:`pipeline.errors.UserError` (or the link library's
:class:`links.errors.LinksError`) for bad input; :func:`pipeline.app.cli.main` prints
it as one line and exits 1.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.errors import UserError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="run every model on every (k-th) frame and save aligned samples")
    p.add_argument("videos", nargs="*", metavar="VIDEO", help="video files (one replay camera each); or use --config")
    p.add_argument("--config", help="cameras.yaml whose file cameras to profile")
    p.add_argument("--out", required=True, help="aligned samples file to write (.npz)")
    p.add_argument("--every", type=int, default=1, help="profile every k-th frame (default 1)")
    p.add_argument("--max-frames", type=int, default=None, help="at most this many frames per camera")
    p.add_argument("--models", default=None, help="comma-separated zoo models (VIDEO mode; default: the default zoo)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_profile)

    lk = sub.add_parser("links", help="train model links and report on them")
    lsub = lk.add_subparsers(dest="links_cmd", metavar="{train,report}")
    lsub.required = True
    t = lsub.add_parser("train", help="train all pairwise links and per-target ensembles")
    t.add_argument("samples", metavar="SAMPLES", help="aligned samples from 'mlink profile'")
    t.add_argument("--out", required=True, help="directory to write links.npz/links.json to")
    t.add_argument("--first", type=float, default=None, metavar="FRAC", help="train on the first FRAC (0-1) of each camera's samples in time")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-temporal", action="store_true", help="no temporal context (held outputs) in the ensembles")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    r = lsub.add_parser("report", help="per-target accuracy of links vs prior and hold-last, and a source x target PNG")
    r.add_argument("links", metavar="DIR", help="directory written by 'mlink links train'")
    r.add_argument("--samples", required=True, metavar="TEST", help="aligned samples to test on")
    r.add_argument("--skip-first", type=float, default=None, metavar="FRAC", help="test only on samples after the first FRAC of each camera")
    r.add_argument("--k", type=int, default=4, help="age in frames for hold-last and temporal context (default 4)")
    r.add_argument("--png", default=None, metavar="FILE", help="draw the source x target link matrix here")
    r.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    r.set_defaults(func=cmd_report)


def _frac(v: float | None, flag: str) -> float | None:
    if v is not None and not 0.0 < v < 1.0:
        raise UserError(f"{flag} must be between 0 and 1 (exclusive), got {v}")
    return v


def cmd_profile(args: argparse.Namespace) -> int:
    from stages.profiler import profile_videos

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if args.models is not None and not models:
        raise UserError("--models: empty list")
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out}: is a directory; give a file name")
    t = time.perf_counter()
    s = profile_videos(args.videos, config=args.config, model_names=models, every=args.every, max_frames=args.max_frames, progress=not args.quiet)
    path = s.save(out)
    print(f"{len(s)} aligned samples of {len(s.models)} models from {len(s.cameras())} camera(s) in {time.perf_counter() - t:.1f} s -> {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from links.linkset import LinkSet
    from links.samples import AlignedSamples

    if args.epochs < 1:
        raise UserError("--epochs must be at least 1")
    s = AlignedSamples.load(args.samples)
    frac = _frac(args.first, "--first")
    if frac is not None:
        s, _ = s.split_by_time(frac)
    t = time.perf_counter()
    ls = LinkSet.train(s, seed=args.seed, epochs=args.epochs, temporal=not args.no_temporal, progress=not args.quiet)
    dt = time.perf_counter() - t
    path = ls.save(args.out)
    k = len(ls.names)
    print(f"trained {k * (k - 1)} links and {k} ensembles on {len(s)} samples in {dt:.1f} s -> {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from links.linkset import LinkSet
    from links.report import draw_matrix, evaluate, format_table
    from links.samples import AlignedSamples

    if args.k < 1:
        raise UserError("--k must be at least 1")
    ls = LinkSet.load(args.links)
    s = AlignedSamples.load(args.samples)
    ls.check_models(s.models, where=str(args.samples))
    frac = _frac(args.skip_first, "--skip-first")
    if frac is not None:
        _, s = s.split_by_time(frac)
    if len(s) == 0:
        raise UserError(f"{args.samples}: no test samples")
    rows = evaluate(ls, s, k=args.k)
    print(f"links v{ls.version} ({ls.sample_counts.get('train')} training samples) on {len(s)} test samples; k = {args.k}")
    print(format_table(rows, k=args.k))
    if args.png:
        p = draw_matrix(ls.pairwise_scores(s), ls.names, args.png)
        print(f"matrix -> {p}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0
