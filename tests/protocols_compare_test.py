"""PrivateCompare, ShareConvert, MSB and DReLU: exact against plaintext, including edge values."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.protocols import reference as ref
from jaxmpc.core.config import ProtocolConfig
from jaxmpc.core.parties import C_S, CLIENT, SERVER
from jaxmpc.protocols import compare, nonlinear
from jaxmpc.core.ring import Z67, Z2k, ZOdd
from jaxmpc.core.sharing import Shared

from utils import EDGE_INTS, opened, run_jitted, shared, signed, u64

pytestmark = pytest.mark.usefixtures("strict_dtypes")

VARIANTS = [ProtocolConfig(), ProtocolConfig(nonlinear_protocol="securenn"), ProtocolConfig(permutation="uniform")]
VARIANT_IDS = ["jaxmpc", "securenn", "uniform-perm"]


def _bits(v, m):
    return ((np.asarray(v, np.uint64)[..., None] >> np.arange(m, dtype=np.uint64)) & np.uint64(1)).astype(np.uint16)


def _pc(x, r, beta, m, gt=None, config=ProtocolConfig(), key=0):
    """Runs PrivateCompare on a fresh bit-sharing of x (made in the clear by the test)."""
    rng = np.random.default_rng(key)
    bits = _bits(x, m)
    xb_c = rng.integers(0, 67, bits.shape).astype(np.uint16)
    xb_s = ((bits.astype(np.int64) - xb_c) % 67).astype(np.uint16)

    def build(rt, xb_c, xb_s, r, beta, gt):
        hr = rt.local(C_S, lambda v: v, rt.public(r))
        hb = rt.local(C_S, lambda v: v, rt.public(beta))
        hg = None if gt is None else rt.local(C_S, lambda v: v, rt.public(gt))
        out = compare.private_compare(rt, rt.input(CLIENT, xb_c), rt.input(SERVER, xb_s), hr, hb, m, gt_always=hg)
        return out.value

    gt_arg = None if gt is None else jnp.asarray(gt)
    out, comm = run_jitted(build, jnp.asarray(xb_c), jnp.asarray(xb_s), jnp.asarray(r), jnp.asarray(beta), gt_arg,
                           config=config, key=key)
    return np.asarray(out), comm


@pytest.mark.parametrize("config", [ProtocolConfig(), ProtocolConfig(permutation="uniform")], ids=["cyclic", "uniform"])
def test_private_compare_exhaustive_4_bits(config):
    m = 4
    xs, rs, bs, gs = zip(*itertools.product(range(16), range(16), (0, 1), (False, True)))
    x, r = u64(xs), u64(rs)
    beta, gt = np.asarray(bs, np.uint64), np.asarray(gs)
    out, comm = _pc(x, r, beta, m, gt, config)
    truth = np.where(gt, 1, (x > r).astype(np.uint64))
    np.testing.assert_array_equal(out, beta ^ truth)
    assert comm.total_bytes == 2 * m * len(x) and comm.rounds == 1


def test_private_compare_64_bits_edges():
    m = 64
    rng = np.random.default_rng(0)
    edge = [0, 1, 2**63, 2**64 - 1, 2**64 - 2, 2**32]
    pairs = [(a, b) for a in edge for b in edge] + [(int(a), int(a)) for a in rng.integers(0, 2**63, 20)]
    rand = [(int(a), int(b)) for a, b in rng.integers(0, 2**64, (500, 2), dtype=np.uint64)]
    near = [(int(a), int(a) + d) for a in rng.integers(0, 2**62, 50) for d in (-1, 1)]
    xs, rs = zip(*(pairs + rand + near))
    x, r = u64(xs), u64(rs)
    for beta in (0, 1):
        b = np.full(len(x), beta, np.uint64)
        out, _ = _pc(x, r, b, m, key=beta)
        np.testing.assert_array_equal(out, b ^ (x > r).astype(np.uint64))


def _share_convert(values, m, config=ProtocolConfig(), key=0):
    def build(rt, v):
        a = shared(rt, v, ring=Z2k(m))
        y = compare.share_convert(a)
        return y.c.value, y.s.value

    (yc, ys), comm = run_jitted(build, jnp.asarray(values), config=config, key=key)
    n = 2**m - 1
    return (np.asarray(yc).astype(object) + np.asarray(ys).astype(object)) % n, comm


@pytest.mark.parametrize("m", [2, 8])
def test_share_convert_exhaustive(m):
    vals = np.arange(2**m, dtype=np.uint64).repeat(8)  # every value, several random sharings
    got, _ = _share_convert(vals, m)
    np.testing.assert_array_equal(got, vals.astype(object) % (2**m - 1))


@pytest.mark.parametrize("m", [16, 64])
def test_share_convert_random_and_edges(m):
    rng = np.random.default_rng(m)
    edge = [0, 1, 2, 2 ** (m - 1) - 1, 2 ** (m - 1), 2**m - 2, 2**m - 1]
    vals = np.concatenate([u64(edge * 50), rng.integers(0, 2**m - 1, 20000, dtype=np.uint64, endpoint=True)])
    got, comm = _share_convert(vals, m)
    np.testing.assert_array_equal(got, vals.astype(object) % (2**m - 1))
    assert comm.rounds == 4


def _msb(values, m, config, key=0):
    def build(rt, v):
        a = shared(rt, v, ring=ZOdd(m))
        b = compare.msb(a)
        return b.c.value, b.s.value

    (bc, bs), comm = run_jitted(build, jnp.asarray(values), config=config, key=key)
    return np.asarray(bc) + np.asarray(bs), comm


@pytest.mark.parametrize("config", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("m", [3, 8, 64])
def test_msb_exact(config, m):
    n = 2**m - 1
    if m <= 8:
        vals = np.arange(n, dtype=np.uint64).repeat(16)
    else:
        rng = np.random.default_rng(3)
        edge = u64([0, 1, 2**63 - 1, 2**63, 2**64 - 2, 2**62])
        vals = np.concatenate([edge.repeat(20), rng.integers(0, n, 5000, dtype=np.uint64)])
    got, comm = _msb(vals, m, config)
    np.testing.assert_array_equal(got, (vals >= np.uint64(2 ** (m - 1))).astype(np.uint64))
    assert comm.rounds == (3 if config.nonlinear_protocol == "jaxmpc" else 4)


def _drelu(ring_values, config, key=0):
    def build(rt, v):
        b = compare.drelu(shared(rt, v))
        return b.c.value + b.s.value

    out, comm = run_jitted(build, jnp.asarray(ring_values), config=config, key=key)
    return np.asarray(out), comm


def _edge_values():
    base = []
    for v in EDGE_INTS:
        base += [v, v + 1, v - 1]
    base = [v for v in base if -(2**63) <= v <= 2**63 - 2]
    return u64(base * 20)


def test_drelu_million_random_and_edges_exact():
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 2**64, 10**6, dtype=np.uint64, endpoint=False)
    rand[rand == np.uint64(2**63 - 1)] = 0  # the one unrepresentable value (never encoded)
    vals = np.concatenate([_edge_values(), rand])
    got, comm = _drelu(vals, ProtocolConfig())
    want = (signed(vals) >= 0).astype(np.uint64)
    assert int(np.sum(got != want)) == 0
    assert comm.total_bytes == 440 * len(vals)


@pytest.mark.parametrize("config", VARIANTS[1:], ids=VARIANT_IDS[1:])
def test_drelu_exact_variants(config):
    rng = np.random.default_rng(1)
    rand = rng.integers(-(2**62), 2**62, 50000)
    vals = np.concatenate([_edge_values(), u64(rand)])
    got, _ = _drelu(vals, config)
    np.testing.assert_array_equal(got, (signed(vals) >= 0).astype(np.uint64))


def test_drelu_only_failure_is_documented_value():
    got, _ = _drelu(u64([2**63 - 1] * 4), ProtocolConfig())
    assert list(got) == [0, 0, 0, 0]  # 2^63 - 1 aliases 0 in Z_{2^64 - 1}: documented exception


@pytest.mark.parametrize("m,s", [(16, 0), (16, 4), (20, 5), (32, 0), (8, 2)])
def test_reduced_bit_drelu_window(m, s):
    cfg = ProtocolConfig(compare_bits=m, lsb_drop_bits=s)
    neg_lo, neg_hi, pos_lo, pos_hi = ref.drelu_window(cfg)
    rng = np.random.default_rng(m * 100 + s)
    inside = np.concatenate([
        rng.integers(neg_lo, neg_hi + 1, 20000), rng.integers(pos_lo, pos_hi + 1, 20000),
        np.array([neg_lo, neg_lo + 1, neg_hi, neg_hi - 1, pos_lo, pos_lo + 1, pos_hi, pos_hi - 1] * 30),
    ])
    got, comm = _drelu(u64(inside), cfg)
    np.testing.assert_array_equal(got, (inside >= 0).astype(np.uint64))
    # outside the window the compared value wraps: the (deterministic) sign is the reference's,
    # far from the truncation boundary, and it is wrong for the first values past pos_hi.
    q = 2**s
    beyond = np.array([pos_hi + 2 + q * k for k in range(2, 50)] + [neg_lo - q * k for k in range(2, 50)])
    got_b, _ = _drelu(u64(beyond), cfg, key=1)
    want_b = np.asarray(ref.drelu(u64(beyond), cfg))
    np.testing.assert_array_equal(got_b, want_b)
    assert np.all(want_b[: 48] == 0)  # positive values just above the window read as negative
    # just below zero (within one quantum q) the truncation may report a nonnegative sign
    small = np.arange(neg_hi + 1, 0)
    if small.size:
        got_s, _ = _drelu(u64(np.repeat(small, 10)), cfg, key=2)
        assert set(np.unique(got_s)) <= {0, 1}
    # bytes: 6w + 6m + 8 per DReLU, w = compact wire width
    w = {8: 1, 16: 2, 20: 4, 32: 4}[m]
    assert comm.select(kind="drelu").total_bytes == (6 * w + 6 * m + 8) * len(inside)


@pytest.mark.parametrize("config", VARIANTS, ids=VARIANT_IDS)
def test_relu_exact(config):
    rng = np.random.default_rng(5)
    vals = np.concatenate([_edge_values(), u64(rng.integers(-(2**40), 2**40, 20000))])

    def build(rt, v):
        y = nonlinear.relu(shared(rt, v, scale=12))
        return y.c.value + y.s.value

    out, comm = run_jitted(build, jnp.asarray(vals), config=config)
    np.testing.assert_array_equal(np.asarray(out), np.where(signed(vals) >= 0, vals, 0))
    per = 464 if config.nonlinear_protocol == "jaxmpc" else 536
    assert comm.total_bytes == per * len(vals)
    assert comm.rounds == (7 if config.nonlinear_protocol == "jaxmpc" else 9)


def test_select_share():
    rng = np.random.default_rng(7)
    n = 1000
    x, y = u64(rng.integers(-(2**40), 2**40, n)), u64(rng.integers(-(2**40), 2**40, n))
    d = u64(rng.integers(-(2**20), 2**20, n))
    for config in VARIANTS[:2]:
        def build(rt, x, y, d):
            b = compare.drelu(shared(rt, d, name="d"))
            z = nonlinear.select_share(b, shared(rt, x, name="x"), shared(rt, y, name="y"))
            return z.c.value + z.s.value

        out, _ = run_jitted(build, jnp.asarray(x), jnp.asarray(y), jnp.asarray(d), config=config)
        np.testing.assert_array_equal(np.asarray(out), np.where(signed(d) >= 0, y, x))


def test_shared_type_checks():
    def build(rt, v):
        a = shared(rt, v)
        with pytest.raises(TypeError, match="Z_2"):
            compare.share_convert(Shared(a.c, a.s, ZOdd(64), 0, rt))
        with pytest.raises(TypeError, match="Z_\\(2"):
            compare.msb(a)
        return v

    run_jitted(build, jnp.asarray(u64([1, 2])))


@pytest.mark.parametrize("m", [1, 2, 4, 7, 14, 16, 64])
def test_rotation_by_bits_equals_the_index_gather(m):
    """PrivateCompare's cyclic permutation: rolls by the bits of k equal d[(i + k) mod m], for every k."""
    rng = np.random.default_rng(m)
    k = np.tile(np.arange(m, dtype=np.uint32), 3)
    d = rng.integers(0, 67, (k.size, m)).astype(np.uint16)
    expect = np.take_along_axis(d, (np.arange(m)[None, :] + k[:, None].astype(np.int64)) % m, axis=-1)
    got = np.asarray(compare.rotate_last_axis(jnp.asarray(d), jnp.asarray(k), m))
    np.testing.assert_array_equal(got, expect)
