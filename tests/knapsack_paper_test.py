"""Paper-scale knapsack solves (slow: run with ``pytest -m slow tests/knapsack_paper_test.py``).

Timings are measured by ``benchmarks/knapsack.py``, not here; these tests check results only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import jaxmpc.knapsack as kn
from jaxmpc.knapsack._reference import reference_dp

pytestmark = pytest.mark.slow

MODELS = ["resnet18_cifar", "resnet50_imagenet", "deeplabv3_resnet50"]


@pytest.fixture(scope="module", params=MODELS)
def paper(request):
    layers = kn.paper_instances.synthetic_layers(request.param, seed=0)
    return request.param, layers


def test_exact_and_lagrangian_at_6_percent(paper):
    model, layers = paper
    exact = kn.plan_block_sizes(layers, ratio=0.06)
    approx = kn.plan_block_sizes(layers, ratio=0.06, method="lagrangian")
    budget = int(0.06 * kn.paper_instances.relu_count(model))
    for plan in (exact, approx):
        s = plan.summary
        assert s.budget == budget and s.total_drelus <= budget
        assert sum(v.shape[0] for v in plan.spec.values()) == kn.paper_instances.channel_count(model)
    assert exact.summary.optimal
    assert approx.summary.relative_gap < 1e-4
    # The exact optimum lies between the approximate solution and its certified bound.
    assert approx.summary.total_distortion >= exact.summary.total_distortion - 1e-9
    assert approx.summary.distortion_lower_bound <= exact.summary.total_distortion + 1e-9


def test_sweep_gaps(paper):
    _, layers = paper
    sweep = kn.budget_sweep(layers, ratios=[0.03, 0.06, 0.09, 0.12, 0.15, 0.18])
    assert np.all(sweep.relative_gaps < 1e-4)
    assert np.all(np.diff(sweep.values) >= -1e-9)  # more budget, less distortion


def test_byte_budget_exact(paper):
    _, layers = paper
    cm = kn.CostModel.communication()
    plan = kn.plan_block_sizes(layers, ratio=0.06, cost_model=cm)
    s = plan.summary
    assert s.optimal and s.total_cost == 496 * s.total_drelus + 24 * s.total_mults <= s.budget


def test_resnet18_plain_dp_and_numpy_reference_agree_with_exact():
    layers = kn.paper_instances.synthetic_layers("resnet18_cifar", seed=1)
    weights, values, mask, _ = kn.build_problem(layers)
    budget = int(0.06 * kn.paper_instances.relu_count("resnet18_cifar"))
    exact = kn.solve(weights, values, budget, mask=mask)
    dp = kn.solve(weights, values, budget, mask=mask, method="dp")
    _, ref_value, _ = reference_dp(weights, values, mask, budget)
    assert exact.value == pytest.approx(dp.value, rel=1e-12)
    assert exact.value == pytest.approx(ref_value, rel=1e-12)
    assert math.isfinite(exact.value)
