"""The ``plan`` step: a block spec per budget, by the knapsack or a baseline (:mod:`jaxmpc.knapsack`)."""

from __future__ import annotations

import os

from jaxmpc.pipeline._config import PipelineConfig, PipelineError, budget_drelus, budget_tag, check_budget
from jaxmpc.pipeline._workdir import Workdir, read_json, write_json


METHODS = ("knapsack", "uniform", "random")


def plan_step(wd: Workdir, cfg: PipelineConfig, budget, method: str = "knapsack") -> dict:
    """Plans a block spec at ``budget`` with ``method`` in {knapsack, uniform, random}.

    ``uniform`` and ``random`` are the baselines of :mod:`jaxmpc.knapsack`
    (:func:`~jaxmpc.knapsack.uniform_spec`, :func:`~jaxmpc.knapsack.random_spec` with ``cfg.seed``).

    ``budget``: a float fraction of the all-ReLU count in ``(0, 1]`` or an int DReLU count
    (:func:`check_budget`); both are checked before any file is read.
    """
    from jaxmpc import distortion, knapsack
    from jaxmpc import nn as jnn

    budget = check_budget(budget)
    if method not in METHODS:
        raise PipelineError(f"unknown planning method {method!r}; expected knapsack, uniform or random")
    tag = f"{method}_{budget_tag(budget)}"
    spec_path = wd.plan(tag)
    summary_path = wd.path("plans", f"{tag}.summary.json")
    if os.path.exists(spec_path) and os.path.exists(summary_path):
        return read_json(summary_path, "plan summary")
    table_path = wd.path("profile", "distortion.npz")
    if not os.path.exists(table_path):
        raise PipelineError(f"missing distortion table {table_path} (run `jaxmpc profile` first)")
    table = distortion.DistortionTable.load(table_path)
    layers = table.planner_layers()
    total = sum(lay.channels * lay.height * lay.width for lay in layers)
    drelus = budget_drelus(budget, total)
    try:
        if method == "knapsack":
            spec = knapsack.plan_block_sizes(layers, budget=drelus).spec
        elif method == "random":
            spec = knapsack.random_spec(layers, drelus, seed=cfg.seed)
        else:
            spec = knapsack.uniform_spec(layers, drelus)
    except ValueError as e:
        raise PipelineError(f"cannot plan {tag}: {e}") from e
    used = knapsack.spec_drelus(layers, spec)
    dist = knapsack.spec_distortion(layers, spec)
    unit = "drelus" if isinstance(budget, int) else "fraction"
    os.makedirs(os.path.dirname(spec_path), exist_ok=True)
    jnn.save_spec(spec_path, spec, method=method, budget=budget, budget_unit=unit, drelus=used, all_relu=total)
    summary = {"tag": tag, "method": method, "budget": budget, "budget_unit": unit, "budget_drelus": drelus,
               "drelus": used, "all_relu_drelus": total, "ratio": used / total, "total_distortion": dist}
    write_json(summary_path, summary)
    return summary


def uniform_spec(layers, budget: int) -> dict:
    """:func:`jaxmpc.knapsack.uniform_spec`, with its error as a :class:`PipelineError`."""
    from jaxmpc import knapsack

    try:
        return knapsack.uniform_spec(layers, budget)
    except ValueError as e:
        raise PipelineError(str(e)) from e
