"""SecureNN comparison protocols: PrivateCompare, ShareConvert, ComputeMSB and DReLU.

References: S. Wagh, D. Gupta, N. Chandran, "SecureNN: 3-Party Secure Computation for Neural
Network Training", PETS 2019 -- Algorithm 1 (PrivateCompare), Algorithm 2 (ShareConvert),
Algorithm 4 (ComputeMSB), Algorithm 5 (DReLU); and the paper's reduced-bit DReLU
(Gorski & Avidan, arXiv 2304.10442, §4; ``paper_reference.md`` §2).

All comparisons run over a ring Z_L, ``L = 2^m`` with ``m = config.compare_bits``: DReLU of a
64-bit shared value ``x`` evaluates ``u = floor(x / 2^s) mod 2^m`` (``s = config.lsb_drop_bits``;
the floor is local truncation) and returns ``[u >= 0]`` with ``u`` read as a signed m-bit number.
Unlike the reference implementation, the comparison itself is exact in Z_{2^m} (no ignored low
bits, unsigned wrap bits, per-element permutations, the ``r = 0`` and ``r = 2^m - 1`` corner
cases of PrivateCompare handled).

**Exactness.** MSB is computed through ShareConvert to the odd ring Z_{L-1} and the identity
``MSB(a) = LSB(2a mod (L-1))``, which cannot tell ``L - 1`` from 0. DReLU therefore works on
``v = u + 2^(m-1) mod L`` (``MSB(v) = [u >= 0]``), whose one unrepresentable value is
``u = 2^(m-1) - 1``, the largest positive m-bit number: DReLU is exact for every
``u in [-2^(m-1), 2^(m-1) - 2]``. For ``m = 64`` that is every ring element except ``2^63 - 1``
(``jaxmpc.core.ring.encode`` never produces it). With ``s > 0`` the local truncation gives
``floor(x / 2^s) + {0, 1}``, so the sign of ``x`` (fixed-point integer) is exact for
``-2^(m-1+s) <= x < -2^s`` and for ``0 <= x <= (2^(m-1) - 2) 2^s - 1``; a small negative
``-2^s <= x < 0`` may come out nonnegative (less than one quantum); outside the window it wraps
(``jaxmpc.protocols.reference.drelu_window``).

**Costs** (bytes per element; ``w`` = wire bytes of a Z_L or Z_{L-1} element: 8, or
``ceil(m/8)`` rounded up to a power of two with ``compact_wire``; Z_67 elements are 1 byte):

==========================  =====================  =====================  ==========================
protocol                    client sends           server sends           CP sends
==========================  =====================  =====================  ==========================
PrivateCompare              m                      m                      0
ShareConvert                w + m                  w + m                  m + 2w
MSB ``jaxmpc``              w + m                  w + m                  m + 8
MSB ``securenn``            w + m + 16             w + m + 16             m + 3*8 + w
DReLU ``jaxmpc``            2w + 2m                2w + 2m                2m + 2w + 8
DReLU ``securenn``          2w + 2m + 16           2w + 2m + 16           2m + 3w + 24
==========================  =====================  =====================  ==========================

At ``m = 64`` (``w = 8``): DReLU ``securenn`` = 112 + 6m = 496 bytes (the reference's figure),
``jaxmpc`` = 440 bytes; at ``m = 16`` with compact wire: 116 bytes (reference: 208).
Rounds: DReLU ``jaxmpc`` 7, ``securenn`` 8 (ShareConvert 4; MSB 3 or 4).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax
import numpy as np

from jaxmpc.core.parties import C_CP, C_S, CLIENT, CP, S_CP, SERVER, owners
from jaxmpc.core.ring import RING64, Z67, Z2k, ZOdd, lemire
from jaxmpc.core.runtime import Held, Runtime, reshape_held
from jaxmpc.core.sharing import Shared

__all__ = ["private_compare", "share_convert", "msb", "drelu", "drelu_ring", "DealerBit", "compare_input"]

U64 = jnp.uint64
U16 = jnp.uint16


@dataclasses.dataclass(frozen=True, eq=False)
class DealerBit(Shared):
    """A shared bit ``b = z XOR w`` in Z_2^64 whose mask ``z`` the CP knows in the clear and whose
    other part ``w`` the client and server both know (output of the ``jaxmpc`` MSB).

    Its arithmetic shares ``c``/``s`` are ordinary (``b_c = z_c (1-2w)``, ``b_s = z_s (1-2w) + w``).
    The extra structure lets a bit-times-value product cost 24 bytes instead of Beaver's 40
    (:func:`jaxmpc.protocols.nonlinear.mul_bit`). Neither ``z`` nor ``w`` alone says anything
    about ``b``: ``z = beta' XOR x_0`` is uniform to the CP and ``w = beta XOR r_0`` is uniform to
    the client and server.
    """

    z: Held | None = None  # known to the CP
    w: Held | None = None  # known to the client and the server


# ----------------------------------------------------------------------------------------------
# helpers


def _bits_zp(x, m: int):
    """Bits of ``x`` (LSB first) as Z_67 elements, shape ``x.shape + (m,)``."""
    shifts = jnp.arange(m, dtype=U64)
    return ((x[..., None] >> shifts) & U64(1)).astype(U16)


def _bit(x):
    return x & U64(1)


def _random_permutation(rt: Runtime, kind: str, shape: tuple, m: int) -> Held:
    """A fresh permutation of ``m`` positions per element, known to the client and the server:
    ``cyclic``, a rotation amount in ``[0, m)`` per element (``uint32``, shape ``shape``);
    ``uniform``, the indices of a uniform permutation (``int32``, shape ``shape + (m,)``)."""
    n = int(np.prod(shape, dtype=np.int64))
    if kind == "cyclic":
        return rt.random_with(C_S, n, lambda w: lemire(w, m).astype(jnp.uint32).reshape(shape), "perm")
    return rt.random_with(C_S, n * m, lambda w: jnp.argsort(w.reshape(shape + (m,)), axis=-1).astype(jnp.int32), "perm")


def rotate_last_axis(d, k, m: int):
    """``out[..., i] = d[..., (i + k) mod m]`` for a per-element rotation ``k`` in ``[0, m)``.

    Built from ``ceil(log2 m)`` static rolls, each applied where its bit of ``k`` is set
    (elementwise selects that XLA fuses), instead of a gather of ``m`` indices per element.
    """
    k = jnp.asarray(k, jnp.uint32)
    out = d
    for b in range(max(int(m - 1).bit_length(), 0)):
        step = (1 << b) % m
        if step == 0:
            continue
        rolled = jnp.roll(out, -step, axis=-1)
        out = jnp.where(((k >> np.uint32(b)) & np.uint32(1)).astype(bool)[..., None], rolled, out)
    return out


_ROLLS_UP_TO = 16  # measured (benchmarks/drelu_throughput.py): rolls 1.8x faster at m = 16, a gather at 64


def _apply_permutation(d, perm, kind: str, m: int):
    if kind == "cyclic":
        if m <= _ROLLS_UP_TO:
            return rotate_last_axis(d, perm, m)
        return jnp.take_along_axis(d, ((jnp.arange(m, dtype=jnp.uint32) + perm[..., None]) % np.uint32(m))
                                   .astype(jnp.int32), axis=-1)
    return jnp.take_along_axis(d, perm, axis=-1)


# ----------------------------------------------------------------------------------------------
# PrivateCompare (SecureNN Algorithm 1)


def private_compare(rt: Runtime, xb_c: Held, xb_s: Held, r: Held, beta: Held, m: int,
                    gt_always: Held | None = None, r_can_be_max: bool = True) -> Held:
    """The CP learns ``beta XOR [x > r]`` for a bit-shared ``x`` and a public (to C, S) ``r``.

    Args:
      rt: runtime.
      xb_c, xb_s: client/server shares over Z_67 of the m bits of ``x`` (LSB first), shape
        ``shape + (m,)``.
      r: ``uint64`` in ``[0, 2^m - 1]`` known to the client and the server.
      beta: uniformly random bit known to the client and the server (masks the result).
      m: number of bits.
      gt_always: optional boolean known to C and S; where true, ``r`` stands for ``-1``
        (``x > r`` always holds).
      r_can_be_max: whether ``r = 2^m - 1`` may occur (then forced vectors need fresh common
        randomness); ComputeMSB passes ``False`` (its ``r`` lies in Z_{2^m - 1}).

    Returns:
      ``beta XOR [x > r]`` as ``uint64`` 0/1, held by the CP.

    For ``beta = 0`` party j computes ``c_i = r_i - x_i + 1 + sum_{k>i} (x_k XOR r_k)`` (its share);
    ``c_i = 0`` exactly at the first bit (from the top) where ``x`` has a 1 and ``r`` a 0, i.e. iff
    ``x > r``. For ``beta = 1`` it compares against ``t = r + 1`` with the roles of x and t swapped,
    so a zero exists iff ``x <= r``. ``r = 2^m - 1`` with ``beta = 1`` and ``gt_always`` use a
    forced vector (exactly one zero, or none) built from fresh common randomness. Each ``c_i`` is
    multiplied by a fresh ``s_i`` in Z_67^*, masked additively by a common ``u_i`` (``+u`` by the
    client, ``-u`` by the server, so the CP sees one uniform vector and the sum), and the m positions are shuffled by a fresh per-element
    permutation (``config.permutation``: uniform, or a uniform rotation, which suffices: the
    entries other than the zero are i.i.d. uniform on Z_67^*, so only the zero's position needs to
    be uniform). The CP outputs 1 iff some ``d_i = c^c_i + c^s_i`` is 0.

    Cost: client and server send m bytes each to the CP; 1 round.
    """
    zp = Z67
    shape = tuple(r.shape)
    p = np.uint16(zp.p)
    with rt.scope("private_compare"):
        nm = int(np.prod(shape, dtype=np.int64)) * m
        s = rt.random_with(C_S, zp.packed_words(nm, nonzero=True),
                           lambda w: zp.from_packed_words(w, nm, nonzero=True).reshape(shape + (m,)), "s")
        # additive mask, common to C and S: the client sends pi(s c^c + u), the server pi(s c^s - u),
        # so the CP's view is one uniform vector and the masked sum pi(s c) (simulatable from the
        # output bit alone); without it the CP could divide the two vectors, cancel s and recover r
        u = rt.random(C_S, zp, shape + (m,), "u")
        perm = _random_permutation(rt, rt.config.permutation, shape, m)

        def c_vector(party_j: int):
            def f(xb, r, beta, s, u, perm, *gt):
                beta = beta.astype(bool)
                mask = U64(2**m - 1) if m < 64 else U64(2**64 - 1)
                is_max = r == mask
                q = jnp.where(beta, (r + U64(1)) & mask, r)  # compare against t = r + 1 when beta = 1
                qb = _bits_zp(q, m)
                qbool = qb.astype(bool)
                # Lazy reduction mod p: every value below stays in uint16 and >= 0, and is reduced
                # once (c) before the product with s (m <= 64: sums < 64 (p + 1) + 2p + 1 < 2^16).
                # w_k = x_k XOR q_k = x_k (1 - 2 q_k) + j q_k, in [0, p + 1]
                qj = qb if party_j else jnp.zeros_like(qb)
                w = jnp.where(qbool, p - xb, xb) + qj
                # sum_{k > i} w_k (suffix sums over more significant bits; lax.cumsum in reverse,
                # not flip-cumsum-flip: half the suffix-sum time on XLA:CPU, BENCHMARKS.md 2026-12-08)
                above = lax.cumsum(w, axis=w.ndim - 1, reverse=True) - w
                # (1 - 2 beta)(j q_i - x_i) + j; term in [1, p + 1], 2p - term = -term mod p
                term = qj + (p - xb)
                term = jnp.where(beta[..., None], np.uint16(2 * zp.p) - term, term)
                c = (term + (np.uint16(1) if party_j else np.uint16(0)) + above) % p
                # forced vectors: exactly one zero (force_zero) or none (force_none)
                gt = gt[0].astype(bool) if gt else jnp.zeros(shape, bool)
                force_zero = (beta & is_max & ~gt) | (gt & ~beta)
                force_none = gt & beta
                forced = force_zero | force_none
                pos0 = (jnp.arange(m) == 0)
                f_target = jnp.where(pos0 & force_zero[..., None], np.uint16(0), np.uint16(1))
                c_forced = jnp.zeros_like(c) if party_j == 0 else f_target
                c = jnp.where(forced[..., None], c_forced, c)
                d = (c * s + (u if party_j == 0 else (p - u))) % p
                return _apply_permutation(d, perm, rt.config.permutation, m)

            return f

        extra = (gt_always,) if gt_always is not None else ()
        d_c = rt.local(CLIENT, c_vector(0), xb_c, r, beta, s, u, perm, *extra)
        d_s = rt.local(SERVER, c_vector(1), xb_s, r, beta, s, u, perm, *extra)
        d_c = rt.send(CLIENT, CP, d_c, zp)
        d_s = rt.send(SERVER, CP, d_s, zp)
        return rt.local(CP, lambda a, b: jnp.any((a + b) % p == 0, axis=-1).astype(U64), d_c, d_s)


# ----------------------------------------------------------------------------------------------
# ShareConvert (SecureNN Algorithm 2): Z_L -> Z_{L-1}


def _wrap(a, b, ring: Z2k):
    """[a + b >= 2^m] for a, b in [0, 2^m)."""
    return (ring.add(a, b) < a).astype(U64)


def share_convert(a: Shared) -> Shared:
    """Converts shares of ``a`` over Z_L (``L = 2^m``) into shares of ``a mod (L-1)`` over Z_{L-1}.

    Exact for every ``a`` (``L - 1`` maps to 0). Steps (SecureNN Alg. 2, with textbook unsigned
    wrap bits): C and S mask ``a`` with a common random ``r`` and send ``a_j + r_j`` to the CP, which
    reconstructs ``x = a + r mod L``, bit-shares it over Z_67 and shares the wrap bit ``delta``
    of its reconstruction over Z_{L-1}; PrivateCompare gives the CP ``eta' = eta'' XOR [x >= r]``,
    which it shares over Z_{L-1}; then every party's wrap count ``theta_j`` is local and
    ``y_j = a_j - theta_j``. The client's bit and ``delta`` shares come from the client-CP key, so
    only the server's halves are sent.

    Cost per element: C ``w + m``, S ``w + m``, CP ``m + 2w`` bytes; 4 rounds.
    """
    rt = a.rt
    if not isinstance(a.ring, Z2k):
        raise TypeError(f"share_convert needs shares over Z_2^m, got {a.ring}")
    m = a.ring.bits
    L, L1 = a.ring, ZOdd(m)
    shape = a.shape
    with rt.scope("share_convert"):
        eta2 = rt.random_bits(C_S, shape, "eta2")
        r_c = rt.random(C_S, L, shape, "r_c")
        r_s = rt.random(C_S, L, shape, "r_s")
        r, alpha = rt.local(C_S, lambda rc, rs: (L.add(rc, rs), _wrap(rc, rs, L)), r_c, r_s)
        at_c, beta_c = rt.local(CLIENT, lambda ac, rc: (L.add(ac, rc), _wrap(ac, rc, L)), a.c, r_c)
        at_s, beta_s = rt.local(SERVER, lambda as_, rs: (L.add(as_, rs), _wrap(as_, rs, L)), a.s, r_s)
        at_c = rt.send(CLIENT, CP, at_c, L)
        at_s = rt.send(SERVER, CP, at_s, L)
        x, delta = rt.local(CP, lambda p, q: (L.add(p, q), _wrap(p, q, L)), at_c, at_s)
        xb_c = rt.random(C_CP, Z67, shape + (m,), "xbits")
        xb_s = rt.local(CP, lambda x, bc: Z67.sub(_bits_zp(x, m), bc), x, xb_c)
        xb_s = rt.send(CP, SERVER, xb_s, Z67)
        delta_c = rt.random(C_CP, L1, shape, "delta")
        delta_s = rt.local(CP, lambda d, dc: L1.sub(d, dc), delta, delta_c)
        delta_s = rt.send(CP, SERVER, delta_s, L1)
        # eta' = eta'' XOR [x > r - 1]; r = 0 means "x > -1", always true
        r_minus, gt_always = rt.local(C_S, lambda r: (L.sub(r, L.const(1)), r == 0), r)
        eta_p = private_compare(rt, xb_c, xb_s, r_minus, eta2, m, gt_always=gt_always, r_can_be_max=False)
        etap_c = rt.random(C_CP, L1, shape, "eta_prime")
        etap_s = rt.local(CP, lambda e, ec: L1.sub(e, ec), eta_p, etap_c)
        etap_s = rt.send(CP, SERVER, etap_s, L1)

        def client_out(ac, bc, al, dc, epc, e2):
            eta = jnp.where(e2 == 1, L1.add(L1.neg(epc), U64(1)), epc)  # eta' XOR eta'' (client part)
            theta = L1.add(L1.add(bc, L1.neg(al + U64(1))), L1.add(dc, eta))
            return L1.sub(jnp.where(ac == U64(L1.modulus), U64(0), ac), theta)

        def server_out(as_, bs, ds, eps, e2):
            eta = jnp.where(e2 == 1, L1.neg(eps), eps)
            theta = L1.add(bs, L1.add(ds, eta))
            return L1.sub(jnp.where(as_ == U64(L1.modulus), U64(0), as_), theta)

        y_c = rt.local(CLIENT, client_out, a.c, beta_c, alpha, delta_c, etap_c, eta2)
        y_s = rt.local(SERVER, server_out, a.s, beta_s, delta_s, etap_s, eta2)
    return Shared(y_c, y_s, L1, a.scale, rt)


# ----------------------------------------------------------------------------------------------
# ComputeMSB (SecureNN Algorithm 4) over Z_{L-1}


def msb(y: Shared) -> Shared:
    """Shares over Z_2^64 of ``MSB(y)`` (``[y >= 2^(m-1)]``) for ``y`` shared over Z_{2^m - 1}.

    Uses ``MSB(y) = LSB(2y mod (L-1))``: with a dealer-random ``x``, the parties open
    ``r = 2y + x mod (L-1)``; ``LSB(2y) = r_0 XOR x_0 XOR [x > r]`` (an odd modulus flips the parity
    on wrap-around), and PrivateCompare gives the CP ``beta' = beta XOR [x > r]``.

    ``config.nonlinear_protocol``:

    * ``"jaxmpc"``: ``x``'s shares come from the pairwise keys (no message); the CP shares
      ``z = beta' XOR x_0`` and C, S know ``w = beta XOR r_0``, so ``MSB = z XOR w`` is linear in the
      shares of ``z`` -- no multiplication. Returns a :class:`DealerBit`. Cost: C, S ``w + m``
      each, CP ``m + 8`` bytes; 3 rounds.
    * ``"securenn"``: the textbook algorithm (CP sends the client's share of ``x``, shares of
      ``x_0`` and of ``beta'``; ``theta = gamma * delta`` by a Beaver multiplication).
      Cost: C, S ``w + m + 16`` each, CP ``w + m + 24``; 4 rounds.
    """
    rt = y.rt
    if not isinstance(y.ring, ZOdd):
        raise TypeError(f"msb needs shares over Z_(2^m - 1), got {y.ring}")
    m = y.ring.bits
    L1 = y.ring
    shape = y.shape
    variant = rt.config.nonlinear_protocol
    with rt.scope("msb"):
        if variant == "jaxmpc":
            x_c = rt.random(C_CP, L1, shape, "x")
            x_s = rt.random(S_CP, L1, shape, "x")
            x = rt.local(CP, L1.add, x_c, x_s)
        else:
            x = rt.random(owners(CP), L1, shape, "x")
            x_s = rt.random(S_CP, L1, shape, "x")
            x_c = rt.local(CP, L1.sub, x, x_s)
            x_c = rt.send(CP, CLIENT, x_c, L1)
        xb_c = rt.random(C_CP, Z67, shape + (m,), "xbits")
        xb_s = rt.local(CP, lambda x, bc: Z67.sub(_bits_zp(x, m), bc), x, xb_c)
        xb_s = rt.send(CP, SERVER, xb_s, Z67)
        if variant == "securenn":
            x0_c = rt.random(C_CP, RING64, shape, "x0")
            x0_s = rt.local(CP, lambda x, c: _bit(x) - c, x, x0_c)
            x0_s = rt.send(CP, SERVER, x0_s, RING64)
        r_c = rt.local(CLIENT, lambda a, xc: L1.add(L1.add(a, a), xc), y.c, x_c)
        r_s = rt.local(SERVER, lambda a, xs: L1.add(L1.add(a, a), xs), y.s, x_s)
        r_c2 = rt.send(CLIENT, SERVER, r_c, L1)
        r_s2 = rt.send(SERVER, CLIENT, r_s, L1)
        r = rt.local(C_S, L1.add, r_c2, r_s2)
        beta = rt.random_bits(C_S, shape, "beta")
        beta_p = private_compare(rt, xb_c, xb_s, r, beta, m, r_can_be_max=False)
        if variant == "jaxmpc":
            z = rt.local(CP, lambda bp, x: bp ^ _bit(x), beta_p, x)
            z_c = rt.random(C_CP, RING64, shape, "z")
            z_s = rt.local(CP, lambda z, zc: z - zc, z, z_c)
            z_s = rt.send(CP, SERVER, z_s, RING64)
            w = rt.local(C_S, lambda b, r: b ^ _bit(r), beta, r)
            b_c = rt.local(CLIENT, lambda zc, w: jnp.where(w == 1, U64(0) - zc, zc), z_c, w)
            b_s = rt.local(SERVER, lambda zs, w: jnp.where(w == 1, w - zs, zs), z_s, w)
            return DealerBit(b_c, b_s, RING64, 0, rt, z=z, w=w)
        # textbook: gamma = beta XOR beta', delta = x_0 XOR r_0, theta = gamma * delta
        bp_c = rt.random(C_CP, RING64, shape, "beta_prime")
        bp_s = rt.local(CP, lambda bp, c: bp - c, beta_p, bp_c)
        bp_s = rt.send(CP, SERVER, bp_s, RING64)
        g_c = rt.local(CLIENT, lambda c, b: jnp.where(b == 1, U64(0) - c, c), bp_c, beta)
        g_s = rt.local(SERVER, lambda s, b: jnp.where(b == 1, b - s, s), bp_s, beta)
        d_c = rt.local(CLIENT, lambda c, r: jnp.where(_bit(r) == 1, U64(0) - c, c), x0_c, r)
        d_s = rt.local(SERVER, lambda s, r: jnp.where(_bit(r) == 1, _bit(r) - s, s), x0_s, r)
        from jaxmpc.protocols.linear import mul_aa  # local import: linear does not depend on compare

        gamma = Shared(g_c, g_s, RING64, 0, rt)
        delta = Shared(d_c, d_s, RING64, 0, rt)
        theta = mul_aa(gamma, delta)
        a_c = rt.local(CLIENT, lambda g, d, t: g + d - (t + t), g_c, d_c, theta.c)
        a_s = rt.local(SERVER, lambda g, d, t: g + d - (t + t), g_s, d_s, theta.s)
        return Shared(a_c, a_s, RING64, 0, rt)


# ----------------------------------------------------------------------------------------------
# DReLU


def drelu_bytes_per_element(config) -> int:
    """Working-set bytes per element of one DReLU (random words, the m-digit Z_67 vectors and
    their temporaries): the unit in which the runtime's memory budget sizes DReLU chunks. An
    estimate; ``benchmarks/memory_budget.py`` measures the peak it gives."""
    m = config.compare_bits
    return 8 * (6 * m + 12) + 24 * 8 * m


def drelu_ring(u: Shared) -> Shared:
    """``[u >= 0]`` (as a Z_2^64 bit) for ``u`` shared over Z_{2^m}, read as a signed m-bit number.

    Exact for ``u in [-2^(m-1), 2^(m-1) - 2]`` (see module docstring). Under a runtime memory
    budget a large input runs in chunks of elements (:meth:`~jaxmpc.core.runtime.Runtime.chunked`):
    the same output bits and the same communication record.
    """
    rt = u.rt
    if not isinstance(u.ring, Z2k):
        raise TypeError(f"drelu_ring needs shares over Z_2^m, got {u.ring}")
    chunk = rt.chunk_elements(drelu_bytes_per_element(rt.config))
    if chunk is None or u.size <= 2 * chunk:
        return _drelu_ring(u)
    shape, n = u.shape, u.size

    def flat(c, s):
        out = _drelu_ring(Shared(c, s, u.ring, u.scale, rt))
        return (out.c, out.s) + ((out.z, out.w) if isinstance(out, DealerBit) else ())

    outs = rt.chunked("drelu_chunks", flat, (reshape_held(u.c, (n,)), reshape_held(u.s, (n,))), chunk)
    outs = tuple(reshape_held(h, shape) for h in outs)
    if len(outs) == 4:
        return DealerBit(outs[0], outs[1], RING64, 0, rt, z=outs[2], w=outs[3])
    return Shared(outs[0], outs[1], RING64, 0, rt)


def _drelu_ring(u: Shared) -> Shared:
    rt = u.rt
    m = u.ring.bits
    ring = u.ring
    with rt.scope("drelu", kind="drelu"):
        rt.note("drelu", u.size)
        off = ring.const(2 ** (m - 1))
        v = u.replace(c=rt.local(CLIENT, lambda a: ring.add(a, off), u.c), scale=0)
        return msb(share_convert(v))


def compare_input(x: Shared, extra_divisor=None) -> Shared:
    """The reduced-bit DReLU input: ``floor(x / (d * 2^s)) mod 2^m`` for 64-bit shared ``x``.

    ``s = config.lsb_drop_bits`` (local truncation) and ``m = config.compare_bits``; ``d`` is an
    optional public positive integer divisor (Block ReLU uses the patch pixel count, so that the
    comparison sees the patch *mean*; the division and the truncation are one local step).
    """
    rt = x.rt
    cfg = rt.config
    m, s = cfg.compare_bits, cfg.lsb_drop_bits
    from jaxmpc.protocols.linear import div_ap, trunc_a

    if extra_divisor is not None:
        x = div_ap(x, np.asarray(extra_divisor, np.int64) * (2**s))
    elif s:
        x = trunc_a(x, s)
    if m == 64:
        return x.replace(scale=0)
    ring = Z2k(m)
    return Shared(rt.local(CLIENT, ring.reduce, x.c), rt.local(SERVER, ring.reduce, x.s), ring, 0, rt)


def drelu(x: Shared) -> Shared:
    """DReLU ``[x >= 0]`` of a 64-bit shared value, as a shared bit in Z_2^64 (scale 0).

    Applies the configured reduced-bit comparison (``compare_bits``, ``lsb_drop_bits``); in exact
    mode (64, 0) it is exact for every value except ``2^63 - 1``.
    """
    if x.ring != RING64:
        raise TypeError(f"drelu needs shares over Z_2^64, got {x.ring}")
    return drelu_ring(compare_input(x))

