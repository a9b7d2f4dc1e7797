"""The output kinds of the neural zoo (segmentation, keypoints, topk) end to end in links:
record fields, views, aligned-sample files, trained links deriving every kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from links.linkset import LinkSet
from links.metrics import model_accuracy
from links.outputs import ModelOutput, OutputKind
from links.samples import AlignedSamples, ModelMeta
from links.views import VOCAB, make_view, output_fields

CLASSES_1K = tuple(f"c{i}" for i in range(1000))
SEG = ModelMeta("seg", OutputKind.SEGMENTATION, ("person", "car"))
POSE = ModelMeta("pose", OutputKind.KEYPOINTS, ("person",))
TOP = ModelMeta("top", OutputKind.TOPK, CLASSES_1K)
SRC = ModelMeta("src", OutputKind.DETECTIONS, ("person",))


def boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.random((n, 2)) * 0.8
    return np.concatenate([xy, xy + 0.1], axis=1)


def seg_out(rng: np.random.Generator, k: int) -> ModelOutput:
    return ModelOutput(OutputKind.SEGMENTATION, SEG.classes, boxes=boxes(rng, k), class_ids=np.zeros(k, np.int64),
                       coverage=[0.04 * k, 0.0])


def pose_out(rng: np.random.Generator, k: int, visible: int = 12) -> ModelOutput:
    kp = np.zeros((k, 17, 3), np.float32)
    kp[:, :, :2] = rng.random((k, 17, 2))
    kp[:, :visible, 2] = 0.9
    return ModelOutput(OutputKind.KEYPOINTS, POSE.classes, boxes=boxes(rng, k), keypoints=kp)


def top_out(label: int, p: float = 0.6) -> ModelOutput:
    probs = np.full(1000, (1 - p) / 999, np.float32)
    probs[label] = p
    return ModelOutput(OutputKind.TOPK, CLASSES_1K, probs=probs)


# ----------------------------------------------------------------- records
def test_record_fields_of_the_new_kinds_round_trip() -> None:
    rng = np.random.default_rng(0)
    s = seg_out(rng, 2)
    rec = s.to_record()
    assert rec["kind"] == "segmentation" and rec["count"] == 2 and rec["counts"] == {"person": 2, "car": 0}
    assert rec["coverage"] == {"person": 0.08, "car": 0.0} and len(rec["boxes"]) == 2
    back = ModelOutput.from_record(rec, SEG.classes)
    assert back.counts == s.counts and np.allclose(back.coverage, s.coverage)

    p = pose_out(rng, 3, visible=12)
    rec = p.to_record()
    assert rec["kind"] == "keypoints" and rec["visible_keypoints"] == 12.0
    assert np.asarray(rec["keypoints"]).shape == (3, 17, 3)
    assert "keypoints" not in p.to_record(include_boxes=False) and p.to_record(include_boxes=False)["visible_keypoints"] == 12.0
    back = ModelOutput.from_record(rec, POSE.classes)
    assert back.count == 3 and back.value == 12.0
    assert ModelOutput(OutputKind.KEYPOINTS, POSE.classes, keypoints=np.zeros((0, 17, 3))).to_record()["visible_keypoints"] == 0.0

    t = top_out(42)
    rec = t.to_record()
    assert rec["kind"] == "topk" and rec["label"] == "c42" and list(rec["top5"])[0] == "c42" and len(rec["top5"]) == 5
    assert "probs" not in rec  # a 1000-class vector stays out of the records
    back = ModelOutput.from_record(rec, CLASSES_1K)
    assert back.label == "c42" and back.probs.sum() == pytest.approx(1.0, abs=1e-3)
    assert model_accuracy(back, t) == 1.0


def test_bad_new_kind_outputs_are_refused() -> None:
    with pytest.raises(ValueError, match="coverage values"):
        ModelOutput(OutputKind.SEGMENTATION, SEG.classes, coverage=[0.1])
    with pytest.raises(ValueError, match="keypoints must be"):
        ModelOutput(OutputKind.KEYPOINTS, POSE.classes, boxes=np.zeros((2, 4)), keypoints=np.zeros((1, 17, 3)))
    with pytest.raises(ValueError, match="probabilities for"):
        ModelOutput(OutputKind.TOPK, CLASSES_1K, probs=[0.5, 0.5])


# ----------------------------------------------------------------- views
def test_views_of_the_new_kinds_decode_what_they_encode() -> None:
    rng = np.random.default_rng(1)
    segs = [seg_out(rng, k) for k in (0, 1, 2, 3)]
    v = make_view(SEG)
    vecs = v.encode_many(segs)
    assert v.dim == 2 * 2 + 9 + 1 + 2 and vecs[2, -2] == pytest.approx(0.08)
    v.fit(vecs)
    for o, (d, conf) in zip(segs, v.decode(v.ideal_head(vecs))):
        assert d.kind is OutputKind.SEGMENTATION and d.counts == o.counts and conf > 0.99
        assert np.allclose(d.coverage, o.coverage, atol=1e-4)
        assert set(d.to_record()["coverage"]) == {"person", "car"}

    poses = [pose_out(rng, k, vis) for k, vis in ((0, 0), (1, 5), (2, 12), (1, 17))]
    v = make_view(POSE)
    vecs = v.encode_many(poses)
    v.fit(vecs)
    for o, (d, _) in zip(poses, v.decode(v.ideal_head(vecs))):
        assert d.kind is OutputKind.KEYPOINTS and d.count == o.count
        assert d.value == pytest.approx(o.value, abs=1e-3) and d.keypoints is None  # derived: no per-person keypoints
        assert "visible_keypoints" in d.to_record()

    tops = [top_out(i % 20) for i in range(60)] + [top_out(500)]
    v = make_view(TOP, outputs=tops)
    assert len(v.vocab) == VOCAB and v.dim == VOCAB + 1 and 500 not in v.vocab[:VOCAB - 4]
    vecs = v.encode_many(tops)
    v.fit(vecs)
    f = v.head_fields(v.ideal_head(vecs))
    true = output_fields(v, tops)
    in_vocab = np.isin(true["label"], v.vocab)
    assert np.array_equal(f["label"][in_vocab], true["label"][in_vocab])
    assert np.isin(f["label"], v.vocab).all()  # a derived label is always a vocabulary label
    d, _ = v.decode(v.ideal_head(v.encode(tops[3])[None]))[0]
    assert d.kind is OutputKind.TOPK and d.label == "c3" and len(d.to_record()["top5"]) == 5
    assert make_view(TOP, outputs=tops).vocab == v.vocab  # deterministic


# ----------------------------------------------------------------- samples and links
def synthetic(n: int, seed: int) -> AlignedSamples:
    rng = np.random.default_rng(seed)
    s = AlignedSamples([SRC, SEG, POSE, TOP])
    for i in range(n):
        k = int(rng.integers(0, 4))
        s.append("cam", i, i / 10, {
            "src": ModelOutput(OutputKind.DETECTIONS, SRC.classes, boxes=boxes(rng, k)),
            "seg": seg_out(rng, k),
            "pose": pose_out(rng, k, visible=6 + 3 * k),
            "top": top_out(100 + k),
        })
    return s


def test_aligned_samples_keep_the_new_kinds(tmp_path: Path) -> None:
    s = synthetic(30, 3)
    back = AlignedSamples.load(s.save(tmp_path / "s.npz"))
    for m in ("seg", "pose", "top"):
        for a, b in zip(s.outputs[m], back.outputs[m]):
            assert a.kind is b.kind and model_accuracy(b, a) == 1.0
    for a, b in zip(s.outputs["seg"], back.outputs["seg"]):
        assert np.allclose(a.coverage, b.coverage)
    for a, b in zip(s.outputs["pose"], back.outputs["pose"]):
        assert np.allclose(a.keypoints, b.keypoints) and a.value == b.value
    assert np.allclose(s.outputs["top"][0].probs, back.outputs["top"][0].probs)


def test_links_derive_every_new_kind(tmp_path: Path) -> None:
    train, test = synthetic(300, 4), synthetic(80, 5)
    ls = LinkSet.train(train, seed=0, epochs=30)
    for t in ("seg", "pose", "top"):
        assert ls.estimate_accuracy(test, frozenset({"src"}), t) >= 0.9, t
    ls2 = LinkSet.load(ls.save(tmp_path / "links"))
    for i in range(5):
        for links in (ls, ls2):
            d = links.derive({"src": test.outputs["src"][i]}, ["seg", "pose", "top"])
            k = test.outputs["src"][i].count
            assert d["seg"].output.kind is OutputKind.SEGMENTATION and d["seg"].output.count == k
            assert d["seg"].output.coverage[0] == pytest.approx(0.04 * k, abs=0.03)
            assert d["pose"].output.kind is OutputKind.KEYPOINTS and d["pose"].output.count == k
            assert d["top"].output.kind is OutputKind.TOPK and d["top"].output.label == f"c{100 + k}"
            for o in d.values():
                rec = o.output.to_record()
                assert rec["kind"] in ("segmentation", "keypoints", "topk")


def test_shared_held_bytes_are_lossless_for_every_kind_and_never_unpickle() -> None:
    """Workers share held outputs as bytes (``held:{cam}``): every array comes back in full
    (a record keeps only a topk's top 5), and bytes that would need unpickling are refused."""
    import io
    import pickle

    from links.outputs import output_from_bytes, output_to_bytes

    rng = np.random.default_rng(3)
    probs = rng.random(1000).astype(np.float32)
    outs = [
        seg_out(rng, 3), pose_out(rng, 2), ModelOutput(OutputKind.TOPK, CLASSES_1K, probs=probs / probs.sum()),
        ModelOutput(OutputKind.DETECTIONS, ("person", "car"), boxes=boxes(rng, 4), class_ids=np.array([0, 1, 1, 0])),
        ModelOutput(OutputKind.PROBS, ("a", "b"), probs=np.array([0.3, 0.7])),
        ModelOutput(OutputKind.SCALAR, (), value=0.25, grid=rng.random((4, 4)), extra={"note": "x"}),
        ModelOutput(OutputKind.DETECTIONS, ("person",)),  # nobody
    ]
    for o in outs:
        back = output_from_bytes(output_to_bytes(o), o.classes)
        assert back.kind is o.kind and back.classes == o.classes and back.value == o.value and back.extra == o.extra
        for f in ("boxes", "scores", "class_ids", "probs", "grid", "coverage", "keypoints"):
            a, b = getattr(o, f), getattr(back, f)
            assert (a is None) == (b is None), f
            if a is not None:
                np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    with pytest.raises(ValueError, match="classes"):
        output_from_bytes(output_to_bytes(outs[0]), ("person",))  # another model's output
    buf = io.BytesIO()
    np.savez(buf, meta=np.array([{"kind": "scalar"}], dtype=object))
    for bad in (b"", b"not npz", pickle.dumps(outs[-1]), buf.getvalue()):
        with pytest.raises(ValueError, match="not a serialised model output"):
            output_from_bytes(bad, ("person",))
