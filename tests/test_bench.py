"""`mlink bench` end to end on a short real clip: table, JSON and plots."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import GIF35, run_mlink, write_config


def test_bench_on_a_short_clip(tmp_path: Path, redis_url: str, videos_dir: Path) -> None:
    cfg = write_config(tmp_path / "b.yaml", {"defaults": {"models": ["haar_full_body", "mog2_motion", "scene_light", "edge_density"]},
                                             "cameras": {"x": {"source": str(videos_dir / GIF35)}}})
    out = tmp_path / "bench"
    proc = run_mlink("bench", videos_dir / GIF35, "--config", cfg, "--budgets", "30%,60%", "--policies", "standalone,ours",
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
        assert all(0.0 <= a <= 1.0 for a in r["acc"].values())
        assert 0.0 < r["compute_saved"] < 1.0
        executed_share = {m: r["origins"][m].get("executed", 0) / n_eval for m in res["models"]}
        # executed frames score 1, so a model's accuracy is at least its executed share
        assert all(r["acc"][m] >= executed_share[m] - 1e-9 for m in res["models"])
    # standalone reports non-executed models as missing (score 0); links do better
    sa = next(r for r in res["runs"] if r["policy"] == "standalone" and r["budget"] == "30%")
    ours = next(r for r in res["runs"] if r["policy"] == "ours" and r["budget"] == "30%")
    assert any(sa["origins"][m].get("missing", 0) for m in res["models"])
    assert ours["mean"] > sa["mean"]
    for png in ("accuracy_vs_budget.png", "accuracy_informative_vs_budget.png", "compute_saved.png", "fps.png", "overhead.png", "per_model.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    table = (out / "bench.md").read_text()
    assert "| ours | 30% |" in table and "| all | 100% |" in table
    assert "| ours | 30% |" in proc.stdout
