"""Rings, fixed point, shifts and exact 64-bit products."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

from jaxmpc.core import ring
from jaxmpc.core.config import ProtocolConfig, require_x64
from jaxmpc.core.ring import ZOdd, Z2k, Zp

from utils import signed, u64

pytestmark = pytest.mark.usefixtures("strict_dtypes")


def test_x64_guard_raises_when_off():
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(RuntimeError, match="jax_enable_x64"):
            require_x64()
    finally:
        jax.config.update("jax_enable_x64", True)
    require_x64()


@pytest.mark.parametrize("frac_bits", [0, 12, 16])
def test_encode_decode_round_trip(frac_bits):
    x = np.array([0.0, 1.0, -1.0, 0.5, -0.25, 1234.5678, -2.0**-frac_bits, 3.0 * 2.0**-frac_bits])
    e = ring.encode(x, frac_bits)
    assert e.dtype == np.uint64
    np.testing.assert_array_equal(ring.decode(e, frac_bits), np.rint(x * 2.0**frac_bits) / 2.0**frac_bits)
    # the traced encoder agrees with the validated one
    np.testing.assert_array_equal(np.asarray(ring.encode_traced(jnp.asarray(x), frac_bits)), e)


def test_encode_limits():
    f = 12
    lim = 2.0**62 / 2**f
    e = ring.encode(np.array([lim, -lim]), f)
    assert list(signed(e)) == [2**62, -(2**62)]
    with pytest.raises(ValueError, match="outside the representable"):
        ring.encode(np.array([0.0, lim * 1.0001]), f)
    with pytest.raises(ValueError, match="non-finite"):
        ring.encode(np.array([1.0, np.nan]), f)
    with pytest.raises(ValueError, match="non-finite"):
        ring.encode(np.array([np.inf]), f)
    with pytest.raises(TypeError):
        ring.encode(np.array(["a"]), f)
    with pytest.raises(TypeError):
        ring.encode(np.array([1 + 2j]), f)


def test_shifts():
    vals = [0, 1, -1, 5, -5, 2**62, -(2**62), 2**63 - 1, -(2**63)]
    u = jnp.asarray(u64(vals))
    for s in (1, 3, 12, 63):
        np.testing.assert_array_equal(signed(ring.arith_shift_right(u, s)), [v >> s for v in vals])
        np.testing.assert_array_equal(np.asarray(ring.logical_shift_right(u, s)), [(v % 2**64) >> s for v in vals])
        np.testing.assert_array_equal(np.asarray(ring.shift_left(u, s)), [(v << s) % 2**64 for v in vals])


@pytest.mark.parametrize("bits", [2, 8, 16, 63, 64])
def test_odd_ring_arithmetic(bits):
    r = ZOdd(bits)
    n = r.modulus
    rng = np.random.default_rng(bits)
    a = [int(v) for v in rng.integers(0, 2**62, 200)] + [0, 1, n - 1, n - 2, n // 2]
    b = [int(v) for v in rng.integers(0, 2**62, 200)] + [n - 1, n - 1, n - 1, 1, n // 2 + 1]
    a = [v % n for v in a]
    b = [v % n for v in b]
    A, B = jnp.asarray(u64(a)), jnp.asarray(u64(b))
    np.testing.assert_array_equal(np.asarray(r.add(A, B)), u64([(x + y) % n for x, y in zip(a, b)]))
    np.testing.assert_array_equal(np.asarray(r.sub(A, B)), u64([(x - y) % n for x, y in zip(a, b)]))
    np.testing.assert_array_equal(np.asarray(r.neg(A)), u64([(-x) % n for x in a]))
    rnd = np.asarray(r.random(jax.random.key(0), (1000,)))
    assert np.all(rnd.astype(object) < n)


@pytest.mark.parametrize("bits", [1, 16, 64])
def test_z2k(bits):
    r = Z2k(bits)
    x = r.random(jax.random.key(1), (1000,))
    assert np.all(np.asarray(x).astype(object) < 2**bits)
    a, b = jnp.asarray(u64([2**bits - 1, 5])), jnp.asarray(u64([1, 2**bits - 3]))
    np.testing.assert_array_equal(np.asarray(r.add(a, b)), u64([0, 2 % 2**bits]))


def test_zp_uniform_and_nonzero():
    z = Zp(67)
    v = np.asarray(z.random(jax.random.key(0), (67 * 3000,)))
    counts = np.bincount(v, minlength=67)
    assert counts.shape == (67,) and v.max() < 67
    # chi-square, 66 dof: 99.9% quantile ~ 107
    exp = len(v) / 67
    assert np.sum((counts - exp) ** 2 / exp) < 107
    nz = np.asarray(z.random_nonzero(jax.random.key(1), (10000,)))
    assert nz.min() >= 1 and nz.max() <= 66
    a, b = jnp.asarray(np.uint16([66, 5, 0])), jnp.asarray(np.uint16([66, 62, 0]))
    np.testing.assert_array_equal(np.asarray(z.add(a, b)), [65, 0, 0])
    np.testing.assert_array_equal(np.asarray(z.mul(a, b)), [1, 310 % 67, 0])
    np.testing.assert_array_equal(np.asarray(z.sub(b, a)), [0, 57, 0])


def _ref_dot(a, b):
    return (a.astype(object) @ b.astype(object)) % 2**64


@pytest.mark.parametrize("method", ["native", "limbs"])
def test_ring_matmul_exact(method):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**64, (7, 33), dtype=np.uint64)
    b = rng.integers(0, 2**64, (33, 5), dtype=np.uint64)
    b[0, 0] = 2**64 - 1
    out = np.asarray(ring.ring_matmul(jnp.asarray(a), jnp.asarray(b), method=method))
    np.testing.assert_array_equal(out.astype(object), _ref_dot(a, b))


def _conv_ref(x, w, stride, padding, dilation, groups):
    """Exact reference: float-free loops through numpy object arrays via lax on int64 limbs."""
    # use the native uint64 XLA conv as the oracle after checking it against object arithmetic
    return np.asarray(
        lax.conv_general_dilated(
            jnp.asarray(x), jnp.asarray(w), stride, padding, rhs_dilation=dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
            preferred_element_type=jnp.uint64,
        )
    )


def test_native_conv_matches_object_arithmetic():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**64, (1, 4, 4, 2), dtype=np.uint64)
    w = rng.integers(0, 2**64, (3, 3, 2, 3), dtype=np.uint64)
    out = _conv_ref(x, w, (1, 1), "VALID", (1, 1), 1)
    xo, wo = x.astype(object), w.astype(object)
    ref = np.zeros((1, 2, 2, 3), dtype=object)
    for i in range(2):
        for j in range(2):
            patch = xo[0, i:i + 3, j:j + 3, :]
            for o in range(3):
                ref[0, i, j, o] = int(np.sum(patch * wo[:, :, :, o])) % 2**64
    np.testing.assert_array_equal(out.astype(object), ref)


@given(
    n=st.integers(1, 2), h=st.integers(3, 9), w=st.integers(3, 9), cin_g=st.integers(1, 3), groups=st.integers(1, 3),
    cout_g=st.integers(1, 3), k=st.integers(1, 3), stride=st.integers(1, 3), dilation=st.integers(1, 2),
    pad=st.sampled_from(["SAME", "VALID", 1, 0]), seed=st.integers(0, 2**31),
)
def test_ring_conv_limbs_equal_native(n, h, w, cin_g, groups, cout_g, k, stride, dilation, pad, seed):
    if (k - 1) * dilation + 1 > min(h, w) and pad == "VALID":
        return
    rng = np.random.default_rng(seed)
    cin, cout = cin_g * groups, cout_g * groups
    x = rng.integers(0, 2**64, (n, h, w, cin), dtype=np.uint64)
    kern = rng.integers(0, 2**64, (k, k, cin_g, cout), dtype=np.uint64)
    padding = ((pad, pad), (pad, pad)) if isinstance(pad, int) else pad
    kw = dict(window_strides=(stride, stride), padding=padding, rhs_dilation=(dilation, dilation),
              feature_group_count=groups)
    a = ring.ring_conv(x, kern, method="native", **kw)
    b = ring.ring_conv(x, kern, method="limbs", **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), _conv_ref(x, kern, (stride, stride), padding, (dilation, dilation), groups))


@given(
    n=st.integers(1, 2), h=st.integers(3, 7), cin_g=st.integers(1, 3), groups=st.integers(1, 2),
    cout_g=st.integers(1, 3), k=st.integers(1, 3), stride=st.integers(1, 2),
    log_w=st.sampled_from([0, 8, 20, 27, 40, 63]), seed=st.integers(0, 2**31),
)
def test_ring_conv_signed_rhs_equals_native(n, h, cin_g, groups, cout_g, k, stride, log_w, seed):
    """Exact for every kernel: small ones take the float64 path, large ones (2^40, 2^63) the fallback."""
    rng = np.random.default_rng(seed)
    cin, cout = cin_g * groups, cout_g * groups
    x = rng.integers(0, 2**64, (n, h, h, cin), dtype=np.uint64)
    kern = rng.integers(-(2**log_w), 2**log_w, (k, k, cin_g, cout), dtype=np.int64).view(np.uint64)
    kw = dict(window_strides=(stride, stride), padding="SAME", feature_group_count=groups)
    want = _conv_ref(x, kern, (stride, stride), "SAME", (1, 1), groups)
    got = jax.jit(lambda a, b: ring.ring_conv(a, b, method="signed_rhs", **kw))(x, kern)
    np.testing.assert_array_equal(np.asarray(got), want)


def _edge_kernel(l1: int, cin: int = 4, cout: int = 3):
    """A 3x3 kernel whose first output channel has sum |w| == l1 (signs mixed, one -2^k entry)."""
    kern = np.zeros((3, 3, cin, cout), np.int64)
    flat = kern[..., 0].reshape(-1)
    q, r = divmod(l1, flat.size)
    flat[:] = q
    flat[0] += r
    flat[1::2] *= -1
    kern[..., 0] = flat.reshape(3, 3, cin)
    kern[..., 1] = -(2**20)
    return kern.view(np.uint64)


@pytest.mark.parametrize("l1", [2**31 - 1, 2**31])
def test_signed_rhs_bound_is_exact_at_the_edge(l1):
    """All-ones inputs (every 22-bit limb at its maximum) against a kernel at the bound: the float64
    path is taken up to sum |w| = 2^31 - 1 and is exact there; at 2^31 the fallback runs. The
    fallback here returns zeros, so which branch ran is visible."""
    x = np.full((1, 5, 5, 4), 2**64 - 1, np.uint64)
    kern = _edge_kernel(l1)
    conv = lambda a, b: lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                 precision=lax.Precision.HIGHEST)
    zeros = lambda a, b: jnp.zeros((1, 5, 5, 3), jnp.uint64)
    got = ring._signed_rhs_product(conv, jnp.asarray(x), jnp.asarray(kern), (0, 1, 2), lhs_batch=0, out_batch=0,
                                   fallback=zeros)
    want = _conv_ref(x, kern, (1, 1), "SAME", (1, 1), 1)
    if l1 < 2**31:
        np.testing.assert_array_equal(np.asarray(got), want)
    else:
        assert not np.asarray(got).any()
    full = ring.ring_conv(x, kern, window_strides=(1, 1), padding="SAME", method="signed_rhs")
    np.testing.assert_array_equal(np.asarray(full), want)


def test_ring_dot_signed_rhs_equals_native_with_extreme_entries():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2**64, (5, 37), dtype=np.uint64)
    a[0] = 2**64 - 1
    dn = (((1,), (0,)), ((), ()))
    for b in (rng.integers(-(2**20), 2**20, (37, 6)).astype(np.int64).view(np.uint64),
              np.full((37, 6), 2**63, np.uint64),  # -2^63: the fallback
              rng.integers(0, 2**64, (37, 6), dtype=np.uint64)):
        want = ring.ring_dot_general(jnp.asarray(a), jnp.asarray(b), dn, method="native")
        got = ring.ring_dot_general(jnp.asarray(a), jnp.asarray(b), dn, method="signed_rhs")
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_with_default_method_only_fills_an_unset_method():
    import functools

    op = functools.partial(ring.ring_conv, window_strides=(1, 1), padding="SAME")
    assert ring.with_default_method(op, "signed_rhs").keywords["method"] == "signed_rhs"
    pinned = functools.partial(op, method="limbs")
    assert ring.with_default_method(pinned, "signed_rhs") is pinned
    other = lambda a, b: a * b
    assert ring.with_default_method(other, "signed_rhs") is other
    with pytest.raises(ValueError, match="unknown method"):
        ring.ring_conv(jnp.zeros((1, 3, 3, 1), jnp.uint64), jnp.zeros((1, 1, 1, 1), jnp.uint64),
                       window_strides=(1, 1), padding="SAME", method="fast")


def test_limb_contraction_limit():
    with pytest.raises(ValueError, match="too large"):
        ring.ring_dot_general(jnp.zeros((1, 2**20), jnp.uint64), jnp.zeros((2**20, 1), jnp.uint64),
                              (((1,), (0,)), ((), ())), method="limbs")


def test_config_validation():
    with pytest.raises(ValueError, match="compare_bits"):
        ProtocolConfig(compare_bits=65)
    with pytest.raises(ValueError, match="<= 64"):
        ProtocolConfig(compare_bits=60, lsb_drop_bits=8)
    with pytest.raises(TypeError):
        ProtocolConfig(frac_bits=12.0)
    with pytest.raises(ValueError, match="linear_protocol"):
        ProtocolConfig(linear_protocol="magic")
    assert hash(ProtocolConfig()) == hash(ProtocolConfig())
    assert ProtocolConfig.reference().linear_protocol == "shared_weights"


def test_scheduled_after_keeps_values_and_survives_xla():
    """The scheduling edge is exact (adds a zero XLA cannot fold) for edge values and any dtype of
    dependency, and XLA keeps it (the popcount is in the compiled program)."""
    v = jnp.asarray(np.array([0, 1, 2**63, 2**64 - 1], np.uint64))
    for dep in (jnp.asarray(np.array([2**64 - 1], np.uint64)), jnp.asarray([np.nan, 1.0]), jnp.asarray([True]),
                jnp.asarray(np.array([7], np.uint32))):
        out = jax.jit(ring.scheduled_after)(v, dep)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(v))
        assert out.dtype == v.dtype
    floats = jnp.asarray([1.5, -2.0])  # non-integer values pass unchanged
    np.testing.assert_array_equal(np.asarray(ring.scheduled_after(floats, v)), np.asarray(floats))
    compiled = jax.jit(ring.scheduled_after).lower(v, v).compile().as_text()
    assert "popcnt" in compiled


def test_limb_products_of_a_conv_chain_split_each_kernel_just_in_time():
    """Memory: in a chain of limb convolutions the kernels (inputs, available at the start) are
    split into float64 limbs only when their layer runs. Untied, XLA split all six at once
    (27 MiB of temp, measured); tied, about one layer's limbs (4.7 MiB)."""
    layers, c = 6, 128

    def chain(x, ws):
        for w in ws:
            x = ring.ring_conv(x, w, window_strides=(1, 1), padding="SAME", method="limbs")
        return x

    x = jax.ShapeDtypeStruct((1, 4, 4, c), jnp.uint64)
    ws = [jax.ShapeDtypeStruct((3, 3, c, c), jnp.uint64)] * layers
    temp = jax.jit(chain).lower(x, ws).compile().memory_analysis().temp_size_in_bytes
    one_layer_limbs = 4 * 9 * c * c * 8
    assert temp < 2 * one_layer_limbs, (temp, one_layer_limbs)


