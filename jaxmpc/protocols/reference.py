"""Plaintext fixed-point reference of every secure op (the oracle of the tests).

Same arithmetic as the protocols, in the clear, on ``uint64`` ring integers (two's complement
fixed point), with *deterministic* truncation (floor). A secure op must equal its reference
exactly where the protocol is exact (comparisons, products before truncation) and within the
documented error where it is not (each local truncation or division: ``-1`` or ``0`` ulp, see
:func:`jaxmpc.protocols.linear.trunc_a`). Like SPU's ``ref2k`` this module is also a template of
the op set.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxmpc.core import blocks
from jaxmpc.core.config import ProtocolConfig
from jaxmpc.protocols.nonlinear import window_views
from jaxmpc.core.ring import arith_shift_right, from_signed, to_signed

__all__ = [
    "drelu",
    "relu",
    "trunc",
    "div",
    "maxpool",
    "avgpool_sum",
    "block_relu",
    "compare_value",
    "drelu_window",
]

U64 = jnp.uint64


def trunc(x, bits: int):
    """``floor(signed(x) / 2^bits)`` (the secure truncation gives this or one more)."""
    return arith_shift_right(jnp.asarray(x, U64), bits)


def div(x, d):
    """``floor(signed(x) / d)`` for public positive integers ``d``."""
    return from_signed(jnp.floor_divide(to_signed(jnp.asarray(x, U64)), jnp.asarray(d, jnp.int64)))


def compare_value(x, config: ProtocolConfig, divisor=None):
    """The signed m-bit number that DReLU compares: ``floor(x / (d 2^s))`` wrapped to m bits."""
    m, s = config.compare_bits, config.lsb_drop_bits
    d = 1 if divisor is None else np.asarray(divisor, np.int64)
    v = div(x, d * (2**s)) if (divisor is not None or s) else jnp.asarray(x, U64)
    if m == 64:
        return to_signed(v)
    v = v & U64(2**m - 1)
    return jnp.where(v >= U64(2 ** (m - 1)), v.astype(jnp.int64) - jnp.int64(2**m), v.astype(jnp.int64))


def drelu(x, config: ProtocolConfig = ProtocolConfig(), divisor=None):
    """Reference DReLU ``[u >= 0]`` of the compared value ``u`` (see :func:`compare_value`), uint64 0/1.

    Equals the secure DReLU exactly in exact mode (all inputs but ``2^63 - 1``); in reduced-bit
    mode for inputs inside :func:`drelu_window` (elsewhere the local truncation's ``+1`` may flip it).
    """
    return (compare_value(x, config, divisor) >= 0).astype(U64)


def drelu_window(config: ProtocolConfig, divisor: int = 1) -> tuple[int, int, int, int]:
    """``(neg_lo, neg_hi, pos_lo, pos_hi)``: fixed-point integers ``x`` whose DReLU sign is exact.

    The secure DReLU returns the true sign ``[x >= 0]`` for ``neg_lo <= x <= neg_hi`` (negative)
    and ``pos_lo <= x <= pos_hi`` (nonnegative). With a division by ``q = divisor * 2^s > 1``
    (local truncation, result ``floor(x / q) + {0, 1}``) a small negative ``-q <= x < 0`` may come
    out nonnegative (harmless for ReLU: less than one quantum ``q``); outside the window the
    compared m-bit value wraps. In exact mode the window is every ring element but ``2^63 - 1``.
    """
    m, s = config.compare_bits, config.lsb_drop_bits
    q = divisor * 2**s
    if q == 1:
        return -(2 ** (m - 1)), -1, 0, 2 ** (m - 1) - 2
    return -(2 ** (m - 1)) * q, -q - 1, 0, (2 ** (m - 1) - 2) * q - 1


def relu(x, config: ProtocolConfig = ProtocolConfig()):
    x = jnp.asarray(x, U64)
    return x * drelu(x, config)


def avgpool_sum(x, window, strides, padding):
    return jnp.sum(window_views(jnp.asarray(x, U64), window, strides, padding, fill="zero"), axis=0, dtype=U64)


def maxpool(x, window, strides, padding):
    """Max over windows of signed fixed-point integers (padding never wins)."""
    v = window_views(to_signed(jnp.asarray(x, U64)), window, strides, padding, fill="clip")
    return from_signed(jnp.max(v, axis=0))


def block_relu(x, sizes, config: ProtocolConfig = ProtocolConfig()):
    """Reference Block ReLU on ``[..., H, W, C]`` ring integers (same statistic as the protocol)."""
    x = jnp.asarray(x, U64)
    *lead, h, w, c = x.shape
    sizes = blocks.validate_block_sizes(sizes, c)
    out = jnp.zeros_like(x)
    for ch in range(c):
        bh, bw = (int(v) for v in sizes[ch])
        xc = x[..., ch]
        if (bh, bw) == blocks.IDENTITY:
            out = out.at[..., ch].set(xc)
            continue
        if (bh, bw) == blocks.ZERO:
            continue
        ph, pw = blocks.patch_grid(h, w, bh, bw)
        pad = jnp.pad(xc, [(0, 0)] * len(lead) + [(0, ph * bh - h), (0, pw * bw - w)])
        sums = jnp.sum(pad.reshape(tuple(lead) + (ph, bh, pw, bw)), axis=(-3, -1), dtype=U64)
        if config.exact_compare:
            bit = drelu(sums, config)
        else:
            bit = drelu(sums, config, divisor=blocks.patch_counts(h, w, bh, bw))
        mask = jnp.repeat(jnp.repeat(bit, bh, axis=-2), bw, axis=-1)[..., :h, :w]
        out = out.at[..., ch].set(xc * mask)
    return out
