"""Camera names become Redis keys, file names and URL paths: checked wherever they arrive
(the config, a name registered straight into Redis, the command line)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from conftest import CHEAP_MODELS, run_mlink

from pipeline.config import parse_config
from pipeline.errors import UserError
from pipeline.keys import CAMERAS_KEY, camera_key, valid_camera_name
from stages.scheduler import Worker


@pytest.mark.parametrize("name, ok", [("door", True), ("lobby-2.east", True), (".", False), ("..", False), ("a/b", False),
                                      ("a b", False), ("", False), ("x" * 65, False), ("{x}", False)])
def test_valid_camera_name(name: str, ok: bool) -> None:
    assert valid_camera_name(name) is ok


@pytest.mark.parametrize("name", [".", ".."])
def test_config_refuses_dot_names(name: str, gif23: Path) -> None:
    with pytest.raises(UserError, match=r"camera names use .* not '\.' or '\.\.'"):
        parse_config({"cameras": {name: {"source": str(gif23)}}})


def test_a_worker_refuses_a_bad_name_registered_in_redis_once(r: redis.Redis) -> None:
    r.sadd(CAMERAS_KEY, "..")
    r.hset(camera_key(".."), mapping={"models": '["scene_light"]'})
    said: list[str] = []
    w = Worker(r, block_ms=20, say=said.append)
    for _ in range(3):
        w.refresh_cameras(force=True)
    assert w.cameras == {} and said == ["mlink: worker %s: camera '..': refused: camera names use letters, digits, '_', '-', "
                                        "'.' (at most 64), and are not '.' or '..'" % w.name]


def test_tail_refuses_a_bad_name(redis_url: str) -> None:
    p = run_mlink("tail", "..", "--redis", redis_url, timeout=30)
    assert p.returncode == 1 and p.stderr.startswith("mlink: error: camera '..': camera names use") and len(p.stderr.splitlines()) == 1


def test_model_names_are_checked_too() -> None:
    """Model names become metric fields and record keys: a comma would break the counters."""
    parse_config({"cameras": {"x": {"source": "x.mp4", "models": CHEAP_MODELS}}})
    with pytest.raises(UserError, match="models"):
        parse_config({"cameras": {"x": {"source": "x.mp4", "models": [{"name": "a,b", "adapter": "mog2"}]}}})
