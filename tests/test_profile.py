"""mlink profile on real footage: aligned outputs, documented .npz, one-line errors."""

import numpy as np
import pytest

from links.samples import AlignedSamples
from pipeline.app.cli import main
from pipeline.errors import UserError
from stages.profiler import profile_videos

CHEAP = ["haar_full_body", "hog_people", "mog2_motion", "scene_light", "edge_density"]


def test_profile_real_gif(tmp_path, capsys, store_gif):
    out = tmp_path / "s.npz"
    # Through the console script's own entry point (pipeline.app.cli.main).
    assert main(["profile", str(store_gif), "--models", ",".join(CHEAP), "--every", "2", "--max-frames", "12", "--out", str(out), "--quiet"]) == 0
    s = AlignedSamples.load(out)
    assert len(s) == 12 and s.names == CHEAP
    assert s.frame.tolist() == list(range(0, 24, 2))  # every 2nd decoded frame
    assert np.all(np.diff(s.pts) > 0) and set(s.camera.tolist()) == {store_gif.stem}
    for name in CHEAP:
        assert len(s.outputs[name]) == 12
    assert 0.0 <= s.outputs["mog2_motion"][5].value <= 1.0 and s.outputs["mog2_motion"][5].grid.shape == (4, 4)
    assert "12 aligned samples of 5 models" in capsys.readouterr().out


def test_profile_bad_input(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        profile_videos([tmp_path / "nope.mp4"], model_names=["edge_density"], progress=False)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(UserError) as e:
        profile_videos([bad], model_names=["edge_density"], progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown model"):
        profile_videos([bad], model_names=["no_such_model"], progress=False)
    with pytest.raises(UserError, match="nothing to profile"):
        profile_videos([], progress=False)
    with pytest.raises(UserError, match="--every"):
        profile_videos([bad], model_names=["edge_density"], every=0, progress=False)
