"""Block-size planner: per-layer distortions -> knapsack -> block spec ``{layer: int32[C, 2]}``.

This is step 3 of the paper's pipeline (Gorski & Avidan, arXiv 2304.10442, §3.2;
``paper_reference.md`` §4): one global multiple-choice knapsack over all channels of all ReLU
layers; every channel picks one candidate patch size; its cost is the DReLU count of that size on
the layer's ``H x W`` map (non-square maps included), its value the negated distortion; the total
cost must stay within a budget. Unlike the reference, the budget may also be stated in bytes of
communication, charging the Block-ReLU multiplication as well (:class:`CostModel`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from jaxmpc.core import blocks
from jaxmpc.knapsack._problem import check_budget
from jaxmpc.knapsack._solver import KnapsackResult, Method, SweepResult, solve, sweep_budgets


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Cost of a patch size: ``per_drelu * DReLUs + per_mult * multiplied elements``.

    The default counts DReLUs only, as the paper does. :meth:`communication` charges bytes of
    the 3-party protocol instead: a DReLU costs ``bytes_per_drelu`` and each element multiplied
    by its patch's sign (``H * W`` per channel that is neither identity nor zero, see
    :func:`jaxmpc.core.blocks.mult_count`) costs ``bytes_per_mult``.

    Attributes:
      per_drelu: cost of one DReLU (non-negative int).
      per_mult: cost of one multiplied element (non-negative int).
      unit: name of the unit, for summaries.
    """

    per_drelu: int = 1
    per_mult: int = 0
    unit: str = "DReLU"

    def __post_init__(self):
        for name in ("per_drelu", "per_mult"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, numbers.Integral):
                raise TypeError(f"CostModel.{name} must be an int, got {type(x).__name__}")
            if x < 0:
                raise ValueError(f"CostModel.{name} must be >= 0, got {x}")
        if self.per_drelu == 0 and self.per_mult == 0:
            raise ValueError("CostModel needs per_drelu > 0 or per_mult > 0")

    @classmethod
    def drelus(cls) -> CostModel:
        """Cost = DReLU count (the paper's knapsack weight)."""
        return cls()

    @classmethod
    def communication(cls, bytes_per_drelu: int = 496, bytes_per_mult: int = 24) -> CostModel:
        """Cost = bytes sent by all parties.

        Defaults are the SecureNN costs of the reference implementation
        (``paper_reference.md`` §1.8): 496 B per DReLU comparing 64 bits (``112 + 6 m`` for ``m``
        compared bits, e.g. 208 B at ``m = 16``) and 24 B per element of the Block-ReLU
        multiplication. (The reference's Block-ReLU layer also opens the patch signs, another
        16 B per patch: pass ``bytes_per_drelu=512`` to include it.)
        """
        return cls(per_drelu=bytes_per_drelu, per_mult=bytes_per_mult, unit="B")

    def candidate_costs(self, height: int, width: int, candidates) -> np.ndarray:
        """int64 ``[n_cand]`` cost of each candidate patch size on an ``height x width`` map."""
        cand = np.asarray(candidates)
        drelus = blocks.num_patches(height, width, cand).astype(np.int64)
        mults = blocks.is_patch(cand).astype(np.int64) * (height * width)
        return self.per_drelu * drelus + self.per_mult * mults

    def relu_cost(self, height: int, width: int) -> int:
        """Cost of one channel evaluated with ordinary ReLUs (patch size ``(1, 1)``)."""
        return int(self.candidate_costs(height, width, np.array([blocks.RELU]))[0])