@pytest.mark.parametrize("nonzero", [False, True])
def test_packed_z67_digits_equal_the_big_integer_definition(nonzero):
    """Each pair of words (h, l) gives the first k base-q digits of (h 2^64 + l) / 2^128, exactly
    as Python's integers compute them, including all-zero and all-one words."""
    zp = Zp(67)
    q = 66 if nonzero else 67
    k = zp.digits_per_pair(nonzero)
    assert k == 12 and q**k <= 2 ** (128 - ring.PACKED_SECURITY_BITS) < q ** (k + 1)
    rng = np.random.default_rng(5)
    groups = 40
    hi = rng.integers(0, 2**64, groups, dtype=np.uint64)
    lo = rng.integers(0, 2**64, groups, dtype=np.uint64)
    hi[:3] = [0, 2**64 - 1, 2**64 - 1]
    lo[:3] = [0, 2**64 - 1, 0]
    n = groups * k - 5  # a partial last group
    assert zp.packed_words(n, nonzero=nonzero) == 2 * groups
    got = np.asarray(zp.from_packed_words(jnp.asarray(np.concatenate([hi, lo])), n, nonzero=nonzero))
    expect = np.zeros((k, groups), np.int64)
    for g in range(groups):
        v = (int(hi[g]) * 2**64 + int(lo[g])) * q**k >> 128  # floor(W q^k / 2^128)
        for j in range(k):  # most significant digit first
            expect[j, g] = (v // q ** (k - 1 - j)) % q
    expect = expect.reshape(-1)[:n] + (1 if nonzero else 0)
    np.testing.assert_array_equal(got, expect)
    assert got.dtype == np.uint16


def test_packed_z67_digits_are_uniform():
    """Chi-square of 1.2M packed digits, and of adjacent digit pairs, against uniform on Z_67."""
    from scipy import stats

    words = jax.random.bits(jax.random.key(3), (2 * 100_000,), jnp.uint64)
    d = np.asarray(Zp(67).from_packed_words(words, 1_200_000)).astype(np.int64)
    counts = np.bincount(d, minlength=67)
    assert counts.size == 67 and stats.chisquare(counts).pvalue > 1e-4
    pairs = np.bincount(d[:-1:2] * 67 + d[1::2], minlength=67 * 67)
    assert stats.chisquare(pairs).pvalue > 1e-4
