"""pipeline.app.bench_score on hand-made records: every rule of the scorer, with known answers."""

from __future__ import annotations

import math

import pytest

from pipeline.app.bench_score import drift_periods, hold_last_curve, informative_targets, interpolate_at, overspend, prior_cover, score_run

CLASSES = {"det": ("person",), "val": ("value",)}


def det(boxes: list[list[float]], origin: str = "executed", ms: float | None = 10.0) -> dict:
    o = {"origin": origin, "kind": "detections", "count": len(boxes), "counts": {"person": len(boxes)},
         "boxes": [[*b, 0.9, "person"] for b in boxes]}
    if ms is not None and origin == "executed":
        o["ms"] = ms
    return o


def val(v: float, origin: str = "executed", ms: float = 1.0) -> dict:
    o = {"origin": origin, "kind": "scalar", "value": v}
    if origin == "executed":
        o["ms"] = ms
    return o


def rec(frame: int, d: dict, v: dict, phase: str = "budgeted") -> dict:
    return {"frame": frame, "camera": "c", "outputs": {"det": d, "val": v}, "policy": {"phase": phase}}


BOX = [0.1, 0.1, 0.3, 0.5]
REF = {"c": {i: rec(i, det([BOX] if i % 2 else []), val(0.1 * (i % 3))) for i in range(6)}}
FRAMES = {"c": list(range(6))}
INFO = {"det": True, "val": True}


def test_the_reference_scores_itself_perfectly() -> None:
    s = score_run(REF, REF, CLASSES, FRAMES, INFO)
    assert s.mean == 1.0 and s.per_model == {"det": 1.0, "val": 1.0} and s.informative == 1.0
    assert s.box_f1 == {"det": 1.0} and s.count_mae == {"det": 0.0}
    assert s.compute_share == 1.0 and s.missing_records == 0 and s.frames == 6


def test_executed_outputs_that_differ_from_the_reference_are_wrong() -> None:
    run = {"c": dict(REF["c"])}
    run["c"][1] = rec(1, det([]), val(0.9))  # both models executed, both disagree (stateful models do)
    s = score_run(run, REF, CLASSES, FRAMES, INFO)
    assert s.per_model["det"] == pytest.approx(5 / 6) and s.per_model["val"] == pytest.approx(5 / 6)
    assert s.box_f1["det"] == pytest.approx(2 * 2 / (2 + 3))  # 2 of 3 true boxes found, no false ones
    assert s.count_mae["det"] == pytest.approx(1 / 6)


def test_a_frame_without_a_record_scores_zero_for_every_model_and_is_counted() -> None:
    run = {"c": {f: r for f, r in REF["c"].items() if f != 3}}
    s = score_run(run, REF, CLASSES, FRAMES, INFO)
    assert s.missing_records == 1
    assert s.per_model == {"det": pytest.approx(5 / 6), "val": pytest.approx(5 / 6)}
    assert s.origins["det"]["no record"] == 1


def test_derived_boxes_are_scored_and_counts_without_boxes_find_none() -> None:
    run = {"c": dict(REF["c"])}
    run["c"][1] = rec(1, det([[0.11, 0.1, 0.3, 0.5]], origin="linked"), val(0.1, origin="held"))  # IoU > 0.5
    no_boxes = det([BOX], origin="linked")
    del no_boxes["boxes"]
    run["c"][3] = rec(3, no_boxes, val(0.0, origin="held"))  # count right, no boxes to score
    s = score_run(run, REF, CLASSES, FRAMES, INFO)
    assert s.per_model["det"] == 1.0  # counts agree
    assert s.box_f1["det"] == pytest.approx(2 * 2 / (2 + 3))  # frame 3's true box is not found


def budgeted(r: dict, limit: float = 4.0) -> dict:
    return {**r, "policy": {"phase": "budgeted", "resource": "ms", "limit": limit}}


def test_compute_share_prices_executed_outputs_at_the_reference_and_separates_the_cold_start() -> None:
    run = {"c": {}}
    for i, r in REF["c"].items():
        if i < 2:
            run["c"][i] = {**r, "policy": {"phase": "cold-start"}}  # all models: 11 ms
        else:  # only the scalar model runs, and it ran 3x slower than in the reference (machine noise)
            run["c"][i] = budgeted(rec(i, {**REF["c"][i]["outputs"]["det"], "origin": "held"}, val(0.1 * (i % 3), ms=3.0)))
    s = score_run(run, REF, CLASSES, FRAMES, INFO, window=2)
    assert s.compute_share == pytest.approx((2 * 11 + 4 * 1) / (6 * 11))  # priced at the reference's 1 ms
    assert s.compute_share_measured == pytest.approx((2 * 11 + 4 * 3) / (6 * 11))
    assert s.limit_ms == 4.0 and s.budgeted_ms == 3.0 and s.worst_window_ms == 3.0
    assert overspend(s) is None  # 3 ms/frame measured within a 4 ms/frame limit


