"""links train + links report on a small real profile (a short GIF, cheap models)."""

import json

import pytest

from links.linkset import LinkSet
from links.samples import AlignedSamples
from pipeline.app.cli import main
from stages.profiler import profile_videos

CHEAP = ["haar_full_body", "hog_people", "mog2_motion", "scene_light", "edge_density"]


def run(argv):
    """The console script's own entry point, in process."""
    return main(argv)


@pytest.fixture(scope="module")
def real_samples(tmp_path_factory, store_gif):
    """All 40 frames of the store-aisle GIF profiled with the cheap models."""
    p = tmp_path_factory.mktemp("prof") / "gif.npz"
    profile_videos([store_gif], model_names=CHEAP, max_frames=60, progress=False, out=p)
    assert len(AlignedSamples.load(p)) == 40
    return p


def test_train_and_report_on_real_footage(real_samples, tmp_path, capsys):
    out = tmp_path / "links"
    assert run(["links", "train", str(real_samples), "--out", str(out), "--first", "0.5", "--epochs", "15", "--quiet"]) == 0
    assert "trained 20 links and 5 ensembles on 20 samples" in capsys.readouterr().out
    meta = json.loads((out / "links.json").read_text())
    assert meta["format"] == "mlink-links" and meta["sample_counts"]["train"] == 20
    assert [m["name"] for m in meta["models"]] == CHEAP
    png, js = tmp_path / "m.png", tmp_path / "rows.json"
    assert run(["links", "report", str(out), "--samples", str(real_samples), "--skip-first", "0.5", "--png", str(png), "--json", str(js)]) == 0
    text = capsys.readouterr().out
    for name in CHEAP:
        assert name in text
    for col in ("prior", "hold4", "single", "ens+t", "closed"):
        assert col in text
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    rows = json.loads(js.read_text())
    assert len(rows) == 5 and all(r["n"] == 20 for r in rows)
    for r in rows:
        for c in ("prior", "hold_last", "best_single", "ensemble", "ens_temporal"):
            assert 0.0 <= r[c] <= 1.0
    # the links are usable by the scheduler straight from disk
    ls = LinkSet.load(out)
    s = AlignedSamples.load(real_samples)
    d = ls.derive({"edge_density": s.outputs["edge_density"][0]}, CHEAP)
    assert d["edge_density"].confidence == 1.0 and d["hog_people"].via == ("edge_density",)


def one_line_error(capsys, *needles):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("mlink: error: "), err
    for n in needles:
        assert n in err[0], err
    return err[0]


def test_cli_errors_are_user_errors(real_samples, tmp_path, capsys):
    assert run(["links", "report", str(tmp_path / "none"), "--samples", str(real_samples)]) == 1
    one_line_error(capsys, "links file not found")
    assert run(["links", "train", str(real_samples), "--out", str(tmp_path / "x"), "--first", "1.5"]) == 1
    one_line_error(capsys, "--first")
    bad = tmp_path / "bad.npz"
    bad.write_text("nope")
    assert run(["links", "train", str(bad), "--out", str(tmp_path / "x")]) == 1
    one_line_error(capsys, str(bad))
    # links trained on other models do not match these samples
    other = AlignedSamples.load(real_samples)
    sub = AlignedSamples(other.models[:3])
    for i in range(10):
        sub.append("c", i, i / 10, {m.name: other.outputs[m.name][i] for m in other.models[:3]})
    sub_path = sub.save(tmp_path / "sub.npz")
    assert run(["links", "train", str(sub_path), "--out", str(tmp_path / "sub"), "--epochs", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert run(["links", "report", str(tmp_path / "sub"), "--samples", str(real_samples)]) == 1
    one_line_error(capsys, "trained for models")
