"""Every Redis key the pipeline uses, in one place: names, the parser back to a
camera, and the complete set of keys one camera owns.

Per-camera keys carry the camera as a Redis Cluster hash tag (``frames:{cam}``),
so all of one camera's keys live in one slot and one MULTI/EXEC can span them.

=====================  ======  ==============================================================
key                    type    what it holds (writer)
=====================  ======  ==============================================================
``mlink:cameras``      set     registered camera names (decoder)
``mlink:costs``        hash    model -> measured cost JSON (the command that starts a pipeline)
``mlink:workers``      zset    scheduler worker -> until when it counts as alive (server ms) (worker)
``mlink:owners``       hash    camera -> the live worker that serves it, sticky (worker)
``camera:{cam}``       hash    models, mode, frame counters, resume points (decoder)
``frames:{cam}``       stream  frames waiting for a scheduler worker (decoder)
``results:{cam}``      stream  one analytics record per frame (worker)
``status:{cam}``       stream  status events: started, eos, error, failed, ... (all stages)
``links:{cam}``        hash    versioned link state and plan shared by workers (worker)
``metrics:{cam}``      hash    counters kept in the data's own transactions (all stages)
``preview:{cam}``      hash    the newest recorded frame for the web view: ``frame``, ``jpeg``,
                               ``json`` (its record); one entry, overwritten (worker)
``held:{cam}``         hash    per model, its newest executed output (``model``, lossless bytes)
                               and that frame (``model@``): the temporal context budgeted
                               policies fill from, shared by every worker; one entry per
                               model, written in the record's own script (worker); under
                               ``cascade`` also the 8-bit thumbnail of the frame each model
                               last ran on (``model#``, ``model#@``), so every worker's
                               decider knows what the others ran
``spend:{cam}``        hash    frame -> compute booked (until measured) or measured: the
                               governor's window, one cap per camera for all its workers;
                               the last two windows kept (worker)
``coldstart:{cam}``    hash    the cold start's aligned samples shared by the workers: ``n``
                               (added in all) and a ring ``s1``.. of the newest (worker)
=====================  ======  ==============================================================
"""

from __future__ import annotations

import re

GROUP = "scheduler"  # the consumer group of every frames stream
CAMERAS_KEY = "mlink:cameras"
COSTS_KEY = "mlink:costs"
WORKERS_KEY = "mlink:workers"
OWNERS_KEY = "mlink:owners"

_CAMERA_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CAMERA_NAME_RULE = "camera names use letters, digits, '_', '-', '.' (at most 64), and are not '.' or '..'"


def valid_camera_name(name: str) -> bool:
    """Camera names become key names, file names and URL paths: a small alphabet, no '.'/'..'."""
    return bool(_CAMERA_NAME.match(name)) and name not in (".", "..")


_PER_CAMERA = ("camera", "frames", "results", "status", "links", "metrics", "preview", "held", "spend", "coldstart")
_KEY_RE = re.compile(r"^(?P<kind>[a-z]+):\{(?P<cam>[^{}]+)\}$")


def _key(kind: str, cam: str) -> str:
    return f"{kind}:{{{cam}}}"


def camera_key(cam: str) -> str:
    """Hash with the camera's settings (models...) so remote workers need no config."""
    return _key("camera", cam)


def frames_key(cam: str) -> str:
    return _key("frames", cam)


def results_key(cam: str) -> str:
    return _key("results", cam)


def status_key(cam: str) -> str:
    return _key("status", cam)


def links_key(cam: str) -> str:
    return _key("links", cam)


def metrics_key(cam: str) -> str:
    return _key("metrics", cam)


def preview_key(cam: str) -> str:
    """The newest recorded frame (JPEG) with its record, for the web view: one entry, bounded."""
    return _key("preview", cam)


def held_key(cam: str) -> str:
    """Each model's newest executed output and its frame, shared by the workers of a camera: bounded by the model count."""
    return _key("held", cam)


def camera_keys(cam: str) -> list[str]:
    """Every key one camera owns: deleting them all forgets the camera completely."""
    return [_key(kind, cam) for kind in _PER_CAMERA]


def camera_of(key: str | bytes) -> str:
    """The camera a per-camera key belongs to (``frames:{door}`` -> ``door``)."""
    k = key.decode() if isinstance(key, bytes) else key
    m = _KEY_RE.match(k)
    if m is None or m.group("kind") not in _PER_CAMERA:
        raise ValueError(f"not a per-camera mlink key: {k!r}")
    return m.group("cam")


def spend_key(cam: str) -> str:
    """The compute governor's per-frame spend of a camera, shared by its workers: bounded by two windows."""
    return _key("spend", cam)


def coldstart_key(cam: str) -> str:
    """The camera's cold-start samples, shared by its workers: bounded by the cold start's length."""
    return _key("coldstart", cam)
