"""The planning baselines the knapsack is compared with (Gorski & Avidan, arXiv 2304.10442, §5).

* :func:`uniform_spec` -- one patch size for every channel of every layer (clipped to each map),
  the largest DReLU count that fits the budget;
* :func:`random_spec` -- the same knapsack over the same candidates, with random distortions in
  place of the measured ones: a per-channel choice that spends the budget but knows nothing of
  the network;
* :func:`spec_drelus` and :func:`spec_distortion` -- what a spec costs and the total measured
  distortion of its choices (to put any spec beside the knapsack's on the same table).

All take the planner's :class:`~jaxmpc.knapsack.LayerCandidates` and return a block spec
``{layer: int32[C, 2]}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxmpc.core import blocks
from jaxmpc.knapsack._planner import LayerCandidates, plan_block_sizes

__all__ = ["uniform_spec", "random_spec", "spec_drelus", "spec_distortion"]


def uniform_spec(layers: Sequence[LayerCandidates], budget: int) -> dict:
    """The same patch size for every channel (the paper's simple baseline).

    The ``bh x bw`` (clipped to each map) whose total DReLU count is the largest that fits
    ``budget`` DReLUs, the most square one among equals.

    Raises:
      ValueError: no patch size fits (one DReLU per channel is the least a patch size costs).
    """
    side = max(max(lay.height, lay.width) for lay in layers)
    best = None
    for bh in range(1, side + 1):
        for bw in range(1, side + 1):
            used = sum(lay.channels * len(range(0, lay.height, min(bh, lay.height)))
                       * len(range(0, lay.width, min(bw, lay.width))) for lay in layers)
            if used <= budget:
                key = (used, -abs(bh - bw))
                if best is None or key > best[0]:
                    best = (key, bh, bw)
    if best is None:
        raise ValueError(f"no uniform patch size fits {budget} DReLUs (one DReLU per channel needs "
                         f"{sum(lay.channels for lay in layers)})")
    _, bh, bw = best
    spec = {lay.name: np.tile(np.array([[min(bh, lay.height), min(bw, lay.width)]], np.int32), (lay.channels, 1))
            for lay in layers}
    assert spec_drelus(layers, spec) <= budget
    return spec


def random_spec(layers: Sequence[LayerCandidates], budget: int, seed: int = 0) -> dict:
    """A random per-channel choice within ``budget`` DReLUs: the knapsack over uniform(0, 1)
    distortions drawn with ``seed`` (so the same candidates and the same budget rule as the
    knapsack's spec, without the measurements)."""
    rng = np.random.default_rng(seed)
    rand = [dataclasses.replace(lay, distortion=rng.uniform(0, 1, lay.distortion.shape)) for lay in layers]
    return plan_block_sizes(rand, budget=budget).spec


def spec_drelus(layers: Sequence[LayerCandidates], spec: dict) -> int:
    """DReLUs per image of ``spec`` on these layers' maps."""
    return int(sum(blocks.drelu_count(lay.height, lay.width, spec[lay.name]) for lay in layers))


def spec_distortion(layers: Sequence[LayerCandidates], spec: dict) -> float:
    """Sum over channels of the measured distortion of the chosen candidate (channels whose size
    is not among the layer's candidates count 0)."""
    total = 0.0
    for lay in layers:
        for c, s in enumerate(np.asarray(spec[lay.name])):
            hit = np.flatnonzero((lay.candidates == s).all(axis=1))
            if hit.size:
                total += float(lay.distortion[c, hit[0]])
    return total
