"""The documented communication cost of every protocol (bytes per ordered link, rounds).

These closed-form formulas are the cost table of ``docs/protocols.md``. They are *not* used to
account communication -- the runtime logs every message it actually sends -- but
``tests/comm_test.py`` checks that each op's logged record equals them, for both protocol
variants and any number of compared bits, and the knapsack's byte cost model reads them.

Notation: ``m`` = compared bits, ``w`` = wire bytes of an element of Z_{2^m} or Z_{2^m - 1}
(8, or with ``compact_wire`` the smallest of 1/2/4/8 bytes holding m bits), 1 byte per Z_67
element, 8 bytes per Z_2^64 element.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxmpc.core.config import ProtocolConfig
from jaxmpc.core.parties import CLIENT, CP, LINKS, SERVER, Party
from jaxmpc.core.ring import Z2k

__all__ = [
    "LinkCost", "wire_bytes", "share_convert", "msb", "drelu", "mult", "relu", "maxpool", "block_relu",
    "linear_server_weights", "beaver", "reveal", "drelu_rounds", "relu_rounds", "bytes_per_drelu", "bytes_per_mult",
]


@dataclasses.dataclass(frozen=True)
class LinkCost:
    """Bytes on each ordered link."""

    c_s: int = 0
    c_cp: int = 0
    s_c: int = 0
    s_cp: int = 0
    cp_c: int = 0
    cp_s: int = 0

    def __add__(self, o: "LinkCost") -> "LinkCost":
        return LinkCost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(o))))

    def __mul__(self, k: int) -> "LinkCost":
        return LinkCost(*(a * k for a in dataclasses.astuple(self)))

    __rmul__ = __mul__

    def link(self, src: Party, dst: Party) -> int:
        names = {(CLIENT, SERVER): "c_s", (CLIENT, CP): "c_cp", (SERVER, CLIENT): "s_c", (SERVER, CP): "s_cp",
                 (CP, CLIENT): "cp_c", (CP, SERVER): "cp_s"}
        return getattr(self, names[(Party(src), Party(dst))])

    @property
    def links(self) -> dict:
        return {(a, b): self.link(a, b) for a, b in LINKS}

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))

    def sent(self, party: Party) -> int:
        return sum(v for (a, _), v in self.links.items() if a == Party(party))


def wire_bytes(config: ProtocolConfig) -> int:
    """Bytes per element of Z_{2^m} / Z_{2^m - 1} on the wire."""
    return int(np.dtype(Z2k(config.compare_bits).wire_dtype(config.compact_wire)).itemsize)


def share_convert(n: int, config: ProtocolConfig) -> LinkCost:
    m, w = config.compare_bits, wire_bytes(config)
    return n * LinkCost(c_cp=w + m, s_cp=w + m, cp_s=m + 2 * w)


def msb(n: int, config: ProtocolConfig) -> LinkCost:
    m, w = config.compare_bits, wire_bytes(config)
    if config.nonlinear_protocol == "jaxmpc":
        return n * LinkCost(c_s=w, s_c=w, c_cp=m, s_cp=m, cp_s=m + 8)
    return n * LinkCost(c_s=w + 16, s_c=w + 16, c_cp=m, s_cp=m, cp_c=w + 8, cp_s=m + 16)


def drelu(n: int, config: ProtocolConfig) -> LinkCost:
    """jaxmpc: ``6w + 6m + 8`` bytes per DReLU; securenn: ``7w + 6m + 56`` (496 at m = 64)."""
    return share_convert(n, config) + msb(n, config)


def mult(n_x: int, n_bits: int, config: ProtocolConfig) -> LinkCost:
    """Bit (from DReLU) times value: jaxmpc 24 B per value element; Beaver ``16(n_x + n_bits) + 8 n_x``."""
    if config.nonlinear_protocol == "jaxmpc":
        return LinkCost(c_s=8 * n_x, s_c=8 * n_x, cp_s=8 * n_x)
    return LinkCost(c_s=8 * (n_x + n_bits), s_c=8 * (n_x + n_bits), cp_c=8 * n_x)


def relu(n: int, config: ProtocolConfig) -> LinkCost:
    return drelu(n, config) + mult(n, n, config)


def maxpool(n_out: int, window: int, config: ProtocolConfig) -> LinkCost:
    """``window - 1`` comparisons (DReLU + mult) per output element."""
    return relu(n_out * (window - 1), config)


def block_relu(n_patches: int, n_pixels: int, config: ProtocolConfig) -> LinkCost:
    """One DReLU per patch, one bit product per pixel of the non-identity, non-zero channels."""
    return drelu(n_patches, config) + mult(n_pixels, n_patches, config)


def linear_server_weights(x_size: int, w_size: int, y_size: int) -> LinkCost:
    """Server-weights protocol: C->S ``8|X|`` online; S->C ``8|W|`` and CP->C ``8|Y|`` offline."""
    return LinkCost(c_s=8 * x_size, s_c=8 * w_size, cp_c=8 * y_size)


def beaver(x_size: int, y_size: int, z_size: int) -> LinkCost:
    """Beaver product (also the reference's shared-weights linear layer): 16(|X|+|Y|) + 8|Z|."""
    return LinkCost(c_s=8 * (x_size + y_size), s_c=8 * (x_size + y_size), cp_c=8 * z_size)


def reveal(n: int) -> LinkCost:
    return LinkCost(s_c=8 * n)


def drelu_rounds(config: ProtocolConfig) -> int:
    return 7 if config.nonlinear_protocol == "jaxmpc" else 8


def relu_rounds(config: ProtocolConfig) -> int:
    """jaxmpc opens ``x - A`` in parallel with DReLU: no extra round; Beaver adds one."""
    return 7 if config.nonlinear_protocol == "jaxmpc" else 9


def maxpool_rounds(window: int, config: ProtocolConfig) -> int:
    levels = window - 1 if config.maxpool_schedule == "sequential" else math.ceil(math.log2(window)) if window > 1 else 0
    return levels * relu_rounds(config)


def bytes_per_drelu(config: ProtocolConfig) -> int:
    return drelu(1, config).total


def bytes_per_mult(config: ProtocolConfig) -> int:
    """Bytes per multiplied pixel of a Block ReLU (ignoring the per-patch term of Beaver)."""
    return mult(1, 0, config).total
