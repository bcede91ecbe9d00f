"""Plaintext fixed-point reference of every secure op (the oracle of the tests).

Same arithmetic as the protocols, in the clear, on ``uint64`` ring integers (two's complement
fixed point), with *deterministic* truncation (floor). A secure op must equal its reference
exactly where the protocol is exact (comparisons, products before truncation) and within the
documented error where it is not (each local truncation or division: ``-1`` or ``0`` ulp, see
:func:`jaxmpc.protocols.linear.trunc_a`). Like SPU's ``ref2k`` this module is also a template of
the op set.

Range checks (opt-in, ``check_range=True``): the protocols, like this reference, compute in the
ring and never say when a value left the window in which they are exact -- a product whose
exact value does not fit 64 signed bits wraps (``mul`` of 1e6 by 1e6 at 12 fractional bits), a
reduced-bit DReLU input beyond :func:`drelu_window` has its compared m-bit value wrap -- so
the result is silently wrong. With ``check_range=True`` :func:`mul`, :func:`drelu`,
:func:`relu`, :func:`block_relu` and :func:`maxpool` raise :class:`RangeError` instead (concrete
inputs); :func:`mul_overflows` and :func:`drelu_out_of_window` give the per-element flags (also
under ``jit``), whose ``any()`` is the one overflow bit a test or a benchmark needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc.core import blocks
from jaxmpc.core.config import ProtocolConfig
from jaxmpc.protocols.nonlinear import window_views
from jaxmpc.core.ring import arith_shift_right, from_signed, to_signed

__all__ = [
    "RangeError",
    "MUL_LIMIT",
    "mul",
    "mul_overflows",
    "drelu_out_of_window",
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


class RangeError(ArithmeticError):
    """A value left the window in which the protocols are exact (``check_range=True``)."""


def _raise_if_any(flags, what: str, describe) -> None:
    """Raises :class:`RangeError` naming how many elements are flagged and the first one."""
    if isinstance(flags, jax.core.Tracer):
        raise TypeError(f"{what}: check_range=True needs concrete values; under jit use the flag functions "
                        "(mul_overflows, drelu_out_of_window)")
    flags = np.asarray(flags)
    if flags.any():
        i = int(np.flatnonzero(flags.ravel())[0])
        raise RangeError(f"{what}: {int(flags.sum())} of {flags.size} elements leave the exact window "
                         f"({describe(i)}); the secure result would be wrong there")


def _flat_signed(x, shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(to_signed(jnp.asarray(x, U64))), shape).ravel()


def _magnitude(x):
    """``|signed(x)|`` of ring elements as ``uint64`` (exact, also for ``-2^63``)."""
    x = jnp.asarray(x, U64)
    return jnp.where(x >= U64(2**63), U64(0) - x, x)


#: Largest ``|signed(x) signed(y)|`` of ring integers that does not wrap the 64-bit ring.
MUL_LIMIT = 2**63 - 1


def mul_overflows(x, y, max_product: int = MUL_LIMIT):
    """Per element: whether the exact product ``|signed(x) * signed(y)|`` exceeds ``max_product``.

    By default, whether it does not fit 64 signed bits: there the ring product (secure or
    reference) wraps modulo ``2^64`` and the result is meaningless; for two operands at ``T``
    fractional bits the reals must satisfy ``|x y| < 2^(63 - 2T)`` (about ``5.5e11`` at
    ``T = 12``). Below that, the secure truncation of a product ``v`` still fails with probability
    ``|v| / 2^64`` per element (:func:`jaxmpc.protocols.linear.trunc_a`): a smaller
    ``max_product`` (e.g. ``2**40``, failure below ``2^-24``) flags those too. Exact integer
    arithmetic.
    """
    if not 0 <= int(max_product) <= MUL_LIMIT:
        raise ValueError(f"max_product must lie in [0, 2^63 - 1], got {max_product}")
    ax, ay = _magnitude(x), _magnitude(y)
    ax, ay = jnp.broadcast_arrays(ax, ay)
    return (ax != 0) & (ay > U64(int(max_product)) // jnp.maximum(ax, U64(1)))


def mul(x, y, frac_bits: int = ProtocolConfig().frac_bits, *, check_range: bool = False,
        max_product: int = MUL_LIMIT):
    """Reference fixed-point product: ``floor(signed(x) signed(y) / 2^frac_bits)`` in the ring.

    Like the protocols (Beaver or a local public product, then truncation) the product wraps
    modulo ``2^64`` when it does not fit 64 signed bits (:func:`mul_overflows`); use
    ``frac_bits=0`` for an integer operand (no truncation).

    Raises:
      RangeError: with ``check_range=True``, where ``|signed(x) signed(y)| > max_product``
        (default: where the exact product leaves the ring).
    """
    x, y = jnp.asarray(x, U64), jnp.asarray(y, U64)
    if check_range:
        flags = mul_overflows(x, y, max_product)
        bound = "2^63 - 1" if int(max_product) == MUL_LIMIT else f"{int(max_product)}"

        def describe(i):
            a, b = (int(_flat_signed(v, np.shape(flags))[i]) for v in (x, y))
            return f"|x * y| <= {bound} on ring integers; |{a} * {b}| = {abs(a * b):.3g}"

        _raise_if_any(flags, "mul", describe)
    return trunc(x * y, frac_bits)


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


def drelu(x, config: ProtocolConfig = ProtocolConfig(), divisor=None, *, check_range: bool = False):
    """Reference DReLU ``[u >= 0]`` of the compared value ``u`` (see :func:`compare_value`), uint64 0/1.

    Equals the secure DReLU exactly in exact mode (all inputs but ``2^63 - 1``); in reduced-bit
    mode for inputs inside :func:`drelu_window` (elsewhere the local truncation's ``+1`` may flip it).

    Raises:
      RangeError: with ``check_range=True``, for inputs beyond the window (:func:`drelu_out_of_window`).
    """
    if check_range:
        _check_drelu_inputs(x, config, divisor, "DReLU")
    return (compare_value(x, config, divisor) >= 0).astype(U64)


def drelu_out_of_window(x, config: ProtocolConfig = ProtocolConfig(), divisor=None):
    """Per element: whether the DReLU input ``x`` is beyond :func:`drelu_window` in magnitude.

    ``x < neg_lo`` or ``x > pos_hi``: the compared m-bit value wraps and the sign may be wrong.
    The small negatives ``-q <= x < 0`` that may come out nonnegative with a division by
    ``q > 1`` are *not* flagged: that error is less than one quantum ``q`` (harmless for ReLU).
    """
    m, s = config.compare_bits, config.lsb_drop_bits
    d = np.ones((), np.int64) if divisor is None else np.asarray(divisor, np.int64)
    q = d * (2**s)
    u = to_signed(div(x, q))  # floor(x / q): x >= -2^(m-1) q  <=>  u >= -2^(m-1)
    hi = jnp.where(jnp.asarray(q) > 1, jnp.int64(2 ** (m - 1) - 3), jnp.int64(2 ** (m - 1) - 2))
    return (u < jnp.int64(-(2 ** (m - 1)))) | (u > hi)


def _check_drelu_inputs(x, config, divisor, what):
    flags = drelu_out_of_window(x, config, divisor)

    def describe(i):
        d = int(np.broadcast_to(np.asarray(1 if divisor is None else divisor, np.int64), np.shape(flags)).ravel()[i])
        lo, _, _, hi = drelu_window(config, d)
        return (f"compare_bits={config.compare_bits}, lsb_drop_bits={config.lsb_drop_bits}"
                f"{f', divisor {d}' if divisor is not None else ''}: input {int(_flat_signed(x, np.shape(flags))[i])} "
                f"outside [{lo}, {hi}]")

    _raise_if_any(flags, what, describe)


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


def relu(x, config: ProtocolConfig = ProtocolConfig(), *, check_range: bool = False):
    """``x [x >= 0]`` with the reference DReLU (``check_range``: see :func:`drelu`)."""
    x = jnp.asarray(x, U64)
    return x * drelu(x, config, check_range=check_range)


def avgpool_sum(x, window, strides, padding):
    return jnp.sum(window_views(jnp.asarray(x, U64), window, strides, padding, fill="zero"), axis=0, dtype=U64)


def maxpool(x, window, strides, padding, config: ProtocolConfig | None = None, *, check_range: bool = False):
    """Max over windows of signed fixed-point integers (padding never wins).

    The secure MaxPool takes DReLUs of differences of elements of a window, so with
    ``check_range=True`` it raises :class:`RangeError` where a window's spread ``max - min``
    leaves :func:`drelu_window` of ``config`` (default: exact mode).
    """
    v = window_views(to_signed(jnp.asarray(x, U64)), window, strides, padding, fill="clip")
    if check_range:
        cfg = config or ProtocolConfig()
        spread = from_signed(jnp.max(v, axis=0)) - from_signed(jnp.min(v, axis=0))  # in [0, 2^64): no wrap
        _, _, _, hi = drelu_window(cfg)
        flags = spread > U64(hi)
        _raise_if_any(flags, "MaxPool", lambda i: f"compare_bits={cfg.compare_bits}, lsb_drop_bits="
                                                  f"{cfg.lsb_drop_bits}: a window spread "
                                                  f"{int(np.asarray(spread).ravel()[i])} > {hi}")
    return from_signed(jnp.max(v, axis=0))


def block_relu(x, sizes, config: ProtocolConfig = ProtocolConfig(), *, check_range: bool = False):
    """Reference Block ReLU on ``[..., H, W, C]`` ring integers (same statistic as the protocol).

    ``check_range=True``: raises :class:`RangeError` where a patch sum (the DReLU input, divided
    by the patch size in reduced-bit mode) leaves the DReLU window (see :func:`drelu`).
    """
    x = jnp.asarray(x, U64)
    *lead, h, w, c = x.shape
    sizes = blocks.validate_block_sizes(sizes, c)
    out = jnp.zeros_like(x)
    ident = np.flatnonzero((sizes[:, 0] == 0) & (sizes[:, 1] == 1))
    if len(ident):
        out = out.at[..., ident].set(x[..., ident])
    # channels of one patch size together (one program per size, not per channel)
    for bh, bw in sorted({(int(a), int(b)) for a, b in sizes[blocks.is_patch(sizes)]}):
        chans = np.flatnonzero((sizes[:, 0] == bh) & (sizes[:, 1] == bw))
        xc = x[..., chans]  # [..., H, W, m]
        ph, pw = blocks.patch_grid(h, w, bh, bw)
        pad = jnp.pad(xc, [(0, 0)] * len(lead) + [(0, ph * bh - h), (0, pw * bw - w), (0, 0)])
        sums = jnp.sum(pad.reshape(tuple(lead) + (ph, bh, pw, bw, len(chans))), axis=(-4, -2), dtype=U64)
        if config.exact_compare:
            bit = drelu(sums, config, check_range=check_range)
        else:
            divisor = blocks.patch_counts(h, w, bh, bw)[:, :, None]
            bit = drelu(sums, config, divisor=divisor, check_range=check_range)
        mask = jnp.repeat(jnp.repeat(bit, bh, axis=-3), bw, axis=-2)[..., :h, :w, :]
        out = out.at[..., chans].set(xc * mask)
    return out
