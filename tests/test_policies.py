"""Selection policies, plans, the frame schedule, reducto and re-selection
(links/policies/)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from links.budget import ModelCost, ResolvedBudget, parse_budget
from links.policies import (
    POLICIES,
    HoldLastPolicy,
    MLinkPolicy,
    OursPolicy,
    Plan,
    PlanInputs,
    ReductoGate,
    Reselector,
    estimate_accuracy,
    frame_difference,
    make_policy,
    mlink_scores,
    reducto_accuracy,
    simulate_reducto,
    stagger_phases,
    thumbnail,
    tune_reducto_thresholds,
)


def costs_of(ms: dict[str, float], mem: dict[str, float] | None = None) -> dict[str, ModelCost]:
    mem = mem or {}
    return {m: ModelCost(m, ms=v, mem_mb=mem.get(m, 10.0 * v), gpu_mb=5.0 * v) for m, v in ms.items()}


def frame_costs(plan: Plan, costs: dict[str, ModelCost], resource: str, frames: range) -> np.ndarray:
    return np.array([sum(costs[m].amount(resource) for m in plan.executed_at(f)) for f in frames])


def hub_estimate(hub: str):
    """The hub predicts every other model perfectly; nothing else predicts anything."""

    def est(executed: frozenset, target: str, age: int | None) -> float:
        return 1.0 if hub in executed else 0.0

    return est


# --------------------------------------------------------------------------- registry


def test_registry_has_every_policy() -> None:
    assert set(POLICIES) == {"all", "standalone", "prior", "hold-last", "reducto", "mlink", "ours", "cascade"}
    for name, cls in POLICIES.items():
        assert cls.name == name
        assert make_policy(name).name == name


def test_make_policy_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError) as err:
        make_policy("greedy")
    assert "'greedy'" in str(err.value)
    for name in POLICIES:
        assert name in str(err.value)


def test_make_policy_options() -> None:
    assert make_policy("mlink", skip_unfit=True).skip_unfit is True  # type: ignore[attr-defined]
    assert make_policy("ours", strict_per_frame=True).strict_per_frame is True  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="policy 'mlink' has no option 'skip'; options: skip_unfit"):
        make_policy("mlink", skip=True)
    with pytest.raises(ValueError, match="max_period"):
        make_policy("hold-last", max_period=3)


# --------------------------------------------------------------------------- plan & schedule


def test_plan_validates_rates_and_fill() -> None:
    with pytest.raises(ValueError, match="power of two"):
        Plan({"a": 0.3}, "link", 0.0, 1.0, "ms")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Plan({"a": 2.0}, "link", 0.0, 1.0, "ms")
    with pytest.raises(ValueError, match="unknown fill"):
        Plan({"a": 1.0}, "magic", 0.0, 1.0, "ms")
    with pytest.raises(ValueError, match="phase"):
        Plan({"a": 0.25}, "link", 0.0, 1.0, "ms", phases={"a": 4})
    Plan({"a": 0.3}, "reducto", 0.0, 1.0, "ms")  # expected fractions are fine for reducto


def test_plan_is_a_copy_of_the_callers_dicts() -> None:
    rates = {"a": 1.0}
    plan = Plan(rates, "link", 1.0, 1.0, "ms")
    rates["a"] = 0.0
    assert plan.rates == {"a": 1.0}


@pytest.mark.parametrize("rate, k", [(1.0, 1), (0.5, 2), (0.25, 4), (0.125, 8), (1 / 16, 16)])
def test_executes_runs_every_kth_frame(rate: float, k: int) -> None:
    costs = costs_of({"a": 10.0, "b": 1.0})
    plan = Plan.build({"a": rate, "b": 0.0}, "link", ResolvedBudget("ms", 100.0), costs)
    window = range(1000, 1000 + 64)
    runs = [f for f in window if plan.executes("a", f)]
    assert len(runs) == 64 // k
    assert all(b - a == k for a, b in zip(runs, runs[1:]))
    assert all((f + plan.phases.get("a", 0)) % k == 0 for f in runs)
    assert not any(plan.executes("b", f) for f in window)
    assert plan.active() == ["a"]
    assert plan.period("b") is None and plan.period("a") == k


def test_executes_honours_explicit_phases() -> None:
    plan = Plan({"a": 0.25, "b": 0.5, "c": 1.0}, "link", 0.0, 1.0, "ms", phases={"a": 1, "b": 1})
    assert [f for f in range(12) if plan.executes("a", f)] == [3, 7, 11]  # (f + 1) % 4 == 0
    assert [f for f in range(6) if plan.executes("b", f)] == [1, 3, 5]
    assert plan.executed_at(3) == ["a", "b", "c"] and plan.executed_at(4) == ["c"]
    assert plan.hyperperiod == 4


def test_executes_unknown_model_and_reducto() -> None:
    plan = Plan({"a": 1.0}, "link", 0.0, 1.0, "ms")
    with pytest.raises(ValueError, match="'ghost' is not in this plan"):
        plan.executes("ghost", 0)
    red = Plan({"a": 0.3}, "reducto", 0.0, 1.0, "ms")
    with pytest.raises(ValueError, match="ReductoGate"):
        red.executes("a", 0)


def test_stagger_spreads_equal_models_one_per_frame() -> None:
    costs = costs_of({"a": 10.0, "b": 10.0, "c": 10.0, "d": 10.0})
    rates = dict.fromkeys(costs, 0.25)
    plan = Plan.build(rates, "link", ResolvedBudget("ms", 10.0), costs)
    assert sorted(plan.phases.values()) == [0, 1, 2, 3]
    loads = frame_costs(plan, costs, "ms", range(32))
    assert loads.tolist() == [10.0] * 32  # perfectly flat: exactly one model per frame
    assert plan.peak_used == 10.0 and plan.budget_used == pytest.approx(10.0)


def test_stagger_keeps_expensive_models_apart() -> None:
    costs = costs_of({"big1": 100.0, "big2": 90.0, "small": 5.0})
    rates = {"big1": 0.5, "big2": 0.5, "small": 1.0}
    plan = Plan.build(rates, "link", ResolvedBudget("ms", 100.0), costs)
    for f in range(16):
        assert not (plan.executes("big1", f) and plan.executes("big2", f))
    assert plan.peak_used == pytest.approx(105.0)  # vs 195 if both landed together
    assert plan.budget_used == pytest.approx(100.0)


def test_stagger_mixed_periods_is_deterministic_and_balanced() -> None:
    weights = {"a": 8.0, "b": 4.0, "c": 4.0, "d": 2.0, "e": 2.0}
    rates = {"a": 0.5, "b": 0.25, "c": 0.25, "d": 0.125, "e": 0.125}
    p1 = stagger_phases(rates, weights)
    p2 = stagger_phases(dict(reversed(list(rates.items()))), weights)
    assert p1 == p2
    load = np.zeros(8)
    for m, r in rates.items():
        k = round(1 / r)
        for t in range(8):
            if (t + p1[m]) % k == 0:
                load[t] += weights[m]
    assert load.sum() == pytest.approx(8 * sum(r * weights[m] for m, r in rates.items()))
    assert load.max() <= 10.0  # average is 6.5; a naive all-phase-0 schedule peaks at 20


def test_plan_json_round_trip() -> None:
    costs = costs_of({"a": 3.0, "b": 5.0})
    plan = Plan.build({"a": 1.0, "b": 0.5}, "link", ResolvedBudget("ms", 10.0), costs, policy="ours")
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    with pytest.raises(ValueError, match="unknown plan field"):
        Plan.from_dict({**plan.to_dict(), "colour": "red"})


# --------------------------------------------------------------------------- budgets, all policies


def random_case(rng: np.random.Generator) -> tuple[list[str], dict[str, ModelCost], np.ndarray]:
    k = int(rng.integers(2, 7))
    models = [f"m{i}" for i in range(k)]
    ms = rng.uniform(2.0, 150.0, size=k)
    mem = rng.uniform(20.0, 900.0, size=k)
    gpu = np.where(rng.random(k) < 0.3, 0.0, rng.uniform(100.0, 2000.0, size=k))
    costs = {m: ModelCost(m, float(ms[i]), float(mem[i]), float(gpu[i])) for i, m in enumerate(models)}
    pairwise = rng.uniform(0.0, 1.0, size=(k, k))
    np.fill_diagonal(pairwise, 1.0)
    return models, costs, pairwise


def pairwise_estimate(models: list[str], pairwise: np.ndarray):
    idx = {m: i for i, m in enumerate(models)}

    def est(executed: frozenset, target: str, age: int | None) -> float:
        link = max((pairwise[idx[s], idx[target]] for s in executed), default=0.0)
        held = 0.0 if age is None else max(0.0, 1.0 - 0.08 * age)
        return float(max(link, held))

    return est


BUDGET_SPELLINGS = ["5%", "20%", "45%", "80%", "30ms", "400MB", "1500MB", "gpu:1000MB", "1models", "2models"]


@pytest.mark.parametrize("policy", ["standalone", "prior", "hold-last", "mlink", "ours", "ours-strict", "mlink-skip"])
def test_every_policy_respects_the_budget(policy: str) -> None:
    rng = np.random.default_rng(1234)
    name, kw = {
        "ours-strict": ("ours", {"strict_per_frame": True}),
        "mlink-skip": ("mlink", {"skip_unfit": True}),
    }.get(policy, (policy, {}))
    pol = make_policy(name, **kw)
    checked = 0
    for _ in range(12):
        models, costs, pairwise = random_case(rng)
        for spelling in BUDGET_SPELLINGS:
            budget = parse_budget(spelling).resolve(costs)
            inp = PlanInputs(models, costs, budget, pairwise=pairwise,
                             estimate=pairwise_estimate(models, pairwise))
            plan = pol.plan(inp)
            assert set(plan.rates) == set(models)
            assert plan.resource == budget.resource and plan.budget_limit == budget.limit
            assert budget.within(plan.budget_used), (policy, spelling, plan)
            if budget.rate_sensitive:
                # Simulate one full hyperperiod (= LCM of the periods): the average must be
                # exactly the planned use and within the limit.
                loads = frame_costs(plan, costs, budget.resource, range(7, 7 + plan.hyperperiod))
                assert loads.mean() == pytest.approx(plan.budget_used, abs=1e-9)
                assert budget.within(loads.mean())
                assert loads.max() == pytest.approx(plan.peak_used)
                if policy == "ours-strict":
                    assert budget.within(loads.max()), (spelling, plan)
            else:
                loaded = sum(costs[m].amount(budget.resource) for m in plan.active())
                assert budget.within(loaded)
            checked += 1
    assert checked == 12 * len(BUDGET_SPELLINGS)


def test_all_policy_ignores_the_budget() -> None:
    costs = costs_of({"a": 50.0, "b": 60.0})
    plan = make_policy("all").plan(PlanInputs(["a", "b"], costs, ResolvedBudget("ms", 10.0)))
    assert plan.rates == {"a": 1.0, "b": 1.0}
    assert plan.budget_used == 110.0 and plan.budget_limit == 10.0


def test_standalone_and_prior_pick_the_cheapest_that_fit() -> None:
    costs = costs_of({"a": 30.0, "b": 10.0, "c": 25.0, "d": 5.0})
    inp = PlanInputs(list(costs), costs, ResolvedBudget("ms", 40.0))
    s = make_policy("standalone").plan(inp)
    p = make_policy("prior").plan(inp)
    assert s.active() == ["b", "c", "d"] == p.active()  # 5 + 10 + 25 = 40
    assert (s.fill, p.fill) == ("missing", "prior")


def test_hold_last_uses_the_largest_common_rate() -> None:
    costs = costs_of({"a": 30.0, "b": 10.0, "c": 20.0})  # 60 ms for all
    inp = PlanInputs(list(costs), costs, ResolvedBudget("ms", 20.0))
    plan = HoldLastPolicy().plan(inp)
    assert plan.rates == {"a": 0.25, "b": 0.25, "c": 0.25}  # 1/2 would be 30 ms
    assert plan.fill == "hold"
    # Below 60/16 ms per frame not all models fit: the most expensive is dropped first.
    tight = HoldLastPolicy().plan(PlanInputs(list(costs), costs, ResolvedBudget("ms", 3.0)))
    assert tight.rates == {"a": 0.0, "b": 0.0625, "c": 0.0625}  # 30 ms / 16 = 1.875
    # Memory: rates save nothing, so it is standalone's set at rate 1.
    mem = HoldLastPolicy().plan(PlanInputs(list(costs), costs, ResolvedBudget("mem_mb", 300.0)))
    assert mem.rates == {"a": 0.0, "b": 1.0, "c": 1.0}


# --------------------------------------------------------------------------- mlink


# Hand-computed example (rows = source i, columns = target j):
#             A     B     C           costs: A 10 ms, B 20 ms, C 40 ms  (min_c = 10)
#     A  [  1.0,  0.8,  0.6 ]
#     B  [  0.4,  1.0,  0.5 ]
#     C  [  0.9,  0.7,  1.0 ]
# P1_A = (0.8 + 0.6)/2 = 0.70   P2_A = (0.4 + 0.9)/2 = 0.65
# P1_B = (0.4 + 0.5)/2 = 0.45   P2_B = (0.8 + 0.7)/2 = 0.75
# P1_C = (0.9 + 0.7)/2 = 0.80   P2_C = (0.6 + 0.5)/2 = 0.55
# score_A = (1 + 0.70 - 0.65) * 10 / (2 * 10) = 1.05 * 0.5   = 0.525
# score_B = (1 + 0.45 - 0.75) * 10 / (2 * 20) = 0.70 * 0.25  = 0.175
# score_C = (1 + 0.80 - 0.55) * 10 / (2 * 40) = 1.25 * 0.125 = 0.15625
# Order A, B, C. Budget 30 ms: A (10) + B (20) = 30 fits, C would make 70 -> {A, B}.
# Budget 29 ms: A fits, B (30) does not -> the literal greedy stops -> {A}; skipping B,
# C (50) does not fit either -> {A}.
HAND_P = np.array([[1.0, 0.8, 0.6], [0.4, 1.0, 0.5], [0.9, 0.7, 1.0]])
HAND_COSTS = costs_of({"A": 10.0, "B": 20.0, "C": 40.0})


def test_mlink_scores_hand_computed() -> None:
    scores = mlink_scores(HAND_P, [10.0, 20.0, 40.0])
    assert scores == pytest.approx([0.525, 0.175, 0.15625], rel=1e-12)


@pytest.mark.parametrize("limit, expected", [(30.0, ["A", "B"]), (29.0, ["A"]), (70.0, ["A", "B", "C"]), (9.0, [])])
def test_mlink_policy_hand_computed(limit: float, expected: list[str]) -> None:
    inp = PlanInputs(["A", "B", "C"], HAND_COSTS, ResolvedBudget("ms", limit), pairwise=HAND_P)
    plan = MLinkPolicy().plan(inp)
    assert plan.active() == expected
    assert all(plan.rates[m] == 1.0 for m in expected)
    assert plan.fill == "link"
    assert plan.notes["scores"] == pytest.approx({"A": 0.525, "B": 0.175, "C": 0.15625})


def test_mlink_scores_edge_cases() -> None:
    # One model: P1 = P2 = 0, score = min_c / (2 c) = 0.5.
    assert mlink_scores(np.ones((1, 1)), [7.0]).tolist() == [0.5]
    # NaN (no link) counts as 0; zero cost is free -> inf, min_c over positive costs.
    p = np.array([[1.0, np.nan], [0.5, 1.0]])
    s = mlink_scores(p, [0.0, 4.0])
    assert math.isinf(s[0])
    assert s[1] == pytest.approx((1 + 0.5 - 0.0) * 4 / (2 * 4))
    with pytest.raises(ValueError, match="2x2"):
        mlink_scores(np.ones((3, 3)), [1.0, 2.0])


def test_mlink_needs_pairwise() -> None:
    inp = PlanInputs(["A"], HAND_COSTS, ResolvedBudget("ms", 10.0))
    with pytest.raises(ValueError, match="pairwise"):
        MLinkPolicy().plan(inp)


# Skip-and-continue: "big" predicts both small models perfectly and nothing predicts it,
# so it has the best score, but at 12 ms it does not fit an 11 ms budget.
#   P1_big = (1 + 1)/2 = 1, P2_big = 0    -> score = (1 + 1 - 0) * 10 / (2 * 12) = 0.8333
#   P1_s   = (0 + 0)/2 = 0, P2_s = 0.5    -> score = (1 + 0 - 0.5) * 10 / (2 * 10) = 0.25
SKIP_P = np.array([
    [1.0, 1.0, 1.0],  # big
    [0.0, 1.0, 0.0],  # s1
    [0.0, 0.0, 1.0],  # s2
])
SKIP_COSTS = costs_of({"big": 12.0, "s1": 10.0, "s2": 10.0})


def test_greedy_skip_and_continue() -> None:
    assert mlink_scores(SKIP_P, [12.0, 10.0, 10.0]) == pytest.approx([20 / 24, 0.25, 0.25])
    inp = PlanInputs(["big", "s1", "s2"], SKIP_COSTS, ResolvedBudget("ms", 11.0), pairwise=SKIP_P)
    assert MLinkPolicy(skip_unfit=False).plan(inp).active() == []  # literal: stops at big
    assert MLinkPolicy(skip_unfit=True).plan(inp).active() == ["s1"]  # skips big, takes s1
    # ours cannot run big every frame either, but runs it every other frame (6 ms) and
    # s1 on the other frames (5 ms): big's frames score 3/3, the others 1/3 -> 2/3,
    # against 1/3 for s1 alone.
    plan = OursPolicy().plan(inp)
    assert plan.rates == {"big": 0.5, "s1": 0.5, "s2": 0.0}
    assert plan.expected_accuracy == pytest.approx(2 / 3)
    assert not any(plan.executes("big", f) and plan.executes("s1", f) for f in range(8))
    assert plan.budget_used == pytest.approx(11.0)


def test_ours_skips_an_upgrade_that_does_not_fit_and_takes_cheaper_ones() -> None:
    # "big" alone would make everything perfect, but 50 ms never fits (not even at 1/16
    # = 3.125 ms > 3 ms left after a and b); the cheaper models are still taken.
    costs = costs_of({"big": 50.0, "a": 1.0, "b": 1.0})
    inp = PlanInputs(list(costs), costs, ResolvedBudget("ms", 3.0), estimate=hub_estimate("big"),
                     pairwise=np.eye(3))
    plan = OursPolicy().plan(inp)
    assert plan.rates == {"big": 0.0, "a": 1.0, "b": 1.0}
    assert plan.expected_accuracy == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- ours


def test_ours_picks_the_model_that_predicts_all_others() -> None:
    costs = costs_of({"hub": 35.0, "a": 10.0, "b": 10.0, "c": 10.0})
    inp = PlanInputs(list(costs), costs, ResolvedBudget("ms", 40.0), estimate=hub_estimate("hub"))
    plan = OursPolicy().plan(inp)
    assert plan.rates["hub"] == 1.0
    assert plan.expected_accuracy == pytest.approx(1.0)
    assert plan.fill == "link"
    # Standalone would run a, b, c (30 ms) and miss the hub: mean accuracy 3/4.
    assert make_policy("standalone").plan(inp).active() == ["a", "b", "c"]


def test_ours_greedy_ranks_by_gain_per_cost_not_gain() -> None:
    # x (30 ms) is right about itself and a; a, b, c (10 ms each) only about themselves.
    # Running x gives the biggest single gain (2/4) but a, b and c together give 3/4 for
    # the same 30 ms: gain per ms favours them (1/40 vs 1/60).
    costs = costs_of({"x": 30.0, "a": 10.0, "b": 10.0, "c": 10.0})

    def est(executed: frozenset, target: str, age: int | None) -> float:
        return 1.0 if target == "a" and "x" in executed else 0.0

    inp = PlanInputs(list(costs), costs, ResolvedBudget("ms", 30.0), estimate=est)
    plan = OursPolicy(compare_baselines=False).plan(inp)
    assert plan.rates == {"x": 0.0, "a": 1.0, "b": 1.0, "c": 1.0}
    assert plan.expected_accuracy == pytest.approx(0.75)
    assert plan.notes["chosen_from"] == "greedy+fill"  # the budget was already full: fill added nothing


def test_ours_spends_budget_the_estimate_calls_useless() -> None:
    # The estimate says the hub predicts everything perfectly, so the greedy stops after
    # the hub; estimates from a small profiling sample are optimistic, so the rest of the
    # budget goes to raising other models' rates instead of being left unused.
    costs = costs_of({"hub": 10.0, "a": 20.0, "b": 20.0})
    inp = PlanInputs(list(costs), costs, ResolvedBudget("ms", 30.0), estimate=hub_estimate("hub"))
    lean = OursPolicy(fill_budget=False).plan(inp)
    assert lean.rates == {"hub": 1.0, "a": 0.0, "b": 0.0} and lean.budget_used == pytest.approx(10.0)
    full = OursPolicy().plan(inp)
    assert full.rates["hub"] == 1.0
    assert full.budget_used <= 30.0 + 1e-9 and full.budget_used >= 25.0
    assert full.expected_accuracy == pytest.approx(1.0)


def test_ours_uses_rates_when_held_outputs_age_gracefully() -> None:
    costs = costs_of({"a": 10.0, "b": 10.0, "c": 10.0, "d": 10.0})

    def est(executed: frozenset, target: str, age: int | None) -> float:
        return 0.0 if age is None else 1.0 - 0.05 * age  # no links, only holding

    inp = PlanInputs(list(costs), costs, ResolvedBudget("ms", 20.0), estimate=est)
    plan = OursPolicy().plan(inp)
    # Two models every frame: 0.5. All four every other frame: (1 + 0.95)/2 = 0.975.
    assert plan.rates == dict.fromkeys(costs, 0.5)
    assert plan.expected_accuracy == pytest.approx(0.975)
    assert plan.budget_used == pytest.approx(20.0)


def test_ours_never_worse_than_baselines_by_its_own_estimate() -> None:
    rng = np.random.default_rng(7)
    for _ in range(10):
        models, costs, pairwise = random_case(rng)
        est = pairwise_estimate(models, pairwise)
        for spelling in ["10%", "30%", "2models", "600MB"]:
            budget = parse_budget(spelling).resolve(costs)
            inp = PlanInputs(models, costs, budget, pairwise=pairwise, estimate=est)
            ours = OursPolicy().plan(inp)
            mean, per_model = estimate_accuracy(inp, ours.rates)
            assert ours.expected_accuracy == pytest.approx(mean)
            assert ours.notes["model_accuracy"] == pytest.approx(per_model)
            for other in [MLinkPolicy(), MLinkPolicy(skip_unfit=True), HoldLastPolicy(),
                          make_policy("standalone")]:
                assert mean >= estimate_accuracy(inp, other.plan(inp).rates)[0] - 1e-12


def test_estimate_accuracy_by_hand() -> None:
    # Hub at rate 1/2 and nothing else: on its frames all 3 models are right, on the
    # others none (the hub's own held output scores 0 with this estimate) -> 1/2.
    costs = costs_of({"hub": 10.0, "a": 1.0, "b": 1.0})
    inp = PlanInputs(list(costs), costs, ResolvedBudget("ms", 100.0), estimate=hub_estimate("hub"))
    mean, per_model = estimate_accuracy(inp, {"hub": 0.5})
    assert mean == pytest.approx(0.5)
    assert per_model == pytest.approx({"hub": 0.5, "a": 0.5, "b": 0.5})
    assert estimate_accuracy(inp, {"hub": 1.0})[0] == pytest.approx(1.0)
    assert estimate_accuracy(inp, {"a": 1.0, "b": 1.0})[0] == pytest.approx(2 / 3)


def test_ours_strict_per_frame_keeps_every_frame_under_the_limit() -> None:
    costs = costs_of({"big": 30.0, "a": 8.0, "b": 8.0})

    def est(executed: frozenset, target: str, age: int | None) -> float:
        return 0.0 if age is None else max(0.0, 1.0 - 0.1 * age)

    inp = PlanInputs(list(costs), costs, ResolvedBudget("ms", 20.0), estimate=est)
    loose = OursPolicy().plan(inp)
    strict = OursPolicy(strict_per_frame=True).plan(inp)
    assert loose.peak_used is not None and loose.peak_used > 20.0  # big alone is 30 ms on its frames
    assert strict.peak_used is not None and strict.peak_used <= 20.0
    assert strict.rates["big"] == 0.0


def test_ours_weights_uninformative_targets_down() -> None:
    # Two equally priced models, budget for one. Running "x" predicts nothing; running "y"
    # predicts nothing either; only the model's own accuracy counts. If "x" is flagged as
    # uninformative (its accuracy is cheap anyway), ours should prefer running "y".
    costs = costs_of({"x": 10.0, "y": 10.0})

    def est(executed: frozenset, target: str, age: int | None) -> float:
        return 0.0

    inp = PlanInputs(["x", "y"], costs, ResolvedBudget("ms", 10.0), estimate=est,
                     informative={"x": False, "y": True})
    plan = OursPolicy(uninformative_weight=0.2, compare_baselines=False).plan(inp)
    assert plan.rates == {"x": 0.0, "y": 1.0}


def test_ours_needs_an_estimate_or_pairwise() -> None:
    costs = costs_of({"a": 1.0})
    with pytest.raises(ValueError, match="estimate or PlanInputs.pairwise"):
        OursPolicy().plan(PlanInputs(["a"], costs, ResolvedBudget("ms", 10.0)))


def test_ours_treats_an_unknown_estimate_as_no_credit() -> None:
    costs = costs_of({"a": 5.0, "b": 8.0, "c": 30.0})
    inp = PlanInputs(list(costs), costs, ResolvedBudget("ms", 13.0), estimate=lambda ex, t, age: math.nan)
    plan = OursPolicy().plan(inp)
    assert plan.rates == {"a": 1.0, "b": 1.0, "c": 0.0}  # only executed models score
    assert plan.expected_accuracy == pytest.approx(2 / 3)


def test_plan_inputs_validate() -> None:
    costs = costs_of({"a": 1.0, "b": 2.0})
    with pytest.raises(ValueError, match="no measured cost for: c"):
        PlanInputs(["a", "c"], costs, ResolvedBudget("ms", 1.0))
    with pytest.raises(ValueError, match="2x2"):
        PlanInputs(["a", "b"], costs, ResolvedBudget("ms", 1.0), pairwise=np.ones((3, 3)))
    with pytest.raises(ValueError, match="duplicates"):
        PlanInputs(["a", "a"], costs, ResolvedBudget("ms", 1.0))


# --------------------------------------------------------------------------- reducto


def test_thumbnail_and_frame_difference() -> None:
    frame = np.zeros((72, 128, 3), dtype=np.uint8)
    frame[:36] = 255  # top half white
    th = thumbnail(frame)
    assert th.shape == (36, 64) and th.dtype == np.float32
    assert th[:18].tolist() == np.ones((18, 64)).tolist() and th[18:].max() == 0.0
    assert frame_difference(th, th) == 0.0
    assert frame_difference(th, np.zeros_like(th)) == pytest.approx(0.5)
    # uint8 frames are scaled: full white vs black = 1.0
    assert frame_difference(np.full((4, 4), 255, np.uint8), np.zeros((4, 4), np.uint8)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same-shape"):
        frame_difference(np.zeros((2, 2)), np.zeros((3, 3)))
    small = thumbnail(np.ones((10, 20), dtype=np.float32))  # upscaled
    assert small.shape == (36, 64)


def test_gate_runs_when_accumulated_difference_reaches_threshold() -> None:
    gate = ReductoGate({"a": 1.0, "never": math.inf, "always": 0.0})
    steps = [gate.step(d) for d in [0.0, 0.4, 0.4, 0.4, 0.1, 0.9, 0.0]]
    assert [("a" in s) for s in steps] == [True, False, False, True, False, True, False]
    assert all("always" in s for s in steps)
    assert not any("never" in s for s in steps)
    with pytest.raises(ValueError, match="no reducto threshold"):
        gate.should_run("ghost", 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        ReductoGate({"a": -1.0})


def test_simulation_matches_the_gate() -> None:
    rng = np.random.default_rng(3)
    diffs = rng.exponential(0.02, size=300)
    for thr in [0.0, 0.01, 0.05, 0.2]:
        gate = ReductoGate({"m": thr})
        live = np.array([bool(gate.step(0.0 if t == 0 else d)) for t, d in enumerate(diffs)])
        assert (simulate_reducto(diffs, thr) == live).all()


def test_reducto_accuracy_counts_reuse_until_a_change() -> None:
    runs = np.array([1, 0, 0, 1, 0, 0], dtype=bool)
    change = np.array([0, 0, 1, 0, 0, 1], dtype=bool)
    # frames: 0 run, 1 ok, 2 changed since 0 -> wrong, 3 run, 4 ok, 5 changed -> wrong
    assert reducto_accuracy(runs, change) == pytest.approx(4 / 6)
    assert reducto_accuracy(np.zeros(3, bool), np.zeros(3, bool)) == 0.0  # never ran


def reducto_data(seed: int = 5, n: int = 600):
    rng = np.random.default_rng(seed)
    diffs = rng.exponential(0.02, size=n)
    # Output changes are likelier on frames that changed a lot; "fast" changes more often.
    changes = {
        "fast": (diffs > 0.03) & (rng.random(n) < 0.8),
        "slow": (diffs > 0.06) & (rng.random(n) < 0.8),
        "static": np.zeros(n, dtype=bool),
    }
    costs = costs_of({"fast": 20.0, "slow": 40.0, "static": 60.0})
    return diffs, changes, costs


def expected_rates(diffs, thresholds):
    return {m: float(simulate_reducto(diffs, t).mean()) for m, t in thresholds.items()}


def test_reducto_tuning_is_monotonic_in_target_accuracy() -> None:
    diffs, changes, costs = reducto_data()
    loose = ResolvedBudget("ms", 1e6)
    prev_thr: dict[str, float] | None = None
    prev_rates: dict[str, float] | None = None
    for target in [0.6, 0.8, 0.9, 0.95, 0.99, 1.0]:
        thr = tune_reducto_thresholds(diffs, changes, costs, loose, target)
        rates = expected_rates(diffs, thr)
        for m in changes:
            assert reducto_accuracy(simulate_reducto(diffs, thr[m]), changes[m]) >= target - 1e-12
            if prev_thr is not None and prev_rates is not None:
                assert thr[m] <= prev_thr[m]
                assert rates[m] >= prev_rates[m]
        prev_thr, prev_rates = thr, rates
    # A model whose output never changes needs one run only.
    assert prev_rates is not None and prev_rates["static"] == pytest.approx(1 / len(diffs))
    assert prev_rates["fast"] >= prev_rates["slow"]


def test_reducto_tuning_fits_tighter_budgets_with_fewer_runs() -> None:
    diffs, changes, costs = reducto_data()
    prev_cost = math.inf
    for limit in [100.0, 40.0, 20.0, 8.0, 2.0, 0.5]:
        budget = ResolvedBudget("ms", limit)
        thr = tune_reducto_thresholds(diffs, changes, costs, budget, 0.99)
        rates = expected_rates(diffs, thr)
        cost = sum(rates[m] * costs[m].ms for m in rates)
        assert cost <= limit + 1e-9
        assert cost <= prev_cost + 1e-9
        prev_cost = cost


def test_reducto_tuning_memory_budget_drops_models() -> None:
    diffs, changes, costs = reducto_data()
    thr = tune_reducto_thresholds(diffs, changes, costs, ResolvedBudget("mem_mb", 650.0), 0.9)
    assert math.isinf(thr["static"])  # 600 MB: dropped; fast (200) + slow (400) fit
    assert not math.isinf(thr["fast"]) and not math.isinf(thr["slow"])


def test_reducto_policy_plan() -> None:
    diffs, changes, costs = reducto_data()
    budget = ResolvedBudget("ms", 15.0)
    inp = PlanInputs(list(costs), costs, budget, extra={"reducto_diffs": diffs, "reducto_changes": changes})
    plan = make_policy("reducto", target_acc=0.95).plan(inp)
    assert plan.fill == "reducto"
    assert set(plan.thresholds) == set(costs)
    assert plan.budget_used <= 15.0 + 1e-9
    assert plan.rates == pytest.approx(expected_rates(diffs, plan.thresholds))
    # Given thresholds directly, the plan reproduces the same rates.
    again = make_policy("reducto").plan(
        PlanInputs(list(costs), costs, budget, extra={"reducto_diffs": diffs, "reducto_thresholds": plan.thresholds})
    )
    assert again.rates == plan.rates
    with pytest.raises(ValueError, match="reducto_diffs"):
        make_policy("reducto").plan(PlanInputs(list(costs), costs, budget))


# --------------------------------------------------------------------------- re-selection


def test_reselector_due_at_each_new_period() -> None:
    r = Reselector(10)
    assert [f for f in range(25) if r.due(f)] == [0, 10, 20]
    assert r.period_start(17) == 10 and r.period_index(17) == 1
    assert r.is_period_start(30) and not r.is_period_start(31)


def test_reselector_survives_dropped_and_late_frames() -> None:
    r = Reselector(10, origin=100)
    assert r.due(103)  # first frame seen opens a period
    assert not r.due(105)
    assert r.due(112)  # frame 110 was dropped: the first frame of the new period counts
    assert not r.due(108)  # a late frame of the old period does not re-trigger
    assert not r.due(119)
    assert r.due(131)  # a whole period skipped


def test_profiling_frames_are_spread_evenly() -> None:
    assert Reselector.profiling_frames(100, 50, 0.1) == [100, 110, 120, 130, 140]
    assert Reselector.profiling_frames(0, 3600, 0.0001) == [0]  # at least one
    assert Reselector.profiling_frames(7, 4, 1.0) == [7, 8, 9, 10]
    frames = Reselector.profiling_frames(0, 1000, 0.03)
    assert len(frames) == 30 and len(set(frames)) == 30
    assert all(0 <= f < 1000 for f in frames)
    gaps = np.diff(frames)
    assert gaps.min() >= 33 and gaps.max() <= 34
    with pytest.raises(ValueError, match="fraction"):
        Reselector.profiling_frames(0, 10, 0.0)
    with pytest.raises(ValueError, match="period_frames"):
        Reselector(0)