@dataclasses.dataclass(frozen=True, eq=False)
class LayerCandidates:
    """Planner input for one ReLU layer.

    Attributes:
      name: the layer name (a key of the block spec).
      height, width: the activation map size (may differ).
      candidates: int ``[n_cand, 2]`` candidate patch sizes (see :mod:`jaxmpc.core.blocks`);
        duplicates are allowed (the first of equal-cost, equal-distortion options wins).
      distortion: real ``[C, n_cand]``, the distortion of each channel under each candidate;
        lower is better. Must be finite.

    Raises:
      TypeError, ValueError: naming the field, on construction.
    """

    name: str
    height: int
    width: int
    candidates: np.ndarray
    distortion: np.ndarray

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"layer name must be a non-empty str, got {self.name!r}")
        for f in ("height", "width"):
            x = getattr(self, f)
            if isinstance(x, bool) or not isinstance(x, numbers.Integral):
                raise TypeError(f"layer {self.name!r}: {f} must be an int, got {type(x).__name__}")
            if x < 1:
                raise ValueError(f"layer {self.name!r}: {f} must be >= 1, got {x}")
            object.__setattr__(self, f, int(x))
        cand = np.asarray(self.candidates)
        if cand.ndim != 2 or cand.shape[1] != 2 or cand.shape[0] == 0:
            raise ValueError(f"layer {self.name!r}: candidates must have shape [n_cand >= 1, 2], got {cand.shape}")
        cand = blocks.validate_block_sizes(cand, name=f"layer {self.name!r} candidates")
        dist = np.asarray(self.distortion)
        if dist.dtype == bool or not (np.issubdtype(dist.dtype, np.floating) or np.issubdtype(dist.dtype, np.integer)):
            raise TypeError(f"layer {self.name!r}: distortion must be a real array, got dtype {dist.dtype}")
        if dist.ndim != 2 or dist.shape[0] == 0:
            raise ValueError(f"layer {self.name!r}: distortion must have shape [C >= 1, n_cand], got {dist.shape}")
        if dist.shape[1] != cand.shape[0]:
            raise ValueError(
                f"layer {self.name!r}: distortion has {dist.shape[1]} columns but there are {cand.shape[0]} candidates"
            )
        dist = dist.astype(np.float64)
        if not np.all(np.isfinite(dist)):
            c, k = np.argwhere(~np.isfinite(dist))[0]
            raise ValueError(
                f"layer {self.name!r}: distortion must be finite; channel {c}, candidate "
                f"{tuple(int(x) for x in cand[k])} is {dist[c, k]}"
            )
        object.__setattr__(self, "candidates", cand)
        object.__setattr__(self, "distortion", dist)

    @property
    def channels(self) -> int:
        return self.distortion.shape[0]


@dataclasses.dataclass(frozen=True, eq=False)
class PlanSummary:
    """What a block plan costs and how much distortion it adds.

    Attributes:
      budget: the budget, in ``unit``.
      unit: ``"DReLU"``, ``"B"`` or the cost model's unit.
      total_cost: cost of the plan, in ``unit`` (``<= budget``).
      total_drelus: DReLUs of one inference under the plan.
      all_relu_drelus: DReLUs with ordinary ReLUs everywhere (``sum C * H * W``).
      total_mults: elements multiplied by a sign (the Block-ReLU multiplication).
      total_distortion: summed distortion of the chosen candidates.
      distortion_lower_bound: certified lower bound on the best achievable total distortion
        (equal to ``total_distortion`` when ``optimal``).
      optimal: whether the plan is proven optimal.
      layer_drelus: DReLUs per layer.
      layer_distortion: summed distortion per layer.
    """

    budget: int
    unit: str
    total_cost: int
    total_drelus: int
    all_relu_drelus: int
    total_mults: int
    total_distortion: float
    distortion_lower_bound: float
    optimal: bool
    layer_drelus: Mapping[str, int]
    layer_distortion: Mapping[str, float]

    @property
    def drelu_ratio(self) -> float:
        """``total_drelus / all_relu_drelus``."""
        return self.total_drelus / self.all_relu_drelus

    @property
    def relative_gap(self) -> float:
        """Certified relative gap ``(distortion - lower bound) / distortion`` (0 if optimal)."""
        if self.optimal or self.total_distortion == 0:
            return 0.0
        return (self.total_distortion - self.distortion_lower_bound) / abs(self.total_distortion)


@dataclasses.dataclass(frozen=True, eq=False)
class BlockPlan:
    """Result of :func:`plan_block_sizes`.

    Attributes:
      spec: the block spec, ``{layer name: int32 [C, 2] patch sizes}``.
      summary: a :class:`PlanSummary`.
      result: the underlying :class:`~jaxmpc.knapsack.KnapsackResult` (items are the channels of
        the layers in order; options are the candidate columns).
    """

    spec: dict[str, np.ndarray]
    summary: PlanSummary
    result: KnapsackResult


def _check_layers(layers) -> list[LayerCandidates]:
    if isinstance(layers, LayerCandidates) or not isinstance(layers, Sequence) or isinstance(layers, str):
        raise TypeError("layers must be a sequence of LayerCandidates")
    out = list(layers)
    if not out:
        raise ValueError("layers must not be empty")
    seen = set()
    for i, layer in enumerate(out):
        if not isinstance(layer, LayerCandidates):
            raise TypeError(f"layers[{i}] must be a LayerCandidates, got {type(layer).__name__}")
        if layer.name in seen:
            raise ValueError(f"duplicate layer name {layer.name!r}")
        seen.add(layer.name)
    return out


