"""jaxmpc.core.sharing: 2-out-of-2 additive sharing between client and server.

What the module guarantees: sharing is free (no message), reconstructs exactly for every ring
element (edge values included) from either owner, each share alone is masked by fresh
randomness, revealing costs exactly ``x.size`` elements on one link and one round, ``Shared``
refuses inconsistent shares, survives ``jit`` as a pytree, and ``local_map`` applies a public
linear map to both shares.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.core.parties import CLIENT, CP, SERVER
from jaxmpc.core.ring import RING64, Z2k
from jaxmpc.core.runtime import Held
from jaxmpc.core.sharing import Shared, local_map, reveal, share

from utils import EDGE_INTS, opened, run_jitted, sim_runtime, u64

EDGE = u64(EDGE_INTS + [2**63 - 1, 2**64 - 1 - 2**32, 12345678901234567])


@pytest.mark.parametrize("owner", [CLIENT, SERVER])
@pytest.mark.parametrize("to", [CLIENT, SERVER])
def test_share_reveal_round_trip_is_exact(owner, to):
    x = jnp.asarray(EDGE)

    def build(rt, x):
        s = share(rt, rt.input(owner, x), owner, name="x")
        return reveal(s, to).value, s.c.value, s.s.value

    (out, c, s), comm = run_jitted(build, x)
    np.testing.assert_array_equal(np.asarray(out), EDGE)
    np.testing.assert_array_equal(np.asarray(RING64.add(c, s)), EDGE)
    # one message of n ring elements on one link; sharing itself sent nothing
    src, dst = (SERVER, CLIENT) if to == CLIENT else (CLIENT, SERVER)
    assert comm.total_bytes == comm.link_bytes(src, dst) == 8 * EDGE.size
    # revealing to the owner sends the other party's share r, which is input-independent
    # (drawn from the common key): an offline message, no online round. Otherwise one round.
    assert comm.rounds == (0 if owner == to else 1)
    assert comm.online_bytes == (0 if owner == to else 8 * EDGE.size)
    assert set(comm.by_kind()) == {"reveal"}


def test_sharing_sends_nothing():
    def build(rt, x):
        return opened(share(rt, rt.input(CLIENT, x), CLIENT))

    out, comm = run_jitted(build, jnp.asarray(EDGE))
    np.testing.assert_array_equal(np.asarray(out), EDGE)
    assert comm.total_bytes == 0 and comm.rounds == 0


def test_each_share_alone_is_masked():
    """The shares differ from the secret, between keys, and between two sharings in one run."""
    x = jnp.zeros(256, jnp.uint64)

    def build(rt, x):
        a = share(rt, rt.input(CLIENT, x), CLIENT, name="a")
        b = share(rt, rt.input(CLIENT, x), CLIENT, name="b")
        return a.c.value, a.s.value, b.s.value

    (c0, s0, t0), _ = run_jitted(build, x, key=0)
    (c1, s1, _), _ = run_jitted(build, x, key=1)
    c0, s0, t0, s1 = (np.asarray(v) for v in (c0, s0, t0, s1))
    assert np.mean(s0 == 0) < 0.01 and np.mean(c0 == 0) < 0.01  # not the secret
    assert np.mean(s0 == s1) < 0.01  # fresh per key
    assert np.mean(s0 == t0) < 0.01  # fresh per sharing (distinct names)
    np.testing.assert_array_equal(RING64.add(c0, s0), 0)
    # every bit of the server's share is roughly balanced (uniform mask)
    bits = (s0[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.2)


def test_small_ring_and_scale_are_kept():
    ring = Z2k(16)
    v = np.array([0, 1, 2**15 - 1, 2**15, 2**16 - 1], np.uint64)

    def build(rt, x):
        s = share(rt, rt.input(SERVER, x), SERVER, ring=ring, scale=7)
        assert s.ring == ring and s.scale == 7
        return reveal(s, CLIENT).value

    out, comm = run_jitted(build, jnp.asarray(v))
    np.testing.assert_array_equal(np.asarray(out), v)
    assert comm.total_bytes == 2 * v.size  # 16-bit elements on the (compact) wire


def test_bad_parties_are_refused():
    rt = sim_runtime()
    x = rt.input(CLIENT, jnp.asarray(EDGE))
    with pytest.raises(ValueError, match="only the client or the server"):
        share(rt, rt.input(CP, jnp.asarray(EDGE)), CP)
    s = share(rt, x, CLIENT)
    with pytest.raises(ValueError, match="revealed to the client or the server"):
        reveal(s, CP)


def test_shared_refuses_inconsistent_shares():
    rt = sim_runtime()
    a = rt.input(CLIENT, jnp.zeros(3, jnp.uint64))
    b = rt.input(SERVER, jnp.zeros(3, jnp.uint64))
    with pytest.raises(ValueError, match="share shapes differ"):
        Shared(a, rt.input(SERVER, jnp.zeros(4, jnp.uint64)))
    with pytest.raises(ValueError, match="client-held client share"):
        Shared(b, b)  # the client does not hold the first share
    with pytest.raises(ValueError, match="client-held client share"):
        Shared(a, a)
    s = Shared(a, b, RING64, 12, rt)
    assert s.shape == (3,) and s.ndim == 1 and s.size == 3 and s.time == 0
    assert "scale=12" in repr(s)
    assert s.replace(scale=0).scale == 0 and s.scale == 12


def test_shared_is_a_pytree_through_jit():
    rt = sim_runtime()
    s = share(rt, rt.input(CLIENT, jnp.asarray(EDGE)), CLIENT, scale=5)
    leaves, tree = jax.tree_util.tree_flatten(s)
    assert len(leaves) == 2
    back = jax.tree_util.tree_unflatten(tree, leaves)
    assert back.scale == 5 and back.rt is rt and back.ring == s.ring
    assert back.c.times == s.c.times and back.s.times == s.s.times
    doubled = jax.jit(lambda t: jax.tree_util.tree_map(lambda v: v + v, t))(s)
    assert isinstance(doubled, Shared) and doubled.scale == 5
    np.testing.assert_array_equal(np.asarray(opened(doubled)), RING64.add(EDGE, EDGE))


def test_local_map_applies_a_public_linear_map():
    v = u64(np.arange(-6, 6).reshape(3, 4) * (2**40))

    def build(rt, x):
        s = share(rt, rt.input(CLIENT, x), CLIENT, scale=12)
        t = local_map(s, lambda a: a.reshape(4, 3))
        col = local_map(s, lambda a: jnp.sum(a, axis=0, dtype=a.dtype), scale=3)
        assert t.shape == (4, 3) and t.scale == 12 and col.scale == 3
        return opened(t), opened(col)

    (t, col), comm = run_jitted(build, jnp.asarray(v))
    np.testing.assert_array_equal(np.asarray(t), v.reshape(4, 3))
    np.testing.assert_array_equal(np.asarray(col), np.sum(v, axis=0, dtype=np.uint64))
    assert comm.total_bytes == 0


def test_held_of_shares_is_what_each_party_knows():
    rt = sim_runtime()
    s = share(rt, rt.input(SERVER, jnp.asarray(EDGE)), SERVER)
    assert isinstance(s.c, Held) and isinstance(s.s, Held)
    assert s.c.times[CLIENT] is not None and s.s.times[SERVER] is not None
    assert s.c.times[CP] is None and s.s.times[CP] is None  # the crypto provider holds no share
