"""stages.shared_state on a real Redis: the governor's window and the cold-start samples
that every worker of a camera shares."""

from __future__ import annotations

import random

import numpy as np
import pytest
import redis

from links.governor import LocalLedger
from links.outputs import ModelOutput, OutputKind
from links.samples import AlignedSamples, ModelMeta
from pipeline.keys import camera_keys, coldstart_key, spend_key
from stages.shared_state import ColdStartSamples, RedisLedger

METAS = [ModelMeta("det", OutputKind.DETECTIONS, ("person", "car")), ModelMeta("val", OutputKind.SCALAR, ("v",))]


def _one(frame: int, metas: list[ModelMeta] = METAS) -> AlignedSamples:
    s = AlignedSamples(metas)
    outs = {"det": ModelOutput(OutputKind.DETECTIONS, ("person", "car"), boxes=np.array([[0.1, 0.1, 0.3, 0.4]]) * (1 + frame % 3),
                               class_ids=np.array([frame % 2]), scores=np.array([0.9])),
            "val": ModelOutput(OutputKind.SCALAR, ("v",), value=frame / 10)}
    s.append("cam", frame, frame / 5, {m.name: outs[m.name] for m in metas})
    return s


def test_redis_ledger_decides_exactly_as_the_local_one(r: redis.Redis) -> None:
    """The Lua booking is links.governor.window_room + choose: the same bookings, in a random
    order of frames (two workers, reclaimed frames) with random costs, give the same masks and
    window spends, and the hash keeps only the last two windows."""
    rng = random.Random(7)
    redis_ledger, local = RedisLedger(r, "cam"), LocalLedger()
    window, cap = 12, 60.0
    frames = list(range(200))
    for i in range(0, 200, 8):  # batches of 8 in order, batches shuffled a little
        j = rng.randrange(max(0, i - 16), i + 1)
        frames[i:i + 8], frames[j:j + 8] = frames[j:j + 8], frames[i:i + 8]
    for f in frames:
        costs = [round(rng.uniform(0.5, 15.0), 3) for _ in range(rng.randrange(0, 5))]
        aon = rng.random() < 0.1
        got = redis_ledger.book(f, costs, window, cap, aon)
        want = local.book(f, costs, window, cap, aon)
        assert got[0] == want[0], (f, costs, got, want)
        assert got[1] == pytest.approx(want[1]) and got[2] == want[2], (f, got, want)
        spent = rng.uniform(0.0, 20.0)
        redis_ledger.settle(f, spent)
        local.settle(f, spent)
    stored = {int(k): float(v) for k, v in r.hgetall(spend_key("cam")).items()}
    assert stored.keys() == local.spend.keys()
    assert len(stored) <= 3 * window  # bounded: frames older than two windows are dropped
    assert spend_key("cam") in camera_keys("cam")  # forgotten with the camera


def test_cold_start_samples_count_across_workers_and_keep_the_newest(r: redis.Redis) -> None:
    a, b = ColdStartSamples(r, "cam", 4), ColdStartSamples(r, "cam", 4)  # two workers
    counts = [(a if f % 2 else b).add(_one(f), np.full((4, 4), f, np.uint8) if f != 3 else None) for f in range(6)]
    assert counts == [1, 2, 3, 4, 5, 6]
    samples, thumbs = a.load(["det", "val"])
    assert list(samples.frame) == [2, 3, 4, 5]  # the ring keeps the newest 4, in frame order
    assert sorted(thumbs) == [2, 4, 5] and int(thumbs[5][0, 0]) == 5
    assert samples.outputs["val"][1].value == pytest.approx(0.3)
    assert np.allclose(samples.outputs["det"][0].boxes, _one(2).outputs["det"][0].boxes)
    assert a.count() == 6 and coldstart_key("cam") in camera_keys("cam")


def test_cold_start_samples_leave_out_what_cannot_be_trusted(r: redis.Redis) -> None:
    """Another model set (an earlier configuration), a corrupt blob, a pickle: left out, never loaded."""
    cold = ColdStartSamples(r, "cam", 8)
    cold.add(_one(0), None)
    cold.add(_one(1, METAS[:1]), None)  # only "det"
    r.hset(coldstart_key("cam"), mapping={"s3": b"not an npz", "s4": b"\x80\x04\x95pickle", "n": 4})
    samples, thumbs = cold.load(["det", "val"])
    assert list(samples.frame) == [0] and thumbs == {}
    assert ColdStartSamples(r, "other", 8).load(["det", "val"]) is None
    with pytest.raises(ValueError, match="size"):
        ColdStartSamples(r, "cam", 0)
