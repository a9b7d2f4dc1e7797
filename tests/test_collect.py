"""pipeline.app.collect.FrameRanges: which frames have a record, in memory that grows with the gaps."""

from __future__ import annotations

import random

import pytest

from pipeline.app.collect import FrameRanges, describe_ranges


@pytest.mark.parametrize(
    "seen, start, end, missing",
    [
        ([], 0, 5, [(0, 5)]),
        ([0, 1, 2, 3, 4], 0, 5, []),
        ([0, 1, 3, 4], 0, 5, [(2, 3)]),
        ([4, 3, 1, 0], 0, 5, [(2, 3)]),  # any order
        ([2, 2, 2], 0, 5, [(0, 2), (3, 5)]),  # duplicates
        ([10, 11, 12], 0, 20, [(0, 10), (13, 20)]),
        ([5, 6, 7], 6, 9, [(8, 9)]),  # only the asked window
    ],
)
def test_missing_ranges(seen: list[int], start: int, end: int, missing: list[tuple[int, int]]) -> None:
    r = FrameRanges()
    for i in seen:
        r.add(i)
    assert r.missing(start, end) == missing


def test_against_a_set_on_random_streams() -> None:
    rng = random.Random(5)
    for _ in range(50):
        seen = {rng.randrange(200) for _ in range(rng.randrange(150))}
        r = FrameRanges()
        for i in rng.sample(sorted(seen), len(seen)):
            r.add(i)
        got = {i for a, b in r.missing(0, 200) for i in range(a, b)}
        assert got == set(range(200)) - seen
        assert len(r._r) <= len(r.missing(0, 200)) + 1  # one range per gap, not per frame


def test_describe_ranges() -> None:
    assert describe_ranges([(3, 6), (9, 10)]) == "3-5, 9"
    assert describe_ranges([(i * 2, i * 2 + 1) for i in range(8)], most=3) == "0, 2, 4 and 5 more ranges"
