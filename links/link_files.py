"""Link files: a link set to and from bytes, and saved in a directory.

Saved form (:func:`to_bytes` / :func:`save`): one ``.npz`` (no pickles) with a
``__meta__`` JSON entry ``{"format": "mlink-links", "format_version": 1, "version",
"temporal", "models", "views", "sources", "sample_counts", "options"}`` and the
arrays ``pair/<target>/<W1|b1|W2|b2>``, ``ens/<target>/<w|z0|C1|c1|C2|c2>``,
``prior/<target>`` (the prior's encoded view) and, optional (older files lack them:
no gate), ``gate/<target>/<tau|hold_acc>`` (the temporal gate per age bucket, see
:func:`links.link_training.fit_gate`). ``save(DIR)`` writes
``DIR/links.npz`` plus a human-readable ``DIR/links.json`` copy of the metadata.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.npyio import NpzFile

from links import nets
from links.errors import LinksError
from links.link_state import N_BUCKETS, Arrays, LinkState, LinkT, default_gate
from links.views import View

FORMAT = "mlink-links"
FORMAT_VERSION = 1
_PAIR_KEYS = ("W1", "b1", "W2", "b2")
_ENS_KEYS = ("w", "wa", "z0", "C1", "c1", "C2", "c2")
_GATE_KEYS = ("tau", "hold_acc")  # optional (format 1 files lack them: no gate, always the ensemble)


def metadata(state: LinkState) -> dict[str, Any]:
    """The ``__meta__`` entry of the links file (JSON-able)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": state.version,
        "temporal": state.temporal,
        "models": [m.to_json() for m in state.models],
        "views": [v.to_json() for v in state.views],
        "sources": {j: state.sources(j) for j in state.names},
        "sample_counts": state.sample_counts,
        "options": state.options,
    }


def to_bytes(state: LinkState) -> bytes:
    """The whole link set as one ``.npz`` (no pickles)."""
    arrs: dict[str, np.ndarray] = {"__meta__": np.array(json.dumps(metadata(state)))}
    for j in state.names:
        for k in _PAIR_KEYS:
            arrs[f"pair/{j}/{k}"] = state.pairs[j][k]
        for k in _ENS_KEYS:
            arrs[f"ens/{j}/{k}"] = state.ens[j][k]
        arrs[f"prior/{j}"] = state.priors[j]
        for k in _GATE_KEYS:
            arrs[f"gate/{j}/{k}"] = np.asarray(state.gates.get(j, default_gate())[k], np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrs)
    return buf.getvalue()


def from_bytes(cls: type[LinkT], data: bytes, where: str) -> LinkT:
    """Inverse of :func:`to_bytes`, as a ``cls``; anything wrong is a one-line LinksError."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return _from_npz(cls, z, where)
    except LinksError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LinksError(f"{where}: not a readable links file ({msg})") from None


def _from_npz(cls: type[LinkT], z: NpzFile, where: str) -> LinkT:
    """Every array checked against the metadata (shapes, finite values), then a ``cls``."""
    if "__meta__" not in z.files:
        raise LinksError(f"{where}: not an mlink links file (no metadata)")
    try:
        meta = json.loads(str(z["__meta__"][()]))
    except ValueError as exc:
        raise LinksError(f"{where}: unreadable links metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LinksError(f"{where}: not an mlink links file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise LinksError(f"{where}: links format version {meta.get('format_version')} is not supported (expected {FORMAT_VERSION}); retrain with 'mlink links train'")
    try:
        views = [View.from_json(d) for d in meta["views"]]
        temporal = bool(meta["temporal"])
        names = [v.meta.name for v in views]
        pairs: dict[str, Arrays] = {}
        ens: dict[str, Arrays] = {}
        priors: dict[str, np.ndarray] = {}
        gates: dict[str, Arrays] = {}
        for v in views:
            j = v.meta.name
            srcs = [n for n in names if n != j]
            if list(meta["sources"][j]) != srcs:
                raise ValueError(f"sources of {j} do not match the model list")
            dims = [views[names.index(s)].dim for s in srcs]
            H = v.head_dim
            hh = nets.pair_hidden(H)
            expect = {"W1": (len(srcs), max(dims), hh), "b1": (len(srcs), hh), "W2": (len(srcs), hh, H), "b2": (len(srcs), H)}
            pairs[j] = {k: np.asarray(z[f"pair/{j}/{k}"], np.float32) for k in _PAIR_KEYS}
            e = {k: np.asarray(z[f"ens/{j}/{k}"], np.float32) for k in _ENS_KEYS}
            din = nets.ens_input_dim(dims, H, v.dim, temporal)
            hid = e["C1"].shape[1] if e["C1"].ndim == 2 else -1
            expect_e = {"w": (len(srcs) + 2, H), "wa": (nets.N_AGE, H), "z0": (H,), "C1": (din, hid), "c1": (hid,), "C2": (hid, H), "c2": (H,)}
            for k, shp in expect.items():
                if pairs[j][k].shape != shp:
                    raise ValueError(f"array pair/{j}/{k} has shape {pairs[j][k].shape}, expected {shp}")
            for k, shp in expect_e.items():
                if e[k].shape != shp:
                    raise ValueError(f"array ens/{j}/{k} has shape {e[k].shape}, expected {shp}")
            ens[j] = e
            if all(f"gate/{j}/{k}" in z.files for k in _GATE_KEYS):
                g = {k: np.asarray(z[f"gate/{j}/{k}"], np.float32) for k in _GATE_KEYS}
                for k, a in g.items():
                    if a.shape != (N_BUCKETS,) or not np.all(np.isfinite(a)):
                        raise ValueError(f"array gate/{j}/{k} has shape {a.shape} or non-finite values, expected ({N_BUCKETS},)")
                gates[j] = g
            priors[j] = np.asarray(z[f"prior/{j}"], np.float32)
            if priors[j].shape != (v.dim,):
                raise ValueError(f"array prior/{j} has shape {priors[j].shape}")
            if v.in_mean is None:
                raise ValueError(f"view {j} has no standardisation")
            for a in list(pairs[j].values()) + list(e.values()):
                if not np.all(np.isfinite(a)):
                    raise ValueError(f"non-finite weights for target {j}")
    except KeyError as exc:
        raise LinksError(f"{where}: links file is missing {exc}") from None
    except (ValueError, TypeError) as exc:
        raise LinksError(f"{where}: corrupt or mismatched links file: {exc}") from None
    return cls(
        views, pairs, ens, priors, temporal=temporal, version=int(meta.get("version", 1)), sample_counts=meta.get("sample_counts"), options=meta.get("options"), gates=gates
    )


def save(state: LinkState, directory: str | Path) -> Path:
    """Write ``DIR/links.npz`` (atomically) and ``DIR/links.json``; returns the .npz path."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise LinksError(f"{d}: exists and is not a directory")
    d.mkdir(parents=True, exist_ok=True)
    p = d / "links.npz"
    tmp = d / ".links.npz.tmp"
    tmp.write_bytes(to_bytes(state))
    os.replace(tmp, p)
    (d / "links.json").write_text(json.dumps(metadata(state), indent=2) + "\n")
    return p


def load(cls: type[LinkT], directory: str | Path) -> LinkT:
    """Read ``DIR/links.npz`` (or a links ``.npz`` file given directly)."""
    d = Path(directory)
    p = d / "links.npz" if d.is_dir() else d
    if not p.exists():
        raise LinksError(f"{p}: links file not found (train with 'mlink links train')")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise LinksError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return from_bytes(cls, data, where=str(p))
