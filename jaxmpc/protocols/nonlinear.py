"""Nonlinear protocols built on DReLU: ReLU, select-share, MaxPool and Block ReLU.

* :func:`mul_bit` -- a shared value times a shared bit. For a :class:`DealerBit` (``jaxmpc``
  protocols) the CP knows the bit's mask, so the product costs 24 bytes per element (the parties
  open ``E = x - A``; the CP shares ``A * z``); otherwise a Beaver product, 40 bytes
  (SecureNN's ReLU, Alg. 6).
* :func:`relu` -- ``x * DReLU(x)``. The opening of ``x - A`` runs in parallel with DReLU, so a
  ``jaxmpc`` ReLU takes as many rounds as its DReLU.
* :func:`select_share` -- ``x + b (y - x)`` (SecureNN Alg. 3).
* :func:`maxpool` -- any window, stride and padding: a pairwise tree of ``max(a, b) =
  b + (a - b) DReLU(a - b)`` (``ceil(log2 k)`` levels) or the reference's running maximum.
  Padded positions are replaced by a valid element of the same window (public indices), so they
  never win and need no comparison with -inf.
* :func:`block_relu` -- the paper's Block ReLU (§3; ``paper_reference.md`` §1.7): per channel a
  patch size; one DReLU per patch on the patch mean; every pixel of the patch is multiplied by
  its patch's bit. All patches of a layer go through one DReLU call.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc.core import blocks
from jaxmpc.core.parties import C_CP, C_S, CLIENT, CP, S_CP, SERVER
from jaxmpc.protocols.compare import DealerBit, compare_input, drelu, drelu_ring
from jaxmpc.protocols.linear import add_aa, bilinear_aa, sub_aa
from jaxmpc.core.ring import RING64
from jaxmpc.core.sharing import Shared, local_map

__all__ = ["mul_bit", "relu", "select_share", "maxpool", "window_views", "avgpool_sum", "block_relu", "zeros_like"]

U64 = jnp.uint64


def zeros_like(x: Shared) -> Shared:
    """A sharing of zeros of ``x``'s shape (both shares 0). Local."""
    return local_map(x, jnp.zeros_like)


def mul_bit(x: Shared, b: Shared, expand=None) -> Shared:
    """``x * expand(b)`` for a shared value ``x`` and a shared bit ``b`` (scale 0).

    ``expand`` is a public map from ``b``'s shape to ``x``'s shape that repeats entries (Block
    ReLU: patch -> pixels); identity when ``None``.

    Cost: with a :class:`DealerBit` (``jaxmpc``): C<->S ``8|x|`` each way, CP->S ``8|x|``
    (24 bytes per element of ``x``); otherwise Beaver: C<->S ``8(|x| + |b|)`` each way, CP->C
    ``8|x|``. 1 round after the later of ``x`` and ``b``.
    """
    rt = x.rt
    if b.scale != 0:
        raise ValueError("mul_bit: the bit must have scale 0")
    expand = expand or (lambda v: v)
    with rt.scope("mult", kind="mult"):
        rt.note("mult", x.size)
        if isinstance(b, DealerBit) and rt.config.nonlinear_protocol == "jaxmpc":
            a_c = rt.random(C_CP, RING64, x.shape, "a")
            a_s = rt.random(S_CP, RING64, x.shape, "a")
            e_c = rt.local(CLIENT, lambda x, a: x - a, x.c, a_c)
            e_s = rt.local(SERVER, lambda x, a: x - a, x.s, a_s)
            e_c = rt.send(CLIENT, SERVER, e_c, RING64)
            e_s = rt.send(SERVER, CLIENT, e_s, RING64)
            e = rt.local(C_S, lambda a, b: a + b, e_c, e_s)
            az_c = rt.random(C_CP, RING64, x.shape, "az")
            az_s = rt.local(CP, lambda ac, as_, z, azc: (ac + as_) * expand(z) - azc, a_c, a_s, b.z, az_c)
            az_s = rt.send(CP, SERVER, az_s, RING64)

            def client(e, bc, w, azc, xc):
                w = expand(w)
                zc = jnp.where(w == 1, U64(0) - expand(bc), expand(bc))  # z_c = b_c (1 - 2w)
                xz = e * zc + azc
                return jnp.where(w == 1, xc - xz, xz)  # x z (1 - 2w) + x w

            def server(e, bs, w, azs, xs):
                w = expand(w)
                zs = jnp.where(w == 1, w - expand(bs), expand(bs))  # z_s = (b_s - w)(1 - 2w)
                xz = e * zs + azs
                return jnp.where(w == 1, xs - xz, xz)

            y_c = rt.local(CLIENT, client, e, b.c, b.w, az_c, x.c)
            y_s = rt.local(SERVER, server, e, b.s, b.w, az_s, x.s)
            return Shared(y_c, y_s, RING64, x.scale, rt)
        plain_b = Shared(b.c, b.s, b.ring, 0, rt)
        return bilinear_aa(x, plain_b, lambda a, bb: a * expand(bb), name="beaver")


