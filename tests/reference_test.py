"""jaxmpc.protocols.reference: the plaintext fixed-point oracle, and the exact-DReLU window it documents.

What the module guarantees: floor semantics of ``trunc`` and ``div`` on negatives and ring edge
values; the compared value of a reduced-bit DReLU (``floor(x / (d 2^s))`` wrapped to m bits);
``drelu_window``: inside it the reference and the secure DReLU give the true sign at every
boundary, and just outside it the m-bit value wraps, so the window is (nearly) as wide as it can
be; Block ReLU, ReLU and MaxPool agree with the float layers on exact fixed-point inputs.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.core import blocks
from jaxmpc import nn as jnn
from jaxmpc.protocols import reference as ref
from jaxmpc.core.config import ProtocolConfig
from jaxmpc.protocols import compare
from jaxmpc.core.ring import decode, encode

from utils import EDGE_INTS, opened, shared, sim_runtime, signed, u64


def test_trunc_and_div_floor():
    v = np.array([-7, -1, 0, 1, 7, -(2**63), 2**63 - 1], dtype=object)
    got = signed(ref.trunc(u64(v), 1))
    assert got.tolist() == [int(x) // 2 for x in v]  # floor, also on negatives
    d = np.array([2, 3, 4, 5, 6, 7, 8])
    got = signed(ref.div(u64(v), d))
    assert got.tolist() == [int(x) // int(k) for x, k in zip(v, d)]
    assert signed(ref.trunc(u64(EDGE_INTS), 0)).tolist() == EDGE_INTS


@pytest.mark.parametrize("m, s, d", [(64, 0, 1), (16, 0, 1), (16, 3, 1), (8, 0, 4), (32, 2, 9)])
def test_compare_value_wraps_to_m_bits(m, s, d):
    cfg = ProtocolConfig(compare_bits=m, lsb_drop_bits=s)
    x = np.array([0, 1, -1, 2**40, -(2**40), 2**61, -(2**61)], dtype=object)
    got = np.asarray(ref.compare_value(u64(x), cfg, divisor=None if d == 1 else d)).tolist()
    for xi, g in zip(x, got):
        v = int(xi) // (d * 2**s)
        v = ((v + 2 ** (m - 1)) % 2**m) - 2 ** (m - 1)  # signed m-bit wrap
        assert g == v


def test_exact_mode_window():
    cfg = ProtocolConfig()
    assert ref.drelu_window(cfg) == (-(2**63), -1, 0, 2**63 - 2)
    x = u64([-(2**63), -1, 0, 1, 2**63 - 2])
    assert np.asarray(ref.drelu(x, cfg)).tolist() == [0, 0, 1, 1, 1]


CONFIGS = [(16, 0, 1), (16, 3, 1), (12, 2, 1), (16, 0, 4), (16, 2, 9), (8, 0, 1)]


def _boundaries(window):
    neg_lo, neg_hi, pos_lo, pos_hi = window
    inside = [neg_lo, neg_lo + 1, (neg_lo + neg_hi) // 2, neg_hi - 1, neg_hi, pos_lo, pos_lo + 1,
              (pos_lo + pos_hi) // 2, pos_hi - 1, pos_hi]
    return np.array(inside, dtype=object), np.array([int(x) >= 0 for x in inside])


@pytest.mark.parametrize("m, s, d", CONFIGS, ids=[f"m{m}s{s}d{d}" for m, s, d in CONFIGS])
def test_reduced_window_is_exact_at_its_bounds_and_nearly_tight(m, s, d):
    cfg = ProtocolConfig(compare_bits=m, lsb_drop_bits=s)
    window = ref.drelu_window(cfg, divisor=d)
    neg_lo, neg_hi, pos_lo, pos_hi = window
    q = d * 2**s
    assert pos_lo == 0 and neg_hi == (-1 if q == 1 else -q - 1)
    div = None if d == 1 else d
    x, sign = _boundaries(window)
    np.testing.assert_array_equal(np.asarray(ref.drelu(u64(x), cfg, divisor=div)), sign)
    # one quantum outside the window the compared m-bit value wraps: the reference sign is wrong
    wrap_pos, wrap_neg = 2 ** (m - 1) * q, neg_lo - q
    assert np.asarray(ref.drelu(u64([wrap_pos, wrap_neg]), cfg, divisor=div)).tolist() == [0, 1]
    assert wrap_pos - pos_hi <= 2 * q + 1 and neg_lo - wrap_neg == q  # the window is within 2 quanta of it


@pytest.mark.parametrize("m, s, d", [(16, 3, 1), (16, 0, 4), (12, 2, 9)], ids=["m16s3", "m16d4", "m12s2d9"])
def test_secure_drelu_gives_the_true_sign_inside_the_window(m, s, d):
    """The protocol's local truncation adds 0 or 1 at random: check the bounds under several keys."""
    cfg = ProtocolConfig(compare_bits=m, lsb_drop_bits=s)
    x, sign = _boundaries(ref.drelu_window(cfg, divisor=d))
    for key in range(4):
        rt = sim_runtime(cfg, key=key)
        sx = shared(rt, u64(x), scale=0)
        bit = compare.drelu_ring(compare.compare_input(sx, extra_divisor=None if d == 1 else d))
        np.testing.assert_array_equal(np.asarray(opened(bit)), sign.astype(np.uint64))


