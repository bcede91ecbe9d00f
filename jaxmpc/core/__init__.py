"""The MPC core: rings, parties, protocol configuration, correlated randomness, the runtime,
communication records and additive sharing.

Layers, bottom up (``docs/architecture.md``): :mod:`ring` and :mod:`parties` (the ring
Z_2^k, fixed point, the three parties and their key sets) -> :mod:`config` (``ProtocolConfig``)
and :mod:`blocks` (the Block-ReLU patch-size encoding) -> :mod:`randomness` (keys and the
ChaCha20 PRG) and :mod:`comm` (message records) -> :mod:`runtime` (local steps, messages,
rounds) -> :mod:`sharing` (``Shared`` values). The protocols that build on it live in
:mod:`jaxmpc.protocols`, with their cost table and plaintext reference beside them.
"""

from jaxmpc.core import ring as ring
from jaxmpc.core import parties as parties
from jaxmpc.core import config as config
from jaxmpc.core import blocks as blocks
from jaxmpc.core import randomness as randomness
from jaxmpc.core import comm as comm
from jaxmpc.core import runtime as runtime
from jaxmpc.core import sharing as sharing

__all__ = ["blocks", "comm", "config", "parties", "randomness", "ring", "runtime", "sharing"]
