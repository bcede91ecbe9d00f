"""The two backends of the network interpreter: secure (3 parties) and plaintext fixed point.

The interpreter (:mod:`jaxmpc.inference.interpreter`) walks a model's jaxpr and calls a backend
for every operation that touches the secret input. :class:`SecureBackend` runs the protocols of
:mod:`jaxmpc.protocols` on shares; :class:`FixedPointBackend` performs the same fixed-point
arithmetic in the clear with deterministic (floor) truncation -- the reference a secure run is
tested against. Both see exactly the same sequence of calls.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxmpc.protocols import reference as ref
from jaxmpc.core.parties import CLIENT, SERVER
from jaxmpc.protocols import compare, linear, nonlinear
from jaxmpc.core.ring import RING64, decode, encode_traced
from jaxmpc.core.runtime import Held, Runtime
from jaxmpc.core.sharing import Shared, local_map, reveal, share

__all__ = ["Pub", "Srv", "Sec", "SecureBackend", "FixedPointBackend"]

U64 = jnp.uint64


@dataclasses.dataclass(frozen=True, eq=False)
class Pub:
    """A value every party knows (constants, the block spec): concrete numpy."""

    value: np.ndarray

    @property
    def shape(self):
        return tuple(np.shape(self.value))


@dataclasses.dataclass(frozen=True, eq=False)
class Srv:
    """A value only the server knows (weights and what it computes from them)."""

    data: object  # Held (secure backend) or array (fixed point)

    @property
    def shape(self):
        d = self.data
        return tuple((d.value if isinstance(d, Held) else d).shape)


@dataclasses.dataclass(frozen=True, eq=False)
class Sec:
    """A secret (input-dependent) value: backend data at fixed-point ``scale`` (0 for bits)."""

    data: object  # Shared (secure backend) or uint64 array (fixed point)
    scale: int

    @property
    def shape(self):
        return tuple(self.data.shape)


class SecureBackend:
    """Secret values are :class:`~jaxmpc.core.sharing.Shared`; every step goes through the runtime."""

    name = "secure"

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.config = rt.config

    def scope(self, name: str, *, absolute: bool = False):
        return self.rt.scope(name, kind="linear", absolute=absolute) if name else contextlib.nullcontext()

    def annotate(self, label: str, op: str):
        self.rt.annotate(label, op)

    # -- values --------------------------------------------------------------------------------
    def input(self, x_enc) -> Sec:
        f = self.config.frac_bits
        return Sec(share(self.rt, self.rt.input(CLIENT, x_enc), CLIENT, scale=f, name="input"), f)

    def server_input(self, value) -> Srv:
        return Srv(self.rt.private(SERVER, value))

    def server(self, fn, *args):
        vals = [a.data if isinstance(a, Srv) else jnp.asarray(a.value) for a in args]
        out = self.rt.local(SERVER, fn, *vals)
        return tuple(Srv(o) for o in out) if isinstance(out, tuple) else Srv(out)

    def sec_from_pub(self, ring, scale: int) -> Sec:
        rt = self.rt
        c = rt.local(CLIENT, lambda v: v, rt.public(ring))
        s = rt.local(SERVER, lambda v: jnp.zeros_like(v), rt.public(ring))
        return Sec(Shared(c, s, RING64, scale, rt), scale)

    def sec_from_srv(self, srv_ring: Srv, scale: int) -> Sec:
        rt = self.rt
        s = srv_ring.data
        c = rt.local(CLIENT, lambda: jnp.zeros(s.shape, U64))
        return Sec(Shared(c, s, RING64, scale, rt), scale)

    def encode_srv(self, v: Srv | Pub, scale: int) -> Srv:
        return self.server(lambda a: encode_traced(a, scale), v)

    # -- local ---------------------------------------------------------------------------------
    def map(self, a: Sec, fn) -> Sec:
        return Sec(local_map(a.data, fn), a.scale)

    def combine(self, fn, *secs: Sec) -> Sec:
        rt = self.rt
        c = rt.local(CLIENT, fn, *[s.data.c for s in secs])
        s = rt.local(SERVER, fn, *[s.data.s for s in secs])
        return Sec(Shared(c, s, RING64, secs[0].scale, rt), secs[0].scale)

    def add(self, a: Sec, b: Sec) -> Sec:
        return Sec(linear.add_aa(a.data.replace(scale=a.scale), b.data.replace(scale=a.scale)), a.scale)

    def sub(self, a: Sec, b: Sec) -> Sec:
        return Sec(linear.sub_aa(a.data.replace(scale=a.scale), b.data.replace(scale=a.scale)), a.scale)

    def neg(self, a: Sec) -> Sec:
        return Sec(linear.neg_a(a.data), a.scale)

    def add_pub(self, a: Sec, ring) -> Sec:
        return Sec(linear.add_ap(a.data, ring), a.scale)

    def add_srv(self, a: Sec, ring: Srv) -> Sec:
        return Sec(linear.add_av(a.data, ring.data), a.scale)

    def mul_pub(self, a: Sec, ring, scale: int) -> Sec:
        return Sec(linear.mul_ap(a.data, ring, scale=scale), a.scale + scale)

    def trunc(self, a: Sec, bits: int) -> Sec:
        return a if bits <= 0 else Sec(linear.trunc_a(a.data, bits), a.scale - bits)

    def div(self, a: Sec, d) -> Sec:
        return Sec(linear.div_ap(a.data, d), a.scale)

    def bilinear_pub(self, a: Sec, ring, op, scale: int) -> Sec:
        k = jnp.asarray(ring)
        return Sec(local_map(a.data, lambda v: op(v, k)), a.scale + scale)

    # -- protocols -----------------------------------------------------------------------------
    def bilinear_srv(self, a: Sec, ring: Srv, op, scale: int) -> Sec:
        return Sec(linear.bilinear_av(a.data, ring.data, op, scale=scale, name="linear"), a.scale + scale)

    def bilinear_sec(self, a: Sec, b: Sec, op) -> Sec:
        with self.rt.scope("beaver", kind="mult"):
            return Sec(linear.bilinear_aa(a.data, b.data, op), a.scale + b.scale)

    def drelu(self, a: Sec) -> Sec:
        return Sec(compare.drelu(a.data), 0)

    def relu(self, a: Sec) -> Sec:
        return Sec(nonlinear.relu(a.data), a.scale)

    def mul_bit(self, a: Sec, bit: Sec) -> Sec:
        return Sec(nonlinear.mul_bit(a.data, bit.data), a.scale)

    def maxpool(self, a: Sec, window, strides, padding) -> Sec:
        return Sec(nonlinear.maxpool(a.data, window, strides, padding), a.scale)

    def block_relu(self, a: Sec, sizes) -> Sec:
        return Sec(nonlinear.block_relu(a.data, sizes), a.scale)

    def reveal(self, a: Sec):
        # a placeholder (jax.ShapeDtypeStruct) in party mode when this party is not the client
        return self.rt.local(CLIENT, lambda v: decode(v, a.scale), reveal(a.data, CLIENT)).value


class FixedPointBackend:
    """The same fixed-point arithmetic in the clear: uint64 ring values, floor truncation."""

    name = "fixed_point"

    def __init__(self, config):
        self.config = config

    def scope(self, name: str, *, absolute: bool = False):
        return contextlib.nullcontext()

    def input(self, x_enc) -> Sec:
        return Sec(jnp.asarray(x_enc, U64), self.config.frac_bits)

    def server_input(self, value) -> Srv:
        return Srv(value)

    def server(self, fn, *args):
        out = fn(*[a.data if isinstance(a, Srv) else jnp.asarray(a.value) for a in args])
        return tuple(Srv(o) for o in out) if isinstance(out, tuple) else Srv(out)

    def sec_from_pub(self, ring, scale: int) -> Sec:
        return Sec(jnp.asarray(ring, U64), scale)

    def sec_from_srv(self, srv_ring: Srv, scale: int) -> Sec:
        return Sec(srv_ring.data, scale)

    def encode_srv(self, v, scale: int) -> Srv:
        return self.server(lambda a: encode_traced(a, scale), v)

    def map(self, a: Sec, fn) -> Sec:
        return Sec(fn(a.data), a.scale)

    def combine(self, fn, *secs: Sec) -> Sec:
        return Sec(fn(*[s.data for s in secs]), secs[0].scale)

    def add(self, a, b):
        return Sec(a.data + b.data, a.scale)

    def sub(self, a, b):
        return Sec(a.data - b.data, a.scale)

    def neg(self, a):
        return Sec(jnp.zeros_like(a.data) - a.data, a.scale)

    def add_pub(self, a, ring):
        return Sec(a.data + jnp.asarray(ring, U64), a.scale)

    def add_srv(self, a, ring: Srv):
        return Sec(a.data + ring.data, a.scale)

    def mul_pub(self, a, ring, scale: int):
        return Sec(a.data * jnp.asarray(ring, U64), a.scale + scale)

    def trunc(self, a, bits: int):
        return a if bits <= 0 else Sec(ref.trunc(a.data, bits), a.scale - bits)

    def div(self, a, d):
        return Sec(ref.div(a.data, d), a.scale)

    def bilinear_pub(self, a, ring, op, scale: int):
        return Sec(op(a.data, jnp.asarray(ring)), a.scale + scale)

    def bilinear_srv(self, a, ring: Srv, op, scale: int):
        return Sec(op(a.data, ring.data), a.scale + scale)

    def bilinear_sec(self, a, b, op):
        return Sec(op(a.data, b.data), a.scale + b.scale)

    def drelu(self, a):
        return Sec(ref.drelu(a.data, self.config), 0)

    def relu(self, a):
        return Sec(a.data * ref.drelu(a.data, self.config), a.scale)

    def mul_bit(self, a, bit):
        return Sec(a.data * bit.data, a.scale)

    def maxpool(self, a, window, strides, padding):
        # same pairwise structure as the protocol; every comparison uses the configured DReLU
        views = nonlinear.window_views(a.data, window, strides, padding, fill="clip")
        if self.config.maxpool_schedule == "sequential":
            cur = views[0]
            for i in range(1, views.shape[0]):
                d = views[i] - cur
                cur = cur + d * ref.drelu(d, self.config)
            return Sec(cur, a.scale)
        while views.shape[0] > 1:
            n = views.shape[0]
            h = n // 2
            x, y = views[:h], views[h: 2 * h]
            d = x - y
            m = y + d * ref.drelu(d, self.config)
            views = jnp.concatenate([m, views[2 * h:]]) if n % 2 else m
        return Sec(views[0], a.scale)

    def block_relu(self, a, sizes):
        return Sec(ref.block_relu(a.data, sizes, self.config), a.scale)

    def reveal(self, a):
        return decode(a.data, a.scale)

