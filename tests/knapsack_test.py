"""Tests of jaxmpc.knapsack: exactness (brute force, MILP), certified bounds, planner, errors."""

from __future__ import annotations

import itertools
import math

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxmpc.knapsack as kn
from jaxmpc.core import blocks
from jaxmpc.knapsack import _bounds, _dp
from jaxmpc.knapsack._reference import reference_dp

# ---------------------------------------------------------------------------------------------
# Oracles


def brute_force(weights, values, mask, budget) -> float:
    """Best value by enumeration (-inf if infeasible)."""
    n, m = weights.shape
    rows = np.arange(n)
    best = -math.inf
    for x in itertools.product(range(m), repeat=n):
        x = np.asarray(x)
        if mask[rows, x].all() and weights[rows, x].sum() <= budget:
            best = max(best, math.fsum(values[rows, x].tolist()))
    return best


def milp_value(weights, values, mask, budget) -> float:
    """Optimum by scipy's HiGHS MILP (binary x_ij, one option per item, capacity row)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    ii, jj = np.nonzero(mask)
    k = ii.size
    n = weights.shape[0]
    one_per_item = csr_matrix((np.ones(k), (ii, np.arange(k))), shape=(n, k))
    cons = [
        LinearConstraint(one_per_item, 1, 1),
        LinearConstraint(weights[ii, jj].astype(float)[None, :], -np.inf, budget),
    ]
    res = milp(
        -values[ii, jj],
        constraints=cons,
        integrality=np.ones(k),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 0.0, "presolve": True},
    )
    assert res.status == 0, res.message
    x = np.round(res.x).astype(bool)
    choice = np.zeros(n, dtype=np.int64)
    choice[ii[x]] = jj[x]
    assert weights[np.arange(n), choice].sum() <= budget
    return math.fsum(values[np.arange(n), choice].tolist())


def random_instance(rng, n, m, w_max, *, integer_values=False, p_missing=0.2):
    weights = rng.integers(0, w_max + 1, size=(n, m))
    if integer_values:
        values = rng.integers(-6, 7, size=(n, m)).astype(np.float64)
    else:
        values = rng.normal(size=(n, m)) * rng.lognormal(0, 1, size=(n, 1))
    mask = rng.random((n, m)) >= p_missing
    mask[np.arange(n), rng.integers(0, m, size=n)] = True
    lo = int(np.where(mask, weights, 10**9).min(axis=1).sum())
    hi = int(np.where(mask, weights, 0).max(axis=1).sum())
    budget = int(rng.integers(lo, hi + 2))
    return weights, values, mask, budget


def check_result(r, weights, values, mask, budget):
    rows = np.arange(weights.shape[0])
    assert r.choice.shape == (weights.shape[0],)
    assert mask[rows, r.choice].all()
    assert r.weight == int(weights[rows, r.choice].sum()) <= budget
    assert r.value == pytest.approx(math.fsum(values[rows, r.choice].tolist()), abs=1e-12)


def close(a, b, scale=1.0):
    return abs(a - b) <= 1e-9 * max(1.0, scale, abs(a), abs(b))


# ---------------------------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize("integer_values", [False, True])
def test_exact_methods_match_brute_force(integer_values):
    rng = np.random.default_rng(1234 + integer_values)
    for _ in range(200):
        n, m = int(rng.integers(1, 7)), int(rng.integers(1, 5))
        inst = random_instance(rng, n, m, int(rng.integers(0, 15)), integer_values=integer_values)
        opt = brute_force(*inst)
        for method in ("exact", "dp"):
            r = kn.solve(*inst[:2], inst[3], mask=inst[2], method=method)
            check_result(r, *inst)
            assert r.optimal
            assert close(r.value, opt), (method, inst, r.value, opt)
        r = kn.solve(*inst[:2], inst[3], mask=inst[2], method="lagrangian")
        check_result(r, *inst)
        assert r.value <= opt + 1e-9 <= r.upper_bound + 2e-9
        if r.optimal:
            assert close(r.value, opt)


@st.composite
def instances(draw):
    n = draw(st.integers(1, 5))
    m = draw(st.integers(1, 4))
    weights = np.array(draw(st.lists(st.integers(0, 20), min_size=n * m, max_size=n * m))).reshape(n, m)
    floats = st.floats(-100, 100, allow_nan=False, allow_infinity=False)
    values = np.array(draw(st.lists(floats, min_size=n * m, max_size=n * m))).reshape(n, m)
    mask = np.array(draw(st.lists(st.booleans(), min_size=n * m, max_size=n * m))).reshape(n, m)
    mask[:, 0] = True
    lo = int(np.where(mask, weights, 99).min(axis=1).sum())
    hi = int(np.where(mask, weights, 0).max(axis=1).sum())
    budget = draw(st.integers(lo, hi + 1))
    return weights, values, mask, budget


@given(instances())
def test_exact_matches_brute_force_hypothesis(inst):
    weights, values, mask, budget = inst
    opt = brute_force(weights, values, mask, budget)
    r = kn.solve(weights, values, budget, mask=mask)
    check_result(r, weights, values, mask, budget)
    assert close(r.value, opt, scale=np.abs(values).sum())
    lag = kn.solve(weights, values, budget, mask=mask, method="lagrangian")
    assert lag.value <= opt + 1e-9 and opt <= lag.upper_bound + 1e-9


def test_exact_matches_milp_on_medium_instances():
    rng = np.random.default_rng(7)
    for t in range(16):
        n, m = int(rng.integers(20, 120)), int(rng.integers(2, 12))
        inst = random_instance(rng, n, m, int(rng.integers(5, 60)), integer_values=t % 2 == 0)
        weights, values, mask, budget = inst
        budget = (
            int(np.where(mask, weights, 10**9).min(axis=1).sum())
            + (budget - int(np.where(mask, weights, 10**9).min(axis=1).sum())) // 3
        )
        ref = milp_value(weights, values, mask, budget)
        r = kn.solve(weights, values, budget, mask=mask)
        check_result(r, weights, values, mask, budget)
        assert r.value >= ref - 1e-9 * max(1.0, abs(ref))
        assert r.value == pytest.approx(ref, rel=1e-9, abs=1e-9)
        lag = kn.solve(weights, values, budget, mask=mask, method="lagrangian")
        assert lag.value <= r.value + 1e-9 and r.value <= lag.upper_bound + 1e-9


def test_exact_matches_milp_on_layered_instance():
    """Items in groups sharing one cost vector, as in the planner (many near-ties)."""
    rng = np.random.default_rng(3)
    layers = []
    for name, c, h in [("a", 30, 8), ("b", 40, 4), ("c", 20, 2)]:
        cand = blocks.default_candidates(h, h)
        dist = kn.paper_instances.synthetic_distortions(c, h, h, cand, rng)
        layers.append(kn.LayerCandidates(name, h, h, cand, dist))
    weights, values, mask, _ = kn.build_problem(layers)
    budget = int(0.1 * sum(layer.channels * layer.height * layer.width for layer in layers))
    ref = milp_value(weights, values, mask, budget)
    plan = kn.plan_block_sizes(layers, budget=budget)
    assert -plan.summary.total_distortion == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("segment_length", [1, 2, 3, 5])
def test_dp_checkpoint_segments(segment_length):
    """Backtracking across many checkpoint segments (and padded last segments) stays exact."""
    rng = np.random.default_rng(segment_length)
    for _ in range(10):
        inst = random_instance(rng, int(rng.integers(1, 7)), int(rng.integers(1, 4)), 9)
        opt = brute_force(*inst)
        r = kn.solve(inst[0], inst[1], inst[3], mask=inst[2], method="dp", segment_length=segment_length)
        check_result(r, *inst)
        assert close(r.value, opt)


def test_exact_without_fixing_rounds_and_with_progress_bar(capsys):
    rng = np.random.default_rng(21)
    for _ in range(20):
        inst = random_instance(rng, int(rng.integers(1, 6)), int(rng.integers(1, 4)), 12)
        r = kn.solve(inst[0], inst[1], inst[3], mask=inst[2], max_rounds=0)
        assert close(r.value, brute_force(*inst))
    weights = np.array([[0, 1, 2], [0, 1, 2]])
    values = np.array([[0.0, 1.0, 2.0], [0.0, 1.5, 2.5]])
    r = kn.solve(weights, values, 2, method="dp", progress=True)
    assert r.value == 2.5
    assert "knapsack DP" in capsys.readouterr().err


def test_dp_kernel_matches_numpy_reference():
    rng = np.random.default_rng(11)
    weights, values, mask, budget = random_instance(rng, 60, 6, 40, p_missing=0.0)
    ch_ref, v_ref, c_ref = reference_dp(weights, values, mask, budget)
    ch, v, c = _dp.solve_dp(weights, values, budget, segment_length=8)
    assert v == pytest.approx(v_ref, abs=1e-12)
    assert c == c_ref  # lightest optimum in both (ties: the first maximum)
    rows = np.arange(60)
    assert values[rows, ch].sum() == pytest.approx(values[rows, ch_ref].sum(), abs=1e-9)


def test_reference_backtrack_from_largest_cost_is_suboptimal_in_general():
    """The reference starts backtracking at the largest reachable cost; that is not the optimum."""
    weights = np.array([[0, 5], [0, 1]])
    values = np.array([[0.0, -10.0], [0.0, 1.0]])
    mask = np.ones((2, 2), dtype=bool)
    _, v_best, _ = reference_dp(weights, values, mask, 6)
    _, v_large, c_large = reference_dp(weights, values, mask, 6, backtrack_from="largest_cost")
    assert v_best == 1.0 and c_large == 6 and v_large == -9.0
    assert kn.solve(weights, values, 6).value == 1.0


def test_exact_on_tie_heavy_instance():
    """Identical items (exact slope ties) and all-zero items do not break exactness."""
    row_w = np.array([0, 1, 2, 4, 8])
    row_v = np.array([-8.0, -4.0, -2.0, -1.0, 0.0])
    weights = np.tile(row_w, (9, 1))
    values = np.tile(row_v, (9, 1))
    values[6:] = 0.0
    for budget in (0, 3, 7, 13, 30, 72):
        r = kn.solve(weights, values, budget)
        assert close(r.value, milp_value(weights, values, np.ones_like(weights, bool), budget))


def test_exact_with_large_weights_uses_gcd():
    weights = np.array([[0, 1000, 3000], [500, 1500, 2000]])
    values = np.array([[-3.0, -1.0, 0.0], [-2.0, -1.0, 0.0]])
    r = kn.solve(weights, values, 3600)
    assert r.value == brute_force(weights, values, np.ones((2, 3), bool), 3600)
    assert r.stats["weight_gcd"] == 500


def test_budget_not_binding_and_minimum_budget():
    weights = np.array([[0, 2, 4], [1, 3, 5]])
    values = np.array([[-2.0, -1.0, 0.5], [-3.0, -1.0, 0.0]])
    r = kn.solve(weights, values, 100)
    assert r.choice.tolist() == [2, 2] and r.optimal and r.gap == 0.0
    r = kn.solve(weights, values, 1)
    assert r.choice.tolist() == [0, 0] and r.weight == 1
    r = kn.solve(weights, values, 1, method="lagrangian")
    assert r.choice.tolist() == [0, 0] and r.optimal


def test_minus_inf_marks_missing_options():
    weights = np.array([[0, 1, 2]])
    values = np.array([[-1.0, -np.inf, 5.0]])
    assert kn.solve(weights, values, 1).choice.tolist() == [0]
    mask = np.array([[True, True, False]])
    assert kn.solve(weights, np.array([[-1.0, 0.0, np.nan]]), 2, mask=mask).choice.tolist() == [1]


def test_solution_is_exactly_representable_for_integer_values():
    rng = np.random.default_rng(5)
    weights, values, mask, budget = random_instance(rng, 80, 6, 30, integer_values=True)
    r = kn.solve(weights, values, budget, mask=mask)
    assert r.value == milp_value(weights, values, mask, budget)


# ---------------------------------------------------------------------------------------------
# Lagrangian solver and sweeps


def test_lagrangian_bound_is_valid_for_any_multiplier():
    rng = np.random.default_rng(2)
    for _ in range(30):
        weights, values, mask, budget = random_instance(rng, 5, 3, 10)
        opt = brute_force(weights, values, mask, budget)
        for lam in (0.0, 0.1, 1.0, 10.0):
            b = _bounds.lagrangian_bound(weights, values, mask, budget, lam)
            assert b.value + b.tol >= opt


def test_sweep_matches_single_solves_and_certifies():
    rng = np.random.default_rng(9)
    weights, values, mask, _ = random_instance(rng, 300, 8, 50)
    lo = int(np.where(mask, weights, 10**9).min(axis=1).sum())
    hi = int(np.where(mask, weights, 0).max(axis=1).sum())
    budgets = np.linspace(lo, hi, 7).astype(np.int64)
    sweep = kn.sweep_budgets(weights, values, budgets, mask=mask)
    assert sweep.choices.shape == (7, 300)
    for k, b in enumerate(budgets):
        single = kn.solve(weights, values, int(b), mask=mask, method="lagrangian")
        exact = kn.solve(weights, values, int(b), mask=mask)
        assert sweep.values[k] == pytest.approx(single.value, abs=1e-9)
        assert sweep.weights[k] <= b
        assert sweep.values[k] <= exact.value + 1e-9 <= sweep.upper_bounds[k] + 2e-9
    assert np.all(sweep.relative_gaps < 1e-2)
    assert np.all(np.diff(sweep.upper_bounds) >= -1e-9)  # the LP bound grows with the budget


# ---------------------------------------------------------------------------------------------
# Planner


def _toy_layers(rng, shapes=(("l1", 3, 6, 4), ("l2", 2, 5, 5), ("l3", 2, 1, 1))):
    layers = []
    for name, c, h, w in shapes:
        cand = blocks.default_candidates(h, w)
        cand = cand[: min(len(cand), 5)].tolist() + [[0, 1]]
        cand = np.asarray(cand)
        dist = kn.paper_instances.synthetic_distortions(c, h, w, cand, rng)
        layers.append(kn.LayerCandidates(name, h, w, cand, dist))
    return layers


def test_plan_matches_brute_force_and_blocks_costs():
    rng = np.random.default_rng(4)
    layers = _toy_layers(rng, shapes=(("l1", 2, 6, 4), ("l2", 2, 5, 5), ("l3", 2, 1, 1)))
    all_relu = sum(layer.channels * layer.height * layer.width for layer in layers)
    weights, values, mask, _offsets = kn.build_problem(layers)
    for ratio in (0.0, 0.05, 0.2, 0.5, 1.0):
        plan = kn.plan_block_sizes(layers, ratio=ratio)
        budget = math.floor(ratio * all_relu)
        s = plan.summary
        assert s.budget == budget and s.all_relu_drelus == all_relu
        assert s.total_drelus == s.total_cost <= budget
        assert set(plan.spec) == {layer.name for layer in layers}
        for layer in layers:
            sizes = plan.spec[layer.name]
            assert sizes.dtype == np.int32 and sizes.shape == (layer.channels, 2)
            assert s.layer_drelus[layer.name] == blocks.drelu_count(layer.height, layer.width, sizes)
        assert s.total_drelus == sum(s.layer_drelus.values())
        assert s.total_mults == sum(blocks.mult_count(ly.height, ly.width, plan.spec[ly.name]) for ly in layers)
        opt = brute_force(weights, values, mask, budget)
        assert -s.total_distortion == pytest.approx(opt, abs=1e-9)
        assert s.optimal and s.distortion_lower_bound == s.total_distortion


def test_plan_non_square_costs():
    cand = np.array([[1, 1], [2, 3], [3, 2], [4, 6], [0, 1], [1, 0]])
    dist = np.array([[0.0, 1.0, 2.0, 3.0, 9.0, 10.0]])
    layer = kn.LayerCandidates("x", 4, 6, cand, dist)
    w, _, _, _ = kn.build_problem([layer])
    assert w[0].tolist() == [24, 4, 6, 1, 0, 0]  # ceil(4 / bh) * ceil(6 / bw)
    plan = kn.plan_block_sizes([layer], budget=4)
    assert plan.spec["x"].tolist() == [[2, 3]]


def test_plan_absolute_budget_equals_ratio_budget():
    rng = np.random.default_rng(8)
    layers = _toy_layers(rng)
    a = kn.plan_block_sizes(layers, ratio=0.25)
    b = kn.plan_block_sizes(layers, budget=a.summary.budget)
    assert a.summary.total_distortion == b.summary.total_distortion


def test_plan_byte_cost_model():
    """Bytes charge the Block-ReLU multiplication: identity beats a 1-patch channel when bytes are tight."""
    cm = kn.CostModel.communication()
    assert (cm.per_drelu, cm.per_mult, cm.unit) == (496, 24, "B")
    cand = np.array([[1, 1], [4, 4], [0, 1]])
    dist = np.array([[0.0, 1.0, 1.5], [0.0, 1.0, 1.5]])
    layer = kn.LayerCandidates("r", 4, 4, cand, dist)
    costs = cm.candidate_costs(4, 4, cand)
    assert costs.tolist() == [496 * 16 + 24 * 16, 496 + 24 * 16, 0]
    plan = kn.plan_block_sizes([layer], budget=int(costs[1]) + 100, cost_model=cm)
    assert plan.spec["r"].tolist() in ([[4, 4], [0, 1]], [[0, 1], [4, 4]])
    s = plan.summary
    assert s.unit == "B" and s.total_cost == 496 * s.total_drelus + 24 * s.total_mults <= s.budget
    drelu_plan = kn.plan_block_sizes([layer], budget=2)
    assert drelu_plan.spec["r"].tolist() == [[4, 4], [4, 4]]
    full = kn.plan_block_sizes([layer], ratio=1.0, cost_model=cm)
    assert full.summary.budget == 2 * int(costs[0]) and full.summary.total_drelus == 32


def test_plan_lagrangian_and_sweep():
    rng = np.random.default_rng(6)
    layers = _toy_layers(rng, shapes=(("a", 20, 8, 8), ("b", 30, 4, 4)))
    exact = kn.plan_block_sizes(layers, ratio=0.1)
    approx = kn.plan_block_sizes(layers, ratio=0.1, method="lagrangian")
    assert approx.summary.total_distortion >= exact.summary.total_distortion - 1e-9
    assert approx.summary.distortion_lower_bound <= exact.summary.total_distortion + 1e-9
    sweep = kn.budget_sweep(layers, ratios=[0.05, 0.1, 0.2])
    assert sweep.values[1] == pytest.approx(-approx.summary.total_distortion)
    assert sweep.budgets.tolist() == [math.floor(r * (20 * 64 + 30 * 16)) for r in (0.05, 0.1, 0.2)]


# ---------------------------------------------------------------------------------------------
# Errors (raised before any work)


def _ok():
    return np.array([[0, 1], [0, 2]]), np.array([[-1.0, 0.0], [-1.0, 0.0]])


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"weights": np.array([[0.0, 1.0]]), "values": np.zeros((1, 2))}, TypeError, "weights must be an integer"),
        ({"weights": np.array([0, 1]), "values": np.zeros(2)}, ValueError, r"shape \[n, m\]"),
        ({"weights": np.zeros((0, 2), int), "values": np.zeros((0, 2))}, ValueError, "at least one item"),
        ({"values": np.zeros((2, 3))}, ValueError, "values must have the shape"),
        ({"values": np.array([[np.nan, 0.0], [0.0, 0.0]])}, ValueError, "item 0, option 0"),
        ({"values": np.array([[0.0, np.inf], [0.0, 0.0]])}, ValueError, "finite"),
        ({"values": np.array([["a", "b"], ["c", "d"]])}, TypeError, "values must be a real"),
        ({"weights": np.array([[0, -1], [0, 2]])}, ValueError, "item 0, option 1 has weight -1"),
        ({"mask": np.array([[1, 1], [1, 1]])}, TypeError, "mask must be a boolean"),
        ({"mask": np.array([[True, True], [False, False]])}, ValueError, "item 1 has none"),
        ({"budget": -1}, ValueError, "budget must be >= 0"),
        ({"budget": 2.5}, TypeError, "budget must be an integer"),
        ({"budget": True}, TypeError, "budget must be an integer"),
        ({"weights": np.array([[3, 4], [5, 6]])}, ValueError, "infeasible budget"),
        ({"method": "greedy"}, ValueError, "method must be one of"),
        ({"segment_length": 0}, ValueError, "segment_length"),
        ({"weights": np.array([[0, 2**62], [0, 1]])}, ValueError, "2\\*\\*62"),
    ],
)
def test_solve_errors(kwargs, exc, match):
    w, v = _ok()
    args = {"weights": w, "values": v, "budget": 3}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        kn.solve(args.pop("weights"), args.pop("values"), args.pop("budget"), **args)


def test_solve_requires_x64_for_exact_methods_only():
    w, v = _ok()
    with jax.enable_x64(False):
        with pytest.raises(RuntimeError, match="64-bit"):
            kn.solve(w, v, 3)
        assert kn.solve(w, v, 3, method="lagrangian").value == 0.0


def test_sweep_errors():
    w, v = _ok()
    with pytest.raises(ValueError, match="infeasible budgets\\[1\\]"):
        kn.sweep_budgets(np.array([[1, 2], [1, 3]]), v, [5, 1])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        kn.sweep_budgets(w, v, [])
    with pytest.raises(TypeError, match="budgets\\[0\\]"):
        kn.sweep_budgets(w, v, [1.5])


def _layer(**kw):
    args = {
        "name": "l",
        "height": 4,
        "width": 4,
        "candidates": np.array([[1, 1], [2, 2], [0, 1]]),
        "distortion": np.zeros((2, 3)),
    }
    args.update(kw)
    return kn.LayerCandidates(**args)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"name": ""}, TypeError, "non-empty str"),
        ({"height": 0}, ValueError, "height must be >= 1"),
        ({"width": 2.0}, TypeError, "width must be an int"),
        ({"candidates": np.array([[1, 1, 1]])}, ValueError, r"shape \[n_cand >= 1, 2\]"),
        ({"candidates": np.zeros((0, 2), int)}, ValueError, r"n_cand >= 1"),
        ({"candidates": np.array([[1, 1], [0, 0], [0, 1]])}, ValueError, "channel 1 has patch size \\(0, 0\\)"),
        ({"candidates": np.array([[1, 1], [-2, 2], [0, 1]])}, ValueError, "patch size"),
        ({"candidates": np.array([[1.0, 1.0], [2.5, 2.0], [0.0, 1.0]])}, TypeError, "integer array"),
        ({"distortion": np.zeros((2, 4))}, ValueError, "4 columns but there are 3 candidates"),
        ({"distortion": np.zeros(3)}, ValueError, r"shape \[C >= 1, n_cand\]"),
        (
            {"distortion": np.array([[0.0, np.nan, 1.0], [0, 0, 0]])},
            ValueError,
            "channel 0, candidate \\(2, 2\\) is nan",
        ),
        ({"distortion": np.array([[0.0, 1.0, np.inf], [0, 0, 0]])}, ValueError, "must be finite"),
        ({"distortion": np.zeros((2, 3), bool)}, TypeError, "real array"),
    ],
)
def test_layer_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _layer(**kwargs)


def test_plan_errors():
    layer = _layer()
    with pytest.raises(ValueError, match="exactly one of ratio"):
        kn.plan_block_sizes([layer])
    with pytest.raises(ValueError, match="exactly one of ratio"):
        kn.plan_block_sizes([layer], ratio=0.1, budget=3)
    with pytest.raises(ValueError, match="finite and >= 0"):
        kn.plan_block_sizes([layer], ratio=-0.1)
    with pytest.raises(ValueError, match="finite and >= 0"):
        kn.plan_block_sizes([layer], ratio=float("nan"))
    with pytest.raises(TypeError, match="budget must be an integer"):
        kn.plan_block_sizes([layer], budget=3.0)
    with pytest.raises(ValueError, match="duplicate layer name"):
        kn.plan_block_sizes([layer, layer], budget=3)
    with pytest.raises(ValueError, match="must not be empty"):
        kn.plan_block_sizes([], budget=3)
    with pytest.raises(TypeError, match="sequence of LayerCandidates"):
        kn.plan_block_sizes(layer, budget=3)
    with pytest.raises(TypeError, match="layers\\[1\\]"):
        kn.plan_block_sizes([layer, "x"], budget=3)
    with pytest.raises(TypeError, match="cost_model"):
        kn.plan_block_sizes([layer], budget=3, cost_model="bytes")
    no_free = _layer(candidates=np.array([[1, 1], [2, 2], [4, 4]]))
    with pytest.raises(ValueError, match="infeasible budget: 1 DReLU is below the smallest achievable cost 2"):
        kn.plan_block_sizes([no_free], budget=1)
    with pytest.raises(ValueError, match="infeasible budget #0"):
        kn.budget_sweep([no_free], budgets=[1])
    with pytest.raises(ValueError, match="CostModel.per_drelu must be >= 0"):
        kn.CostModel(per_drelu=-1)
    with pytest.raises(TypeError, match="CostModel.per_mult must be an int"):
        kn.CostModel(per_mult=0.5)


# ---------------------------------------------------------------------------------------------
# Paper instances


@pytest.mark.parametrize(
    "model, layers, channels, relus, budget",
    [
        ("resnet18_cifar", 17, 3904, 557056, 33423),
        ("resnet50_imagenet", 49, 22720, 9608704, 576522),
        ("deeplabv3_resnet50", 57, 25856, 127402496, 7644149),
    ],
)
def test_paper_layer_tables(model, layers, channels, relus, budget):
    table = kn.paper_instances.layer_table(model)
    assert len(table) == layers == len({name for name, *_ in table})
    assert kn.paper_instances.channel_count(model) == channels
    assert kn.paper_instances.relu_count(model) == relus
    assert int(0.06 * relus) == budget


def test_paper_layer_details():
    r50 = {name: (c, h, w) for name, c, h, w in kn.paper_instances.layer_table("resnet50_imagenet")}
    assert r50["layer2_0_1"] == (128, 56, 56) and r50["layer2_0_2"] == (128, 28, 28)
    dl = {name: (c, h, w) for name, c, h, w in kn.paper_instances.layer_table("deeplabv3_resnet50")}
    assert dl["decode_0"] == (512, 1, 1) and dl["decode_5"] == (512, 64, 64) and dl["stem_2"] == (32, 256, 256)
    with pytest.raises(ValueError, match="unknown model"):
        kn.paper_instances.layer_table("vgg")


def test_synthetic_distortions_shape():
    rng = np.random.default_rng(0)
    cand = blocks.default_candidates(16, 16)
    d = kn.paper_instances.synthetic_distortions(50, 16, 16, cand, rng)
    assert d.shape == (50, len(cand)) and np.all(np.isfinite(d)) and np.all(d >= 0)
    relu = (cand[:, 0] == 1) & (cand[:, 1] == 1)
    zero = (cand[:, 0] == 1) & (cand[:, 1] == 0)
    assert np.all(d[:, relu] == 0)
    assert np.all(d[:, zero][:, 0] >= d[:, ~zero].max(axis=1))
    area = np.where(blocks.is_patch(cand), cand[:, 0] * cand[:, 1], 0)
    small, large = (area >= 2) & (area <= 4), area >= 64
    assert np.all(d[:, small].mean(axis=1) < d[:, large].mean(axis=1))


# ---------------------------------------------------------------------------------------------
# Baselines (what the pipeline compares the knapsack with)


def _baseline_layers(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for name, h, w, c in [("a", 8, 8, 6), ("b", 4, 6, 5), ("c", 2, 2, 4)]:
        cand = blocks.default_candidates(h, w)
        out.append(kn.LayerCandidates(name, h, w, cand, rng.uniform(0, 1, (c, len(cand)))))
    return out


def test_uniform_spec_is_one_size_and_the_fullest_that_fits():
    layers = _baseline_layers()
    total = sum(lay.channels * lay.height * lay.width for lay in layers)
    for budget in (15, 40, 100, total):
        spec = kn.uniform_spec(layers, budget)
        used = kn.spec_drelus(layers, spec)
        assert used <= budget
        sizes = {tuple(int(v) for v in s) for lay in layers for s in spec[lay.name]}
        # one (bh, bw) for every channel, clipped to each map
        unclipped = max(sizes)
        assert all(s == (min(unclipped[0], lay.height), min(unclipped[1], lay.width))
                   for lay in layers for s in map(tuple, spec[lay.name].tolist()))
        # no other uniform size uses more DReLUs within the budget (brute force over all sizes)
        best = max(u for u in (sum(blocks.drelu_count(lay.height, lay.width,
                                                       [[min(bh, lay.height), min(bw, lay.width)]] * lay.channels)
                                   for lay in layers) for bh in range(1, 9) for bw in range(1, 9)) if u <= budget)
        assert used == best
    assert kn.spec_drelus(layers, kn.uniform_spec(layers, total)) == total  # 1x1 everywhere
    with pytest.raises(ValueError, match="no uniform patch size fits 14 DReLUs"):
        kn.uniform_spec(layers, 14)  # 15 channels need at least one DReLU each


def test_random_spec_spends_the_budget_without_the_measurements():
    layers = _baseline_layers()
    a, b = kn.random_spec(layers, 60, seed=1), kn.random_spec(layers, 60, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # reproducible
    c = kn.random_spec(layers, 60, seed=2)
    assert any(not np.array_equal(a[k], c[k]) for k in a)  # another draw, another spec
    assert kn.spec_drelus(layers, a) <= 60
    # the knapsack on the measured distortions does at least as well on them as any random choice
    best = kn.plan_block_sizes(layers, budget=60).spec
    assert kn.spec_distortion(layers, best) <= min(kn.spec_distortion(layers, kn.random_spec(layers, 60, seed=s))
                                                   for s in range(5)) + 1e-9


def test_spec_distortion_sums_the_chosen_candidates():
    layers = _baseline_layers()
    spec = {lay.name: np.tile(lay.candidates[:1], (lay.channels, 1)) for lay in layers}
    assert kn.spec_distortion(layers, spec) == pytest.approx(sum(lay.distortion[:, 0].sum() for lay in layers))
    assert kn.spec_drelus(layers, spec) == sum(blocks.drelu_count(lay.height, lay.width, spec[lay.name])
                                               for lay in layers)