def test_relu_maxpool_avgpool():
    x = u64([[-(2**62), -3, 0, 5]])
    assert signed(ref.relu(x)).tolist() == [[0, 0, 0, 5]]
    neg = u64(-np.arange(1, 17).reshape(1, 4, 4, 1))
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    pooled = signed(ref.maxpool(neg, (1, 3, 3, 1), (1, 2, 2, 1), pad))
    assert pooled[0, :, :, 0].tolist() == [[-1, -2], [-5, -6]]  # the (zero) padding never wins
    ones = np.ones((1, 3, 3, 1), np.uint64)
    summed = signed(ref.avgpool_sum(ones, (1, 3, 3, 1), (1, 1, 1, 1), pad))
    assert summed[0, :, :, 0].tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]  # zero padding counts nothing


@pytest.mark.parametrize("config", [ProtocolConfig(), ProtocolConfig(compare_bits=32, lsb_drop_bits=2)],
                         ids=["exact", "reduced"])
def test_block_relu_matches_the_float_layer(config):
    rng = np.random.default_rng(0)
    f = 12
    x = rng.integers(-(2**14), 2**14, (2, 7, 5, 6)) / 2.0**f  # exact fixed-point values
    sizes = np.array([(1, 1), (2, 2), (3, 2), (7, 5), (0, 1), (1, 0)], np.int32)
    got = decode(np.asarray(ref.block_relu(encode(x, f), sizes, config)), f)
    want = np.asarray(jnn.block_relu(jnp.asarray(x), sizes))
    if config.exact_compare:
        np.testing.assert_array_equal(got, want)
    else:
        # the reduced compare sees floor(mean / 2^s): patches whose mean is within 2^s ulp below
        # zero may pass; everything else is identical
        diff = got != want
        assert diff.mean() < 0.05
    with pytest.raises(ValueError, match="expected 6 channels"):
        ref.block_relu(encode(x, f), sizes[:5], config)
    assert blocks.drelu_count(7, 5, sizes) == 35 + 4 * 3 + 3 * 3 + 1


def test_block_relu_groups_interleaved_channels_of_one_size():
    # the reference runs channels of one patch size together: interleaved repeats of a size must
    # land on their own channels (checked against a per-channel numpy loop)
    rng = np.random.default_rng(1)
    f = 12
    x = rng.integers(-(2**14), 2**14, (2, 7, 5, 9)) / 2.0**f
    sizes = np.array([(2, 2), (1, 1), (2, 2), (0, 1), (3, 2), (2, 2), (1, 0), (1, 1), (3, 2)], np.int32)
    got = decode(np.asarray(ref.block_relu(encode(x, f), sizes)), f)
    want = np.zeros_like(x)
    for c, (bh, bw) in enumerate(sizes):
        if (bh, bw) == (0, 1):
            want[..., c] = x[..., c]
            continue
        if (bh, bw) == (1, 0):
            continue
        for i in range(0, 7, bh):
            for j in range(0, 5, bw):
                patch = x[:, i:i + bh, j:j + bw, c]
                keep = patch.sum(axis=(1, 2)) >= 0
                want[:, i:i + bh, j:j + bw, c] = patch * keep[:, None, None]
    np.testing.assert_array_equal(got, want)
