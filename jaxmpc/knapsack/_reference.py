"""A straightforward numpy re-implementation of the reference implementation's knapsack DP.

For benchmarks and tests only (``benchmarks/knapsack.py``). It follows the algorithm of the
authors' ``multiple_choice_knapsack_solver.py`` (``paper_reference.md`` §4.2), written from that
description: options of equal weight are merged first (keeping the best value), then a DP over
*exact* total costs ``0..budget`` relaxes one item at a time with, per option, a shifted add, a
strict compare and a masked update, and records a uint8 argmax row per item (255: unreachable)
in an ``items x (budget + 1)`` table. Two differences from the original: the table stays in
memory instead of one file per row, and costs ``0..budget`` are allowed (the original's columns
stop at ``budget - 1``). Backtracking can start at the best value (correct) or, as in the
original, at the largest reachable cost.
"""

from __future__ import annotations

import numpy as np


def merge_equal_costs(weights: np.ndarray, values: np.ndarray, mask: np.ndarray):
    """Per item, keeps the best option of each distinct weight (ties: lowest index).

    Returns ``(option, weight, value, mask)`` packed ``[n, k]`` arrays, ``option`` being the
    original column.
    """
    n, m = weights.shape
    big = np.iinfo(np.int64).max
    idx = np.broadcast_to(np.arange(m), (n, m))
    order = np.lexsort((idx, np.where(mask, -values, np.inf), np.where(mask, weights, big)), axis=-1)
    ws = np.take_along_axis(np.where(mask, weights, big), order, axis=1)
    first = np.ones_like(mask)
    first[:, 1:] = ws[:, 1:] != ws[:, :-1]
    first &= np.take_along_axis(mask, order, axis=1)
    k = int(first.sum(axis=1).max())
    pos = np.argsort(~first, axis=1, kind="stable")[:, :k]
    sel = np.take_along_axis(order, pos, axis=1)
    valid = np.take_along_axis(first, pos, axis=1)
    return (
        np.where(valid, sel, -1),
        np.where(valid, np.take_along_axis(weights, sel, axis=1), 0),
        np.where(valid, np.take_along_axis(values, sel, axis=1), -np.inf),
        valid,
    )


def reference_dp(weights, values, mask, budget: int, *, backtrack_from: str = "best"):
    """Solves the knapsack with the reference's full-table DP.

    Args:
      weights, values, mask: ``[n, m]`` arrays as in :func:`jaxmpc.knapsack.solve`.
      budget: the capacity.
      backtrack_from: ``"best"`` (the optimum) or ``"largest_cost"`` (the reference's choice).

    Returns:
      ``(choice, value_at_backtrack_start, cost)``.
    """
    weights = np.asarray(weights, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    opt, w, v, valid = merge_equal_costs(weights, values, mask)
    n, k = w.shape
    if k > 255:
        raise ValueError("the uint8 argmax table holds at most 255 options")
    size = budget + 1
    table = np.empty((n, size), dtype=np.uint8)
    dp = np.full(size, -np.inf)
    dp[0] = 0.0
    for i in range(n):
        new = np.full(size, -np.inf)
        arg = np.full(size, 255, dtype=np.uint8)
        for o in range(k):
            if not valid[i, o] or w[i, o] >= size:
                continue
            s = int(w[i, o])
            cand = np.full(size, -np.inf)
            cand[s:] = dp[: size - s] + v[i, o]
            better = cand > new
            new[better] = cand[better]
            arg[better] = o
        table[i] = arg
        dp = new
    if backtrack_from == "best":
        c = int(np.argmax(dp))
    elif backtrack_from == "largest_cost":
        c = int(np.flatnonzero(np.isfinite(dp)).max())
    else:
        raise ValueError(f"backtrack_from must be 'best' or 'largest_cost', got {backtrack_from!r}")
    start_value, start_cost = float(dp[c]), c
    choice = np.zeros(n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        o = int(table[i, c])
        choice[i] = opt[i, o]
        c -= int(w[i, o])
    return choice, start_value, start_cost
