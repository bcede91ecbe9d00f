"""jaxmpc: secure 3-party CNN inference in JAX with knapsack-optimised Block ReLUs.

Gorski & Avidan, "Securing Neural Networks with Knapsack Optimization", arXiv 2304.10442.

Public API (everything else is internal):

* :func:`simulate`, :mod:`ops`, :class:`ProtocolConfig`, :class:`CommRecord` -- secure
  computation with the three parties simulated in one jit-compiled program;
* :func:`secure_apply`, :func:`fixed_point_apply`, :func:`secure_cost` -- whole Flax networks;
* :mod:`nn` -- the paper's models with Block ReLU, block specs;
* :mod:`knapsack` -- the patch-size planner; :mod:`distortion` -- distortion profiling;
* :mod:`data`, :mod:`train` -- datasets, training and finetuning;
* :mod:`protocols`, :mod:`costs`, :mod:`reference` -- the protocols, their cost table and
  their plaintext fixed-point reference.

64-bit mode must be on (``jax.config.update("jax_enable_x64", True)``); importing jaxmpc
never changes JAX's configuration.
"""

from jaxmpc.core import blocks as blocks
from jaxmpc.protocols import costs as costs
from jaxmpc import ops as ops
from jaxmpc import protocols as protocols
from jaxmpc.protocols import reference as reference
from jaxmpc.core.comm import CommRecord as CommRecord
from jaxmpc.core.config import ProtocolConfig as ProtocolConfig
from jaxmpc.core.config import require_x64 as require_x64
from jaxmpc.core.config import enable_compilation_cache as enable_compilation_cache
from jaxmpc.core.parties import Party as Party
from jaxmpc.core.sharing import Shared as Shared
from jaxmpc.simulate import simulate as simulate
from jaxmpc.inference import fixed_point_apply as fixed_point_apply
from jaxmpc.inference import secure_apply as secure_apply
from jaxmpc.inference import secure_cost as secure_cost
from jaxmpc.inference import SecureReport as SecureReport
from jaxmpc import nn as nn
from jaxmpc import knapsack as knapsack
from jaxmpc import distortion as distortion
from jaxmpc import data as data
from jaxmpc import train as train

__version__ = "0.1.0"

__all__ = [
    "CommRecord", "Party", "ProtocolConfig", "SecureReport", "Shared", "blocks", "costs", "data", "distortion",
    "enable_compilation_cache", "fixed_point_apply",
    "knapsack", "nn", "ops", "protocols", "reference", "require_x64", "secure_apply", "secure_cost", "simulate", "train",
]


# Modules that moved into subpackages (jaxmpc 0.2): the old import paths keep working.
import importlib as _importlib
import sys as _sys

_MOVED_MODULES = {
    **{name: f"jaxmpc.core.{name}" for name in
       ("ring", "parties", "config", "blocks", "randomness", "comm", "runtime", "sharing")},
    "costs": "jaxmpc.protocols.costs",
    "reference": "jaxmpc.protocols.reference",
    "stats": "jaxmpc.train._stats",
}
for _old, _new in _MOVED_MODULES.items():
    _sys.modules.setdefault(f"jaxmpc.{_old}", _importlib.import_module(_new))
del _old, _new


def __getattr__(name):
    if name in _MOVED_MODULES:
        return _importlib.import_module(_MOVED_MODULES[name])
    raise AttributeError(f"module 'jaxmpc' has no attribute {name!r}")
