"""Rings, fixed point and exact 64-bit products.

Everything secret in jaxmpc is an element of one of three rings, all stored in unsigned
integer arrays:

* :class:`Z2k` -- Z_{2^k} (``k = 64`` is the main ring; ``k < 64`` is used by reduced-bit DReLU),
* :class:`ZOdd` -- Z_{2^k - 1}, the odd ring of SecureNN's ShareConvert/ComputeMSB,
* :class:`Zp` -- the small prime field Z_67 of PrivateCompare.

Signed fixed point: a real ``x`` is the ring element ``round(x * 2^T) mod 2^64`` (two's
complement), ``T = frac_bits``. :func:`encode` refuses NaN, infinities and values whose
magnitude exceeds ``2^62`` after scaling (one bit of headroom so that adding two encoded values
cannot wrap), instead of wrapping silently.

Exact products mod 2^64 (:func:`ring_dot_general`, :func:`ring_conv`) have two implementations:
native ``uint64`` XLA ops, and a split of each operand into four 16-bit limbs whose products are
computed exactly in float64 (each limb product is < 2^32, so sums of up to 2^19 of them per limb
pair group are exact in the 53-bit mantissa) and recombined with wrapping ``uint64`` shifts. On
XLA-CPU the ``uint64`` dot has no BLAS kernel (a 1024^3 matmul takes ~4 s against ~0.2 s with
limbs), while ``uint64`` convolutions with small contractions and few output channels are fast;
``method="auto"`` picks by backend, op and shape (see ``benchmarks/protocol_ops.py`` and
BENCHMARKS.md).

A third method, ``"signed_rhs"``, is for a right operand that is a *small signed* integer -- the
server's fixed-point weights, which it holds in the clear: the left operand is split into three
limbs of 22 bits and each limb is multiplied by ``signed(rhs)`` in float64, exact while every
output's ``sum |rhs|`` over the contraction is below 2^31 (``2^22 * 2^31 < 2^53``); three float
products instead of ten. The bound is checked in the program; when it fails, ``lax.cond`` runs the
general exact product instead, so the result is exact for every ``rhs``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "Z2k",
    "ZOdd",
    "Zp",
    "RING64",
    "Z67",
    "encode",
    "decode",
    "encode_traced",
    "to_signed",
    "from_signed",
    "arith_shift_right",
    "logical_shift_right",
    "shift_left",
    "ring_dot_general",
    "ring_matmul",
    "ring_conv",
    "with_default_method",
    "ENCODE_LIMIT",
    "lemire",
    "scheduled_after",
]

U64 = jnp.uint64
ENCODE_LIMIT = 2**62  # largest |round(x * 2^T)| accepted by encode
PACKED_SECURITY_BITS = 55  # Zp.from_packed_words: statistical distance <= 2^-55 per group of digits


def _u64(v: int) -> np.uint64:
    return np.uint64(v % 2**64)


def _wire_dtype(bits: int, compact: bool):
    if not compact or bits > 32:
        return np.dtype(np.uint64)
    if bits > 16:
        return np.dtype(np.uint32)
    if bits > 8:
        return np.dtype(np.uint16)
    return np.dtype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Z2k:
    """The ring Z_{2^k}, elements stored in ``uint64`` (high bits zero when ``k < 64``)."""

    bits: int = 64

    def __post_init__(self):
        if not 1 <= self.bits <= 64:
            raise ValueError(f"Z2k bits must lie in [1, 64], got {self.bits}")

    dtype = np.dtype(np.uint64)

    @property
    def modulus(self) -> int:
        return 2**self.bits

    @property
    def mask(self) -> np.uint64:
        return _u64(2**self.bits - 1)

    def reduce(self, x):
        return x if self.bits == 64 else x & self.mask

    def add(self, a, b):
        return self.reduce(a + b)

    def sub(self, a, b):
        return self.reduce(a - b)

    def neg(self, a):
        return self.reduce(jnp.zeros_like(a) - a)

    def mul(self, a, b):
        return self.reduce(a * b)

    def const(self, v: int) -> np.uint64:
        return _u64(v % self.modulus)

    def from_words(self, words):
        """Uniform elements from uniform ``uint64`` words (one word per element)."""
        return self.reduce(words)

    def random(self, key, shape):
        return self.from_words(jax.random.bits(key, shape, jnp.uint64))

    def wire_dtype(self, compact: bool = True):
        return _wire_dtype(self.bits, compact)

    def __str__(self):
        return f"Z_2^{self.bits}"


@dataclasses.dataclass(frozen=True)
class ZOdd:
    """The ring Z_{2^k - 1} (SecureNN's Z_{L-1}), elements in ``[0, 2^k - 2]`` stored in ``uint64``."""

    bits: int = 64

    def __post_init__(self):
        if not 2 <= self.bits <= 64:
            raise ValueError(f"ZOdd bits must lie in [2, 64], got {self.bits}")

    dtype = np.dtype(np.uint64)

    @property
    def modulus(self) -> int:
        return 2**self.bits - 1

    def add(self, a, b):
        m = _u64(self.modulus)
        if self.bits == 64:
            s = a + b  # wraps mod 2^64; a wrap means the true sum is s + 2^64 = s + 1 (mod 2^64 - 1)
            s = s + (s < a).astype(U64)
        else:
            s = a + b
        return jnp.where(s >= m, s - m, s)

    def neg(self, a):
        m = _u64(self.modulus)
        return jnp.where(a == 0, a, m - a)

    def sub(self, a, b):
        return self.add(a, self.neg(b))

    def const(self, v: int) -> np.uint64:
        return _u64(v % self.modulus)

    def from_words(self, x):
        """Elements from uniform ``uint64`` words: statistical distance <= 2^k / 2^64 for k < 64;
        for k = 64 the single value 2^64 - 1 is folded onto 0 (distance 2^-64)."""
        return x % _u64(self.modulus) if self.bits < 64 else jnp.where(x == _u64(self.modulus), _u64(0), x)

    def random(self, key, shape):
        return self.from_words(jax.random.bits(key, shape, jnp.uint64))

    def wire_dtype(self, compact: bool = True):
        return _wire_dtype(self.bits, compact)

    def __str__(self):
        return f"Z_(2^{self.bits}-1)"


@dataclasses.dataclass(frozen=True)
class Zp:
    """A small prime field Z_p (PrivateCompare uses p = 67), elements stored in ``uint16``."""

    p: int = 67

    def __post_init__(self):
        if not (2 < self.p < 256 and all(self.p % d for d in range(2, int(self.p**0.5) + 1))):
            raise ValueError(f"Zp needs a prime 2 < p < 256, got {self.p}")

    dtype = np.dtype(np.uint16)

    @property
    def modulus(self) -> int:
        return self.p

    def _c(self, v):
        return np.uint16(v)

    def add(self, a, b):
        return (a + b) % self._c(self.p)

    def sub(self, a, b):
        return (a + (self._c(self.p) - b)) % self._c(self.p)

    def neg(self, a):
        return (self._c(self.p) - a) % self._c(self.p)

    def mul(self, a, b):
        return (a * b) % self._c(self.p)

    def const(self, v: int) -> np.uint16:
        return np.uint16(v % self.p)

    def from_words(self, words):
        """Uniform on Z_p from uniform ``uint64`` words (bias <= p / 2^64)."""
        return lemire(words, self.p).astype(jnp.uint16)

    def nonzero_from_words(self, words):
        """Uniform on Z_p^* = {1, ..., p-1} from uniform ``uint64`` words."""
        return lemire(words, self.p - 1).astype(jnp.uint16) + np.uint16(1)

    def digits_per_pair(self, nonzero: bool = False) -> int:
        """Elements of Z_p (Z_p^*) that :meth:`from_packed_words` reads from each pair of ``uint64``
        words: the largest ``k`` with ``q^k <= 2^(128 - PACKED_SECURITY_BITS)`` (12 for p = 67)."""
        q = self.p - 1 if nonzero else self.p
        k = 0
        while q ** (k + 1) <= 2 ** (128 - PACKED_SECURITY_BITS):
            k += 1
        return k

    def packed_words(self, n: int, *, nonzero: bool = False) -> int:
        """``uint64`` words that :meth:`from_packed_words` needs for ``n`` elements."""
        return 2 * -(-int(n) // self.digits_per_pair(nonzero))

    def from_packed_words(self, words, n: int, *, nonzero: bool = False):
        """``n`` elements of Z_p (or Z_p^* with ``nonzero``), ``k`` from each pair of uniform words.

        A pair ``(h, l)`` is a uniform 128-bit ``W = h 2^64 + l``; its elements are the first ``k``
        base-``q`` digits of ``W / 2^128`` (``q = p`` or ``p - 1``), i.e. of
        ``floor(W q^k / 2^128)``, which is uniform on ``[0, q^k)`` up to statistical distance
        ``q^k / 2^128 <= 2^-55`` (:data:`PACKED_SECURITY_BITS`; ``2^-55.2`` for p = 67, k = 12).
        Each digit is the carry out of multiplying the two-limb fraction by ``q``. A third of the
        words of two digits per word, at a smaller distance (that was ``2^-51.9``); the Z_67
        vectors of PrivateCompare are most of a DReLU's randomness.
        """
        q = self.p - 1 if nonzero else self.p
        k = self.digits_per_pair(nonzero)
        groups = -(-int(n) // k)
        words = jnp.asarray(words, U64).reshape(2, groups)
        qq = U64(q)

        def step(limbs, _):
            hi, lo = limbs
            hi_lo = hi * qq
            new_hi = hi_lo + _mul_high_small(lo, q)
            digit = _mul_high_small(hi, q) + (new_hi < hi_lo).astype(U64)
            return (new_hi, lo * qq), digit

        # (unroll=True made a DReLU of 10^6 elements 7-15% faster alone, but a secure ResNet18
        # compile in 116 s instead of 55 s, with no gain in its run time: 2026-12-08)
        _, digits = lax.scan(step, (words[0], words[1]), None, length=k)
        out = digits.reshape(k * groups)[: int(n)].astype(jnp.uint16)
        return out + np.uint16(1) if nonzero else out

    def random(self, key, shape):
        return self.from_words(jax.random.bits(key, shape, jnp.uint64))

    def random_nonzero(self, key, shape):
        return self.nonzero_from_words(jax.random.bits(key, shape, jnp.uint64))

    def wire_dtype(self, compact: bool = True):
        return np.dtype(np.uint8)

    def __str__(self):
        return f"Z_{self.p}"


def _mul_high_small(x, q: int):
    """``floor(x q / 2^64)`` for ``uint64`` ``x`` and ``0 < q < 2^32``, exactly (32-bit halves)."""
    lo, hi = x & U64(0xFFFFFFFF), x >> U64(32)
    return (hi * U64(q) + ((lo * U64(q)) >> U64(32))) >> U64(32)


def lemire(words, n: int):
    """``floor(words * n / 2^64)``: uniform on ``[0, n)`` from uniform ``uint64`` words (bias <= n / 2^64).

    Lemire's multiply-high reduction, with the 128-bit product split into 32-bit halves
    (``0 < n < 2^32``).
    """
    if not 0 < int(n) < 2**32:
        raise ValueError(f"lemire needs 0 < n < 2^32, got {n}")
    return _mul_high_small(jnp.asarray(words, U64), int(n))


RING64 = Z2k(64)
Z67 = Zp(67)

Ring = Z2k | ZOdd | Zp


# ----------------------------------------------------------------------------------------------
# Signed views and shifts


def to_signed(u):
    """Two's-complement view of a ``uint64`` array as ``int64`` (no arithmetic, same bits)."""
    return lax.bitcast_convert_type(jnp.asarray(u, U64), jnp.int64)


def from_signed(s):
    """``int64`` -> ``uint64`` with the same bits (i.e. ``s mod 2^64``)."""
    return lax.bitcast_convert_type(jnp.asarray(s, jnp.int64), U64)


def arith_shift_right(u, s: int):
    """Arithmetic right shift of ring elements read as signed: ``floor(signed(u) / 2^s) mod 2^64``."""
    if s == 0:
        return u
    return from_signed(lax.shift_right_arithmetic(to_signed(u), jnp.int64(s)))


def logical_shift_right(u, s: int):
    """Logical right shift: ``floor(u / 2^s)`` for ``u`` read as unsigned."""
    if s == 0:
        return u
    return lax.shift_right_logical(jnp.asarray(u, U64), U64(s))


def shift_left(u, s: int):
    """``u * 2^s mod 2^64``."""
    if s == 0:
        return u
    return lax.shift_left(jnp.asarray(u, U64), U64(s))


# ----------------------------------------------------------------------------------------------
# Fixed point


def encode(x, frac_bits: int) -> np.ndarray:
    """Encodes reals as signed fixed point in Z_2^64, validating first (numpy, never traced).

    Args:
      x: array-like of real numbers.
      frac_bits: fractional bits T.

    Returns:
      ``uint64`` numpy array ``round(x * 2^T) mod 2^64``.

    Raises:
      TypeError: for complex or non-numeric input.
      ValueError: for NaN, +-inf, or ``|round(x * 2^T)| > 2^62`` (the message gives the offending
        value and the representable range).
    """
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise TypeError(f"encode expects real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        bad = a[~np.isfinite(a)].ravel()[0]
        raise ValueError(f"cannot encode non-finite value {bad} in fixed point")
    scaled = np.rint(a * 2.0**frac_bits)
    limit = float(ENCODE_LIMIT)
    if scaled.size and np.max(np.abs(scaled)) > limit:
        worst = a.ravel()[int(np.argmax(np.abs(scaled).ravel()))]
        raise ValueError(
            f"value {worst!r} is outside the representable fixed-point range "
            f"[-{limit / 2**frac_bits:g}, {limit / 2**frac_bits:g}] at frac_bits={frac_bits}"
        )
    return scaled.astype(np.int64).view(np.uint64)


def encode_traced(x, frac_bits: int):
    """Like :func:`encode` but traceable and without validation (validate before jit)."""
    x = jnp.asarray(x)
    scaled = jnp.round(x.astype(jnp.float64) * (2.0**frac_bits))
    return from_signed(scaled.astype(jnp.int64))


def decode(u, frac_bits: int):
    """Signed fixed point -> float64: ``signed(u) / 2^T``. Works on numpy and jax arrays."""
    if isinstance(u, np.ndarray):
        return u.astype(np.uint64).view(np.int64).astype(np.float64) / 2.0**frac_bits
    return to_signed(u).astype(jnp.float64) / (2.0**frac_bits)


# ----------------------------------------------------------------------------------------------
# Exact products mod 2^64

_LIMB_BITS = 16
_NUM_LIMBS = 4
_F64_EXACT = 2**53


def _opaque_zero(dep):
    """A ``uint64`` scalar 0 computed from one element of ``dep`` in a way XLA does not fold
    (``popcount(e) >> 7`` is 0 for any 64-bit ``e``, which XLA's simplifier does not know)."""
    e = jnp.ravel(dep)[:1]
    if e.dtype == jnp.bool_:
        e = e.astype(jnp.uint8)
    if not jnp.issubdtype(e.dtype, jnp.integer):
        e = lax.bitcast_convert_type(e.astype(jnp.float64), U64)
    return (lax.population_count(e.astype(U64)) >> U64(7))[0]


def scheduled_after(values, *deps):
    """``values`` unchanged, with a data dependency on every array in ``deps``.

    A scheduling edge XLA keeps: ``lax.optimization_barrier`` is removed by XLA:CPU before
    scheduling (0 barriers left in the optimised HLO of a secure ResNet18, 621 before), so an
    operation whose inputs are available early (the server's weights, a random mask, a key) may be
    run, and its output kept alive, long before it is needed. Adding a zero that XLA cannot prove
    is zero makes it wait for ``deps``. Applies to integer arrays (others pass unchanged); costs one
    scalar per dependency.
    """
    deps = [d for d in deps if isinstance(d, jax.Array) and d.size]
    if not deps:
        return values
    zero = _opaque_zero(deps[0])
    for d in deps[1:]:
        zero = zero + _opaque_zero(d)

    def tie(v):
        if isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jnp.integer):
            return v + zero.astype(v.dtype)
        return v

    return jax.tree_util.tree_map(tie, values)


def _limbs(u) -> list:
    u = jnp.asarray(u, U64)
    mask = U64(2**_LIMB_BITS - 1)
    return [((u >> U64(_LIMB_BITS * i)) & mask).astype(jnp.float64) for i in range(_NUM_LIMBS)]


def _limb_product(bilinear, a, b, contraction: int):
    """sum_{i+j<4} bilinear(a_i, b_j) << 16(i+j)  (mod 2^64), exact for contraction < 2^19."""
    if contraction * (_NUM_LIMBS) * (2**_LIMB_BITS - 1) ** 2 >= _F64_EXACT:
        raise ValueError(f"contraction size {contraction} too large for exact float64 limb products")
    # The limbs are 4x the operands in float64. Untied, XLA splits an operand that is available early
    # (the server's weights, a random mask) long before the product runs, and did: at ResNet18 batch 8
    # the limbs of 36 kernels of 3x3x512x512 (648 MiB) and of the 256-channel ones were alive at once.
    # Tied to each other, both operands are split only once both exist.
    a, b = scheduled_after(a, b), scheduled_after(b, a)
    al, bl = _limbs(a), _limbs(b)
    out = None
    for k in range(_NUM_LIMBS):
        acc = None
        for i in range(k + 1):
            p = bilinear(al[i], bl[k - i])
            acc = p if acc is None else acc + p
        term = acc.astype(jnp.uint64) << U64(_LIMB_BITS * k)
        out = term if out is None else out + term
    return out


_SMALL_LIMB_BITS = 22  # "signed_rhs": three limbs of the left operand (22 + 22 + 20 bits)
_SMALL_NUM_LIMBS = 3
_SMALL_RHS_L1 = 2**31  # exact while sum |rhs| per output < 2^31: (2^22 - 1) * 2^31 < 2^53


def _default_method(kind: str, contraction: int, out_per_group: int = 0) -> str:
    backend = jax.default_backend()
    if contraction * _NUM_LIMBS * (2**_LIMB_BITS - 1) ** 2 >= _F64_EXACT:
        return "native"
    if backend != "cpu":
        return "limbs"  # integer conv/dot are not guaranteed (or fast) on accelerators
    if kind == "dot":
        return "native" if contraction <= 8 else "limbs"
    # XLA-CPU uint64 conv is competitive only for small contractions with few output channels per
    # group; limbs win 2-12x elsewhere (ResNet18/50 and MobileNetV2 shapes, benchmarks/protocol_ops.py).
    # "native for K <= 1024" (the earlier rule) made the secure ResNet18 5-10% faster but ResNet50-224
    # 45% slower (14.2 -> 20.6 s at the 6% spec; its fixed-point reference 3.95 -> 8.23 s): 2026-12-08.
    small = contraction <= 32 or (out_per_group <= 64 and contraction <= 576) or (
        contraction <= 64 and out_per_group <= 128)
    return "native" if small else "limbs"


def with_default_method(op, method: str):
    """``op`` computing with ``method`` if it is a ``functools.partial`` of :func:`ring_conv` or
    :func:`ring_dot_general` that leaves the method to ``"auto"``; any other ``op`` unchanged."""
    if (isinstance(op, functools.partial) and op.func in (ring_conv, ring_dot_general)
            and op.keywords.get("method", "auto") == "auto"):
        return functools.partial(op, method=method)
    return op


def _signed_rhs_product(bilinear, a, b, rhs_contracting, *, lhs_batch=None, out_batch=None, fallback):
    """``bilinear(a, b) mod 2^64`` via 22-bit limbs of ``a`` times ``signed(b)`` in float64.

    Exact when ``sum |signed(b)|`` over ``rhs_contracting`` is below 2^31 for every output;
    otherwise ``fallback(a, b)`` (an exact general product) runs, chosen by ``lax.cond``. With
    ``lhs_batch``/``out_batch`` (convolutions) the limbs are stacked along the batch axis, one
    product for all three.
    """
    # Tied like _limb_product: the float copy of b (the weights, available early) is made only
    # when a exists, so the copies of every layer's weights are not all alive at once.
    a, b = scheduled_after(a, b), scheduled_after(b, a)
    bs = to_signed(b).astype(jnp.float64)
    l1 = jnp.sum(jnp.abs(bs), axis=tuple(rhs_contracting))
    ok = jnp.max(l1, initial=0.0) < float(_SMALL_RHS_L1)

    def fast(a, b):
        del b
        mask = U64(2**_SMALL_LIMB_BITS - 1)
        limbs = [((a >> U64(_SMALL_LIMB_BITS * i)) & mask).astype(jnp.float64) for i in range(_SMALL_NUM_LIMBS)]
        if lhs_batch is None:
            parts = [bilinear(limb, bs) for limb in limbs]
        else:
            n = a.shape[lhs_batch]
            stacked = bilinear(jnp.concatenate(limbs, axis=lhs_batch), bs)
            parts = [lax.slice_in_dim(stacked, i * n, (i + 1) * n, axis=out_batch) for i in range(_SMALL_NUM_LIMBS)]
        out = None
        for i, p in enumerate(parts):
            term = from_signed(p.astype(jnp.int64)) << U64(_SMALL_LIMB_BITS * i)
            out = term if out is None else out + term
        return out

    return lax.cond(ok, fast, fallback, a, b)


def ring_dot_general(a, b, dimension_numbers, *, method: str = "auto"):
    """Exact ``lax.dot_general`` over Z_2^64 (``uint64`` in, ``uint64`` out)."""
    a = jnp.asarray(a, U64)
    b = jnp.asarray(b, U64)
    (contract_a, contract_b), _ = dimension_numbers
    contraction = int(math.prod(a.shape[d] for d in contract_a))
    if method == "auto":
        method = _default_method("dot", contraction)
    if method == "native":
        return lax.dot_general(a, b, dimension_numbers, preferred_element_type=U64)
    f = lambda x, y: lax.dot_general(x, y, dimension_numbers, precision=lax.Precision.HIGHEST)
    if method == "signed_rhs":
        # The fallback runs only for weights beyond the bound.
        fallback = functools.partial(ring_dot_general, dimension_numbers=dimension_numbers,
                                     method=_default_method("dot", contraction))
        return _signed_rhs_product(f, a, b, contract_b, fallback=fallback)
    if method != "limbs":
        raise ValueError(f"unknown method {method!r}; expected 'auto', 'native', 'limbs' or 'signed_rhs'")
    return _limb_product(f, a, b, contraction)


def ring_matmul(a, b, *, method: str = "auto"):
    """Exact ``a @ b`` over Z_2^64 for 2-D (or batched, contracting the last/first-after-batch) arrays."""
    a = jnp.asarray(a, U64)
    b = jnp.asarray(b, U64)
    if a.ndim < 1 or b.ndim < 1:
        raise ValueError("ring_matmul needs arrays with at least one dimension")
    dn = (((a.ndim - 1,), (0,)), ((), ())) if b.ndim <= 2 else None
    if dn is None:
        raise ValueError("ring_matmul supports b of rank <= 2; use ring_dot_general for batched products")
    return ring_dot_general(a, b, dn, method=method)


def ring_conv(
    lhs,
    rhs,
    *,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count: int = 1,
    method: str = "auto",
):
    """Exact ``lax.conv_general_dilated`` over Z_2^64 (zero padding)."""
    lhs = jnp.asarray(lhs, U64)
    rhs = jnp.asarray(rhs, U64)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    rhs_spec = dn.rhs_spec  # (out feature, in feature, spatial...)
    contraction = int(rhs.shape[rhs_spec[1]] * math.prod(rhs.shape[d] for d in rhs_spec[2:]))
    out_per_group = int(rhs.shape[rhs_spec[0]]) // int(feature_group_count)
    if method == "auto":
        method = _default_method("conv", contraction, out_per_group)

    def conv(x, y, **extra):
        return lax.conv_general_dilated(
            x,
            y,
            window_strides=tuple(window_strides),
            padding=padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dn,
            feature_group_count=feature_group_count,
            **extra,
        )

    if method == "native":
        return conv(lhs, rhs, preferred_element_type=U64)
    fconv = lambda x, y: conv(x, y, precision=lax.Precision.HIGHEST)
    if method == "signed_rhs":
        # The fallback runs only for weights beyond the bound; native compiles fastest on CPU.
        general = "native" if jax.default_backend() == "cpu" else _default_method("conv", contraction, out_per_group)
        fallback = functools.partial(ring_conv, window_strides=window_strides, padding=padding,
                                     lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                                     dimension_numbers=dimension_numbers,
                                     feature_group_count=feature_group_count, method=general)
        return _signed_rhs_product(fconv, lhs, rhs, rhs_spec[1:], lhs_batch=dn.lhs_spec[0],
                                   out_batch=dn.out_spec[0], fallback=fallback)
    if method != "limbs":
        raise ValueError(f"unknown method {method!r}; expected 'auto', 'native', 'limbs' or 'signed_rhs'")
    return _limb_product(fconv, lhs, rhs, contraction)