def relu(x: Shared) -> Shared:
    """``max(x, 0) = x * [x >= 0]`` (SecureNN Alg. 6 with jaxmpc's bit product). Cost: DReLU + mult."""
    rt = x.rt
    with rt.scope("relu"):
        return mul_bit(x, drelu(x))


def select_share(b: Shared, x: Shared, y: Shared) -> Shared:
    """``y`` where the shared bit ``b`` is 1, else ``x``: ``x + b (y - x)``. Cost: one mult."""
    rt = x.rt
    with rt.scope("select"):
        return add_aa(x, mul_bit(sub_aa(y, x), b))


# ----------------------------------------------------------------------------------------------
# windows


def _normalize_padding(padding, window, strides, shape):
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return [(0, 0)] * len(shape)
        if mode == "SAME":
            out = []
            for n, w, s in zip(shape, window, strides):
                o = -(-n // s)
                total = max((o - 1) * s + w - n, 0)
                out.append((total // 2, total - total // 2))
            return out
        raise ValueError(f"unknown padding {padding!r}")
    pads = [tuple(int(v) for v in p) for p in padding]
    if len(pads) != len(shape):
        raise ValueError(f"padding needs one (lo, hi) pair per axis ({len(shape)}), got {len(pads)}")
    return pads


def _window_index(n, w, s, lo, hi):
    out = (n + lo + hi - w) // s + 1
    if out < 1:
        raise ValueError(f"window {w} with padding ({lo}, {hi}) does not fit an axis of size {n}")
    idx = np.arange(out)[None, :] * s - lo + np.arange(w)[:, None]  # [w, out]
    valid = (idx >= 0) & (idx < n)
    if not np.all(valid.any(axis=0)):
        raise ValueError("a pooling window lies entirely in the padding")
    return np.clip(idx, 0, n - 1), valid


def window_views(a, window, strides, padding, *, fill: str):
    """Stacks the ``k = prod(window)`` strided views of an array: shape ``[k, *out_shape]``.

    ``fill="clip"`` replaces padded positions by the nearest valid element of the same window
    (which is in the window: windows are contiguous), ``fill="zero"`` by zeros. Indices are
    public, so on shares this is a local gather.
    """
    window = tuple(int(w) for w in window)
    strides = tuple(int(s) for s in strides)
    if len(window) != a.ndim or len(strides) != a.ndim:
        raise ValueError(f"window and strides need one entry per axis ({a.ndim})")
    pads = _normalize_padding(padding, window, strides, a.shape)
    pooled = {}
    for ax in reversed(range(a.ndim)):  # last axis first: earlier axes keep their positions
        w, s, (lo, hi) = window[ax], strides[ax], pads[ax]
        if w == 1 and s == 1 and lo == 0 and hi == 0:
            continue
        idx, valid = _window_index(a.shape[ax], w, s, lo, hi)
        a = jnp.take(a, jnp.asarray(idx.reshape(-1)), axis=ax)
        a = a.reshape(a.shape[:ax] + idx.shape + a.shape[ax + 1:])
        pooled[ax] = valid
    if not pooled:
        return a[None]
    # expanded layout: original axis i -> (w_i, o_i) if pooled else (n_i)
    pos, wpos, opos = 0, [], []
    mask = None
    ndim_exp = a.ndim
    for ax in range(len(window)):
        if ax in pooled:
            wpos.append(pos)
            opos.append(pos + 1)
            if fill == "zero":
                shp = [1] * ndim_exp
                shp[pos], shp[pos + 1] = pooled[ax].shape
                v = pooled[ax].reshape(shp)
                mask = v if mask is None else mask & v
            pos += 2
        else:
            opos.append(pos)
            pos += 1
    perm = wpos + opos
    a = jnp.transpose(a, perm)
    k = int(np.prod([a.shape[i] for i in range(len(wpos))]))
    out_shape = a.shape[len(wpos):]
    a = a.reshape((k,) + out_shape)
    if fill == "zero":
        m = np.transpose(np.broadcast_to(mask, mask.shape), perm)
        m = m.reshape((k,) + m.shape[len(wpos):])
        a = a * jnp.asarray(m, a.dtype)
    elif fill != "clip":
        raise ValueError(f"unknown fill {fill!r}")
    return a


def avgpool_sum(x: Shared, window, strides, padding) -> Shared:
    """Sum over each pooling window with zero padding (local); divide afterwards."""
    return local_map(x, lambda a: jnp.sum(window_views(a, window, strides, padding, fill="zero"), axis=0, dtype=a.dtype))


def maxpool(x: Shared, window, strides=None, padding="VALID") -> Shared:
    """Max over windows (any rank; ``window``/``strides``/``padding`` per axis, like ``lax.reduce_window``).

    Cost per output element: ``k - 1`` comparisons (DReLU + mult each); rounds: ``ceil(log2 k)``
    comparison levels (``tree``) or ``k - 1`` (``sequential``).
    """
    rt = x.rt
    window = tuple(window)
    if len(window) != x.ndim:
        raise ValueError(f"maxpool: window must have one entry per axis ({x.ndim}), got {window}")
    strides = tuple(strides) if strides is not None else (1,) * x.ndim
    views = local_map(x, lambda a: window_views(a, window, strides, padding, fill="clip"))
    k = views.shape[0]
    with rt.scope("maxpool"):
        if rt.config.maxpool_schedule == "sequential":
            cur = local_map(views, lambda a: a[0])
            for i in range(1, k):
                v = local_map(views, lambda a, i=i: a[i])
                d = sub_aa(v, cur)
                cur = add_aa(cur, mul_bit(d, drelu(d)))
            return cur
        level = views
        while level.shape[0] > 1:
            n = level.shape[0]
            h = n // 2
            a = local_map(level, lambda v: v[:h])
            b = local_map(level, lambda v: v[h: 2 * h])
            d = sub_aa(a, b)
            m = add_aa(b, mul_bit(d, drelu(d)))
            if n % 2:
                rest = local_map(level, lambda v: v[2 * h:])
                m = Shared(
                    rt.local(CLIENT, lambda p, q: jnp.concatenate([p, q]), m.c, rest.c),
                    rt.local(SERVER, lambda p, q: jnp.concatenate([p, q]), m.s, rest.s),
                    m.ring, m.scale, rt,
                )
            level = m
        return local_map(level, lambda v: v[0])


# ----------------------------------------------------------------------------------------------
# Block ReLU


def _group_layout(height: int, width: int, sizes: np.ndarray):
    """Public bookkeeping of a Block-ReLU layer.

    Returns ``(order, ident_ch, groups, n_patches)``: ``order`` lists the patch channels grouped
    by patch size (each group a contiguous run), ``groups`` holds ``(bh, bw, start, m, ph, pw,
    counts)`` per size: the group is ``order[start:start + m]``, its ``ph x pw`` patches per channel
    sit in the patch vector at ``[offset, offset + ph*pw*m)`` in ``[ph, pw, m]`` order (offsets
    follow the group order).
    """
    patch_ch = np.flatnonzero(blocks.is_patch(sizes))
    ident_ch = np.flatnonzero((sizes[:, 0] == 0) & (sizes[:, 1] == 1))
    members = {}
    for c in patch_ch:
        members.setdefault((int(sizes[c, 0]), int(sizes[c, 1])), []).append(int(c))
    order, groups, start, n_patches = [], [], 0, 0
    for (bh, bw), chans in members.items():
        ph, pw = blocks.patch_grid(height, width, bh, bw)
        groups.append((bh, bw, start, len(chans), ph, pw, blocks.patch_counts(height, width, bh, bw)))
        order += chans
        start += len(chans)
        n_patches += ph * pw * len(chans)
    return np.asarray(order, np.int64), ident_ch, groups, n_patches


def _plain_relu(groups) -> bool:
    return len(groups) == 1 and groups[0][:2] == (1, 1)


def _patch_index(groups, height: int, width: int):
    """Pixel -> patch index ``[H * W * Cp]`` (channels in group order), computed in the program.

    Built from iotas and per-channel tables of ``Cp`` entries, so the program neither carries a
    constant the size of the layer nor grows with the number of patch sizes.
    """
    tab = {k: [] for k in ("bh", "bw", "pw", "m", "first")}
    offset = 0
    for bh, bw, _, m, ph, pw, _ in groups:
        for name, v in (("bh", bh), ("bw", bw), ("pw", pw), ("m", m)):
            tab[name] += [v] * m
        tab["first"] += list(range(offset, offset + m))  # patch (0, 0) of each member
        offset += ph * pw * m
    dtype = jnp.int32 if offset < 2**31 else jnp.int64
    t = {k: jnp.asarray(np.asarray(v), dtype) for k, v in tab.items()}
    shape = (height, width, len(tab["m"]))
    hh = jax.lax.broadcasted_iota(dtype, shape, 0)
    ww = jax.lax.broadcasted_iota(dtype, shape, 1)
    return (t["first"] + ((hh // t["bh"]) * t["pw"] + ww // t["bw"]) * t["m"]).reshape(-1)


def _patch_divisors(groups) -> np.ndarray:
    """Valid pixels per patch ``[n_patches]`` in the patch vector's order (reduced-bit DReLU)."""
    return np.concatenate([np.repeat(counts.reshape(-1), m) for *_, m, ph, pw, counts in groups])


def _patch_sums(a, groups, height: int, width: int, n_patches: int):
    """Per-patch sums ``[nb, n_patches]`` of ``a`` ``[nb, H, W, Cp]`` (one scatter-add; ring wrap)."""
    nb = a.shape[0]
    if _plain_relu(groups):
        return a.reshape((nb, -1))
    idx = _patch_index(groups, height, width)
    return jnp.zeros((nb, n_patches), a.dtype).at[:, idx].add(a.reshape((nb, -1)), mode="promise_in_bounds")


def _expand_patches(bits, groups, height: int, width: int):
    """Patch values ``[nb, n_patches]`` -> pixel values ``[nb, H, W, Cp]`` (one gather)."""
    nb = bits.shape[0]
    shape = (nb, height, width, sum(g[3] for g in groups))
    if _plain_relu(groups):
        return bits.reshape(shape)
    return jnp.take(bits, _patch_index(groups, height, width), axis=1, mode="clip").reshape(shape)


def block_relu(x: Shared, sizes, *, channel_axis: int = -1) -> Shared:
    """Secure Block ReLU over ``[..., H, W, C]`` with per-channel patch sizes ``sizes`` ``[C, 2]``.

    For each channel with a patch size ``(bh, bw)``: patch sums are local; in exact mode the DReLU
    compares the sum (``sign(mean) = sign(sum)``), in reduced-bit mode the mean (local division by
    the valid-pixel count of each patch, fused with the ``lsb_drop_bits`` truncation); then every
    pixel is multiplied by its patch's bit. ``(0, 1)`` channels pass through, ``(1, 0)`` channels
    become 0, ``(1, 1)`` is an ordinary ReLU. The patch sizes are public (part of the
    architecture).

    Cost: one DReLU per patch (all channels in one call) plus one bit product per pixel of the
    non-identity, non-zero channels.
    """
    rt = x.rt
    if channel_axis not in (-1, x.ndim - 1):
        raise ValueError("block_relu expects channels last ([..., H, W, C])")
    if x.ndim < 3:
        raise ValueError(f"block_relu expects [..., H, W, C], got shape {x.shape}")
    *lead, height, width, nch = x.shape
    sizes = blocks.validate_block_sizes(sizes, nch)
    order, ident_ch, groups, n_patches = _group_layout(height, width, sizes)
    nb = int(math.prod(lead))
    exact = rt.config.exact_compare
    with rt.scope("block_relu"):
        flat = local_map(x, lambda a: a.reshape((nb, height, width, nch)))
        out = zeros_like(flat)
        if len(order):
            # [nb, H, W, Cp], channels in group order. Kept as a gather even when ``order`` is the
            # identity: measured on ResNet18, skipping it let XLA fuse the producers into every
            # consumer (compile 22.7 -> 34.3 s, peak RSS 2.67 -> 3.06 GiB).
            xp = local_map(flat, lambda a: a[..., order])
            sums = lambda a: _patch_sums(a, groups, height, width, n_patches)
            stat = Shared(rt.local(CLIENT, sums, xp.c), rt.local(SERVER, sums, xp.s), RING64, x.scale, rt)
            if exact:
                bits = drelu(stat)
            else:
                bits = drelu_ring(compare_input(stat, extra_divisor=_patch_divisors(groups)[None, :]))
            y = mul_bit(xp, bits, expand=lambda b: _expand_patches(b, groups, height, width))
            out = Shared(
                rt.local(CLIENT, lambda o, v: o.at[..., order].set(v), out.c, y.c),
                rt.local(SERVER, lambda o, v: o.at[..., order].set(v), out.s, y.s),
                RING64, x.scale, rt,
            )
        if len(ident_ch):
            out = Shared(
                rt.local(CLIENT, lambda o, v: o.at[..., ident_ch].set(v[..., ident_ch]), out.c, flat.c),
                rt.local(SERVER, lambda o, v: o.at[..., ident_ch].set(v[..., ident_ch]), out.s, flat.s),
                RING64, x.scale, rt,
            )
        return local_map(out, lambda a: a.reshape(tuple(lead) + (height, width, nch))).replace(scale=x.scale)
