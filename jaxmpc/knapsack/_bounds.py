"""Reductions and bounds for the multiple-choice knapsack (numpy, vectorised over items).

Notation: item ``i`` has options ``j`` with weight ``w_ij >= 0`` and value ``v_ij``; exactly one
option per item is chosen and ``sum_i w_i,x_i <= B``; the sum of values is maximised.

* **Dominance.** Option ``j`` is dominated if another option of the same item weighs no more
  and is worth at least as much; equal-weight options collapse to the best one. The remaining
  *efficient* options have strictly increasing weights and values (Sinha & Zoltners 1979).
* **LP relaxation.** Only the vertices of the upper convex hull of an item's efficient options
  matter for the LP; sorting all hull increments by slope and taking them greedily until the
  budget binds solves the LP exactly, with at most one fractional item (Sinha & Zoltners 1979;
  Dudzinski & Walukiewicz 1987, *Exact methods for the knapsack problem and its
  generalizations*, EJOR 28). The slope of the break increment is the optimal multiplier
  ``lambda*`` of the Lagrangian relaxation of the capacity constraint.
* **Lagrangian bound.** For every ``lambda >= 0`` and every feasible solution ``x``,
  ``sum v <= lambda * B + sum_i max_j (v_ij - lambda w_ij) =: U(lambda)``; ``U(lambda*)`` equals
  the LP bound. The bound is computed from *all* options (not from the hull), so it stays a
  valid bound even if floating-point rounding perturbs the hull.
* **Reduced-cost fixing.** With ``r_ij = v_ij - lambda w_ij`` and ``d_ij = max_k r_ik - r_ij``, any
  solution that uses option ``(i, j)`` is worth at most ``U - d_ij``; if that is below the value
  ``L`` of a known feasible solution, the option cannot be in a better solution and is dropped
  (the variable-fixing step of Dyer, Kayal & Walker 1984 and Pisinger 1995, *A minimal algorithm
  for the multiple-choice knapsack problem*, EJOR 83).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

_EPS = np.finfo(np.float64).eps
_BIG = np.iinfo(np.int64).max


def capacity_filter(weights: np.ndarray, mask: np.ndarray, budget: int) -> np.ndarray:
    """Drops options that cannot fit even with every other item at its lightest option."""
    minw = np.where(mask, weights, _BIG).min(axis=1)
    slack = budget - int(minw.sum())
    return mask & (weights - minw[:, None] <= slack)


def pareto_mask(weights: np.ndarray, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Efficient options: not dominated, one per distinct weight (ties: lowest option index)."""
    n, m = weights.shape
    idx = np.broadcast_to(np.arange(m), (n, m))
    wkey = np.where(mask, weights, _BIG)
    vkey = np.where(mask, -values, np.inf)
    order = np.lexsort((idx, vkey, wkey), axis=-1)
    vs = np.take_along_axis(np.where(mask, values, -np.inf), order, axis=1)
    ms = np.take_along_axis(mask, order, axis=1)
    prev = np.maximum.accumulate(vs, axis=1)
    prev = np.concatenate([np.full((n, 1), -np.inf), prev[:, :-1]], axis=1)
    eff_sorted = ms & (vs > prev)
    out = np.zeros_like(mask)
    np.put_along_axis(out, order, eff_sorted, axis=1)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Packed:
    """The available options of every item, sorted by weight, packed to the left.

    ``option[i, k]`` is the original option index (-1 for padding); ``count[i]`` valid columns.
    """

    option: np.ndarray
    weight: np.ndarray
    value: np.ndarray
    count: np.ndarray


def pack(weights: np.ndarray, values: np.ndarray, mask: np.ndarray) -> Packed:
    """Packs the options selected by ``mask`` per item, sorted by (weight, -value, index)."""
    n, m = weights.shape
    idx = np.broadcast_to(np.arange(m), (n, m))
    order = np.lexsort((idx, np.where(mask, -values, np.inf), np.where(mask, weights, _BIG)), axis=-1)
    count = mask.sum(axis=1)
    k = max(int(count.max()), 1)
    order = order[:, :k]
    valid = np.arange(k)[None, :] < count[:, None]
    w = np.where(valid, np.take_along_axis(weights, order, axis=1), 0)
    v = np.where(valid, np.take_along_axis(values, order, axis=1), -np.inf)
    opt = np.where(valid, order, -1)
    return Packed(option=opt, weight=w, value=v, count=count)


