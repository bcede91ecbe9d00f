"""Knapsack planner: optimal Block-ReLU patch sizes under a DReLU (or byte) budget.

Gorski & Avidan (arXiv 2304.10442, §3.2) choose one patch size per channel by a multiple-choice
knapsack: each channel is an item, each candidate patch size an option that costs its DReLU
count and carries a distortion, and the total cost must stay within a budget. This package
solves that knapsack exactly at paper scale (ResNet50 and DeepLabV3-ResNet50 at 6% in seconds
on a laptop CPU, in well under 1 GiB), and turns the solution into a block spec.

Knapsack level:

* :func:`solve` -- exact by default (bounds, reduced-cost fixing, and a memory-bounded JAX DP
  with checkpointed backtracking); ``method="dp"`` runs the plain DP, ``method="lagrangian"``
  the fast approximate solver with a certified optimality gap.
* :func:`sweep_budgets` -- Lagrangian solutions with certified gaps for many budgets at once.

Planner level:

* :class:`LayerCandidates` -- per-layer input (name, map size, candidates, distortions).
* :func:`plan_block_sizes` -- the block spec ``{layer: int32[C, 2]}`` and a :class:`PlanSummary`.
* :func:`budget_sweep` -- what-if sweep over budgets.
* :class:`CostModel` -- DReLU count (default) or bytes of communication.
* :mod:`~jaxmpc.knapsack.paper_instances` -- the paper's ReLU layer tables and synthetic
  distortions at paper scale.

Baselines (what the knapsack is compared with at the same budget):

* :func:`uniform_spec` -- one patch size for every channel; :func:`random_spec` -- the knapsack
  over random distortions; :func:`spec_drelus`, :func:`spec_distortion` -- a spec's cost and
  measured distortion.

See ``docs/knapsack.md`` for the algorithms, guarantees and measured figures.
"""

from jaxmpc.knapsack import paper_instances as paper_instances
from jaxmpc.knapsack._baselines import random_spec as random_spec
from jaxmpc.knapsack._baselines import spec_distortion as spec_distortion
from jaxmpc.knapsack._baselines import spec_drelus as spec_drelus
from jaxmpc.knapsack._baselines import uniform_spec as uniform_spec
from jaxmpc.knapsack._planner import BlockPlan as BlockPlan
from jaxmpc.knapsack._planner import CostModel as CostModel
from jaxmpc.knapsack._planner import LayerCandidates as LayerCandidates
from jaxmpc.knapsack._planner import PlanSummary as PlanSummary
from jaxmpc.knapsack._planner import budget_sweep as budget_sweep
from jaxmpc.knapsack._planner import build_problem as build_problem
from jaxmpc.knapsack._planner import plan_block_sizes as plan_block_sizes
from jaxmpc.knapsack._solver import KnapsackResult as KnapsackResult
from jaxmpc.knapsack._solver import SweepResult as SweepResult
from jaxmpc.knapsack._solver import solve as solve
from jaxmpc.knapsack._solver import sweep_budgets as sweep_budgets

__all__ = [
    "BlockPlan",
    "CostModel",
    "KnapsackResult",
    "LayerCandidates",
    "PlanSummary",
    "SweepResult",
    "budget_sweep",
    "build_problem",
    "paper_instances",
    "plan_block_sizes",
    "random_spec",
    "solve",
    "spec_distortion",
    "spec_drelus",
    "sweep_budgets",
    "uniform_spec",
]
