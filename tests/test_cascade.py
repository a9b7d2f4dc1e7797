"""The cascade policy's pure parts on synthetic streams where the right decision is known:
the risk model (change and age since a model last ran -> expected error), the per-frame
decider (a target that only changes when the scene changes runs on those frames and no
others), its token bucket, floors, and the plan's always-run set."""

from __future__ import annotations

import numpy as np
import pytest

from links.budget import ModelCost, parse_budget
from links.policies import CascadeDecider, CascadePolicy, ChangeRisk, PlanInputs, Trigger, pair_observations

CHANGES = [20, 50, 90, 140]  # frames where the scene (and the target's output) changes


def scene(n: int = 200) -> tuple[list[np.ndarray], np.ndarray]:
    """Thumbnails that stay still except for a jump at each change frame, and the target's
    output (a scene id) that changes exactly there."""
    rng = np.random.default_rng(0)
    thumbs, ids = [], np.zeros(n, int)
    level = 0.2
    for f in range(n):
        if f in CHANGES:
            level = 0.8 - level  # 0.2 <-> 0.6
        ids[f] = sum(c <= f for c in CHANGES)
        thumbs.append(np.clip(level + rng.normal(0, 0.003, (36, 64)), 0, 1).astype(np.float32))
    return thumbs, ids


def fitted_risk(thumbs: list[np.ndarray], ids: np.ndarray, upto: int = 40, targets: tuple[str, ...] = ("target",)) -> ChangeRisk:
    """The risk model a cold start of ``upto`` frames learns: ``cheap`` never changes, each target changes with the scene."""
    frames = list(range(upto))
    err = np.array([[float(ids[i] != ids[j]) for j in frames] for i in frames])
    risk = ChangeRisk(["cheap", *targets])
    for m, obs in pair_observations(frames, thumbs[:upto], {"cheap": np.zeros_like(err), **dict.fromkeys(targets, err)}).items():
        for d, age, e in obs:
            risk.add(m, d, age, e)
    risk.fit()
    return risk


def test_risk_rises_with_change_and_is_monotone() -> None:
    thumbs, ids = scene()
    risk = fitted_risk(thumbs, ids)
    assert risk.risk("target", 0.4, 1) > 0.8  # a jump: the held output is almost surely wrong
    assert risk.risk("target", 0.0, 1) < 0.05  # still scene: almost surely right
    assert risk.risk("cheap", 0.4, 1) < 0.05  # a model whose output never changes
    ds = np.linspace(0, 0.5, 11)
    for m in ("cheap", "target"):
        for age in (1, 3, 8, 20):
            r = [risk.risk(m, d, age) for d in ds]
            assert all(a <= b + 1e-12 for a, b in zip(r, r[1:]))  # more change never means less risk
        r = [risk.risk(m, 0.05, a) for a in (1, 2, 4, 8, 16, 40)]
        assert all(a <= b + 1e-12 for a, b in zip(r, r[1:]))  # nor does more age
    assert ChangeRisk(["x"]).risk("x", 0.0, 1) == 1.0  # never observed: assume the worst


def test_calibration_compares_prediction_with_what_happened() -> None:
    thumbs, ids = scene()
    risk = fitted_risk(thumbs, ids)
    held_out = {"target": [(0.4, 1, 1.0), (0.0, 1, 0.0), (0.0, 2, 0.0)]}
    pred, obs, n = risk.calibration(held_out)["target"]
    assert n == 3 and obs == pytest.approx(1 / 3) and abs(pred - obs) < 0.1


def run_decider(dec: CascadeDecider, thumbs: list[np.ndarray], frames: range, cost: dict[str, float]) -> dict[str, list[int]]:
    ran: dict[str, list[int]] = {m: [] for m in cost}
    for f in frames:
        choice = dec.decide(f, thumbs[f], cost)
        for m in choice:
            ran[m].append(f)
        dec.executed(f, thumbs[f], choice)
        dec.correct(sum(cost[m] for m in choice), sum(cost[m] for m in choice))
    return ran


def test_a_target_that_changes_with_the_scene_runs_exactly_on_the_changes() -> None:
    thumbs, ids = scene()
    cost = {"cheap": 1.0, "target": 10.0}
    dec = CascadeDecider(("cheap",), ("target",), rate=3.0, capacity=CascadeDecider.bucket_capacity(3.0, [10.0]),
                         risk=fitted_risk(thumbs, ids))
    dec.executed(39, thumbs[39], ["cheap", "target"])  # the cold start ran everything up to frame 39
    ran = run_decider(dec, thumbs, range(40, 200), cost)
    assert ran["cheap"] == list(range(40, 200))  # the always-run set
    assert ran["target"] == [50, 90, 140]  # on every change, and nowhere else
    # ...and the reason is recorded: a run after the scene changed more than usual for it
    dec2 = CascadeDecider(("cheap",), ("target",), rate=3.0, capacity=12.0, risk=fitted_risk(thumbs, ids))
    dec2.executed(49, thumbs[49], ["target"])
    dec2.tokens = 12.0  # a full bucket
    assert dec2.decide(50, thumbs[50], cost)["target"] == Trigger.CHANGE


