"""MaxPool and Block ReLU: exact against the plaintext fixed-point reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.core import blocks
from jaxmpc.protocols import reference as ref
from jaxmpc.core.config import ProtocolConfig
from jaxmpc.protocols import nonlinear

from utils import opened, run_jitted, shared, signed, u64

pytestmark = pytest.mark.usefixtures("strict_dtypes")


@pytest.mark.parametrize("schedule", ["tree", "sequential"])
@pytest.mark.parametrize(
    "window,strides,padding",
    [
        ((1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))),
        ((1, 2, 2, 1), (1, 2, 2, 1), "VALID"),
        ((1, 3, 2, 1), (1, 1, 2, 1), "SAME"),
        ((1, 5, 5, 1), (1, 3, 3, 1), ((0, 0), (2, 2), (2, 2), (0, 0))),
        ((1, 1, 1, 1), (1, 1, 1, 1), "VALID"),
    ],
)
def test_maxpool_exact(schedule, window, strides, padding):
    if schedule == "sequential" and np.prod(window) > 9:
        pytest.skip("sequential schedule checked on windows up to 3x3 (compile time grows with k)")
    cfg = ProtocolConfig(maxpool_schedule=schedule)
    rng = np.random.default_rng(0)
    v = rng.integers(-(2**30), 2**30, (2, 7, 6, 3))
    v[0, 0, 0, 0] = -(2**40)  # a very negative value next to the padding
    x = u64(v)

    def build(rt, x):
        return opened(nonlinear.maxpool(shared(rt, x, scale=12), window, strides, padding))

    got, comm = run_jitted(build, jnp.asarray(x), config=cfg)
    want = ref.maxpool(jnp.asarray(x), window, strides, padding)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    k = int(np.prod(window))
    n_out = int(np.prod(want.shape))
    assert comm.select(kind="drelu").total_bytes == 440 * (k - 1) * n_out
    levels = (k - 1) if schedule == "sequential" else int(np.ceil(np.log2(k)))
    assert comm.rounds == 7 * levels


def _random_sizes(rng, c, h, w):
    options = [(1, 1), (0, 1), (1, 0), (2, 2), (3, 2), (h, w), (h + 3, 1), (1, w), (5, 5), (2, 7)]
    return np.array([options[i] for i in rng.integers(0, len(options), c)], np.int32)


@pytest.mark.parametrize("h,w", [(7, 5), (8, 8), (1, 1), (3, 9)])
def test_block_relu_exact(h, w):
    rng = np.random.default_rng(h * 10 + w)
    c = 12
    sizes = _random_sizes(rng, c, h, w)
    sizes[:4] = [(1, 1), (0, 1), (1, 0), (2, 2)]
    v = rng.integers(-(2**20), 2**20, (3, h, w, c))
    v[0, :, :, 3] = 0  # a patch whose mean is exactly 0 passes (>= 0)
    x = u64(v)

    def build(rt, x):
        return opened(nonlinear.block_relu(shared(rt, x, scale=12), sizes))

    got, comm = run_jitted(build, jnp.asarray(x))
    want = ref.block_relu(jnp.asarray(x), sizes)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    n_drelu = 3 * blocks.drelu_count(h, w, sizes)
    n_mult = 3 * blocks.mult_count(h, w, sizes)
    assert comm.select(kind="drelu").total_bytes == 440 * n_drelu
    assert comm.select(kind="mult").total_bytes == 24 * n_mult
    assert comm.rounds == (7 if n_drelu else 0)


def test_block_relu_reduced_bits_inside_window():
    cfg = ProtocolConfig(compare_bits=16, lsb_drop_bits=3)
    rng = np.random.default_rng(3)
    h, w, c = 6, 6, 6
    sizes = np.array([(1, 1), (2, 2), (3, 2), (0, 1), (6, 6), (4, 4)], np.int32)
    # values whose patch means stay inside the window [-(2^15 - 1) 2^3, (2^15 - 1) 2^3 - 1] and
    # away from [0, 8) (where the local truncation may flip the sign)
    mag = rng.integers(8 * 4, 2**17, (2, h, w, c))
    sign = rng.choice([-1, 1], (2, h, w, c))
    v = mag * sign
    # make every patch uniform in sign so the patch mean is far from 0
    for ch, (bh, bw) in enumerate(sizes):
        if bh == 0:
            continue
        for i in range(0, h, bh):
            for j in range(0, w, bw):
                v[:, i:i + bh, j:j + bw, ch] = np.abs(v[:, i:i + bh, j:j + bw, ch]) * sign[:, i:i + 1, j:j + 1, ch]
    x = u64(v)

    def build(rt, x):
        return opened(nonlinear.block_relu(shared(rt, x, scale=12), sizes))

    got, comm = run_jitted(build, jnp.asarray(x), config=cfg)
    want = ref.block_relu(jnp.asarray(x), sizes, cfg)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # reference = true sign inside the window
    exact = ref.block_relu(jnp.asarray(x), sizes, ProtocolConfig())
    np.testing.assert_array_equal(np.asarray(want), np.asarray(exact))
    assert comm.select(kind="drelu").total_bytes == (6 * 2 + 6 * 16 + 8) * 2 * blocks.drelu_count(h, w, sizes)


def test_block_relu_rejects_bad_sizes():
    def build(rt, x):
        return opened(nonlinear.block_relu(shared(rt, x), np.array([[2, 0], [1, 1]])))

    with pytest.raises(ValueError, match="channel 0"):
        run_jitted(build, jnp.zeros((1, 4, 4, 2), jnp.uint64))

    def build2(rt, x):
        return opened(nonlinear.block_relu(shared(rt, x), np.ones((3, 2), np.int32)))

    with pytest.raises(ValueError, match="2 channels"):
        run_jitted(build2, jnp.zeros((1, 4, 4, 2), jnp.uint64))


def test_securenn_block_relu_costs():
    cfg = ProtocolConfig.reference()
    rng = np.random.default_rng(4)
    h, w, c = 5, 5, 4
    sizes = np.array([(1, 1), (2, 2), (0, 1), (5, 5)], np.int32)
    x = u64(rng.integers(-(2**20), 2**20, (1, h, w, c)))

    def build(rt, x):
        return opened(nonlinear.block_relu(shared(rt, x, scale=12), sizes))

    got, comm = run_jitted(build, jnp.asarray(x), config=cfg)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref.block_relu(jnp.asarray(x), sizes)))
    nb = blocks.drelu_count(h, w, sizes)
    na = blocks.mult_count(h, w, sizes)
    # reference formula (paper_reference.md section 1.7): DReLU(N_b) + C 8(N_a+N_b), S 8(N_a+N_b), CP 8 N_a
    assert comm.select(kind="drelu").total_bytes == 496 * nb
    assert comm.select(kind="mult").total_bytes == 16 * (na + nb) + 8 * na
    assert signed(np.asarray(got)).dtype == np.int64