def upper_hull(p: Packed) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the upper concave hull of each item's efficient options (a vectorised monotone chain).

    ``p`` must hold efficient options only (weights and values strictly increasing). Collinear
    points are dropped. Returns ``(vertex, vcount)``: ``vertex[i, t]`` is a column of ``p``.
    """
    n, k = p.weight.shape
    stack = np.zeros((n, k), dtype=np.int64)
    sp = np.zeros(n, dtype=np.int64)
    rows = np.arange(n)
    w = p.weight.astype(np.float64)
    v = p.value
    for j in range(k):
        act = p.count > j
        cand = rows[act & (sp >= 2)]
        while cand.size:
            a = stack[cand, sp[cand] - 2]
            b = stack[cand, sp[cand] - 1]
            wa, va, wb, vb = w[cand, a], v[cand, a], w[cand, b], v[cand, b]
            wj, vj = w[cand, j], v[cand, j]
            # b is not strictly above the chord a-j: slope(a, b) <= slope(b, j).
            pop = (vb - va) * (wj - wb) <= (vj - vb) * (wb - wa)
            cand = cand[pop]
            sp[cand] -= 1
            cand = cand[sp[cand] >= 2]
        r = rows[act]
        stack[r, sp[r]] = j
        sp[r] += 1
    h = max(int(sp.max()), 1)
    return stack[:, :h], sp


@dataclasses.dataclass(frozen=True, eq=False)
class LPData:
    """Hull increments of all items sorted by decreasing slope (the LP's greedy order).

    Attributes:
      vertex_option: ``[n, h]`` original option index of each hull vertex (-1 padding).
      vertex_count: ``[n]`` hull vertices per item (>= 1).
      base_weight: total weight with every item at its lightest efficient option.
      item, rank, dw, dv, slope: per sorted increment (``rank`` t moves the item from hull
        vertex t to t + 1).
      cum_dw: cumulative ``dw`` in sorted order.
      position: ``[n, h - 1]`` sorted position of each item's increments (large for padding).
    """

    vertex_option: np.ndarray
    vertex_count: np.ndarray
    base_weight: int
    item: np.ndarray
    rank: np.ndarray
    dw: np.ndarray
    dv: np.ndarray
    slope: np.ndarray
    cum_dw: np.ndarray
    position: np.ndarray


def lp_data(weights: np.ndarray, values: np.ndarray, mask: np.ndarray) -> LPData:
    """Builds the LP greedy order from the available options ``mask`` (dominance applied here)."""
    eff = pareto_mask(weights, values, mask)
    p = pack(weights, values, eff)
    vert, vcnt = upper_hull(p)
    n, h = vert.shape
    vw = np.take_along_axis(p.weight, vert, axis=1)
    vv = np.take_along_axis(p.value, vert, axis=1)
    vopt = np.take_along_axis(p.option, vert, axis=1)
    valid_v = np.arange(h)[None, :] < vcnt[:, None]
    vopt = np.where(valid_v, vopt, -1)
    base_weight = int(vw[:, 0].sum())
    if h == 1:
        empty_i = np.zeros(0, dtype=np.int64)
        empty_f = np.zeros(0, dtype=np.float64)
        return LPData(
            vopt, vcnt, base_weight, empty_i, empty_i, empty_i, empty_f, empty_f, empty_i, np.zeros((n, 0), np.int64)
        )
    dw = np.diff(vw, axis=1)
    dv = np.diff(vv, axis=1)
    valid = np.arange(h - 1)[None, :] < (vcnt - 1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(valid, dv / np.where(valid, dw, 1), -np.inf)
    # Rounding could break the strict decrease along an item; force it so that every prefix of
    # the sorted order takes each item's increments in order.
    slope = np.minimum.accumulate(slope, axis=1)
    ii, tt = np.nonzero(valid)
    s = slope[ii, tt]
    order = np.lexsort((tt, ii, -s))
    item = ii[order]
    position = np.full((n, h - 1), np.iinfo(np.int64).max, dtype=np.int64)
    position[ii[order], tt[order]] = np.arange(order.size)
    dws = dw[ii, tt][order].astype(np.int64)
    return LPData(
        vertex_option=vopt,
        vertex_count=vcnt,
        base_weight=base_weight,
        item=item,
        rank=tt[order],
        dw=dws,
        dv=dv[ii, tt][order],
        slope=s[order],
        cum_dw=np.cumsum(dws),
        position=position,
    )


def lp_greedy(lp: LPData, budget: int, *, skip: bool = True) -> tuple[float, np.ndarray, bool]:
    """LP greedy at one budget: ``(lambda, choice, binding)``.

    The increments are taken in the LP's order until the first one that does not fit (the
    *break* increment, whose slope is the optimal multiplier ``lambda``); with ``skip`` the scan
    then goes on, taking every later increment that still fits and starts at its item's current
    vertex (the classic greedy-with-skipping, which uses most of the leftover capacity at a
    price close to ``lambda``). ``choice`` puts every item at a hull vertex and is feasible.
    ``lambda = 0`` when the budget does not bind, and then ``choice`` is optimal.
    """
    residual = budget - lp.base_weight
    p = int(np.searchsorted(lp.cum_dw, residual, side="right"))
    n = lp.vertex_count.shape[0]
    taken = (lp.position < p).sum(axis=1) if lp.position.shape[1] else np.zeros(n, np.int64)
    if p >= lp.item.size:
        return 0.0, lp.vertex_option[np.arange(n), taken], False
    lam = float(max(lp.slope[p], 0.0))
    if skip:
        residual -= int(lp.cum_dw[p - 1]) if p > 0 else 0
        for t in (np.flatnonzero(lp.dw[p + 1 :] <= residual) + p + 1).tolist():
            dw = int(lp.dw[t])
            i = int(lp.item[t])
            if dw <= residual and taken[i] == lp.rank[t]:
                taken[i] += 1
                residual -= dw
                if residual == 0:
                    break
    return lam, lp.vertex_option[np.arange(n), taken], True


@dataclasses.dataclass(frozen=True, eq=False)
class Bound:
    """Lagrangian bound ``U(lambda)`` and what reduced-cost fixing needs."""

    lam: float
    value: float  # U(lambda)
    tol: float  # absolute rounding allowance on comparisons against U
    reduced: np.ndarray  # r_ij = v_ij - lambda w_ij (-inf for missing)
    rmax: np.ndarray  # max_j r_ij


def lagrangian_bound(weights: np.ndarray, values: np.ndarray, mask: np.ndarray, budget: int, lam: float) -> Bound:
    """``U(lambda) = lambda B + sum_i max_j (v_ij - lambda w_ij)``, an upper bound for every ``lambda >= 0``.

    The sum is computed with ``math.fsum`` (correctly rounded); ``tol`` bounds the remaining
    rounding of the per-option terms, so ``U + tol`` is a safe bound in float64.
    """
    lam = float(lam)
    r = np.where(mask, values - lam * weights, -np.inf)
    rmax = r.max(axis=1)
    u = math.fsum(rmax.tolist()) + lam * budget
    scale = lam * budget + float(np.where(mask, np.abs(values) + lam * weights, 0.0).max(axis=1).sum())
    tol = 64.0 * _EPS * scale + 1e-300
    return Bound(lam=lam, value=u, tol=tol, reduced=r, rmax=rmax)


def solution_value(values: np.ndarray, choice: np.ndarray) -> float:
    """Correctly rounded sum of the chosen values."""
    return math.fsum(values[np.arange(values.shape[0]), choice].tolist())


def solution_weight(weights: np.ndarray, choice: np.ndarray) -> int:
    return int(weights[np.arange(weights.shape[0]), choice].sum())


def greedy_fill(
    weights: np.ndarray, values: np.ndarray, mask: np.ndarray, budget: int, choice: np.ndarray, max_moves: int = 10_000
) -> np.ndarray:
    """Improves a feasible solution by single-item moves that fit in the unused capacity.

    Repeatedly applies the move (one item to another option) with the largest value gain
    among those whose extra weight fits in the residual capacity.
    """
    choice = choice.copy()
    n = weights.shape[0]
    rows = np.arange(n)
    cur_w = weights[rows, choice]
    cur_v = values[rows, choice]
    residual = budget - int(cur_w.sum())
    active = rows
    for _ in range(max_moves):
        dw = weights[active] - cur_w[active, None]
        dv = values[active] - cur_v[active, None]
        ok = mask[active] & (dw <= residual) & (dv > 0)
        has = ok.any(axis=1)
        if not has.any():
            break
        active = active[has]
        gain = np.where(ok[has], dv[has], -np.inf)
        flat = int(np.argmax(gain))
        a, j = divmod(flat, weights.shape[1])
        i = active[a]
        residual -= int(weights[i, j] - cur_w[i])
        choice[i] = j
        cur_w[i] = weights[i, j]
        cur_v[i] = values[i, j]
    return choice
