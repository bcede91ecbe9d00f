"""jaxmpc: secure 3-party CNN inference in JAX with knapsack-optimised Block ReLUs.

The public API is re-exported here; modules whose names start with an underscore are internal.
"""

from jaxmpc import blocks as blocks
from jaxmpc.config import ProtocolConfig as ProtocolConfig
from jaxmpc.config import require_x64 as require_x64

__version__ = "0.1.0"
from jaxmpc import ops as ops
from jaxmpc import protocols as protocols
from jaxmpc.comm import CommRecord as CommRecord
from jaxmpc.parties import Party as Party
from jaxmpc.sharing import Shared as Shared
from jaxmpc.simulate import simulate as simulate