def _check_cost_model(cost_model) -> CostModel:
    if cost_model is None:
        return CostModel()
    if not isinstance(cost_model, CostModel):
        raise TypeError(f"cost_model must be a CostModel, got {type(cost_model).__name__}")
    return cost_model


def _check_ratio(ratio, name="ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(ratio).__name__}")
    r = float(ratio)
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {ratio}")
    return r


def _budget_from(ratio, budget, all_relu_cost: int) -> int:
    if (ratio is None) == (budget is None):
        raise ValueError("give exactly one of ratio= (fraction of the all-ReLU cost) or budget= (absolute)")
    if ratio is not None:
        return math.floor(_check_ratio(ratio) * all_relu_cost)
    return check_budget(budget)


def build_problem(layers: Sequence[LayerCandidates], cost_model: CostModel | None = None):
    """Knapsack arrays of a planning problem.

    Returns:
      ``(weights, values, mask, offsets)``: int64 ``[N, m]`` costs, float64 ``[N, m]`` negated
      distortions, bool ``[N, m]`` (layers with fewer candidates are padded), and the first item
      of each layer (``offsets[-1] = N``), where ``N`` is the total channel count and ``m`` the
      largest candidate count.
    """
    layers = _check_layers(layers)
    cm = _check_cost_model(cost_model)
    n = sum(layer.channels for layer in layers)
    m = max(layer.candidates.shape[0] for layer in layers)
    weights = np.zeros((n, m), dtype=np.int64)
    values = np.full((n, m), -np.inf)
    mask = np.zeros((n, m), dtype=bool)
    offsets = np.zeros(len(layers) + 1, dtype=np.int64)
    for li, layer in enumerate(layers):
        a, k = int(offsets[li]), layer.candidates.shape[0]
        b = a + layer.channels
        weights[a:b, :k] = cm.candidate_costs(layer.height, layer.width, layer.candidates)[None, :]
        values[a:b, :k] = -layer.distortion
        mask[a:b, :k] = True
        offsets[li + 1] = b
    return weights, values, mask, offsets


def _costs(layers, cm: CostModel) -> tuple[int, int]:
    """``(all-ReLU cost, smallest achievable cost)`` under ``cm``."""
    all_relu = sum(layer.channels * cm.relu_cost(layer.height, layer.width) for layer in layers)
    lowest = sum(
        layer.channels * int(cm.candidate_costs(layer.height, layer.width, layer.candidates).min()) for layer in layers
    )
    return all_relu, lowest


def plan_block_sizes(
    layers: Sequence[LayerCandidates],
    *,
    ratio: float | None = None,
    budget: int | None = None,
    cost_model: CostModel | None = None,
    method: Method = "exact",
    progress: bool | None = None,
) -> BlockPlan:
    """Chooses a patch size for every channel to minimise total distortion within a budget.

    The multiple-choice knapsack of Gorski & Avidan (arXiv 2304.10442, §3.2), solved by
    :func:`jaxmpc.knapsack.solve`: one item per channel, one option per candidate, cost from
    ``cost_model`` (DReLU count by default, computed with :mod:`jaxmpc.core.blocks` on the layer's
    ``H x W`` map), value ``-distortion``.

    Args:
      layers: one :class:`LayerCandidates` per ReLU layer (unique names).
      ratio: budget as a fraction of the all-ReLU cost ``sum_layers C * cost((1, 1))`` (for the
        DReLU count that is ``sum C * H * W``; the paper uses 0.06), floored to an integer.
      budget: absolute budget in the cost model's unit (DReLUs by default, bytes with
        :meth:`CostModel.communication`). Give exactly one of ``ratio`` and ``budget``.
      cost_model: a :class:`CostModel` (default: DReLU count).
      method: knapsack method, ``"exact"`` (default), ``"dp"`` or ``"lagrangian"``.
      progress: tqdm progress bars for long DPs (see :func:`jaxmpc.knapsack.solve`).

    Returns:
      A :class:`BlockPlan` with the spec dict and a :class:`PlanSummary`.

    Raises:
      TypeError, ValueError: for invalid layers, budgets or cost models, and for a budget below
        the smallest achievable cost; raised before any solving.

    Example:
      >>> import numpy as np
      >>> cand = np.array([[1, 1], [2, 2], [0, 1]])
      >>> layer = LayerCandidates("relu1", 4, 4, cand, np.array([[0.0, 1.0, 5.0], [0.0, 2.0, 3.0]]))
      >>> plan = plan_block_sizes([layer], budget=8, method="lagrangian")
      >>> plan.spec["relu1"].tolist(), plan.summary.total_drelus
      ([[2, 2], [2, 2]], 8)
    """
    layers = _check_layers(layers)
    cm = _check_cost_model(cost_model)
    all_relu, lowest = _costs(layers, cm)
    b = _budget_from(ratio, budget, all_relu)
    if b < lowest:
        raise ValueError(
            f"infeasible budget: {b} {cm.unit} is below the smallest achievable cost {lowest} {cm.unit} "
            f"(every channel at its cheapest candidate)"
        )
    weights, values, mask, offsets = build_problem(layers, cm)
    result = solve(weights, values, b, mask=mask, method=method, progress=progress)
    return _make_plan(layers, cm, offsets, result, b)


