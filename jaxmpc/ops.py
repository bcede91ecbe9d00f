"""Public secure operations on fixed-point shared tensors (use inside :func:`jaxmpc.simulate`).

Every function takes :class:`~jaxmpc.core.sharing.Shared` values (and, for linear layers, the
server's weights as plain arrays) and returns a ``Shared``; products are truncated back to the
configured fractional bits. The protocols behind them live in ``jaxmpc/protocols/`` (one module
per family: ``linear``, ``compare``, ``nonlinear``); their costs are listed in
``docs/protocols.md``.

Operand conventions:

* a ``Shared`` operand is secret (shared by client and server);
* for :func:`matmul`, :func:`dense` and :func:`conv2d` a plain array weight (and bias) is the
  **server's private model parameter** (cheaper protocol, see ``linear_protocol``);
* for :func:`add`, :func:`sub` and :func:`mul` a plain array operand is **public**.

Example::

    import jax, numpy as np, jaxmpc
    jax.config.update("jax_enable_x64", True)
    x = np.linspace(-2, 2, 8)
    y, comm = jaxmpc.simulate(jaxmpc.ops.relu, x, key=jax.random.key(0))
    # y == np.maximum(x, 0); comm.total_bytes, comm.rounds
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc.core import ring as _ring
from jaxmpc.core.parties import SERVER
from jaxmpc.protocols import compare as _cmp
from jaxmpc.protocols import linear as _lin
from jaxmpc.protocols import nonlinear as _nl
from jaxmpc.core.ring import RING64
from jaxmpc.core.sharing import Shared, local_map

__all__ = [
    "add", "sub", "neg", "mul", "matmul", "dense", "conv2d", "truncate", "sum", "mean",
    "avg_pool", "global_avg_pool", "drelu", "relu", "select", "maxpool", "block_relu",
    "reshape", "server_tensor",
]


def _check_shared(x, name="x"):
    if not isinstance(x, Shared):
        raise TypeError(f"{name} must be a Shared value (an input of jaxmpc.simulate), got {type(x).__name__}")
    return x


def _encode_any(v, frac_bits: int):
    """Encodes a public or server float tensor: validated if concrete, traced otherwise."""
    try:
        concrete = np.asarray(v)
    except (TypeError, jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return _ring.encode_traced(v, frac_bits)
    if concrete.dtype == object:
        raise TypeError(f"expected a numeric array, got {type(v).__name__}")
    return jnp.asarray(_ring.encode(concrete, frac_bits))


def server_tensor(x: Shared, w, *, frac_bits: int | None = None):
    """Encodes ``w`` as the server's private fixed-point tensor (a :class:`~jaxmpc.core.runtime.Held`)."""
    rt = x.rt
    f = rt.config.frac_bits if frac_bits is None else frac_bits
    return rt.private(SERVER, _encode_any(w, f))


def add(x: Shared, y) -> Shared:
    """``x + y``; ``y`` shared or public (a real array, broadcast to ``x``). Local."""
    _check_shared(x)
    if isinstance(y, Shared):
        return _lin.add_aa(x, y)
    return _lin.add_ap(x, jnp.broadcast_to(_encode_any(y, x.scale), x.shape))


def sub(x: Shared, y) -> Shared:
    """``x - y``; ``y`` shared or public. Local."""
    _check_shared(x)
    if isinstance(y, Shared):
        return _lin.sub_aa(x, y)
    return _lin.add_ap(x, jnp.broadcast_to(RING64.neg(_encode_any(y, x.scale)), x.shape))


def neg(x: Shared) -> Shared:
    return _lin.neg_a(_check_shared(x))


def truncate(x: Shared, bits: int | None = None) -> Shared:
    """Local truncation by ``bits`` (default: back to ``config.frac_bits``); see ``trunc_a``."""
    _check_shared(x)
    f = x.rt.config.frac_bits
    if bits is None:
        bits = x.scale - f
        if bits <= 0:
            return x
    return _lin.trunc_a(x, bits)


