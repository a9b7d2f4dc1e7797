"""cameras.yaml validation: tables of good and bad configs, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.config import (
    DEFAULT_MODELS,
    HaarSpec,
    Mode,
    Mog2Spec,
    YoloSpec,
    deep_merge,
    load_config,
    parse_config,
    replay_config,
    replay_config_from,
)
from pipeline.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]


def cfg(cameras: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"cameras": cameras, **top}


# --------------------------------------------------------------------- good
def test_example_cameras_yaml_loads() -> None:
    c = load_config(REPO_ROOT / "cameras.yaml")
    assert list(c.cameras) == ["bikes"]
    bikes = c.cameras["bikes"]
    assert bikes.mode is Mode.LIVE and bikes.fps == 5 and bikes.resize == 640
    assert [s.name for s in bikes.model_specs] == DEFAULT_MODELS
    assert len(DEFAULT_MODELS) == 10
    (f,) = bikes.files(c.base_dir)
    assert f.name == "bikes.mp4" and f.is_file()


def test_defaults_deep_merge_camera_overrides_only_what_it_sets() -> None:
    c = parse_config({
        "defaults": {"fps": 5, "resize": 320, "models": ["mog2_motion"], "rtsp": {"transport": "tcp", "open_timeout_s": 3}},
        "cameras": {
            "a": {"source": "a.mp4"},
            "b": {"source": "rtsp://h/x", "fps": 2, "rtsp": {"read_timeout_s": 1}},
        },
    })
    a, b = c.cameras["a"], c.cameras["b"]
    assert (a.fps, a.resize, [s.name for s in a.model_specs]) == (5, 320, ["mog2_motion"])
    assert (b.fps, b.resize) == (2, 320)
    assert (b.rtsp.transport, b.rtsp.open_timeout_s, b.rtsp.read_timeout_s) == ("tcp", 3, 1)
    assert a.rtsp.read_timeout_s == 5.0  # schema default
    assert b.is_rtsp and not a.is_rtsp and b.files() == []


def test_deep_merge_lists_are_replaced_not_appended() -> None:
    assert deep_merge({"m": [1, 2], "d": {"x": 1, "y": 2}}, {"m": [3], "d": {"y": 5}}) == {"m": [3], "d": {"x": 1, "y": 5}}


@pytest.mark.parametrize(
    "camera, check",
    [
        ({"source": "v.mp4"}, lambda c: c.mode is Mode.REPLAY and c.fps is None and c.resize is None and c.encoding == "jpeg"),
        ({"source": "v.mp4", "resize": [320, 180]}, lambda c: c.resize == (320, 180)),
        ({"source": "v.mp4", "resize": 16}, lambda c: c.resize == 16),
        ({"source": "v.mp4", "fps": 0.5}, lambda c: c.fps == 0.5),
        ({"source": "v.mp4", "mode": "live", "max_len": 2}, lambda c: c.mode is Mode.LIVE and c.max_len == 2),
        ({"source": ["a.mp4", "b.mp4"], "loop": True}, lambda c: c.loop and len(c.files()) == 2),
        ({"source": "v.mp4", "encoding": "raw"}, lambda c: c.encoding == "raw"),
        ({"source": "rtsps://h:322/x", "rtsp": {"transport": "udp"}}, lambda c: c.is_rtsp and c.rtsp.transport == "udp"),
        ({"source": "v.mp4", "models": ["yolo_person"]}, lambda c: isinstance(c.model_specs[0], YoloSpec) and c.model_specs[0].imgsz is None),  # 320 on CPU, 640 on CUDA
        ({"source": "v.mp4", "models": [{"adapter": "haar", "name": "eyes", "cascade": "eyes", "width": 200}]},
         lambda c: isinstance(c.model_specs[0], HaarSpec) and c.model_specs[0].width == 200),
        ({"source": "v.mp4", "models": ["mog2_motion", {"adapter": "mog2", "name": "fine_motion", "grid": 8}]},
         lambda c: [type(s) for s in c.model_specs] == [Mog2Spec, Mog2Spec] and c.model_specs[1].grid == 8),
    ],
    ids=["defaults", "resize-pair", "resize-min", "fps-fraction", "live", "file-list-loop", "raw", "rtsps-udp", "zoo-yolo", "haar-spec", "two-mog2"],
)
def test_valid_camera_settings(camera: dict[str, Any], check: Any) -> None:
    c = parse_config(cfg({"cam1": camera})).cameras["cam1"]
    assert check(c)


def test_glob_and_relative_sources_resolve_against_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    for n in ("b.mp4", "a.mp4", "c.txt"):
        (tmp_path / "clips" / n).write_bytes(b"x")
    p = tmp_path / "cams.yaml"
    p.write_text("cameras:\n  g:\n    source: ['clips/*.mp4']\n  one:\n    source: clips/a.mp4\n")
    c = load_config(p)
    assert [f.name for f in c.cameras["g"].files(c.base_dir)] == ["a.mp4", "b.mp4"]
    assert c.cameras["one"].files(c.base_dir) == [tmp_path / "clips" / "a.mp4"]


def test_replay_config_names_cameras_after_files_and_dedups() -> None:
    c = replay_config(["/x/my clip.mp4", "/y/my clip.mp4", "/z/other.gif"], models=["scene_light"], fps=2)
    assert list(c.cameras) == ["my_clip", "my_clip-2", "other"]
    assert all(cam.mode is Mode.REPLAY and cam.fps == 2 for cam in c.cameras.values())


def test_replay_config_from_takes_the_base_configs_first_camera_settings() -> None:
    base = parse_config({"defaults": {"resize": 160, "models": ["edge_density"], "mode": "live", "loop": True},
                         "cameras": {"a": {"source": "a.mp4"}}, "scheduler": {"batch": 4}})
    c = replay_config_from(["/v/x.mp4"], base, fps=3)
    x = c.cameras["x"]
    assert (x.resize, x.fps, x.mode, x.loop) == (160, 3, Mode.REPLAY, False)
    assert [s.name for s in x.model_specs] == ["edge_density"]
    assert c.scheduler.batch == 4


# ---------------------------------------------------------------------- bad
BAD = [
    # (config dict, substrings the ONE-line error must contain)
    ("not-a-mapping", ["a mapping with a 'cameras:' section"]),
    ({"camras": {}}, ["unknown top-level key 'camras'"]),
    ({"cameras": {}}, ["cameras: expected a non-empty mapping"]),
    ({"defaults": [1], "cameras": {"a": {"source": "x"}}}, ["defaults: expected a mapping"]),
    (cfg({"a": "x.mp4"}), ["camera a", "expected a mapping"]),
    (cfg({"a": {}}), ["camera a", "source", "Field required"]),
    (cfg({"a": {"source": "x.mp4", "fsp": 5}}), ["camera a", "fsp", "Extra inputs are not permitted"]),
    (cfg({"a": {"source": "x.mp4", "rtsp": {"transprt": "tcp"}}}), ["camera a", "rtsp.transprt"]),
    (cfg({"a": {"source": "rtsp://h/x", "rtsp": {"transport": "http"}}}), ["camera a", "rtsp.transport"]),
    (cfg({"a": {"source": "x.mp4", "models": ["yolo_persn"]}}), ["camera a", "unknown model 'yolo_persn'", "yolo_person"]),
    (cfg({"a": {"source": "x.mp4", "models": [{"adapter": "tflite", "name": "t"}]}}), ["camera a", "unknown model adapter 'tflite'"]),
    (cfg({"a": {"source": "x.mp4", "models": [{"adapter": "haar", "cascade": "face"}]}}), ["camera a", "needs a 'name'"]),
    (cfg({"a": {"source": "x.mp4", "models": [{"adapter": "haar", "name": "h", "cascade": "face", "widht": 3}]}}), ["camera a", "models[0]", "widht"]),
    (cfg({"a": {"source": "x.mp4", "models": [42]}}), ["camera a", "zoo name or a mapping"]),
    (cfg({"a": {"source": "x.mp4", "models": ["scene_light", "scene_light"]}}), ["camera a", "duplicate model name 'scene_light'"]),
    (cfg({"a": {"source": "x.mp4", "fps": 0}}), ["camera a", "fps", "greater than 0"]),
    (cfg({"a": {"source": "x.mp4", "fps": -5}}), ["camera a", "fps"]),
    (cfg({"a": {"source": "x.mp4", "fps": "fast"}}), ["camera a", "fps"]),
    (cfg({"a": {"source": "x.mp4", "resize": 8}}), ["camera a", "resize", "at least 16"]),
    (cfg({"a": {"source": "x.mp4", "mode": "stream"}}), ["camera a", "mode"]),
    (cfg({"a": {"source": "x.mp4", "encoding": "png"}}), ["camera a", "encoding"]),
    (cfg({"a": {"source": "x.mp4", "max_len": 1}}), ["camera a", "max_len"]),
    (cfg({"a": {"source": []}}), ["camera a", "source: empty list"]),
    (cfg({"a": {"source": "rtsp://h/x", "loop": True}}), ["camera a", "loop: only for file sources"]),
    (cfg({"bad name!": {"source": "x.mp4"}}), ["camera bad name!", "camera names use letters"]),
    (cfg({"a": {"source": "x.mp4"}}, scheduler={"workers": 0}), ["scheduler", "workers"]),
    (cfg({"a": {"source": "x.mp4"}}, scheduler={"wokers": 2}), ["scheduler", "wokers"]),
    (cfg({"a": {"source": "x.mp4", "models": [{"adapter": "haar", "name": "m", "cascade": "face"}]},
          "b": {"source": "y.mp4", "models": [{"adapter": "haar", "name": "m", "cascade": "eyes"}]}}),
     ["camera b", "model 'm' is defined differently by camera a"]),
]


@pytest.mark.parametrize("data, needles", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_invalid_config_is_one_line_user_error(data: Any, needles: list[str]) -> None:
    with pytest.raises(UserError) as ei:
        parse_config(data, where="cams.yaml")
    msg = str(ei.value)
    assert "\n" not in msg, msg
    assert msg.startswith("cams.yaml"), msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


@pytest.mark.parametrize(
    "text, needles",
    [
        ("cameras:\n  a:\n    source: x.mp4\n   fps: 5\n", ["invalid YAML", "(line 4)"]),
        ("cameras: [unclosed\n", ["invalid YAML"]),
        ("cameras:\n  a: {source: x.mp4}\n  a: {source: y.mp4}\n", ["invalid YAML", "duplicate key 'a'"]),
        ("", ["expected a mapping"]),
        ("cameras:\n  a:\n    source: x.mp4\n    fsp: 5\n", ["camera a", "fsp"]),
    ],
    ids=["bad-indent", "unclosed", "duplicate-key", "empty-file", "unknown-key"],
)
def test_load_config_errors_name_the_file(tmp_path: Path, text: str, needles: list[str]) -> None:
    p = tmp_path / "cams.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(str(p)), msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_packaged_source_of_a_missing_package() -> None:
    c = parse_config(cfg({"a": {"source": "pkg:no_such_pkg_xyz/data/v.mp4"}}))
    with pytest.raises(UserError, match="package 'no_such_pkg_xyz' is not installed"):
        c.cameras["a"].files()
