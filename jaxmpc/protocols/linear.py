"""Linear protocols: local arithmetic on shares, truncation, and Beaver-style bilinear products.

Naming follows SPU's kernels: ``<op>_<operand kinds>`` with ``a`` = additively shared,
``p`` = public, ``v`` = private to one party (the server's weights). Bilinear maps (elementwise
product, matmul, convolution) share one generic protocol each, parameterised by the exact
ring op (``jaxmpc.core.ring.ring_conv`` etc.), as CrypTen's ``__beaver_protocol`` does.

Costs in bytes per element, ``|X|``, ``|W|``, ``|Y|`` = sizes of the shared operand, the second
operand and the output (see ``docs/protocols.md``):

=====================  ==================  ===========  ==========  =====  =========
protocol               C->S                S->C         CP->C       rounds phase
=====================  ==================  ===========  ==========  =====  =========
bilinear_aa (Beaver)   8(|X|+|W|)          8(|X|+|W|)   8|Y|        1      CP offline
bilinear_av server_w.  8|X|                8|W| (once)  8|Y|        1      S, CP offline
bilinear_av shared_w.  as bilinear_aa (the weights are re-shared each call, as the reference)
local ops              0                   0            0           0
=====================  ==================  ===========  ==========  =====  =========
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmpc.core.parties import C_CP, C_S, CLIENT, CP, S_CP, SERVER
from jaxmpc.core.ring import arith_shift_right, from_signed, to_signed, with_default_method
from jaxmpc.core.runtime import Held
from jaxmpc.core.sharing import Shared, local_map, share

__all__ = [
    "add_aa",
    "sub_aa",
    "neg_a",
    "add_ap",
    "add_av",
    "mul_ap",
    "trunc_a",
    "div_ap",
    "bilinear_aa",
    "bilinear_av",
    "mul_aa",
]


def _same(x: Shared, y: Shared, what: str):
    if x.ring != y.ring:
        raise ValueError(f"{what}: rings differ ({x.ring} vs {y.ring})")
    if x.scale != y.scale:
        raise ValueError(f"{what}: fixed-point scales differ ({x.scale} vs {y.scale}); truncate first")


def add_aa(x: Shared, y: Shared) -> Shared:
    """``x + y``: each party adds its shares. Local."""
    _same(x, y, "add")
    rt = x.rt
    return x.replace(c=rt.local(CLIENT, x.ring.add, x.c, y.c), s=rt.local(SERVER, x.ring.add, x.s, y.s))


def sub_aa(x: Shared, y: Shared) -> Shared:
    """``x - y``. Local."""
    _same(x, y, "sub")
    rt = x.rt
    return x.replace(c=rt.local(CLIENT, x.ring.sub, x.c, y.c), s=rt.local(SERVER, x.ring.sub, x.s, y.s))


def neg_a(x: Shared) -> Shared:
    """``-x``. Local."""
    return local_map(x, x.ring.neg)


def add_ap(x: Shared, p) -> Shared:
    """``x + p`` for a public ring tensor ``p`` (already at ``x``'s scale): the client adds it. Local."""
    rt = x.rt
    p = p if isinstance(p, Held) else rt.public(p)
    return x.replace(c=rt.local(CLIENT, x.ring.add, x.c, p))


def add_av(x: Shared, v: Held, owner=SERVER) -> Shared:
    """``x + v`` for a ring tensor private to ``owner`` (e.g. the server's bias). Local."""
    rt = x.rt
    if owner == SERVER:
        return x.replace(s=rt.local(SERVER, x.ring.add, x.s, v))
    return x.replace(c=rt.local(CLIENT, x.ring.add, x.c, v))


def mul_ap(x: Shared, k, *, scale: int = 0) -> Shared:
    """``x * k`` for a public ring tensor ``k`` (broadcastable) of fixed-point scale ``scale``. Local.

    The result has scale ``x.scale + scale``; truncate afterwards if ``scale > 0``.
    """
    rt = x.rt
    k = k if isinstance(k, Held) else rt.public(k)
    return x.replace(
        c=rt.local(CLIENT, x.ring.mul, x.c, k), s=rt.local(SERVER, x.ring.mul, x.s, k), scale=x.scale + scale
    )


def _ceil_shift(a, bits: int):
    """``ceil(signed(a) / 2^bits) = -floor(-a / 2^bits)``."""
    return from_signed(-lax.shift_right_arithmetic(-to_signed(a), jnp.int64(bits)))


def trunc_a(x: Shared, bits: int) -> Shared:
    """Divides by ``2^bits`` with SecureML's local truncation (Mohassel & Zhang, S&P 2017, §3.1).

    The client floors its share (arithmetic shift) and the server ceils its own, so for a value
    ``v`` (read as a signed 64-bit integer) the result is ``floor(v / 2^bits) + e`` with
    ``e in {0, 1}`` and no systematic bias (the error relative to ``v / 2^bits`` lies in
    ``(-1, 1)`` with mean about 0; flooring both shares would bias every truncation by -1/2 ulp,
    which adds up over a deep network) -- *unless* the two shares wrap around 2^63 when added as
    signed integers, which happens with probability ``|v| / 2^64`` per element (then the result is
    off by about ``2^(64-bits)``, i.e. garbage). With 12 fractional bits a product of two values
    below 2^8 in magnitude is ``|v| < 2^40``: failure probability below 2^-24 per element. Local;
    no communication.
    """
    if bits == 0:
        return x
    if not 0 < bits < 64:
        raise ValueError(f"truncation bits must lie in [0, 64), got {bits}")
    rt = x.rt
    return x.replace(
        c=rt.local(CLIENT, lambda a: arith_shift_right(a, bits), x.c),
        s=rt.local(SERVER, lambda a: _ceil_shift(a, bits), x.s),
        scale=max(0, x.scale - bits),
    )


def div_ap(x: Shared, d) -> Shared:
    """Divides by a public positive integer ``d`` (scalar or broadcastable array). Local.

    The client floor-divides its share, the server ceil-divides its own (read as signed
    integers). The result is ``floor(v / d) + e`` with ``e in {0, 1}``, except with probability
    ``|v| / 2^64`` per element (shares wrapping around 2^63; see :func:`trunc_a`). Used by average
    pooling (divide by the window size) and global average pooling (divide by ``H * W``).
    """
    d_arr = np.asarray(d)
    if not np.issubdtype(d_arr.dtype, np.integer) or np.any(d_arr <= 0):
        raise ValueError("div_ap needs positive integer divisors")
    rt = x.rt
    dj = jnp.asarray(d_arr, jnp.int64)

    def floor(a):
        return from_signed(jnp.floor_divide(to_signed(a), dj))

    def ceil(a):
        return from_signed(-jnp.floor_divide(-to_signed(a), dj))

    return x.replace(c=rt.local(CLIENT, floor, x.c), s=rt.local(SERVER, ceil, x.s))


def _out_struct(op, a_shape, b_shape):
    return jax.eval_shape(op, jax.ShapeDtypeStruct(a_shape, jnp.uint64), jax.ShapeDtypeStruct(b_shape, jnp.uint64))


def bilinear_aa(x: Shared, y: Shared, op, *, name: str = "beaver") -> Shared:
    """``op(x, y)`` for a bilinear ring map ``op`` and two shared operands (Beaver, 1991).

    The CP deals a triple ``(A, B, C = op(A, B))``: ``A_j, B_j`` from its pairwise keys, ``C_s``
    from the server key and ``C_c = C - C_s`` sent to the client (offline). The parties open
    ``E = x - A`` and ``F = y - B`` (one round) and compute
    ``z_c = op(x_c, F) + op(E, y_c) + C_c``, ``z_s = op(x_s, F) + op(E, y_s - F) + C_s``.

    Cost: C->S and S->C ``8(|x| + |y|)`` bytes, CP->C ``8|z|``; 1 online round.
    """
    if x.ring != y.ring:
        raise ValueError("bilinear_aa: operands must share a ring")
    rt, ring = x.rt, x.ring
    with rt.scope(name):
        out = _out_struct(op, x.shape, y.shape)
        a_c = rt.random(C_CP, ring, x.shape, "a")
        a_s = rt.random(S_CP, ring, x.shape, "a")
        b_c = rt.random(C_CP, ring, y.shape, "b")
        b_s = rt.random(S_CP, ring, y.shape, "b")
        c_s = rt.random(S_CP, ring, out.shape, "c")
        c_c = rt.local(CP, lambda ac, as_, bc, bs, cs: op(ac + as_, bc + bs) - cs, a_c, a_s, b_c, b_s, c_s)
        c_c = rt.send(CP, CLIENT, c_c, ring)
        e_c = rt.local(CLIENT, ring.sub, x.c, a_c)
        f_c = rt.local(CLIENT, ring.sub, y.c, b_c)
        e_s = rt.local(SERVER, ring.sub, x.s, a_s)
        f_s = rt.local(SERVER, ring.sub, y.s, b_s)
        e_c, f_c = rt.send(CLIENT, SERVER, e_c, ring), rt.send(CLIENT, SERVER, f_c, ring)
        e_s, f_s = rt.send(SERVER, CLIENT, e_s, ring), rt.send(SERVER, CLIENT, f_s, ring)
        e = rt.local(C_S, ring.add, e_c, e_s)
        f = rt.local(C_S, ring.add, f_c, f_s)
        z_c = rt.local(CLIENT, lambda xc, yc, e, f, cc: op(xc, f) + op(e, yc) + cc, x.c, y.c, e, f, c_c)
        z_s = rt.local(SERVER, lambda xs, ys, e, f, cs: op(xs, f) + op(e, ys - f) + cs, x.s, y.s, e, f, c_s)
    return Shared(z_c, z_s, ring, x.scale + y.scale, rt)


def mul_aa(x: Shared, y: Shared) -> Shared:
    """Elementwise ``x * y`` (Beaver). Cost: 16 B per element each way plus 8 B from the CP."""
    if x.shape != y.shape:
        raise ValueError(f"mul_aa: shapes differ ({x.shape} vs {y.shape})")
    return bilinear_aa(x, y, lambda a, b: a * b, name="mul")


def bilinear_av(x: Shared, w: Held, op, *, scale: int, name: str = "linear") -> Shared:
    """``op(x, w)`` for shared ``x`` and a tensor ``w`` private to the server (its weights).

    ``config.linear_protocol == "server_weights"`` (default): the server's weights are masked once
    per session, ``F = w - B`` (``B`` from the server-CP key; S->C, offline and reusable), and
    the CP deals ``C = op(A, B)`` for a fresh client-CP mask ``A`` (``C_s`` derived, ``C_c`` sent,
    offline). Online the client sends only ``E = x_c - A``; then ``y_c = op(A, F) + C_c`` and
    ``y_s = op(E + x_s, w) + C_s`` (sum: ``op(A, w) + op(x - A, w) = op(x, w)``).
    Cost: C->S ``8|x|`` online, S->C ``8|w|`` offline (kind ``"weights"``: once per session, reused
    by every later inference), CP->C ``8|y|`` offline; 1 round.

    ``"shared_weights"``: the reference implementation's protocol -- the server re-shares ``w``
    (client share from the client-server key) and :func:`bilinear_aa` runs; C->S and S->C
    ``8(|x| + |w|)``, CP->C ``8|y|``.

    Args:
      x: shared input.
      w: the server's private ring tensor (fixed point at ``scale``).
      op: exact bilinear ring map.
      scale: fixed-point scale of ``w``.
    """
    rt, ring = x.rt, x.ring
    if w.times[SERVER] is None:
        raise ValueError("bilinear_av: w must be held by the server")
    if rt.config.linear_protocol == "shared_weights":
        with rt.scope(name):
            ws = share(rt, w, SERVER, ring=ring, scale=scale, name="w_share")
            return bilinear_aa(x, ws, op, name="beaver")
    with rt.scope(name):
        out = _out_struct(op, x.shape, w.shape)
        a = rt.random(C_CP, ring, x.shape, "a")
        b = rt.random(S_CP, ring, w.shape, "b")
        c_s = rt.random(S_CP, ring, out.shape, "c")
        c_c = rt.local(CP, lambda a, b, cs: op(a, b) - cs, a, b, c_s)
        c_c = rt.send(CP, CLIENT, c_c, ring)
        f = rt.local(SERVER, ring.sub, w, b)
        with rt.scope("mask_weights", kind="weights"):  # once per session, reusable across inferences
            f = rt.send(SERVER, CLIENT, f, ring)
        e = rt.local(CLIENT, ring.sub, x.c, a)
        e = rt.send(CLIENT, SERVER, e, ring)
        y_c = rt.local(CLIENT, lambda a, f, cc: op(a, f) + cc, a, f, c_c)
        # The server multiplies by its own weights in the clear: small signed integers, so the
        # cheaper exact "signed_rhs" product applies (exact for any w; see jaxmpc.core.ring).
        server_op = with_default_method(op, "signed_rhs")
        y_s = rt.local(SERVER, lambda e, xs, w, cs: server_op(e + xs, w) + cs, e, x.s, w, c_s)
    return Shared(y_c, y_s, ring, x.scale + scale, rt)