def mul(x: Shared, y) -> Shared:
    """Elementwise ``x * y``: Beaver for a shared ``y`` (40 B/element), local for a public ``y``.

    A public ``y`` with integer values is multiplied exactly; other reals are encoded in fixed
    point and the product is truncated.

    Range (not checked, results are silently wrong outside it): the product is computed exactly
    in the 64-bit ring before truncation, so with ``T = frac_bits`` it needs
    ``|x y| < 2^(63 - 2T)`` in reals for two fixed-point operands (about ``5.5e11`` at the
    default ``T = 12``; ``mul(1e6, 1e6)`` wraps and returns garbage), or ``|x k| < 2^(63 - T)``
    for an integer ``y = k``. Inside it, the local truncation of a product ``v`` (ring integer)
    still fails with probability ``|v| / 2^64`` per element (below ``2^-24`` for operands under
    ``2^8``). To test a computation's range, use the plaintext reference with a check:
    ``jaxmpc.protocols.reference.mul(x, y, check_range=True)`` (or ``mul_overflows``) raises or
    flags exactly these products.
    """
    _check_shared(x)
    if isinstance(y, Shared):
        if x.shape != y.shape:
            raise ValueError(f"mul: shapes differ {x.shape} vs {y.shape}")
        with x.rt.scope("mul", kind="mult"):
            return truncate(_lin.mul_aa(x, y))
    arr = np.asarray(y) if not isinstance(y, jax.core.Tracer) else None
    if arr is not None and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)) and np.max(np.abs(arr), initial=0) < 2**62:
        k = jnp.broadcast_to(_ring.from_signed(jnp.asarray(arr.astype(np.int64))), x.shape)
        return _lin.mul_ap(x, k)
    k = jnp.broadcast_to(_encode_any(y, x.rt.config.frac_bits), x.shape)
    return truncate(_lin.mul_ap(x, k, scale=x.rt.config.frac_bits))


def _bilinear(x: Shared, w, op, name: str, out_check=None) -> Shared:
    rt = x.rt
    with rt.scope(name, kind="linear"):
        if isinstance(w, Shared):
            y = _lin.bilinear_aa(x, w, op, name="beaver")
        else:
            y = _lin.bilinear_av(x, server_tensor(x, w), op, scale=rt.config.frac_bits, name="server_weights")
        return truncate(y)


def _add_bias(y: Shared, b) -> Shared:
    if b is None:
        return y
    if isinstance(b, Shared):
        return _lin.add_aa(y, b)
    enc = server_tensor(y, b, frac_bits=y.scale)
    bb = y.rt.local(SERVER, lambda v: jnp.broadcast_to(v, y.shape), enc)
    return _lin.add_av(y, bb)


def matmul(x: Shared, w) -> Shared:
    """``x @ w`` contracting the last axis of ``x`` with the first of ``w`` (2-D ``w``).

    ``w``: shared (Beaver) or the server's private weights (``linear_protocol``).
    """
    _check_shared(x)
    wshape = tuple(w.shape) if isinstance(w, Shared) else tuple(np.shape(w))
    if len(wshape) != 2 or x.ndim < 1 or x.shape[-1] != wshape[0]:
        raise ValueError(f"matmul: cannot contract x{list(x.shape)} with w{list(wshape)}")
    dn = (((x.ndim - 1,), (0,)), ((), ()))
    return _bilinear(x, w, functools.partial(_ring.ring_dot_general, dimension_numbers=dn), "matmul")


def dense(x: Shared, w, b=None) -> Shared:
    """A fully connected layer ``x @ w + b`` (``w``, ``b``: the server's parameters or shared)."""
    y = matmul(x, w)
    return _add_bias(y, b)


def _pair(v, name):
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v}")
    return t


def conv2d(x: Shared, w, b=None, *, stride=1, padding="SAME", dilation=1, groups: int = 1) -> Shared:
    """2-D convolution, NHWC input and HWIO kernel (Flax layout), exact mod 2^64 then truncated.

    Args:
      x: shared ``[N, H, W, Cin]``.
      w: kernel ``[kh, kw, Cin // groups, Cout]``: the server's weights, or shared.
      b: optional bias ``[Cout]`` (server's or shared).
      stride, dilation: int or pair.
      padding: ``"SAME"``, ``"VALID"``, an int, or ``((top, bottom), (left, right))``.
      groups: feature groups (``groups == Cin`` for depthwise).
    """
    _check_shared(x)
    if x.ndim != 4:
        raise ValueError(f"conv2d expects NHWC input, got shape {x.shape}")
    wshape = tuple(w.shape) if isinstance(w, Shared) else tuple(np.shape(w))
    if len(wshape) != 4:
        raise ValueError(f"conv2d expects an HWIO kernel, got shape {wshape}")
    cin = x.shape[-1]
    if groups < 1 or cin % groups or wshape[3] % groups or wshape[2] * groups != cin:
        raise ValueError(f"conv2d: kernel {wshape} with groups={groups} does not fit {cin} input channels")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    elif not isinstance(padding, str):
        padding = tuple(_pair(p, "padding") for p in padding)
    op = functools.partial(
        _ring.ring_conv, window_strides=stride, padding=padding, rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
    )
    y = _bilinear(x, w, op, "conv2d")
    return _add_bias(y, b)