def test_an_overspending_run_is_caught() -> None:
    """A policy that runs more than its budget after the cold start is flagged, not reported."""
    run = {"c": {i: budgeted(r) for i, r in REF["c"].items()}}  # ran everything: 11 ms/frame against 4
    s = score_run(run, REF, CLASSES, FRAMES, INFO, window=3)
    why = overspend(s)
    assert why is not None and "overspent: 11.00 ms/frame" in why and "limit of 4.00" in why
    # on average within the limit, but one window far above it: caught too
    burst = {"c": {i: budgeted(r if i in (2, 3) else rec(i, {**r["outputs"]["det"], "origin": "held"}, {**r["outputs"]["val"], "origin": "held"}), 4.0)
                   for i, r in REF["c"].items()}}
    s = score_run(burst, REF, CLASSES, FRAMES, INFO, window=2)
    assert s.budgeted_ms == pytest.approx(22 / 6) and s.worst_window_ms == pytest.approx(11.0)
    assert s.worst_window == {"camera": "c", "first_frame": 2, "last_frame": 3, "dearest": [[2, 11.0], [3, 11.0]]}
    assert "in one window (camera c, frames 2-3)" in overspend(s)
    assert overspend(score_run(REF, REF, CLASSES, FRAMES, INFO)) is None  # no budget in the records: nothing to check


def test_refusals_and_full_frames_are_counted_per_run() -> None:
    """What the cap refused (records' policy.refused) is summed per model, and the frames after the
    cold start on which every model ran (profiling) are counted; the cold start's are not."""
    run = {"c": {}}
    for i, r in REF["c"].items():
        if i < 2:
            run["c"][i] = {**r, "policy": {"phase": "cold-start"}}  # every model, but cold start
        elif i == 2:
            run["c"][i] = budgeted(r)  # every model after the cold start: a profiling frame
        else:
            x = budgeted(rec(i, {**r["outputs"]["det"], "origin": "held"}, r["outputs"]["val"]))
            x["policy"]["refused"] = ["det"] if i < 5 else ["profile"]
            run["c"][i] = x
    s = score_run(run, REF, CLASSES, FRAMES, INFO, window=2)
    assert s.refused == {"det": 2, "profile": 1}
    assert s.full_frames == 1
    assert s.to_json()["refused"] == {"det": 2, "profile": 1} and s.to_json()["full_frames"] == 1
    assert score_run(REF, REF, CLASSES, FRAMES, INFO).refused == {}  # nothing refused: nothing counted


def test_informative_targets() -> None:
    ref = {"c": {i: rec(i, det([]), val(0.5 if i < 95 else 0.9)) for i in range(100)}}
    assert informative_targets(ref, ["det", "val"]) == {"det": False, "val": False}  # 100% and 95% the same
    ref = {"c": {i: rec(i, det([BOX] * (i % 3)), val(0.1 * (i % 4))) for i in range(100)}}
    assert informative_targets(ref, ["det", "val"]) == {"det": True, "val": True}
    # the prior: always the most common value; 34 of 100 frames have 0 boxes, 25 each value
    assert prior_cover(ref, ["det", "val"]) == {"det": pytest.approx(0.34), "val": pytest.approx(0.25)}


@pytest.mark.parametrize("x, expected", [(0.2, 0.9), (0.25, 0.925), (0.5, 1.0), (0.1, math.nan), (0.7, math.nan)])
def test_interpolate_at(x: float, expected: float) -> None:
    got = interpolate_at([(0.5, 1.0), (0.2, 0.9), (0.3, 0.95)], x)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_hold_last_curve_from_the_reference() -> None:
    curve = hold_last_curve(REF, CLASSES, FRAMES, INFO, ks=[1, 2, 3])
    assert [c["k"] for c in curve] == [1, 2, 3]
    assert curve[0]["mean"] == 1.0 and curve[0]["compute_share"] == 1.0
    assert curve[1]["compute_share"] == pytest.approx(0.5)  # frames 0, 2, 4 of 6
    # k=2: the detector alternates 0/1 boxes, so holding frame 0 at frame 1 is wrong every time
    assert curve[1]["mean"] < 1.0 and curve[2]["compute_share"] == pytest.approx(2 / 6)


def test_drift_periods() -> None:
    ref = {"c": {i: rec(i, det([]), val(0.1)) for i in range(12)}}
    run = {"c": {i: (rec(i, det([BOX]), val(0.1)) if i in (6, 7) else ref["c"][i]) for i in range(12)}}
    rows = drift_periods(run, ref, CLASSES, "c", boundaries=[6], period=2, informative=INFO)
    assert rows == [[pytest.approx(0.5), 1.0, 1.0]]  # the first period after the change is half wrong
