"""Exact multiple-choice knapsack DP in JAX with checkpointed backtracking.

The DP over capacities (Dudzinski & Walukiewicz 1987, §4) keeps one vector ``f[c]``, the best
value of the items seen so far at total weight exactly ``c`` (``-inf`` if unreachable), and
relaxes it item by item::

    f'[c] = max_j f[c - w_ij] + v_ij

The reference implementation stores the argmax of every relaxation, an ``items x budget``
table (198 GB for DeepLabV3-ResNet50 at 6%). Here the items are cut into ``S`` segments of
``K`` items and only ``f`` at the start of each segment is kept (``S x (C + 1)`` floats). The
backtrack walks the segments in reverse: it recomputes the segment from its checkpoint, this
time recording a ``K x (C + 1)`` argmax table (int8), and follows it back to the segment start.
Memory is ``(8 S + K)(C + 1)`` bytes, minimised at ``K ~ sqrt(8 n)``; time is about twice a plain
forward pass (checkpointing as in Griewank's reverse-mode schedules; the divide-and-conquer of
Hirschberg 1975 would reach O(C) memory at a log factor of extra recomputation).

Backtracking starts at the *best* reachable total weight (the reference starts at the largest
reachable one, which is not optimal in general); among equal values the lightest wins.

Each relaxation is a fixed-shape ``lax.scan`` of dynamic slices, jit-compiled once per
(segment length, option count, capacity) bucket and called from a Python loop over segments;
it is pure ``jax.numpy``/``lax`` and runs on CPU and GPU alike. Values are float64 (call
:func:`jaxmpc.core.config.require_x64` before); ``max`` and ``+`` are exact IEEE operations, so the
recomputed tables agree bit for bit with the forward pass.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_NEG = -np.inf


def _relax(f: jax.Array, w: jax.Array, v: jax.Array, pad: int, with_arg: bool):
    """One item: ``f'[c] = max_j f[c - w[j]] + v[j]`` (options unrolled; first maximum wins)."""
    size = f.shape[0]
    padded = jnp.concatenate([jnp.full((pad,), _NEG, dtype=f.dtype), f])

    def shifted(j):
        return lax.dynamic_slice(padded, (pad - w[j],), (size,)) + v[j]

    if not with_arg:
        # A balanced tree of maxima: independent operations instead of one long dependency
        # chain, about twice as fast on CPU as a running maximum.
        level = [shifted(j) for j in range(w.shape[0])]
        while len(level) > 1:
            pairs = [jnp.maximum(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            level = pairs + ([level[-1]] if len(level) % 2 else [])
        return level[0], None
    best = shifted(0)
    arg_dtype = jnp.int8 if w.shape[0] <= 127 else jnp.int16
    arg = jnp.zeros((size,), dtype=arg_dtype)
    for j in range(1, w.shape[0]):
        cand = shifted(j)
        better = cand > best
        best = jnp.where(better, cand, best)
        arg = jnp.where(better, jnp.asarray(j, dtype=arg_dtype), arg)
    return best, arg


@functools.partial(jax.jit, static_argnames=("pad",))
def _forward(f: jax.Array, w: jax.Array, v: jax.Array, *, pad: int) -> jax.Array:
    """Relaxes ``f`` by the ``K`` items of one segment (``w``: int32 [K, m], ``v``: float [K, m])."""

    def step(f, x):
        return _relax(f, x[0], x[1], pad, with_arg=False)[0], None

    return lax.scan(step, f, (w, v))[0]


@functools.partial(jax.jit, static_argnames=("pad",))
def _backtrack(f: jax.Array, w: jax.Array, v: jax.Array, c: jax.Array, *, pad: int):
    """Recomputes one segment from its checkpoint ``f`` and walks it back from capacity ``c``.

    Returns ``(c0, choice)``: the total weight before the segment and the option of each item.
    """

    def step(f, x):
        return _relax(f, x[0], x[1], pad, with_arg=True)

    _, table = lax.scan(step, f, (w, v))

    def back(c, x):
        row, wk = x
        j = row[c].astype(jnp.int32)
        return c - wk[j], j

    return lax.scan(back, c, (table, w), reverse=True)


def _bucket_capacity(size: int) -> int:
    """Array length for ``size`` DP states: few distinct compiled shapes, at most ~3% padding."""
    if size <= 64:
        return 64
    if size <= 4096:
        return 1 << (size - 1).bit_length()
    step = 1 << (size.bit_length() - 6)
    return -(-size // step) * step


def _bucket_options(m: int) -> int:
    return max(2, -(-m // 4) * 4) if m > 2 else 2


def default_segment_length(num_items: int) -> int:
    """Segment length ``K``: the power of two nearest ``sqrt(8 n)``, which minimises ``8 n / K + K``."""
    return 1 << max(0, round(math.log2(math.sqrt(8 * max(num_items, 1)))))


def dp_memory_bytes(num_items: int, num_options: int, capacity: int, segment_length: int | None = None) -> int:
    """Estimated peak bytes of :func:`solve_dp` (checkpoints + one argmax table + work vectors)."""
    cb = _bucket_capacity(capacity + 1)
    k = segment_length or default_segment_length(num_items)
    s = -(-num_items // k)
    mb = _bucket_options(num_options)
    table = 1 if mb <= 127 else 2
    return cb * (8 * s + table * k + 8 * 6)


def solve_dp(
    weights: np.ndarray,
    values: np.ndarray,
    capacity: int,
    *,
    segment_length: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, float, int]:
    """Exact DP: maximises ``sum_i values[i, x_i]`` s.t. ``sum_i weights[i, x_i] <= capacity``.

    Args:
      weights: int ``[n, m]``, ``0 <= w``; options heavier than ``capacity`` are ignored.
      values: float64 ``[n, m]``; ``-inf`` marks a missing option. Every item needs an option
        that fits (the caller validates).
      capacity: the budget ``C >= 0``.
      segment_length: items per checkpoint segment (default ``~sqrt(8 n)``).
      progress: show tqdm progress bars over segments.

    Returns:
      ``(choice, value, weight)``: option per item, the DP's float64 optimum and its total weight.
    """
    n, m = weights.shape
    cb = _bucket_capacity(capacity + 1)
    if cb >= 2**31:
        raise ValueError(f"DP capacity {capacity} too large (int32 state indices)")
    mb = _bucket_options(m)
    k = int(segment_length or default_segment_length(n))
    s = -(-n // k)
    w = np.zeros((s * k, mb), dtype=np.int32)
    v = np.full((s * k, mb), _NEG, dtype=np.float64)
    fits = weights <= capacity
    w[:n, :m] = np.where(fits, weights, 0)
    v[:n, :m] = np.where(fits, values, _NEG)
    v[n:, 0] = 0.0  # padding items: one free option of value 0
    w = w.reshape(s, k, mb)
    v = v.reshape(s, k, mb)

    f = jnp.full((cb,), _NEG, dtype=jnp.float64).at[0].set(0.0)
    checkpoints = []
    segs = range(s)
    if progress:
        from tqdm.auto import tqdm

        segs = tqdm(segs, desc="knapsack DP forward", unit="seg")
    for i in segs:
        checkpoints.append(f)
        f = _forward(f, w[i], v[i], pad=cb)
    final = np.asarray(f)[: capacity + 1]
    c = int(np.argmax(final))
    best = float(final[c])
    if not np.isfinite(best):
        raise RuntimeError("knapsack DP found no feasible solution (inputs were not validated?)")
    choice = np.zeros(s * k, dtype=np.int64)
    segs = range(s - 1, -1, -1)
    if progress:
        segs = tqdm(segs, desc="knapsack DP backtrack", unit="seg")
    cc = jnp.asarray(c, dtype=jnp.int32)
    for i in segs:
        cc, ch = _backtrack(checkpoints[i], w[i], v[i], cc, pad=cb)
        checkpoints[i] = None
        choice[i * k : (i + 1) * k] = np.asarray(ch)
    if int(cc) != 0:
        raise RuntimeError(f"knapsack DP backtrack ended at weight {int(cc)} instead of 0")
    return choice[:n], best, c
