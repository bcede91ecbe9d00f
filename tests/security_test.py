"""Security: what each party receives is uniform and independent of the input; data flow is enforced."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.protocols import reference as ref
from jaxmpc.core.config import ProtocolConfig
from jaxmpc.core.parties import CLIENT, CP, SERVER, C_S, owners
from jaxmpc.protocols import compare, linear, nonlinear
from jaxmpc.core.randomness import simulation_keys
from jaxmpc.core.ring import RING64, Zp
from jaxmpc.core.runtime import Runtime, SecurityError
from jaxmpc.core.sharing import reveal, share
import jaxmpc

from utils import opened, run_jitted, run_parties, shared, u64

N = 20000
CHI2_256 = 400.0  # chi-square, 255 dof: P(X > 400) ~ 1e-8
CHI2_67 = 140.0  # 66 dof: P(X > 140) ~ 1e-7


def _transcript(build, values, config, key=0):
    """Runs ``build(rt, x)``; returns (comm, [(ring, value)]) for every protocol message."""
    rings = []

    def b(rt, x):
        rt.transcript = []
        build(rt, x)
        rings[:] = [r for r, _ in rt.transcript]
        return [v for _, v in rt.transcript]

    vals, comm = run_jitted(b, jnp.asarray(values), config=config, key=key)
    return comm, list(zip(rings, [np.asarray(v) for v in vals]))


def _byte_hist(v, bits, which):
    a = np.asarray(v).astype(np.uint64).ravel()
    shift = bits - 8 if which == "top" else 0
    return np.bincount(((a >> np.uint64(shift)) & np.uint64(255)).astype(np.int64), minlength=256)


def _chi2_uniform(counts):
    exp = counts.sum() / len(counts)
    return float(np.sum((counts - exp) ** 2 / exp))


def _chi2_two_sample(c1, c2):
    tot = c1 + c2
    keep = tot > 0
    c1, c2, tot = c1[keep], c2[keep], tot[keep]
    n1, n2 = c1.sum(), c2.sum()
    e1, e2 = tot * n1 / (n1 + n2), tot * n2 / (n1 + n2)
    return float(np.sum((c1 - e1) ** 2 / e1 + (c2 - e2) ** 2 / e2))


def _check_views(build, config):
    """Two very different inputs: every received message is uniform, and distributed the same way."""
    rng = np.random.default_rng(0)
    x_a = np.zeros(N, np.int64)
    x_b = rng.integers(-(2**40), 2**40, N)
    x_b[: N // 2] = -(2**30)  # half large negative, half random
    comm_a, view_a = _transcript(build, u64(x_a), config, key=1)
    comm_b, view_b = _transcript(build, u64(x_b), config, key=2)
    assert comm_a == comm_b  # the record never depends on the data
    checked = 0
    for i, ((ring, va), (_, vb)) in enumerate(zip(view_a, view_b)):
        if isinstance(ring, Zp):
            for v in (va, vb):
                assert _chi2_uniform(np.bincount(v.ravel().astype(np.int64), minlength=67)[:67]) < CHI2_67, i
            assert _chi2_two_sample(np.bincount(va.ravel(), minlength=67), np.bincount(vb.ravel(), minlength=67)) < CHI2_67
        else:
            for which in ("top", "low"):
                ha, hb = _byte_hist(va, ring.bits, which), _byte_hist(vb, ring.bits, which)
                assert _chi2_uniform(ha) < CHI2_256, (i, which)
                assert _chi2_uniform(hb) < CHI2_256, (i, which)
                assert _chi2_two_sample(ha, hb) < CHI2_256, (i, which)
        checked += 1
    assert checked == len(view_a) > 0
    return view_a, view_b


@pytest.mark.parametrize("config", [ProtocolConfig(), ProtocolConfig(nonlinear_protocol="securenn"),
                                    ProtocolConfig(compare_bits=16, lsb_drop_bits=2)], ids=["jaxmpc", "securenn", "16bit"])
def test_relu_views_uniform_and_input_independent(config):
    def build(rt, x):
        nonlinear.relu(shared(rt, x, scale=12))

    _check_views(build, config)


def test_private_compare_view_of_cp():
    """The CP's reconstructed d-vectors: one zero or none (a fair coin, whatever the input), the
    zero at a uniform position, all other entries uniform on Z_67^*."""
    rng = np.random.default_rng(5)
    for values in (np.zeros(N, np.int64), rng.integers(-(2**62), 2**62, N)):
        msgs = []

        def build(rt, x):
            rt.transcript = []
            compare.drelu(shared(rt, x))
            msgs[:] = list(rt.messages)
            return [v for _, v in rt.transcript]

        vals, comm = run_jitted(build, jnp.asarray(u64(values)))
        pcs = [i for i, t in enumerate(msgs) if t.dst == CP and "private_compare" in t.path]
        assert len(pcs) == 4  # two PrivateCompares, client and server messages
        for first in (pcs[0], pcs[2]):
            d = (np.asarray(vals[first]).astype(np.int64) + np.asarray(vals[first + 1])) % 67
            zeros = (d == 0).sum(axis=-1)
            assert set(np.unique(zeros)) <= {0, 1}
            assert abs(zeros.mean() - 0.5) < 0.02
            pos = np.argmax(d == 0, axis=-1)[zeros == 1]
            assert _chi2_uniform(np.bincount(pos, minlength=64).astype(float)) < 150  # 63 dof
            nz = d[d != 0]
            assert _chi2_uniform(np.bincount(nz, minlength=67)[1:67].astype(float)) < CHI2_67


def test_server_weights_linear_views():
    w = np.random.default_rng(1).normal(size=(16, 8))

    def build(rt, x):
        xs = shared(rt, x.reshape(-1, 16)[: N // 16], scale=12)
        import functools
        from jaxmpc.core.ring import ring_dot_general, encode
        op = functools.partial(ring_dot_general, dimension_numbers=(((1,), (0,)), ((), ())))
        linear.bilinear_av(xs, rt.private(SERVER, jnp.asarray(encode(w, 12))), op, scale=12)

    _check_views(build, ProtocolConfig())


# ---- structural: who may read what -------------------------------------------------------------


def test_local_step_cannot_read_other_party_share():
    rt = Runtime(ProtocolConfig(), simulation_keys(jax.random.key(0)))
    x = share(rt, rt.input(CLIENT, jnp.arange(4, dtype=jnp.uint64)), CLIENT)
    with pytest.raises(SecurityError, match="CLIENT cannot read"):
        rt.local(CLIENT, lambda a, b: a + b, x.c, x.s)
    with pytest.raises(SecurityError, match="CP cannot read"):
        rt.local(CP, lambda a: a, x.c)
    with pytest.raises(SecurityError, match="cannot send"):
        rt.send(SERVER, CP, x.c, RING64)
    secret_cs = rt.random(C_S, RING64, (4,), "r")
    with pytest.raises(SecurityError):
        rt.local(CP, lambda a: a, secret_cs)


def test_local_step_cannot_read_other_party_share_through_a_closure():
    """The closure bypass: a CP step that captures both shares (or a Shared, or a C-S key's
    tensor) instead of passing them as arguments is refused, and nothing is returned to send on."""
    rt = Runtime(ProtocolConfig(), simulation_keys(jax.random.key(0)))
    x = share(rt, rt.input(CLIENT, jnp.arange(4, dtype=jnp.uint64)), CLIENT)
    with pytest.raises(SecurityError, match="CP's local step read a value held only by {CLIENT}"):
        rt.local(CP, lambda: x.c.value + x.s.value)
    with pytest.raises(SecurityError, match="SERVER's local step"):
        rt.local(SERVER, lambda s: s + x.c.value, x.s)
    secret_cs = rt.random(C_S, RING64, (4,), "r")
    with pytest.raises(SecurityError, match="CP's local step"):
        rt.local(CP, lambda: secret_cs.value * 2)
    with pytest.raises(SecurityError):  # a pytree of shares captured whole
        rt.local(CP, lambda: jax.tree_util.tree_leaves(x)[0])
    # what a party holds it may read through a closure; outside local steps values are readable
    y = rt.local(CLIENT, lambda: x.c.value + 1)
    np.testing.assert_array_equal(np.asarray(y.value), np.asarray(x.c.value) + 1)
    assert y.owners == {CLIENT}


def test_party_holds_only_its_keys():
    keys = simulation_keys(jax.random.key(0)).restrict(CLIENT)
    assert keys.holds(C_S) and keys.holds(owners(CLIENT)) and not keys.holds(owners(SERVER))
    with pytest.raises(PermissionError):
        keys.get(owners(SERVER, CP))


@pytest.mark.parametrize("op", ["drelu", "relu", "maxpool", "block_relu", "conv"])
def test_each_party_runs_alone_and_matches_simulation(op):
    """Each party runs the protocol in its own thread with only its own keys and inputs
    (placeholders for everything else): results and messages equal the simulation."""
    rng = np.random.default_rng(3)
    x = u64(rng.integers(-(2**30), 2**30, (1, 6, 6, 4)))
    w = jnp.asarray(jaxmpc.core.ring.encode(rng.normal(size=(3, 3, 4, 2)), 12))
    sizes = np.array([(1, 1), (2, 3), (0, 1), (6, 6)], np.int32)

    def protocol(rt, xs):
        if op == "drelu":
            return compare.drelu(xs)
        if op == "relu":
            return nonlinear.relu(xs)
        if op == "maxpool":
            return nonlinear.maxpool(xs, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
        if op == "block_relu":
            return nonlinear.block_relu(xs, sizes)
        import functools
        from jaxmpc.core.ring import ring_conv
        return linear.bilinear_av(xs, rt.private(SERVER, w if rt.holds(SERVER) else jax.ShapeDtypeStruct(w.shape, w.dtype)),
                                  functools.partial(ring_conv, window_strides=(1, 1), padding="SAME"), scale=12)

    def program(rt, x_in):
        val = x_in if x_in is not None else jax.ShapeDtypeStruct(x.shape, jnp.uint64)
        xs = share(rt, rt.input(CLIENT, val), CLIENT, scale=12)
        y = protocol(rt, xs)
        out = reveal(y, CLIENT)
        return out.value if rt.role == CLIENT else None

    results, runtimes = run_parties(program, {CLIENT: jnp.asarray(x)})

    def sim(rt, xv):
        xs = share(rt, rt.input(CLIENT, xv), CLIENT, scale=12)
        return reveal(protocol(rt, xs), CLIENT).value

    want, comm = run_jitted(sim, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(results[CLIENT]), np.asarray(want))
    for p in (CLIENT, SERVER, CP):
        assert runtimes[p].comm() == comm
        assert results[p] is None or p == CLIENT
