"""jaxmpc.ops: the public secure ops against the plaintext fixed-point reference.

What the module guarantees (``frac_bits = 12``, inputs are exact fixed-point values):

* local ops (add, sub, neg, public-integer mul, sum, reshape) equal the reference exactly;
* comparisons (drelu, relu, select, maxpool, block_relu) equal the reference exactly;
* every op that truncates or divides (shared mul, public real mul, matmul, dense, conv2d, mean,
  avg_pool, global_avg_pool) gives ``floor(exact) + e`` with ``e`` in {0, 1} ulp, with the
  reference's floor as the baseline;
* bad operands are refused (TypeError / ValueError) before any protocol runs.
"""

import jax
import numpy as np
import pytest

from jaxmpc import ops
from jaxmpc.protocols import reference as ref
from jaxmpc.core.ring import decode, encode
from jaxmpc.simulate import simulate

from utils import shared, sim_runtime

F = 12
ULP = 2.0**-F


def _ints(v) -> np.ndarray:
    """Decoded outputs back to fixed-point integers (exact for |v| < 2^41)."""
    a = np.asarray(v, np.float64) * 2**F
    assert np.all(a == np.round(a))
    return a.astype(np.int64)


def _ref_ints(u) -> np.ndarray:
    return np.asarray(u, np.uint64).view(np.int64)


def _assert_floor_or_one_more(got, floor_ints):
    d = _ints(got) - np.asarray(floor_ints, np.int64)
    assert set(np.unique(d).tolist()) <= {0, 1}, np.unique(d)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    # exact fixed-point values: multiples of 2^-12 (and of 2^-6 for weights, so that products fit)
    x = rng.integers(-(2**15), 2**15, (2, 4, 5, 3)) * ULP
    y = rng.integers(-(2**15), 2**15, (2, 4, 5, 3)) * ULP
    x[0, 0, 0, :] = [0.0, -ULP, ULP]  # around zero
    w = rng.integers(-64, 64, (3, 3, 3, 4)) / 64.0
    b = rng.integers(-64, 64, (4,)) / 64.0
    dw = rng.integers(-64, 64, (3, 7)) / 64.0
    return x, y, w, b, dw


SIZES = np.array([(1, 1), (2, 2), (0, 1)], np.int32)
POOL = dict(window=(2, 1), strides=(2, 1), padding=((1, 0), (0, 0)))  # one tree level: fast


@pytest.fixture(scope="module")
def outputs(data):
    """Every op in two runs (eager: on these small inputs much faster than compiling)."""
    x, y, w, b, dw = data

    def linear(a, c):
        return {
            "add": ops.add(a, c), "add_pub": ops.add(a, 1.5), "sub": ops.sub(a, c), "sub_pub": ops.sub(a, y),
            "neg": ops.neg(a), "mul_int": ops.mul(a, 3), "mul_int_arr": ops.mul(a, np.arange(3) - 1),
            "mul_real": ops.mul(a, 0.3), "mul": ops.mul(a, c), "sum": ops.sum(a, axis=(1, 2)),
            "reshape": ops.reshape(a, (2, -1)), "conv": ops.conv2d(a, w, b),
            "conv_s2": ops.conv2d(a, w, stride=2, padding="VALID"),
            "dense": ops.dense(ops.reshape(a, (-1, 3)), dw), "mean": ops.mean(a, axis=-1),
            "avg_pool": ops.avg_pool(a, 2),
            "avg_pool_pad": ops.avg_pool(a, 3, 1, ((1, 1), (1, 1)), count_include_pad=False),
            "gap": ops.global_avg_pool(a),
            "matmul_shared": ops.matmul(ops.reshape(a, (-1, 3)), ops.reshape(ops.sum(c, axis=(0, 1, 2)), (3, 1))),
        }

    def compare(a, c):
        bit = ops.drelu(a)
        return {"drelu": bit, "relu": ops.relu(a), "select": ops.select(bit, a, c), "maxpool": ops.maxpool(a, **POOL),
                "block_relu": ops.block_relu(a, SIZES)}

    lin, lin_comm = simulate(linear, x, y, key=jax.random.key(0), jit=False)
    cmp, cmp_comm = simulate(compare, x, y, key=jax.random.key(1), jit=False)
    return {**lin, **cmp}, (lin_comm, cmp_comm)


def test_local_ops_are_exact(data, outputs):
    x, y, *_ = data
    out, _ = outputs
    np.testing.assert_array_equal(out["add"], x + y)
    np.testing.assert_array_equal(out["add_pub"], x + 1.5)
    np.testing.assert_array_equal(out["sub"], x - y)
    np.testing.assert_array_equal(out["sub_pub"], x - y)
    np.testing.assert_array_equal(out["neg"], -x)
    np.testing.assert_array_equal(out["mul_int"], 3 * x)
    np.testing.assert_array_equal(out["mul_int_arr"], x * (np.arange(3) - 1))
    np.testing.assert_array_equal(out["sum"], x.sum(axis=(1, 2)))
    np.testing.assert_array_equal(out["reshape"], x.reshape(2, -1))