def _make_plan(layers, cm: CostModel, offsets, result: KnapsackResult, budget: int) -> BlockPlan:
    spec: dict[str, np.ndarray] = {}
    layer_drelus: dict[str, int] = {}
    layer_dist: dict[str, float] = {}
    total_mults = 0
    total_cost = 0
    for li, layer in enumerate(layers):
        ch = result.choice[offsets[li] : offsets[li + 1]]
        sizes = blocks.validate_block_sizes(layer.candidates[ch], layer.channels, name=f"spec[{layer.name!r}]")
        spec[layer.name] = sizes
        layer_drelus[layer.name] = blocks.drelu_count(layer.height, layer.width, sizes)
        total_mults += blocks.mult_count(layer.height, layer.width, sizes)
        layer_dist[layer.name] = math.fsum(layer.distortion[np.arange(layer.channels), ch].tolist())
        total_cost += int(cm.candidate_costs(layer.height, layer.width, sizes).sum())
    total_drelus = sum(layer_drelus.values())
    summary = PlanSummary(
        budget=budget,
        unit=cm.unit,
        total_cost=total_cost,
        total_drelus=total_drelus,
        all_relu_drelus=sum(layer.channels * layer.height * layer.width for layer in layers),
        total_mults=total_mults,
        total_distortion=-result.value,
        distortion_lower_bound=-result.upper_bound,
        optimal=result.optimal,
        layer_drelus=layer_drelus,
        layer_distortion=layer_dist,
    )
    return BlockPlan(spec=spec, summary=summary, result=result)


def budget_sweep(
    layers: Sequence[LayerCandidates],
    *,
    ratios: Sequence[float] | None = None,
    budgets: Sequence[int] | None = None,
    cost_model: CostModel | None = None,
) -> SweepResult:
    """What-if sweep: Lagrangian plans with certified gaps for many budgets at once.

    Args:
      layers: as in :func:`plan_block_sizes`.
      ratios: budgets as fractions of the all-ReLU cost, or
      budgets: absolute budgets in the cost model's unit (exactly one of the two).
      cost_model: a :class:`CostModel` (default: DReLU count).

    Returns:
      A :class:`~jaxmpc.knapsack.SweepResult` whose ``values`` are negated total distortions
      (``-values`` is the distortion, ``-upper_bounds`` its certified lower bound).
    """
    layers = _check_layers(layers)
    cm = _check_cost_model(cost_model)
    all_relu, lowest = _costs(layers, cm)
    if (ratios is None) == (budgets is None):
        raise ValueError("give exactly one of ratios= or budgets=")
    if ratios is not None:
        bl = [math.floor(_check_ratio(r, f"ratios[{i}]") * all_relu) for i, r in enumerate(ratios)]
    else:
        bl = [check_budget(x, f"budgets[{i}]") for i, x in enumerate(budgets)]
    if not bl:
        raise ValueError("no budgets given")
    for i, x in enumerate(bl):
        if x < lowest:
            raise ValueError(f"infeasible budget #{i}: {x} {cm.unit} is below the smallest achievable cost {lowest}")
    weights, values, mask, _ = build_problem(layers, cm)
    return sweep_budgets(weights, values, bl, mask=mask)
