"""Aligned samples: append, save/load (.npz), subset, split by time, corrupt files."""

import numpy as np
import pytest

from links.errors import LinksError
from links.outputs import ModelOutput, OutputKind
from links.samples import AlignedSamples, ModelMeta

MODELS = [
    ModelMeta("det", OutputKind.DETECTIONS, ("person", "car")),
    ModelMeta("cls", OutputKind.PROBS, ("a", "b")),
    ModelMeta("val", OutputKind.SCALAR, ("v",)),
]


def make(n=10, cams=("c1", "c2")):
    s = AlignedSamples(MODELS)
    rng = np.random.default_rng(0)
    for cam in cams:
        for i in range(n):
            k = i % 3
            outs = {
                "det": ModelOutput(OutputKind.DETECTIONS, ("person", "car"), boxes=rng.random((k, 4)) * 0.5, class_ids=np.arange(k) % 2, scores=rng.random(k)),
                "cls": ModelOutput(OutputKind.PROBS, ("a", "b"), probs=[0.2, 0.8] if i % 2 else [0.9, 0.1]),
                "val": ModelOutput(OutputKind.SCALAR, ("v",), value=i / 10, grid=np.full((2, 2), i, np.float32)),
            }
            s.append(cam, 2 * i, i * 0.1, outs)
    return s


def test_save_load_round_trip(tmp_path):
    s = make()
    p = s.save(tmp_path / "s")
    assert p.suffix == ".npz"
    t = AlignedSamples.load(p)
    assert len(t) == len(s) == 20 and t.models == s.models
    assert t.camera.tolist() == s.camera.tolist() and t.frame.tolist() == s.frame.tolist()
    for n in s.names:
        for a, b in zip(s.outputs[n], t.outputs[n]):
            assert a.to_record() == b.to_record()


def test_split_by_time_per_camera():
    s = make(10)
    tr, te = s.split_by_time(0.5)
    assert len(tr) == len(te) == 10
    for cam in ("c1", "c2"):
        assert tr.frame[tr.camera == cam].max() < te.frame[te.camera == cam].min()
    sub = s.subset([0, 3])
    assert len(sub) == 2 and sub.outputs["val"][1].value == pytest.approx(0.3)


def test_append_needs_all_models():
    s = AlignedSamples(MODELS)
    with pytest.raises(ValueError, match="lacks outputs"):
        s.append("c", 0, 0.0, {"det": ModelOutput(OutputKind.DETECTIONS, ("person", "car"))})


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04garbage"])
def test_corrupt_file_is_one_line_user_error(tmp_path, content):
    p = tmp_path / "bad.npz"
    p.write_bytes(content)
    with pytest.raises(LinksError) as e:
        AlignedSamples.load(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_wrong_npz_and_truncated(tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, x=np.zeros(3))
    with pytest.raises(LinksError, match="not an mlink aligned-samples file"):
        AlignedSamples.load(p)
    good = make().save(tmp_path / "good.npz")
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(LinksError):
        AlignedSamples.load(tmp_path / "trunc.npz")
    with pytest.raises(LinksError, match="not found"):
        AlignedSamples.load(tmp_path / "missing.npz")