def test_comparisons_equal_the_reference_exactly(data, outputs):
    x, y, *_ = data
    out, _ = outputs
    ex = encode(x, F)
    np.testing.assert_array_equal(out["drelu"], (x >= 0).astype(float))
    np.testing.assert_array_equal(out["drelu"], np.asarray(ref.drelu(ex), float))
    np.testing.assert_array_equal(out["relu"], decode(np.asarray(ref.relu(ex)), F))
    np.testing.assert_array_equal(out["relu"], np.maximum(x, 0))
    np.testing.assert_array_equal(out["select"], np.where(x >= 0, y, x))
    pooled = ref.maxpool(ex, (1, 2, 1, 1), (1, 2, 1, 1), ((0, 0), (1, 0), (0, 0), (0, 0)))
    np.testing.assert_array_equal(out["maxpool"], decode(np.asarray(pooled), F))
    assert out["maxpool"].shape == (2, 2, 5, 3)
    np.testing.assert_array_equal(out["maxpool"][:, 0], x[:, 0])  # the padding row never wins
    np.testing.assert_array_equal(out["block_relu"], decode(np.asarray(ref.block_relu(ex, SIZES)), F))


def test_truncating_ops_are_floor_or_one_more(data, outputs):
    x, y, w, b, dw = data
    out, _ = outputs
    xi, yi = _ints(x), _ints(y)
    _assert_floor_or_one_more(out["mul"], np.floor_divide(xi * yi, 2**F))
    k = int(encode(0.3, F))
    _assert_floor_or_one_more(out["mul_real"], np.floor_divide(xi * k, 2**F))
    conv = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    _assert_floor_or_one_more(out["conv"], np.floor(np.asarray(conv) * 2**F) + _ints(b))
    conv2 = jax.lax.conv_general_dilated(x, w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    _assert_floor_or_one_more(out["conv_s2"], np.floor(np.asarray(conv2) * 2**F))
    _assert_floor_or_one_more(out["dense"], np.floor(x.reshape(-1, 3) @ dw * 2**F))
    _assert_floor_or_one_more(out["mean"], _ref_ints(ref.div(encode(x.sum(-1), F), 3)))
    win = np.asarray(ref.avgpool_sum(encode(x, F), (1, 2, 2, 1), (1, 2, 2, 1), "VALID"))
    _assert_floor_or_one_more(out["avg_pool"], np.floor_divide(_ref_ints(win), 4))
    _assert_floor_or_one_more(out["gap"], np.floor_divide(_ints(x.sum(axis=(1, 2))), 20))
    # avg pool without the padding in the count: the divisor is the window's valid pixels
    window_sum = np.asarray(ref.avgpool_sum(encode(x, F), (1, 3, 3, 1), (1, 1, 1, 1),
                                            ((0, 0), (1, 1), (1, 1), (0, 0))))
    counts = np.asarray(ref.avgpool_sum(np.ones((1, 4, 5, 1), np.uint64), (1, 3, 3, 1), (1, 1, 1, 1),
                                        ((0, 0), (1, 1), (1, 1), (0, 0)))).astype(np.int64)
    _assert_floor_or_one_more(out["avg_pool_pad"], np.floor_divide(_ref_ints(window_sum), counts))
    wsh = y.sum(axis=(0, 1, 2)).reshape(3, 1)
    _assert_floor_or_one_more(out["matmul_shared"], np.floor_divide(xi.reshape(-1, 3) @ _ints(wsh), 2**F))


def test_the_record_covers_every_op(outputs):
    _, (lin, cmp) = outputs
    assert set(lin.by_kind()) == {"linear", "weights", "mult", "reveal"}  # local ops send nothing
    assert {"drelu", "mult", "reveal"} <= set(cmp.by_kind())
    for comm in (lin, cmp):
        assert comm.total_bytes == sum(r.total_bytes for r in comm.by_kind().values())


# --------------------------------------------------------------------------------------------
# bad operands


@pytest.fixture
def sx():
    rt = sim_runtime()
    return shared(rt, encode(np.zeros((1, 4, 4, 2)), F), scale=F)


def test_bad_operands_are_refused(sx):
    with pytest.raises(TypeError, match="must be a Shared value"):
        ops.add(np.ones(3), 1.0)
    with pytest.raises(TypeError, match="b must be a Shared value"):
        ops.select(np.ones(sx.shape), sx, sx)
    with pytest.raises(ValueError, match="mul: shapes differ"):
        ops.mul(sx, ops.reshape(sx, (2, 16)))
    with pytest.raises(ValueError, match="select: shapes differ"):
        ops.select(ops.reshape(sx, (32,)), sx, sx)
    with pytest.raises(ValueError, match="matmul: cannot contract"):
        ops.matmul(sx, np.ones((3, 2)))
    with pytest.raises(ValueError, match="conv2d expects an HWIO kernel"):
        ops.conv2d(sx, np.ones((3, 3, 2)))
    with pytest.raises(ValueError, match="conv2d expects NHWC"):
        ops.conv2d(ops.reshape(sx, (16, 2)), np.ones((3, 3, 2, 1)))
    with pytest.raises(ValueError, match="does not fit 2 input channels"):
        ops.conv2d(sx, np.ones((3, 3, 3, 4)))
    with pytest.raises(ValueError, match="groups"):
        ops.conv2d(sx, np.ones((3, 3, 1, 3)), groups=2)
    with pytest.raises(ValueError, match="stride must be an int or a pair"):
        ops.conv2d(sx, np.ones((3, 3, 2, 1)), stride=(1, 1, 1))
    with pytest.raises(ValueError, match="maxpool expects NHWC"):
        ops.maxpool(ops.reshape(sx, (16, 2)), 2)
    with pytest.raises(ValueError, match="global_avg_pool expects NHWC"):
        ops.global_avg_pool(ops.reshape(sx, (16, 2)))
    with pytest.raises(TypeError, match="numeric"):
        ops.add(sx, np.array([object()]))
    with pytest.raises(ValueError):
        ops.block_relu(sx, np.array([(1, 1), (0, 0)]))  # invalid patch size
