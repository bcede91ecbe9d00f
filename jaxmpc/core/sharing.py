"""2-out-of-2 additive secret sharing between the client and the server.

A secret ``x`` in a ring R is held as ``x = x_c + x_s`` (in R), ``x_c`` by the client and
``x_s`` by the server; each share alone is uniformly random. The crypto provider never holds a
share. :class:`Shared` also records the fixed-point scale of the value (``frac_bits`` of the
encoding, 0 for integers and bits) and the runtime that executes its protocols.
"""

from __future__ import annotations

import dataclasses

import jax

from jaxmpc.core.parties import C_S, CLIENT, SERVER, Party
from jaxmpc.core.ring import RING64
from jaxmpc.core.runtime import Held, Runtime

__all__ = ["Shared", "share", "reveal", "local_map"]


@dataclasses.dataclass(frozen=True, eq=False)
class Shared:
    """An additively shared tensor.

    Attributes:
      c: the client's share (a :class:`~jaxmpc.core.runtime.Held` known to the client).
      s: the server's share.
      ring: the ring of the shares (``Z2k(64)`` for data).
      scale: fixed-point fractional bits of the value (0 for integers and bits).
      rt: the runtime executing protocols on this value.
    """

    c: Held
    s: Held
    ring: object = RING64
    scale: int = 0
    rt: Runtime | None = None

    def __post_init__(self):
        if self.c.times[CLIENT] is None or self.s.times[SERVER] is None:
            raise ValueError("a Shared needs a client-held client share and a server-held server share")
        if tuple(self.c.shape) != tuple(self.s.shape):
            raise ValueError(f"share shapes differ: {self.c.shape} vs {self.s.shape}")

    @property
    def shape(self) -> tuple:
        return tuple(self.c.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return self.c.size

    @property
    def time(self) -> int:
        """Hop at which both shares are available."""
        return max(self.c.times[CLIENT], self.s.times[SERVER])

    def replace(self, **kw) -> "Shared":
        return dataclasses.replace(self, **kw)

    def __repr__(self):
        return f"Shared({self.ring}, shape={list(self.shape)}, scale={self.scale}, ready@{self.time})"


def _flatten(x: Shared):
    return (x.c.value, x.s.value), (x.c.times, x.s.times, x.ring, x.scale, x.rt)


def _unflatten(aux, leaves):
    ct, st, ring, scale, rt = aux
    return Shared(Held(leaves[0], ct), Held(leaves[1], st), ring, scale, rt)


jax.tree_util.register_pytree_node(Shared, _flatten, _unflatten)


def share(rt: Runtime, x: Held, owner: Party = CLIENT, *, ring=RING64, scale: int = 0, name: str = "share") -> Shared:
    """Secret-shares a ring tensor held by the client or the server, with no communication.

    Both parties derive the same random tensor ``r`` from their common key; the owner keeps
    ``x - r`` and the other party's share is ``r`` (``paper_reference.md`` §1.2, "Input").
    """
    owner = Party(owner)
    if owner not in (CLIENT, SERVER):
        raise ValueError("only the client or the server can share a secret")
    r = rt.random(C_S, ring, x.shape, name)
    mine = rt.local(owner, ring.sub, x, r)
    other = rt.local(SERVER if owner == CLIENT else CLIENT, lambda v: v, r)
    c, s = (mine, other) if owner == CLIENT else (other, mine)
    return Shared(c, s, ring, scale, rt)


def reveal(x: Shared, to: Party = CLIENT) -> Held:
    """Opens ``x`` to one party: the other party sends its share (``x.size`` ring elements)."""
    rt = x.rt
    to = Party(to)
    with rt.scope("reveal", kind="reveal"):
        if to == CLIENT:
            s = rt.send(SERVER, CLIENT, x.s, x.ring)
            return rt.local(CLIENT, x.ring.add, x.c, s)
        if to == SERVER:
            c = rt.send(CLIENT, SERVER, x.c, x.ring)
            return rt.local(SERVER, x.ring.add, c, x.s)
    raise ValueError("outputs are revealed to the client or the server")


def local_map(x: Shared, fn, *, ring=None, scale: int | None = None) -> Shared:
    """Applies the same public, ring-linear map ``fn`` to both shares (reshape, slice, sum, ...)."""
    rt = x.rt
    c = rt.local(CLIENT, fn, x.c)
    s = rt.local(SERVER, fn, x.s)
    return Shared(c, s, ring or x.ring, x.scale if scale is None else scale, rt)

