"""Opt-in range checks of the plaintext reference (``jaxmpc.protocols.reference``).

The protocols never say when a value leaves the window in which they are exact: a product that
does not fit 64 signed bits wraps, a reduced-bit DReLU input beyond ``drelu_window`` has its
compared value wrap. These tests show both failures are silent in the secure ops and that
``check_range=True`` in the reference refuses exactly those inputs (``RangeError``), with the
per-element flags agreeing with ``drelu_window`` at its boundaries.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmpc
from jaxmpc import ops
from jaxmpc.core.config import ProtocolConfig
from jaxmpc.core.ring import decode, encode
from jaxmpc.protocols import reference as ref

from utils import signed, u64

F = ProtocolConfig().frac_bits


def test_mul_overflow_is_silent_in_the_protocol_and_refused_by_the_check():
    x = np.array([1e6, 3.0, -1e6, 1000.0])
    y = np.array([1e6, -2.0, 1e6, 1000.0])
    got, _ = jaxmpc.simulate(ops.mul, x, y, key=jax.random.key(0))
    got = np.asarray(got)
    assert abs(got[1] + 6.0) < 1e-3 and abs(got[3] - 1e6) < 1e-2  # inside the window: right
    assert abs(got[0] - 1e12) > 1e9 and abs(got[2] + 1e12) > 1e9  # 1e6 * 1e6: silently wrong
    ex, ey = encode(x, F), encode(y, F)
    assert np.asarray(ref.mul_overflows(ex, ey)).tolist() == [True, False, True, False]
    plain = signed(ref.mul(ex, ey, F))  # the unchecked reference wraps like the protocol
    assert plain[1] == -6 * 2**F and plain[0] != 10**12 * 2**F
    with pytest.raises(ref.RangeError, match=r"mul: 2 of 4 elements leave the exact window .*"
                                             r"\|4096000000 \* 4096000000\| = 1.68e\+19"):
        ref.mul(ex, ey, F, check_range=True)
    ok = np.array([1, 3])
    np.testing.assert_array_equal(ref.mul(ex[ok], ey[ok], F, check_range=True), ref.mul(ex[ok], ey[ok], F))
    # a tighter bound also flags products whose secure truncation may fail (probability |v| / 2^64)
    with pytest.raises(ref.RangeError, match="1 of 2 elements"):
        ref.mul(ex[ok], ey[ok], F, check_range=True, max_product=2**40)


def test_mul_flags_are_exact_at_the_ring_edge():
    lim = 2**63 - 1
    a = [3, -3, 2**31, -(2**31), 2**32, -(2**63), -(2**63), 0, 1, -1, (2**63 - 1)]
    b = [lim // 3, lim // 3 + 1, 2**32 - 1, 2**32, 2**31, 1, 0, -(2**63), lim, -lim, -1]
    want = [abs(p * q) > lim for p, q in zip(a, b)]
    assert want == [False, True, False, True, True, True, False, False, False, False, False]
    assert np.asarray(ref.mul_overflows(u64(a), u64(b))).tolist() == want
    assert np.asarray(ref.mul_overflows(u64([5, 5]), u64([8, 9]), max_product=40)).tolist() == [False, True]
    with pytest.raises(ValueError, match="max_product"):
        ref.mul_overflows(u64([1]), u64([1]), max_product=2**63)


def test_reduced_bit_drelu_beyond_the_window_is_silent_and_refused_by_the_check():
    cfg = ProtocolConfig(compare_bits=16)
    x = np.array([7.9, -7.9, 9.0, -9.0, 20.0])  # the 16-bit window at 12 fractional bits is about +-8
    got, _ = jaxmpc.simulate(ops.drelu, x, config=cfg, key=jax.random.key(1))
    assert np.asarray(got).tolist()[:2] == [1.0, 0.0]
    assert np.asarray(got).tolist()[2:] != [1.0, 0.0, 1.0]  # some signs beyond the window come out wrong
    ex = encode(x, F)
    assert np.asarray(ref.drelu_out_of_window(ex, cfg)).tolist() == [False, False, True, True, True]
    with pytest.raises(ref.RangeError, match=r"DReLU: 3 of 5 elements .*compare_bits=16, lsb_drop_bits=0: "
                                             r"input 36864 outside \[-32768, 32766\]"):
        ref.drelu(ex, cfg, check_range=True)
    with pytest.raises(ref.RangeError, match="DReLU"):
        ref.relu(ex, cfg, check_range=True)
    np.testing.assert_array_equal(ref.relu(ex[:2], cfg, check_range=True), ref.relu(ex[:2], cfg))
    ref.drelu(ex, ProtocolConfig(), check_range=True)  # exact mode: all fine


@pytest.mark.parametrize("m, s, d", [(16, 0, 1), (16, 3, 1), (12, 2, 1), (16, 0, 4), (16, 2, 9), (64, 0, 1)])
def test_drelu_flags_match_the_window_boundaries(m, s, d):
    cfg = ProtocolConfig(compare_bits=m, lsb_drop_bits=s)
    neg_lo, neg_hi, pos_lo, pos_hi = ref.drelu_window(cfg, d)
    inside = [neg_lo, neg_lo + 1, neg_hi, pos_lo, pos_hi - 1, pos_hi]
    inside += [v for v in range(neg_hi + 1, pos_lo)]  # the small-negative band is not flagged
    outside = [v for v in (neg_lo - 1, pos_hi + 1, neg_lo - 1000, pos_hi + 1000) if -(2**63) <= v < 2**63]
    divisor = None if d == 1 else np.full(len(inside) + len(outside), d)
    flags = np.asarray(ref.drelu_out_of_window(u64(inside + outside), cfg, divisor)).tolist()
    assert flags == [False] * len(inside) + [True] * len(outside)


def test_block_relu_and_maxpool_checks():
    cfg = ProtocolConfig(compare_bits=16)
    x = np.zeros((1, 4, 4, 2))
    x[0, :2, :2, 0] = 9.0  # reduced mode compares the patch mean: 9 is beyond the window (about +-8)
    x[2:, 2:, 0] = 3.0
    x[0, :, :, 1] = 7.5  # per-pixel ReLU: inside
    ex = encode(x, F)
    sizes = [[2, 2], [1, 1]]
    with pytest.raises(ref.RangeError, match=r"DReLU: 1 of 4 elements .*divisor 4: input 147456 outside"):
        ref.block_relu(ex, sizes, cfg, check_range=True)
    x[0, :2, :2, 0] = 7.0
    ex = encode(x, F)
    np.testing.assert_array_equal(ref.block_relu(ex, sizes, cfg, check_range=True), ref.block_relu(ex, sizes, cfg))
    np.testing.assert_array_equal(ref.block_relu(ex, sizes, ProtocolConfig(), check_range=True),
                                  ref.block_relu(ex, sizes, ProtocolConfig()))
    # MaxPool compares differences inside each window: a spread of 10 leaves the 16-bit window
    p = np.zeros((1, 2, 2, 1))
    p[0, 0, 0, 0], p[0, 1, 1, 0] = 5.0, -5.0
    ep = encode(p, F)
    args = ((1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    with pytest.raises(ref.RangeError, match="MaxPool: 1 of 1 elements .*window spread 40960 > 32766"):
        ref.maxpool(ep, *args, cfg, check_range=True)
    assert decode(np.asarray(ref.maxpool(ep, *args, ProtocolConfig(), check_range=True)), F).tolist() == [[[[5.0]]]]


def test_flags_work_under_jit_and_the_check_needs_concrete_values():
    cfg = ProtocolConfig(compare_bits=16)
    ex = jnp.asarray(encode(np.array([1.0, 9.0]), F))
    flag = jax.jit(lambda v: jnp.any(ref.drelu_out_of_window(v, cfg)))(ex)  # the one overflow bit
    assert bool(flag)
    assert bool(jax.jit(lambda v: jnp.any(ref.mul_overflows(v, v)))(ex)) is False
    with pytest.raises(TypeError, match="check_range=True needs concrete values"):
        jax.jit(lambda v: ref.drelu(v, cfg, check_range=True))(ex)
