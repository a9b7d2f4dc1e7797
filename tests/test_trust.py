"""Redis is not a code channel: a worker loads only what its own side allows (the packaged
zoo, the built-ins, its own config's models and --allow refs), never what a camera
registration in Redis names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from conftest import CHEAP_MODELS, mlink_cmd

from pipeline.config import TrustedCode, parse_config
from pipeline.keys import CAMERAS_KEY, camera_key, status_key
from stages.scheduler import Worker

TESTS = Path(__file__).resolve().parent


def register(r: redis.Redis, cam: str, models: list) -> None:
    r.hset(camera_key(cam), mapping={"models": json.dumps(models), "mode": "replay", "results_max_len": 1000})
    r.sadd(CAMERAS_KEY, cam)


def failed_events(r: redis.Redis, cam: str) -> list[dict]:
    return [json.loads(f[b"json"]) for _, f in r.xrange(status_key(cam)) if f[b"event"] == b"failed"]


@pytest.mark.parametrize("spec, ref", [
    ({"name": "evil", "adapter": "callable", "target": "untrusted_module:run", "kind": "scalar"}, "untrusted_module:run"),
    ({"name": "evil", "adapter": "ultralytics", "path": "/tmp/evil.pt"}, "/tmp/evil.pt"),
    ({"name": "evil", "adapter": "torchvision", "arch": "mobilenet_v2", "weights": "pkg:untrusted_module/x.pth"}, "pkg:untrusted_module/x.pth"),
])
def test_a_worker_refuses_code_named_only_in_redis(r: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: dict, ref: str) -> None:
    marker = tmp_path / "imported"
    monkeypatch.setenv("MLINK_TEST_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(TESTS))
    sys.modules.pop("untrusted_module", None)
    register(r, "good", CHEAP_MODELS)
    register(r, "bad", ["mog2_motion", spec])
    said: list[str] = []
    w = Worker(r, block_ms=20, say=said.append)
    for _ in range(3):
        w.refresh_cameras(force=True)
    assert set(w.cameras) == {"good"}
    ev = failed_events(r, "bad")
    assert len(ev) == 1 and f"refused to load {ref!r}" in ev[0]["reason"] and ev[0]["reason"].startswith("camera bad: model evil:")
    assert not marker.exists() and "untrusted_module" not in sys.modules  # never imported


def test_allowed_refs_are_loaded(r: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported"
    monkeypatch.setenv("MLINK_TEST_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(TESTS))
    sys.modules.pop("untrusted_module", None)
    register(r, "cam", [{"name": "mine", "adapter": "callable", "target": "untrusted_module:run", "kind": "scalar"}])
    w = Worker(r, block_ms=20, trusted=TrustedCode.of(allow=["untrusted_module:run"]))
    w.refresh_cameras(force=True)
    assert set(w.cameras) == {"cam"} and marker.exists()  # the worker's own side said yes


def test_the_packaged_zoo_and_a_run_config_are_trusted() -> None:
    t = TrustedCode.of()
    assert t.refusal("yolo_coco") is None and t.refusal({"name": "x", "adapter": "callable", "target": "pipeline.builtin_models:scene_light",
                                                         "kind": "probs", "classes": ["dark", "dim", "bright"]}) is None
    cfg = parse_config({"cameras": {"c": {"source": "x.mp4", "models": [{"name": "slow", "adapter": "callable", "target": "slow_model:slow",
                                                                          "kind": "scalar"}]}}})
    assert TrustedCode.of(cfg.all_model_specs()).refusal({"name": "slow", "adapter": "callable", "target": "slow_model:slow"}) is None
    assert t.refusal({"name": "slow", "adapter": "callable", "target": "slow_model:slow"}) is not None


def test_mlink_worker_allow_flag(tmp_path: Path, redis_url: str) -> None:
    """Through the console script: the same registration refused, then allowed with --allow."""
    r = redis.Redis.from_url(redis_url)
    marker = tmp_path / "imported"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "MLINK_TEST_MARKER": str(marker)}
    register(r, "cam", [{"name": "mine", "adapter": "callable", "target": "untrusted_module:run", "kind": "scalar"}])
    for extra, refused in (([], True), (["--allow", "untrusted_module:run"], False)):
        r.hdel(camera_key("cam"), "failed")
        r.delete(status_key("cam"))
        p = subprocess.Popen([*mlink_cmd(), "worker", "--redis", redis_url, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (failed_events(r, "cam") if refused else marker.exists()):
            time.sleep(0.2)
        p.terminate()
        _, err = p.communicate(timeout=30)
        assert "Traceback" not in err
        assert bool(failed_events(r, "cam")) is refused and marker.exists() is not refused, err
