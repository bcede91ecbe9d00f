"""Input checking for the multiple-choice knapsack: canonical arrays, or a clear error.

Everything here is plain numpy and runs before any solver work (style rule 7: validate in
Python, then jit).
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

# Weights are summed in int64; keep totals far from overflow.
_MAX_TOTAL_WEIGHT = 2**62


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """A validated instance: maximise ``sum_i values[i, x_i]`` s.t. ``sum_i weights[i, x_i] <= budget``.

    Attributes:
      weights: int64 ``[n, m]``; 0 where an option is missing.
      values: float64 ``[n, m]``; ``-inf`` where an option is missing.
      mask: bool ``[n, m]``; True for the options that exist.
      budget: the capacity, an int >= the smallest achievable total weight.
    """

    weights: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    budget: int

    @property
    def num_items(self) -> int:
        return self.weights.shape[0]

    @property
    def num_options(self) -> int:
        return self.weights.shape[1]


def check_budget(budget, name: str = "budget") -> int:
    """Returns ``budget`` as a non-negative Python int, or raises TypeError/ValueError."""
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, numbers.Integral):
        if isinstance(budget, np.ndarray) and budget.ndim == 0 and np.issubdtype(budget.dtype, np.integer):
            budget = int(budget)
        else:
            raise TypeError(f"{name} must be an integer, got {type(budget).__name__} ({budget!r})")
    budget = int(budget)
    if budget < 0:
        raise ValueError(f"{name} must be >= 0, got {budget}")
    return budget


def _as_real_array(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must be a real (integer or floating) array, got dtype {arr.dtype}")
    return arr


def make_problem(weights, values, budget, mask=None, *, check_feasible: bool = True) -> Problem:
    """Validates a knapsack instance and returns it in canonical form.

    Missing options are marked either with ``mask=False`` or with a value of ``-inf``; their
    weights and values are otherwise ignored (they may hold anything, NaN included).

    Raises:
      TypeError: for non-integer weights or budget, non-real values, a non-boolean mask.
      ValueError: naming the problem, for bad shapes, NaN or +inf values, negative weights,
        items without any option, weight totals that would overflow, or a budget below the
        smallest achievable total weight (infeasible).
    """
    w = np.asarray(weights)
    if w.dtype == bool or not np.issubdtype(w.dtype, np.integer):
        raise TypeError(f"weights must be an integer array [n, m], got dtype {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"weights must have shape [n, m], got shape {w.shape}")
    n, m = w.shape
    if n == 0 or m == 0:
        raise ValueError(f"weights must have at least one item and one option, got shape {w.shape}")
    v = _as_real_array(values, "values")
    if v.shape != w.shape:
        raise ValueError(f"values must have the shape of weights {w.shape}, got {v.shape}")
    if mask is None:
        mk = np.ones(w.shape, dtype=bool)
    else:
        mk = np.asarray(mask)
        if mk.dtype != bool:
            raise TypeError(f"mask must be a boolean array, got dtype {mk.dtype}")
        if mk.shape != w.shape:
            raise ValueError(f"mask must have the shape of weights {w.shape}, got {mk.shape}")
    v = v.astype(np.float64)
    with np.errstate(invalid="ignore"):
        mk = mk & ~(v == -np.inf)
    bad_v = mk & ~np.isfinite(v)
    if bad_v.any():
        i, j = np.argwhere(bad_v)[0]
        raise ValueError(
            f"values must be finite for available options (use mask=False or -inf to drop an option); "
            f"item {i}, option {j} has value {v[i, j]}"
        )
    if (mk & (w < 0)).any():
        i, j = np.argwhere(mk & (w < 0))[0]
        raise ValueError(f"weights must be >= 0; item {i}, option {j} has weight {w[i, j]}")
    empty = ~mk.any(axis=1)
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise ValueError(
            f"every item needs at least one available option; item {i} has none ({int(empty.sum())} such items)"
        )
    if np.issubdtype(w.dtype, np.unsignedinteger) and (mk & (w > np.uint64(_MAX_TOTAL_WEIGHT))).any():
        raise ValueError(f"weights must be < 2**62, got {int(w[mk].max())}")
    w64 = np.where(mk, w, 0).astype(np.int64)
    max_total = sum(int(x) for x in w64.max(axis=1))
    if max_total >= _MAX_TOTAL_WEIGHT:
        raise ValueError(f"the sum over items of the largest weight ({max_total}) must be < 2**62")
    b = check_budget(budget)
    vv = np.where(mk, v, -np.inf)
    if check_feasible:
        min_total = min_total_weight(w64, mk)
        if min_total > b:
            raise ValueError(
                f"infeasible budget: the smallest achievable total weight is {min_total} "
                f"(every item at its lightest option), above the budget {b}"
            )
    return Problem(weights=w64, values=vv, mask=mk, budget=b)


def min_total_weight(weights: np.ndarray, mask: np.ndarray) -> int:
    """Smallest achievable total weight (every item at its lightest available option)."""
    big = np.iinfo(np.int64).max
    return int(np.where(mask, weights, big).min(axis=1).sum())