def sum(x: Shared, axis=None, keepdims: bool = False) -> Shared:  # noqa: A001 - mirrors jnp.sum
    """Sum of shares over ``axis``. Local."""
    _check_shared(x)
    return local_map(x, lambda a: jnp.sum(a, axis=axis, keepdims=keepdims, dtype=a.dtype))


def mean(x: Shared, axis=None, keepdims: bool = False) -> Shared:
    """Mean over ``axis``: a local sum then a local division by the element count (see ``div_ap``)."""
    s = sum(x, axis=axis, keepdims=keepdims)
    axes = range(x.ndim) if axis is None else ((axis,) if isinstance(axis, int) else axis)
    count = int(math.prod(x.shape[a] for a in axes))
    return _lin.div_ap(s, count)


def global_avg_pool(x: Shared) -> Shared:
    """``[N, H, W, C] -> [N, C]`` mean over H and W (divides by ``H * W``). Local."""
    if _check_shared(x).ndim != 4:
        raise ValueError(f"global_avg_pool expects NHWC, got {x.shape}")
    return mean(x, axis=(1, 2))


def avg_pool(x: Shared, window, strides=None, padding="VALID", count_include_pad: bool = True) -> Shared:
    """Average pooling over NHWC spatial windows (zero padding). Local."""
    _check_shared(x)
    window, strides = _pair(window, "window"), _pair(strides if strides is not None else window, "strides")
    win = (1,) + window + (1,)
    st = (1,) + strides + (1,)
    pad = padding if isinstance(padding, str) else ((0, 0),) + tuple(_pair(p, "padding") for p in padding) + ((0, 0),)
    s = _nl.avgpool_sum(x, win, st, pad)
    if count_include_pad:
        return _lin.div_ap(s, window[0] * window[1])
    ones = np.ones((1,) + x.shape[1:3] + (1,), np.int64)
    with jax.ensure_compile_time_eval():  # public counts, computed at trace time
        counts = np.asarray(jnp.sum(_nl.window_views(jnp.asarray(ones), win, st, pad, fill="zero"), axis=0))
    return _lin.div_ap(s, counts)


def reshape(x: Shared, shape) -> Shared:
    return local_map(_check_shared(x), lambda a: a.reshape(shape))


def drelu(x: Shared) -> Shared:
    """``[x >= 0]`` as a shared bit (scale 0); reduced-bit per the config. See ``protocols.compare``.

    With ``compare_bits < 64`` the sign is exact only for inputs inside
    ``reference.drelu_window(config)``: about ``+-2^(m - 1 + s - T)`` in reals with
    ``m = compare_bits``, ``s = lsb_drop_bits``, ``T = frac_bits`` (``+-8`` at ``compare_bits=16``,
    ``T = 12``). Beyond it the compared value wraps and the sign is silently wrong (not checked);
    ``reference.drelu(x, config, check_range=True)`` refuses such inputs in tests.
    """
    return _cmp.drelu(_check_shared(x))


def relu(x: Shared) -> Shared:
    """``max(x, 0)``: DReLU plus one bit product (reduced-bit range: see :func:`drelu`)."""
    return _nl.relu(_check_shared(x))


def select(b: Shared, x: Shared, y: Shared) -> Shared:
    """``y`` where the shared bit ``b`` is 1, else ``x``."""
    _check_shared(b, "b"), _check_shared(x), _check_shared(y, "y")
    if x.shape != y.shape or b.shape != x.shape:
        raise ValueError(f"select: shapes differ: b{list(b.shape)}, x{list(x.shape)}, y{list(y.shape)}")
    return _nl.select_share(b, x, y)


def maxpool(x: Shared, window, strides=None, padding="VALID") -> Shared:
    """NHWC max pooling with any window, stride and padding (int/pair/"SAME"/"VALID"/explicit)."""
    _check_shared(x)
    if x.ndim != 4:
        raise ValueError(f"maxpool expects NHWC, got {x.shape}")
    window = _pair(window, "window")
    strides = _pair(strides if strides is not None else window, "strides")
    pad = padding if isinstance(padding, str) else ((0, 0),) + tuple(_pair(p, "padding") for p in padding) + ((0, 0),)
    return _nl.maxpool(x, (1,) + window + (1,), (1,) + strides + (1,), pad)


def block_relu(x: Shared, sizes) -> Shared:
    """The paper's Block ReLU on ``[..., H, W, C]`` with public per-channel patch sizes ``[C, 2]``."""
    return _nl.block_relu(_check_shared(x), np.asarray(sizes))

