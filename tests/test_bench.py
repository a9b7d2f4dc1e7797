"""`mlink bench` end to end on a short real clip (table, JSON and plots), and its scorer."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_mlink, write_config

MODELS = ["haar_full_body", "mog2_motion", "scene_light", "edge_density"]


def test_bench_on_a_short_clip(tmp_path: Path, redis_url: str, gif35: Path) -> None:
    cfg = write_config(tmp_path / "b.yaml", {"defaults": {"models": MODELS}, "cameras": {"x": {"source": str(gif35)}}})
    out = tmp_path / "bench"
    proc = run_mlink("bench", gif35, "--config", cfg, "--budgets", "30%,60%", "--policies", "standalone,ours",
                     "--out", out, "--redis", redis_url, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    res = json.loads((out / "bench.json").read_text())
    assert [(r["policy"], r["budget"]) for r in res["runs"]] == [("standalone", "30%"), ("ours", "30%"), ("standalone", "60%"), ("ours", "60%")]
    n_eval = res["eval_frames"]
    assert n_eval == 35 - int(35 * 0.5)
    ref = res["reference"]
    assert ref["mean"] == 1.0 and ref["compute_saved"] == 0.0 and ref["fps"] > 0
    for r in res["runs"]:
        assert r["missing_records"] == 0  # every evaluated frame has its record
        assert set(r["acc"]) == set(res["models"])
        assert all(sum(r["origins"][m].values()) == n_eval for m in res["models"])  # every frame scored once
        assert all(0.0 <= a <= 1.0 for a in r["acc"].values())
        assert 0.0 < r["compute_saved"] < 1.0
    # standalone fills nothing in: a model scores 1 where it ran and 0 where it is missing,
    # so its accuracy IS its executed share (a scorer that credits "missing" fails here)
    for sa in (r for r in res["runs"] if r["policy"] == "standalone"):
        assert all(set(sa["origins"][m]) <= {"executed", "missing"} for m in res["models"])
        assert sa["acc"] == pytest.approx({m: sa["origins"][m].get("executed", 0) / n_eval for m in res["models"]})
        assert sa["mean"] == pytest.approx(sum(sa["acc"].values()) / len(sa["acc"]))
    sa = next(r for r in res["runs"] if r["policy"] == "standalone" and r["budget"] == "30%")
    ours = next(r for r in res["runs"] if r["policy"] == "ours" and r["budget"] == "30%")
    assert any(sa["origins"][m].get("missing", 0) for m in res["models"])
    assert ours["mean"] > sa["mean"]  # links fill in better than nothing
    for png in ("accuracy_vs_budget.png", "accuracy_informative_vs_budget.png", "compute_saved.png", "fps.png", "overhead.png", "per_model.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    table = (out / "bench.md").read_text()
    assert "| ours | 30% |" in table and "| all | 100% |" in table
    assert "| ours | 30% |" in proc.stdout


# ------------------------------------------------------------ the scorer itself
def _reference(gif35: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Records of policy `all` on the clip (every model executed), and the models' metas."""
    from links.samples import ModelMeta
    from pipeline.config import resolve_model_spec
    from pipeline.video import iter_frames
    from pipeline.zoo import build_models

    models = build_models([resolve_model_spec(m) for m in MODELS])
    frames = [f.image for f in iter_frames(gif35, resize=240)]
    outs = {m: model.predict(frames, ["x"] * len(frames)) for m, model in models.items()}
    recs = {i: {"camera": "x", "frame": i, "outputs": {m: {**outs[m][i].to_record(), "origin": "executed", "ms": 2.0} for m in MODELS}}
            for i in range(len(frames))}
    return recs, {m: ModelMeta.of(model) for m, model in models.items()}


def _corrupt(o: dict[str, Any]) -> dict[str, Any]:
    """The same output with a different value (what a bad link would derive)."""
    o = copy.deepcopy(o)
    if o["kind"] == "detections":
        cls = next(iter(o["counts"]))
        o["boxes"].append([0.1, 0.1, 0.3, 0.5, 0.9, cls])
        o["count"] += 1
        o["counts"][cls] += 1
    elif o["kind"] == "probs":
        other = next(c for c in o["probs"] if c != o["label"])
        o["probs"] = {c: (1.0 if c == other else 0.0) for c in o["probs"]}
        o["label"] = other
    else:
        o["value"] = o["value"] * 3 + 0.2
    return o


def test_score_run_scores_what_was_derived(gif35: Path) -> None:
    from pipeline.app.bench import RunResult, score_run

    ref_recs, metas = _reference(gif35)
    frames = sorted(ref_recs)[10:]  # the evaluated part
    ev = {"x": frames}
    ref = RunResult("all", None, {"x": ref_recs}, fps=1.0, wall_s=1.0, model_s=1.0)

    def run(recs: dict[int, dict[str, Any]]) -> dict[str, Any]:
        return score_run(RunResult("p", "30%", {"x": recs}, fps=1.0, wall_s=1.0, model_s=1.0), ref, metas, ev)

    # the reference against itself: perfect, nothing saved
    same = run(ref_recs)
    assert same["acc"] == {m: 1.0 for m in MODELS} and same["mean"] == 1.0
    assert same["compute_saved"] == 0.0 and same["missing_records"] == 0
    # every model derived ("linked") with exactly the reference's values: still perfect, all compute saved
    linked = copy.deepcopy(ref_recs)
    for rec in linked.values():
        for o in rec["outputs"].values():
            o["origin"], o["ms"] = "linked", 0.0
    exact = run(linked)
    assert exact["acc"] == {m: 1.0 for m in MODELS} and exact["compute_saved"] == 1.0
    assert exact["origins"] == {m: {"linked": len(frames)} for m in MODELS}
    # corrupt each model's derived output on the first k evaluated frames: accuracy 1 - k/n exactly
    k = 5
    bad = copy.deepcopy(linked)
    for f in frames[:k]:
        bad[f]["outputs"] = {m: _corrupt(o) for m, o in bad[f]["outputs"].items()}
    wrong = run(bad)
    assert wrong["acc"] == pytest.approx({m: 1 - k / len(frames) for m in MODELS})
    # "missing" scores 0, "executed" scores 1 whatever it says (the model itself ran)
    mixed = copy.deepcopy(linked)
    for f in frames:
        mixed[f]["outputs"]["scene_light"]["origin"] = "missing"
        mixed[f]["outputs"]["edge_density"] = {**_corrupt(ref_recs[f]["outputs"]["edge_density"]), "origin": "executed", "ms": 2.0}
    m = run(mixed)
    assert m["acc"]["scene_light"] == 0.0 and m["acc"]["edge_density"] == 1.0
    assert m["compute_saved"] == pytest.approx(1 - 1 / len(MODELS))  # only edge_density's time was spent
    # a frame without a record is counted, not silently scored
    holes = {f: rec for f, rec in ref_recs.items() if f not in frames[:3]}
    assert run(holes)["missing_records"] == 3
