"""Budgeted policies inside a real scheduler worker, on real footage and a real Redis.

A camera cold-starts (all models, profiling), trains links, goes budgeted, re-plans
on schedule, and its records carry provenance (origin, via, confidence) and the plan.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import GIF35, run_mlink

from links.samples import AlignedSamples
from pipeline.config import parse_config
from pipeline.costs import store_costs
from pipeline.errors import UserError
from pipeline.keys import COSTS_KEY, links_key, results_key
from stages.decoder import EXIT_OK, Decoder, prepare_camera
from stages.policy_runtime import RuntimeOptions, RuntimePolicy
from stages.scheduler import Worker

MODELS = ["haar_full_body", "mog2_motion", "scene_light", "edge_density"]


class _Cost:
    def __init__(self, ms: float) -> None:
        self.ms, self.mem_mb, self.gpu_mb = ms, 10.0, 0.0


# Fixed costs make the plans deterministic (real ones are measured by the CLI).
COSTS = {"haar_full_body": _Cost(20.0), "mog2_motion": _Cost(2.0), "scene_light": _Cost(0.6), "edge_density": _Cost(1.0)}


def _decode(r: redis.Redis, name: str, source: Path) -> int:
    cam = parse_config({"cameras": {name: {"source": str(source), "models": MODELS, "window": 10_000}}}).cameras[name]
    prepare_camera(r, name, fresh=True)
    r.delete(links_key(name))
    assert Decoder(cam, r).run() == EXIT_OK
    return int(r.hget(f"camera:{{{name}}}", "next_frame"))


def _records(r: redis.Redis, cam: str) -> list[dict[str, Any]]:
    return [json.loads(f[b"json"]) for _, f in r.xrange(results_key(cam))]


def _run(r: redis.Redis, policy: str, budget: str, **opts: Any) -> RuntimePolicy:
    store_costs(r, COSTS)
    pol = RuntimePolicy(RuntimeOptions(name=policy, budget=budget, epochs=8, **opts), r)
    Worker(r, pol, batch=4, block_ms=50).run(idle_exit_s=1.0)
    return pol


@pytest.mark.parametrize("policy", ["ours", "mlink", "hold-last", "standalone", "prior"])
def test_cold_start_then_budgeted_with_provenance(r: redis.Redis, videos_dir: Path, policy: str) -> None:
    n = _decode(r, "cam", videos_dir / GIF35)
    pol = _run(r, policy, "25%", cold_start_frames=12, period_frames=8, profile_fraction=0.125)
    recs = _records(r, "cam")
    assert [x["frame"] for x in recs] == list(range(n))  # one record per frame, in order
    cold = [x for x in recs if x["policy"].get("phase") == "cold-start"]
    budgeted = [x for x in recs if x["policy"].get("phase") == "budgeted"]
    # The first 12 frames profile with every model. A record describes the plan in
    # force when it is written: the 12th frame (it completes the sample and triggers
    # training) already shows the new plan, and the rest of its batch was decided cold.
    assert len(cold) == 11
    assert all(set(x["policy"]["active"]) == set(MODELS) for x in recs[:12])
    assert len(budgeted) == n - len(cold) and budgeted
    limit = 0.25 * sum(c.ms for c in COSTS.values())
    for x in budgeted:
        p = x["policy"]
        assert p["name"] == policy and p["budget"] == "25%" and p["resource"] == "ms"
        assert p["limit"] == pytest.approx(limit, rel=1e-3)
        assert p["used"] <= p["limit"] + 1e-6  # the plan's average cost fits the budget
        for m, o in x["outputs"].items():
            assert o["origin"] in ("executed", "linked", "held", "missing")
            if o["origin"] == "executed":
                assert m in p["active"]
            else:
                assert m not in p["active"]
            if o["origin"] == "linked":
                assert o["via"] and 0.0 <= o["confidence"] <= 1.0
    origins = {o["origin"] for x in budgeted for o in x["outputs"].values()}
    expected = {"ours": "linked", "mlink": "linked", "hold-last": "held", "standalone": "missing", "prior": "linked"}[policy]
    assert expected in origins, origins
    st = pol.cams["cam"]
    assert st.plan is not None and st.linkset is not None
    # links are published for the other workers, versioned
    assert int(r.hget(links_key("cam"), "version")) >= 1


def test_reselection_and_adaptation_on_schedule(r: redis.Redis, videos_dir: Path) -> None:
    n = _decode(r, "cam", videos_dir / GIF35)
    pol = _run(r, "ours", "40%", cold_start_frames=10, period_frames=6, profile_fraction=0.34)
    st = pol.cams["cam"]
    budgeted_frames = n - 10 - 3  # up to 3 more frames of the training batch were decided cold
    periods = budgeted_frames // 6
    # one plan at the end of the cold start, then one per completed period with fresh samples
    assert st.plans_made >= 1 + periods - 1
    assert st.adapted >= periods - 1 >= 1
    versions = [x["policy"].get("links_version") for x in _records(r, "cam") if x["policy"].get("phase") == "budgeted"]
    assert versions == sorted(versions) and versions[-1] > versions[0]  # links adapted and re-published
    # profiling frames inside the budgeted phase run every model
    prof = [x for x in _records(r, "cam") if x["policy"].get("phase") == "budgeted" and set(x["policy"]["active"]) == set(MODELS)]
    assert len(prof) >= periods


def test_second_worker_uses_published_links_instead_of_profiling(r: redis.Redis, videos_dir: Path) -> None:
    _decode(r, "cam", videos_dir / GIF35)
    first = _run(r, "ours", "30%", cold_start_frames=12, period_frames=100)
    blob = r.hget(links_key("cam"), "blob")
    assert blob
    # Another camera whose links (and planning samples) are already in Redis, as
    # another worker or `mlink bench` leaves them: a new worker starts budgeted at once.
    n = _decode(r, "cam2", videos_dir / GIF35)
    r.hset(links_key("cam2"), mapping={"version": 1, "blob": blob, "seed_samples": _cold_samples(first, r).to_bytes()})
    second = _run(r, "ours", "30%", cold_start_frames=12, period_frames=100)
    recs = _records(r, "cam2")
    assert len(recs) == n
    assert all(x["policy"].get("phase") == "budgeted" for x in recs)
    assert second.cams["cam2"].link_version == 1


def _cold_samples(pol: RuntimePolicy, r: redis.Redis) -> AlignedSamples:
    """The first camera's cold-start records as aligned samples."""
    from links.outputs import ModelOutput

    s = AlignedSamples([pol.metas[m] for m in MODELS])
    for x in _records(r, "cam"):
        if x["policy"].get("phase") == "cold-start":
            s.append("cam", x["frame"], x["pts"], {m: ModelOutput.from_record(x["outputs"][m], pol.metas[m].classes) for m in MODELS})
    return s


def test_budget_and_policy_errors_are_one_line() -> None:
    with pytest.raises(UserError, match="needs a budget"):
        RuntimePolicy(RuntimeOptions(name="ours"))
    with pytest.raises(UserError, match="unknown policy 'fastest'"):
        RuntimePolicy(RuntimeOptions(name="fastest", budget="10%"))
    with pytest.raises(UserError, match="invalid budget"):
        RuntimePolicy(RuntimeOptions(name="ours", budget="lots"))


def test_budget_below_cheapest_model_is_a_startup_error(tmp_path: Path, redis_url: str, gif23: Path) -> None:
    proc = run_mlink("replay", gif23, "--policy", "ours", "--budget", "0.001ms", "--redis", redis_url)
    assert proc.returncode == 1, proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlink: error:")]
    assert len(err) == 1 and "below the cheapest model" in err[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_costs_come_from_measurement(r: redis.Redis) -> None:
    store_costs(r, COSTS)
    got = {k.decode(): json.loads(v) for k, v in r.hgetall(COSTS_KEY).items()}
    assert got["haar_full_body"]["ms"] == 20.0 and got["scene_light"]["mem_mb"] == 10.0
