"""Distortion profiling for the Block-ReLU knapsack (Gorski & Avidan, arXiv 2304.10442, §3.1).

For every ReLU layer, channel and candidate patch size, the distortion is the mean squared
change of the network output when only that channel's ReLU is replaced by a Block ReLU of that
size. The knapsack planner (:mod:`jaxmpc.knapsack`) turns the table into a block spec.

Public API:

* :func:`profile_distortion` -- the exact, batched, device-sharded, resumable sweep;
* :class:`DistortionTable`, :class:`LayerDistortion` -- the result, with ``save``/``load``
  (``.npz`` + JSON metadata, no pickle) and ``planner_layers()`` for the knapsack;
* :func:`merge_runs`, :func:`parse_shard`, :func:`run_progress` -- multi-host runs;
* :func:`estimate_distortion`, :func:`compare_tables`, :func:`rank_correlation` -- the
  first-order (Gauss-Newton) estimate for instant previews, and its agreement with exact values;
* :func:`plot_distortion` -- distortion against DReLU cost per layer (PNG).

See ``docs/distortion.md``.
"""

from jaxmpc.distortion._estimate import TableComparison as TableComparison
from jaxmpc.distortion._estimate import compare_tables as compare_tables
from jaxmpc.distortion._estimate import estimate_distortion as estimate_distortion
from jaxmpc.distortion._estimate import rank_correlation as rank_correlation
from jaxmpc.distortion._plot import plot_distortion as plot_distortion
from jaxmpc.distortion._profile import ItemDone as ItemDone
from jaxmpc.distortion._profile import profile_distortion as profile_distortion
from jaxmpc.distortion._program import ProgramError as ProgramError
from jaxmpc.distortion._run import RunError as RunError
from jaxmpc.distortion._run import merge_runs as merge_runs
from jaxmpc.distortion._run import parse_shard as parse_shard
from jaxmpc.distortion._run import run_progress as run_progress
from jaxmpc.distortion._table import DISTORTION_FORMAT as DISTORTION_FORMAT
from jaxmpc.distortion._table import DISTORTION_VERSION as DISTORTION_VERSION
from jaxmpc.distortion._table import DistortionTable as DistortionTable
from jaxmpc.distortion._table import LayerDistortion as LayerDistortion
from jaxmpc.distortion._table import TableError as TableError

__all__ = [
    "DISTORTION_FORMAT",
    "DISTORTION_VERSION",
    "DistortionTable",
    "ItemDone",
    "LayerDistortion",
    "ProgramError",
    "RunError",
    "TableComparison",
    "TableError",
    "compare_tables",
    "estimate_distortion",
    "merge_runs",
    "parse_shard",
    "plot_distortion",
    "profile_distortion",
    "rank_correlation",
    "run_progress",
]
