"""Budget parsing, resolution against measured costs, and fit checks (links/budget.py)."""

from __future__ import annotations

import pytest

from links.budget import Budget, ModelCost, ResolvedBudget, parse_budget

COSTS = {
    "mog2_motion": ModelCost("mog2_motion", ms=2.1, mem_mb=30.0),
    "hog_people": ModelCost("hog_people", ms=66.0, mem_mb=40.0),
    "yolo_fall": ModelCost("yolo_fall", ms=41.9, mem_mb=350.0, gpu_mb=900.0),
}  # total ms = 110.0


@pytest.mark.parametrize(
    "text, kind, value",
    [
        ("33%", "percent", 33.0),
        ("12.5%", "percent", 12.5),
        ("100%", "percent", 100.0),
        ("120ms", "ms", 120.0),
        ("120.5 ms", "ms", 120.5),
        ("  7MS ", "ms", 7.0),
        (".5ms", "ms", 0.5),
        ("4096MB", "mem_mb", 4096.0),
        ("4096 mb", "mem_mb", 4096.0),
        ("4GB", "mem_mb", 4096.0),
        ("gpu:4096MB", "gpu_mb", 4096.0),
        ("GPU: 2GB", "gpu_mb", 2048.0),
        ("gpu:512.5MB", "gpu_mb", 512.5),
        ("3models", "models", 3.0),
        ("1model", "models", 1.0),
        ("2 Models", "models", 2.0),
    ],
)
def test_parse_valid(text: str, kind: str, value: float) -> None:
    b = parse_budget(text)
    assert (b.kind, b.value) == (kind, value)
    assert b.text == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        "", "   ", "abc", "33", "ms", "%", "-5ms", "0ms", "0%", "0models", "150%",
        "3.5models", "gpu:120ms", "gpu:3models", "4096KB", "12 parsecs", "nan ms",
        "inf ms", "1e3ms", "33%%", "cpu:4096MB", "5 ms/frame",
    ],
)
def test_parse_invalid_names_the_text(text: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_budget(text)
    msg = str(err.value)
    assert "\n" not in msg
    assert repr(text.strip()) in msg


def test_parse_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="invalid budget"):
        parse_budget(120)  # type: ignore[arg-type]


