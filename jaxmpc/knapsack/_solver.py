"""Multiple-choice knapsack solvers: exact (bound reduction + JAX DP), plain DP, Lagrangian."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from jaxmpc.core.config import require_x64
from jaxmpc.knapsack import _bounds, _dp
from jaxmpc.knapsack._problem import Problem, check_budget, make_problem, min_total_weight

Method = Literal["exact", "dp", "lagrangian"]
_METHODS = ("exact", "dp", "lagrangian")
_BIG = np.iinfo(np.int64).max
# Show a progress bar by default when the DP does more cell updates than this.
_PROGRESS_CELLS = 5e10
# Size of the first core DP of the exact method (cell updates).
_TARGET_CELLS = 2e7


@dataclasses.dataclass(frozen=True, eq=False)
class KnapsackResult:
    """Solution of a multiple-choice knapsack.

    Attributes:
      choice: int64 ``[n]``, the chosen option (column) of every item.
      value: ``sum_i values[i, choice[i]]`` (correctly rounded float64 sum).
      weight: ``sum_i weights[i, choice[i]]``, ``<= budget``.
      budget: the budget solved for.
      upper_bound: a certified upper bound on the optimal value; equal to ``value`` when
        ``optimal`` is True.
      optimal: whether ``value`` is proven optimal (up to float64 rounding, see the module docs).
      method: the solver used.
      stats: diagnostics (sizes after each reduction, the multiplier, timings in seconds, ...).
    """

    choice: np.ndarray
    value: float
    weight: int
    budget: int
    upper_bound: float
    optimal: bool
    method: str
    stats: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def gap(self) -> float:
        """Certified absolute optimality gap ``upper_bound - value`` (0 when optimal)."""
        return 0.0 if self.optimal else max(self.upper_bound - self.value, 0.0)

    @property
    def relative_gap(self) -> float:
        """``gap / max(|value|, |upper_bound|)`` (0 when both are 0)."""
        denom = max(abs(self.value), abs(self.upper_bound))
        return self.gap / denom if denom > 0 else 0.0


@dataclasses.dataclass(frozen=True, eq=False)
class SweepResult:
    """Lagrangian solutions for many budgets at once (see :func:`sweep_budgets`).

    Attributes:
      budgets: int64 ``[k]``.
      choices: int64 ``[k, n]``, feasible solutions.
      values: float64 ``[k]``, their values.
      weights: int64 ``[k]``, their total weights.
      upper_bounds: float64 ``[k]``, certified upper bounds on the optimum of each budget.
      lambdas: float64 ``[k]``, the Lagrange multipliers.
    """

    budgets: np.ndarray
    choices: np.ndarray
    values: np.ndarray
    weights: np.ndarray
    upper_bounds: np.ndarray
    lambdas: np.ndarray

    @property
    def gaps(self) -> np.ndarray:
        return np.maximum(self.upper_bounds - self.values, 0.0)

    @property
    def relative_gaps(self) -> np.ndarray:
        denom = np.maximum(np.abs(self.values), np.abs(self.upper_bounds))
        return np.where(denom > 0, self.gaps / np.where(denom > 0, denom, 1.0), 0.0)


def _weight_gcd(w: np.ndarray, mask: np.ndarray) -> int:
    vals = w[mask]
    return int(np.gcd.reduce(vals)) if vals.size else 0


def _scaled(prob: Problem) -> tuple[np.ndarray, int, int]:
    """Divides all weights by their gcd (and floors the budget): an exact reduction."""
    g = _weight_gcd(prob.weights, prob.mask)
    if g <= 1:
        return prob.weights, prob.budget, 1
    return prob.weights // g, prob.budget // g, g


def _finish(prob: Problem, choice, method, optimal, upper_bound, stats) -> KnapsackResult:
    choice = np.asarray(choice, dtype=np.int64)
    value = _bounds.solution_value(prob.values, choice)
    weight = _bounds.solution_weight(prob.weights, choice)
    if weight > prob.budget or not prob.mask[np.arange(prob.num_items), choice].all():
        raise AssertionError("internal error: infeasible knapsack solution")  # pragma: no cover
    return KnapsackResult(
        choice=choice,
        value=value,
        weight=weight,
        budget=prob.budget,
        upper_bound=value if optimal else max(float(upper_bound), value),
        optimal=bool(optimal),
        method=method,
        stats=stats,
    )


def _dp_size(weights, keep, budget) -> tuple[int, int, int]:
    """``(items, options, capacity)`` of the DP that :func:`_run_dp` would run on ``keep``."""
    cnt = keep.sum(axis=1)
    core = cnt >= 2
    if not core.any():
        return 0, 0, 0
    minw = np.where(keep, weights, _BIG).min(axis=1)
    maxw = np.where(keep, weights, -1).max(axis=1)
    cap = min(budget - int(minw.sum()), int((maxw - minw)[core].sum()))
    return int(core.sum()), int(cnt[core].max()), cap


def _run_dp(weights, values, keep, budget, base_choice, segment_length, progress):
    """Solves the items with >= 2 options in ``keep`` by DP; the others take their single option.

    Weights are shifted by each item's lightest kept option and values by ``base_choice``'s
    value (smaller magnitudes, better float64 precision); the capacity is cut to the total span.
    ``base_choice`` must be kept. Returns ``(choice, info)``.
    """
    cnt = keep.sum(axis=1)
    core = np.flatnonzero(cnt >= 2)
    minw = np.where(keep, weights, _BIG).min(axis=1)
    choice = base_choice.copy()
    fixed = cnt == 1
    if fixed.any():
        choice[fixed] = np.argmax(keep[fixed], axis=1)
    info = {"items": int(core.size), "options": int(cnt[core].sum()), "capacity": 0, "cells": 0, "memory_bytes": 0}
    if core.size == 0:
        return choice, info
    p = _bounds.pack(weights[core], values[core], keep[core])
    valid = p.option >= 0
    w = np.where(valid, p.weight - minw[core, None], 0)
    ref = values[core, base_choice[core]]
    v = np.where(valid, p.value - ref[:, None], -np.inf)
    cap = min(budget - int(minw.sum()), int(w.max(axis=1).sum()))
    g = int(np.gcd.reduce(w[valid]))
    if g > 1:  # the shifted weights of the core often share a factor (e.g. powers of 2)
        w, cap = w // g, cap // g
    info["weight_gcd"] = max(g, 1)
    info["capacity"] = cap
    info["cells"] = int(core.size) * int(p.option.shape[1]) * (cap + 1)
    info["memory_bytes"] = _dp.dp_memory_bytes(core.size, p.option.shape[1], cap, segment_length)
    if progress is None:
        progress = info["cells"] > _PROGRESS_CELLS
    t = time.perf_counter()
    col, _, _ = _dp.solve_dp(w, v, cap, segment_length=segment_length, progress=progress)
    info["time"] = time.perf_counter() - t
    choice[core] = p.option[np.arange(core.size), col]
    return choice, info


@dataclasses.dataclass
class _Search:
    """Mutable state of one exact solve (local to the call)."""

    keep: np.ndarray  # options that may still be in a solution better than `best`
    choice: np.ndarray  # incumbent
    best: float  # its value
    bound: _bounds.Bound  # Lagrangian bound of the problem restricted to `keep`

    @property
    def proven(self) -> bool:
        return self.bound.value - self.best <= self.bound.tol

    def offer(self, values, choice) -> None:
        val = _bounds.solution_value(values, choice)
        if val > self.best:
            self.choice, self.best = choice, val


def _fix_rounds(w, v, b, st: _Search, max_rounds: int) -> int:
    """Reduced-cost fixing against the incumbent, re-bounding the reduced problem, until it stalls."""
    rows = np.arange(w.shape[0])
    for r in range(max_rounds):
        if st.proven:
            return r
        d = st.bound.rmax[:, None] - st.bound.reduced
        new = st.keep & (d <= st.bound.value - st.best + st.bound.tol)
        new = _bounds.pareto_mask(w, v, new)
        new[rows, st.choice] = True
        new = _bounds.capacity_filter(w, new, b)
        new[rows, st.choice] = True  # the incumbent always fits; this guards against rounding only
        if int(new.sum()) >= int(st.keep.sum()):
            return r
        st.keep = new
        lp = _bounds.lp_data(w, v, new)
        lam, cand, binding = _bounds.lp_greedy(lp, b)
        if binding:
            cand = _bounds.greedy_fill(w, v, new, b, cand)
        st.offer(v, cand)
        st.bound = _bounds.lagrangian_bound(w, v, new, b, lam)
    return max_rounds


def _exact_search(w, v, b, st: _Search, *, max_rounds, segment_length, progress, stats) -> None:
    """Core expansion by reduced-cost thresholds (after Pisinger 1995's expanding core).

    The DP is run on the options whose reduced-cost loss ``d_ij`` is at most ``tau`` (plus the
    incumbent). Its optimum ``L`` is the best solution of that restriction; every solution using
    an option with ``d_ij > tau`` is worth at most ``U - d_ij < U - tau``, so ``L`` is optimal once
    ``U - L <= tau``. Otherwise the incumbent improved: re-fix with it and grow ``tau`` (x4, at
    most the current gap ``U - L``, which makes the restriction the full reduced problem).
    ``tau`` starts small enough for a DP of about ``_TARGET_CELLS`` cell updates.
    """
    rows = np.arange(w.shape[0])
    stats["rounds"] = _fix_rounds(w, v, b, st, max_rounds)
    dp_rounds = []
    stats["dp_rounds"] = dp_rounds
    tau = None
    while not st.proven:
        gap = st.bound.value - st.best
        d = st.bound.rmax[:, None] - st.bound.reduced
        if tau is None:
            tau = _initial_tau(w, b, st, d, gap, rows)
        tau = min(tau, gap)
        restricted = _restrict(st, d, tau, rows)
        bound_value, tol = st.bound.value, st.bound.tol
        choice, info = _run_dp(w, v, restricted, b, st.choice, segment_length, progress)
        info["tau"] = tau
        info["gap_before"] = gap
        dp_rounds.append(info)
        st.offer(v, choice)
        if bound_value - st.best <= tau + tol:
            break  # proven: see the docstring
        stats["rounds"] += _fix_rounds(w, v, b, st, max_rounds)
        tau *= 4


def _initial_tau(w, b, st: _Search, d, gap, rows) -> float:
    """Largest ``tau`` on the ladder ``gap / 4**k`` whose restricted DP has at most ``_TARGET_CELLS`` cells.

    If the size stops shrinking (options tied at ``d_ij = 0``), takes the largest ``tau`` of
    the final size, so that later rounds do not crawl up a plateau.
    """
    ladder = [gap / 4**k for k in range(16)]
    sizes = []
    for tau in ladder:
        n_c, m_c, cap = _dp_size(w, _restrict(st, d, tau, rows), b)
        sizes.append(n_c * m_c * (cap + 1))
        if sizes[-1] <= _TARGET_CELLS:
            break
    k = len(sizes) - 1
    while k > 0 and sizes[k - 1] == sizes[k]:
        k -= 1
    return ladder[k]


def _restrict(st: _Search, d, tau, rows):
    """The kept options with ``d_ij <= tau``, plus the incumbent."""
    keep = st.keep & (d <= tau)
    keep[rows, st.choice] = True
    return keep


def solve(
    weights,
    values,
    budget,
    *,
    mask=None,
    method: Method = "exact",
    segment_length: int | None = None,
    progress: bool | None = None,
    max_rounds: int = 8,
) -> KnapsackResult:
    """Solves a multiple-choice knapsack: one option per item, maximise value within a budget.

    Maximises ``sum_i values[i, x_i]`` subject to ``sum_i weights[i, x_i] <= budget``, where every
    item ``i`` picks exactly one available option ``x_i``.

    Methods:

    * ``"exact"`` (default): capacity, dominance and gcd reductions; the LP/Lagrangian bound
      (Sinha & Zoltners 1979; Dudzinski & Walukiewicz 1987) with a greedy incumbent;
      reduced-cost variable fixing, re-bounding the reduced problem until it stalls (Dyer,
      Kayal & Walker 1984); then a core expansion in the spirit of Pisinger (1995): the
      memory-bounded JAX DP (``_dp.solve_dp``) runs on the options whose reduced-cost loss is
      below a threshold that grows until the DP's optimum is proven optimal for the whole
      problem. Provably optimal.
    * ``"dp"``: the JAX DP on all items after the capacity, dominance and gcd reductions only
      (no bounds): the plain exact algorithm, for comparisons.
    * ``"lagrangian"``: the LP greedy solution (with skipping) improved by greedy filling, with
      the Lagrangian bound as certificate: ``result.gap`` is a certified absolute optimality
      gap. Plain numpy, well under a second at paper scale; needs no 64-bit JAX.

    Precision: values are float64 and the exact methods are optimal relative to float64
    arithmetic. Bounds are summed with ``math.fsum`` and compared with a tolerance ``tol =
    64 eps (lambda B + sum_i max_j (|v_ij| + lambda w_ij))``, about 1e-14 of the total; the
    returned value is at least the optimum minus ``tol`` plus the rounding of the DP's partial
    sums (which are formed relative to the incumbent, so they are small). With integer values
    (exact in float64 up to 2**53) the result is exactly optimal.

    Args:
      weights: integer ``[n, m]``, non-negative where available.
      values: real ``[n, m]``; ``-inf`` marks a missing option.
      budget: non-negative integer capacity.
      mask: optional boolean ``[n, m]``; False marks a missing option (its weight and value are
        ignored). Rows may have different numbers of options this way.
      method: ``"exact"``, ``"dp"`` or ``"lagrangian"``.
      segment_length: items per checkpoint segment of the DP (default ``~sqrt(8 n)``).
      progress: tqdm progress bars for the DP (default: only for DPs over 5e10 cell updates).
      max_rounds: bound-and-fix rounds of the exact method between DPs (>= 0).

    Returns:
      A :class:`KnapsackResult`.

    Raises:
      TypeError, ValueError: for invalid inputs (non-integer or negative weights, NaN or +inf
        values, mismatched shapes, items without options, ...) and for an infeasible budget
        (below the smallest achievable total weight); raised before any work starts.
      RuntimeError: if an exact method is asked for without ``jax_enable_x64``.

    Example:
      >>> import numpy as np
      >>> r = solve(np.array([[0, 2, 4], [0, 1, 3]]), np.array([[-5., -1., 0.], [-3., -1., 0.]]), 4)
      >>> r.choice.tolist(), r.value, r.weight
      ([1, 1], -2.0, 3)
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if segment_length is not None and (
        isinstance(segment_length, bool) or not isinstance(segment_length, int) or segment_length < 1
    ):
        raise ValueError(f"segment_length must be a positive int, got {segment_length!r}")
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 0:
        raise ValueError(f"max_rounds must be a non-negative int, got {max_rounds!r}")
    prob = make_problem(weights, values, budget, mask)
    if method != "lagrangian":
        require_x64()
    t0 = time.perf_counter()
    w, b, g = _scaled(prob)
    v = prob.values
    keep = _bounds.capacity_filter(w, prob.mask, b)
    stats: dict[str, Any] = {
        "items": prob.num_items,
        "options": int(prob.mask.sum()),
        "weight_gcd": g,
        "after_capacity_filter": int(keep.sum()),
    }
    if method == "dp":
        eff = _bounds.pareto_mask(w, v, keep)
        stats["efficient_options"] = int(eff.sum())
        base = np.argmax(eff, axis=1)  # some efficient option of each item (value reference)
        choice, info = _run_dp(w, v, eff, b, base, segment_length, progress)
        stats["dp_rounds"] = [info]
        stats["time_total"] = time.perf_counter() - t0
        return _finish(prob, choice, method, True, None, stats)

    lp = _bounds.lp_data(w, v, keep)
    stats["efficient_options"] = int(_bounds.pareto_mask(w, v, keep).sum())
    stats["hull_vertices"] = int(lp.vertex_count.sum())
    lam, choice, binding = _bounds.lp_greedy(lp, b)
    if binding:
        choice = _bounds.greedy_fill(w, v, keep, b, choice)
    best = _bounds.solution_value(v, choice)
    bound = _bounds.lagrangian_bound(w, v, keep, b, lam)
    stats["lambda"] = lam * 1.0 / g
    stats["lp_bound"] = bound.value
    stats["greedy_value"] = best
    stats["time_bounds"] = time.perf_counter() - t0
    optimal = bound.value - best <= bound.tol
    if method == "lagrangian" or optimal:
        stats["time_total"] = time.perf_counter() - t0
        return _finish(prob, choice, method, optimal, bound.value + bound.tol, stats)

    # Exact: bound-and-fix rounds, then DPs on growing cores.
    st = _Search(keep=keep, choice=choice, best=best, bound=bound)
    _exact_search(w, v, b, st, max_rounds=max_rounds, segment_length=segment_length, progress=progress, stats=stats)
    stats["kept_options"] = int(st.keep.sum())
    stats["final_bound"] = st.bound.value
    stats["time_total"] = time.perf_counter() - t0
    return _finish(prob, st.choice, method, True, None, stats)


def sweep_budgets(weights, values, budgets, *, mask=None, fill: bool = True) -> SweepResult:
    """Lagrangian solutions with certified gaps for many budgets, sharing one LP setup.

    Dominance, the convex hulls and the sorted increments are computed once; each budget then
    costs a binary search, a greedy fill and one evaluation of the Lagrangian bound (plain numpy).

    Args:
      weights, values, mask: as in :func:`solve`.
      budgets: integer sequence ``[k]``; each must be feasible.
      fill: improve each LP greedy solution by greedy filling.

    Returns:
      A :class:`SweepResult`.

    Raises:
      TypeError, ValueError: for invalid inputs or an infeasible budget.
    """
    bud = np.asarray(budgets)
    if bud.ndim == 0:
        bud = bud[None]
    if bud.ndim != 1 or bud.size == 0:
        raise ValueError(f"budgets must be a non-empty 1-D sequence of integers, got shape {bud.shape}")
    bl = [check_budget(x, f"budgets[{i}]") for i, x in enumerate(bud.tolist())]
    prob = make_problem(weights, values, max(bl), mask)
    lo = min_total_weight(prob.weights, prob.mask)
    for i, x in enumerate(bl):
        if x < lo:
            raise ValueError(f"infeasible budgets[{i}] = {x}: the smallest achievable total weight is {lo}")
    w, _, g = _scaled(prob)
    v = prob.values
    lp = _bounds.lp_data(w, v, prob.mask)
    k, n = len(bl), prob.num_items
    choices = np.zeros((k, n), dtype=np.int64)
    vals = np.zeros(k)
    wts = np.zeros(k, dtype=np.int64)
    ubs = np.zeros(k)
    lams = np.zeros(k)
    for t, budget in enumerate(bl):
        bs = budget // g
        lam, choice, binding = _bounds.lp_greedy(lp, bs)
        if binding and fill:
            choice = _bounds.greedy_fill(w, v, prob.mask, bs, choice)
        bound = _bounds.lagrangian_bound(w, v, prob.mask, bs, lam)
        choices[t] = choice
        vals[t] = _bounds.solution_value(v, choice)
        wts[t] = _bounds.solution_weight(prob.weights, choice)
        ubs[t] = vals[t] if bound.value - vals[t] <= bound.tol else bound.value + bound.tol
        lams[t] = lam / g
    return SweepResult(
        budgets=np.asarray(bl, dtype=np.int64),
        choices=choices,
        values=vals,
        weights=wts,
        upper_bounds=ubs,
        lambdas=lams,
    )