def test_the_bucket_banks_quiet_frames_and_never_overspends() -> None:
    """Compute saved on still frames pays for several changes in a row; over any run the
    decider never spends more than the refill plus what the bucket held."""
    thumbs, ids = scene()
    risk = fitted_risk(thumbs, ids, targets=("t1", "t2"))
    cost = {"cheap": 1.0, "t1": 10.0, "t2": 10.0}
    dec = CascadeDecider(("cheap",), ("t1", "t2"), rate=3.0, capacity=24.0, risk=risk)
    dec.executed(39, thumbs[39], list(cost))
    ran = run_decider(dec, thumbs, range(40, 200), cost)
    assert ran["t1"] == ran["t2"] == [50, 90, 140]  # both at once: 21 of compute in one frame, banked before
    spent = sum(cost[m] * len(v) for m, v in ran.items())
    assert spent <= 3.0 * 160 + 24.0 / 2  # refill over 160 frames plus the half-full start


def test_floors_run_a_model_at_least_every_k_frames_whatever_the_risk() -> None:
    thumbs, ids = scene()
    cost = {"cheap": 1.0, "target": 10.0}
    dec = CascadeDecider(("cheap",), ("target",), rate=3.0, capacity=12.0, risk=fitted_risk(thumbs, ids), floors={"target": 25})
    dec.executed(39, thumbs[39], list(cost))
    ran = run_decider(dec, thumbs, range(40, 200), cost)
    gaps = np.diff([39, *ran["target"]])
    assert gaps.max() <= 25
    assert {50, 90, 140} <= set(ran["target"])


def test_an_accuracy_target_runs_the_model_whenever_its_risk_says_less_bucket_or_not() -> None:
    """min_accuracy 0.9 for the target: it must run on every change even with an empty bucket
    (the bucket would refuse it), and never on still frames."""
    thumbs, ids = scene()
    cost = {"cheap": 1.0, "target": 10.0}
    dec = CascadeDecider(("cheap",), ("target",), rate=1.5, capacity=10.5, risk=fitted_risk(thumbs, ids), targets={"target": 0.9})
    dec.executed(39, thumbs[39], list(cost))
    dec.tokens = 0.0
    ran = {}
    for f in range(40, 200):
        ran[f] = dec.decide(f, thumbs[f], cost)
        dec.executed(f, thumbs[f], ran[f])
    assert [f for f, c in ran.items() if "target" in c] == [50, 90, 140]
    assert all(ran[f]["target"] == Trigger.TARGET for f in (50, 90, 140))
    # without the target, the same empty bucket cannot pay for the changes
    dec2 = CascadeDecider(("cheap",), ("target",), rate=1.5, capacity=10.5, risk=fitted_risk(thumbs, ids))
    dec2.executed(39, thumbs[39], list(cost))
    dec2.tokens = 0.0
    assert "target" not in dec2.decide(50, thumbs[50], cost)


def test_decider_refuses_a_bad_bucket() -> None:
    with pytest.raises(ValueError, match="rate and capacity"):
        CascadeDecider((), ("a",), rate=0.0, capacity=1.0, risk=ChangeRisk(["a"]))


def test_plan_keeps_a_cheap_always_set_within_its_share() -> None:
    costs = {m: ModelCost(m, ms, 10.0, 0.0) for m, ms in [("a", 1.0), ("b", 2.0), ("c", 30.0), ("d", 60.0)]}
    budget = parse_budget("30%").resolve(costs)
    models = list(costs)

    def estimate(ex: frozenset, target: str, age: int | None) -> float:
        return 0.9 if age is not None and age <= 4 else 0.6

    plan = CascadePolicy().plan(PlanInputs(models, costs, budget, estimate=estimate))
    always = plan.notes["always"]
    assert sum(costs[m].ms for m in always) <= 0.5 * budget.limit + 1e-9
    assert set(always) <= {"a", "b"} and plan.fill == "link"
    assert plan.notes["per_frame"] == [m for m in models if m not in always]
    assert all(plan.rates[m] == (1.0 if m in always else 0.0) for m in models)


def test_floors_come_from_the_config_and_bad_ones_are_one_line_errors() -> None:
    from pipeline.config import parse_config
    from pipeline.errors import UserError
    from stages.policy_runtime import RuntimeOptions

    cams = {"door": {"source": "door.mp4", "models": ["mog2_motion", "hog_people"]}}
    cfg = parse_config({"cameras": cams, "scheduler": {"policy": "cascade", "budget": "20%", "min_every": {"hog_people": 10},
                                                       "min_accuracy": {"mog2_motion": 0.95}}})
    opts = RuntimeOptions.parse(cfg.scheduler.runtime_options())
    assert opts.min_every == {"hog_people": 10} and opts.min_accuracy == {"mog2_motion": 0.95}
    bad = [
        ({"policy": "ours", "budget": "20%", "min_every": {"hog_people": 10}}, "only the cascade policy"),
        ({"policy": "cascade", "budget": "20%", "min_every": {"plate_det": 10}}, "'plate_det' is not a model of any camera"),
        ({"policy": "cascade", "budget": "20%", "min_every": {"hog_people": 0}}, "hog_people: must be at least 1 frame"),
        ({"policy": "cascade", "budget": "20%", "min_accuracy": {"hog_people": 1.5}}, "hog_people: must be between 0 and 1"),
        ({"policy": "mlink", "budget": "20%", "min_accuracy": {"hog_people": 0.9}}, "only the cascade policy"),
        ({"policy": "cascade", "budget": "20%", "min_accuracy": {"yolo_pose": 0.9}}, "'yolo_pose' is not a model of any camera"),
    ]
    for sched, why in bad:
        with pytest.raises(UserError, match=why) as err:
            parse_config({"cameras": cams, "scheduler": sched})
        assert "\n" not in str(err.value)