def test_budget_direct_construction_validates() -> None:
    with pytest.raises(ValueError, match="unknown budget kind"):
        Budget("seconds", 3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        Budget("ms", -1.0)
    assert Budget("gpu_mb", 2048.0).label == "gpu:2048MB"
    assert str(Budget("models", 3.0)) == "3models"


def test_resolve_percent_is_share_of_total_compute() -> None:
    r = parse_budget("50%").resolve(COSTS)
    assert r.resource == "ms"
    assert r.limit == pytest.approx(55.0)  # 0.5 * (2.1 + 66 + 41.9)
    assert "50%" in r.label and "55 ms/frame" in r.label


def test_resolve_absolute_kinds_ignore_costs() -> None:
    assert parse_budget("120ms").resolve({}) == ResolvedBudget("ms", 120.0, "120ms")
    assert parse_budget("4GB").resolve(COSTS).limit == 4096.0
    assert parse_budget("gpu:1GB").resolve(COSTS).resource == "gpu_mb"
    assert parse_budget("2models").resolve(COSTS).resource == "models"


def test_resolve_percent_needs_costs() -> None:
    with pytest.raises(ValueError, match="no model costs"):
        parse_budget("10%").resolve({})
    zero = {"x": ModelCost("x", 0.0, 1.0)}
    with pytest.raises(ValueError, match="0 ms"):
        parse_budget("10%").resolve(zero)


def test_used_compute_counts_rates() -> None:
    r = ResolvedBudget("ms", 50.0)
    assert r.used(COSTS, COSTS) == pytest.approx(110.0)
    rates = {"mog2_motion": 1.0, "hog_people": 0.5, "yolo_fall": 0.25}
    assert r.used(COSTS, COSTS, rates) == pytest.approx(2.1 + 33.0 + 10.475)
    assert r.fits(COSTS, COSTS, rates)
    # A model missing from ``rates`` runs on every frame.
    assert r.used(["hog_people"], COSTS, {}) == pytest.approx(66.0)
    assert not r.fits(["hog_people"], COSTS)


def test_used_memory_ignores_rates() -> None:
    r = ResolvedBudget("mem_mb", 400.0)
    rates = {"mog2_motion": 1.0, "hog_people": 0.0625, "yolo_fall": 0.0}
    assert r.used(COSTS, COSTS, rates) == pytest.approx(70.0)  # yolo (rate 0) not loaded
    rates["yolo_fall"] = 0.0625
    assert r.used(COSTS, COSTS, rates) == pytest.approx(420.0)
    assert not r.fits(COSTS, COSTS, rates)
    g = ResolvedBudget("gpu_mb", 1000.0)
    assert g.used(COSTS, COSTS, rates) == pytest.approx(900.0)


def test_used_model_count_is_fractional() -> None:
    r = ResolvedBudget("models", 1.0)
    rates = {"mog2_motion": 0.5, "hog_people": 0.25, "yolo_fall": 0.25}
    assert r.used(COSTS, COSTS, rates) == pytest.approx(1.0)
    assert r.fits(COSTS, COSTS, rates)
    assert not r.fits(COSTS, COSTS)  # all three every frame = 3 models


def test_fits_tolerates_rounding_at_the_limit() -> None:
    costs = {"a": ModelCost("a", 0.1, 0.0), "b": ModelCost("b", 0.2, 0.0)}
    assert ResolvedBudget("ms", 0.3).fits(costs, costs)  # 0.1 + 0.2 != 0.3 in floats
    assert not ResolvedBudget("ms", 0.2999).fits(costs, costs)


def test_used_rejects_bad_rates_and_unknown_models() -> None:
    r = ResolvedBudget("ms", 10.0)
    with pytest.raises(ValueError, match="rate of model 'hog_people'"):
        r.used(["hog_people"], COSTS, {"hog_people": 1.5})
    with pytest.raises(ValueError, match="no measured cost for model 'ghost'"):
        r.used(["ghost"], COSTS)


def test_check_feasible_message_names_budget_and_cheapest_model() -> None:
    with pytest.raises(ValueError) as err:
        parse_budget("2ms").resolve(COSTS).check_feasible(COSTS)
    assert str(err.value) == "budget 2ms is below the cheapest model (mog2_motion, 2.1 ms/frame)"
    with pytest.raises(ValueError) as err:
        parse_budget("20MB").resolve(COSTS).check_feasible(COSTS)
    assert str(err.value) == "budget 20MB is below the cheapest model (mog2_motion, 30 MB resident memory)"
    with pytest.raises(ValueError, match=r"^budget 1% \(1.1 ms/frame\) is below the cheapest model \(mog2_motion"):
        parse_budget("1%").resolve(COSTS).check_feasible(COSTS)


def test_check_feasible_accepts_enough_and_rates() -> None:
    parse_budget("2.1ms").resolve(COSTS).check_feasible(COSTS)
    parse_budget("1models").resolve(COSTS).check_feasible(COSTS)
    parse_budget("gpu:1MB").resolve(COSTS).check_feasible(COSTS)  # CPU models use no GPU
    # At rate 1/2 the cheapest model needs 1.05 ms/frame on average.
    parse_budget("2ms").resolve(COSTS).check_feasible(COSTS, min_rate=0.5)
    # Rates never help a memory budget.
    with pytest.raises(ValueError):
        parse_budget("20MB").resolve(COSTS).check_feasible(COSTS, min_rate=0.0625)
    with pytest.raises(ValueError, match="no models"):
        parse_budget("2ms").resolve({}).check_feasible({})


@pytest.mark.parametrize("field", ["ms", "mem_mb", "gpu_mb"])
def test_model_cost_validates(field: str) -> None:
    kw = {"ms": 1.0, "mem_mb": 1.0, "gpu_mb": 0.0, field: -1.0}
    with pytest.raises(ValueError, match=field):
        ModelCost("m", **kw)
    kw[field] = float("nan")
    with pytest.raises(ValueError, match=field):
        ModelCost("m", **kw)


def test_model_cost_amount() -> None:
    c = COSTS["yolo_fall"]
    assert [c.amount(r) for r in ("ms", "mem_mb", "gpu_mb", "models")] == [41.9, 350.0, 900.0, 1.0]
    with pytest.raises(ValueError, match="unknown resource"):
        c.amount("watts")
