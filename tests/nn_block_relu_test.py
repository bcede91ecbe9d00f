"""Tests of the plaintext Block ReLU: function (vs a numpy loop), vmap, gradient, jaxpr contract, layer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxmpc.nn import BLOCK_RELU_JIT_NAME, BlockReLU, block_relu

# --------------------------------------------------------------------------------------------
# Reference


def ref_patch_means(x: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per-pixel mean of its patch (float64, straightforward loops); NaN for identity/zero channels."""
    x = np.asarray(x, np.float64)
    out = np.full(x.shape, np.nan)
    h, w, c = x.shape[-3:]
    for ch in range(c):
        bh, bw = (int(v) for v in sizes[ch])
        if bh < 1 or bw < 1:
            continue
        for i0 in range(0, h, bh):
            for j0 in range(0, w, bw):
                patch = x[..., i0 : i0 + bh, j0 : j0 + bw, ch]
                out[..., i0 : i0 + bh, j0 : j0 + bw, ch] = patch.mean(axis=(-2, -1))[..., None, None]
    return out


def ref_mask(x: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Which pixels the Block ReLU keeps (float64 0/1)."""
    means = ref_patch_means(x, sizes)
    mask = np.zeros(np.shape(x))
    for ch, (bh, bw) in enumerate(np.asarray(sizes)):
        if (bh, bw) == (0, 1):
            mask[..., ch] = 1.0
        elif bh >= 1 and bw >= 1:
            mask[..., ch] = means[..., ch] >= 0
    return mask


def ref_block_relu(x: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64) * ref_mask(x, sizes)


def assert_matches_ref(out, x, sizes, tol=1e-5):
    """Exact agreement except where |patch mean| is within float rounding (then either 0 or x)."""
    out = np.asarray(out, np.float64)
    x64 = np.asarray(x, np.float64)
    expected = ref_block_relu(x, sizes)
    means = ref_patch_means(x, sizes)
    ambiguous = np.abs(np.nan_to_num(means, nan=1.0)) <= tol * (1.0 + np.abs(x64).max())
    clear = ~ambiguous
    np.testing.assert_array_equal(out[clear], expected[clear])
    assert np.all((out[ambiguous] == 0) | (out[ambiguous] == x64[ambiguous]))


def rand(shape, seed=0, offset=0.0):
    return (np.random.default_rng(seed).normal(size=shape) + offset).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Against the numpy loop

MIXED = np.array(
    [[1, 1], [2, 2], [3, 4], [5, 1], [1, 7], [20, 20], [0, 1], [1, 0], [4, 3], [9, 13], [2, 5], [7, 11]],
    np.int32,
)


@pytest.mark.parametrize(
    "shape",
    [(2, 9, 13, 12), (1, 13, 9, 12), (3, 1, 1, 12), (2, 16, 16, 12), (4, 3, 2, 12)],
    ids=["nonsquare", "tall", "1x1", "square", "tiny"],
)
def test_matches_numpy_loop(shape):
    """Sizes not dividing H/W, patch larger than the map, identity, zero, ReLU, rows and columns."""
    x = rand(shape, seed=sum(shape), offset=0.2)
    assert_matches_ref(block_relu(x, MIXED), x, MIXED)


@pytest.mark.parametrize("sizes", [[[1, 1]] * 3, [[0, 1]] * 3, [[1, 0]] * 3, [[1, 1], [0, 1], [1, 0]]])
def test_pixelwise_cases_are_exact(sizes):
    """ReLU/identity/zero channels only (the fast path): exact equality with x * (x >= 0) etc."""
    sizes = np.asarray(sizes, np.int32)
    x = rand((2, 5, 6, 3), seed=3)
    x[0, 0, 0] = 0.0
    np.testing.assert_array_equal(np.asarray(block_relu(x, sizes)), ref_block_relu(x, sizes).astype(np.float32))


def test_greater_equal_zero_keeps_zero_mean_patch():
    """The statistic is compared with >= 0 (like the secure DReLU), not > 0."""
    x = np.array([1.0, -1.0, 2.0, -3.0], np.float32).reshape(1, 2, 2, 1)
    y = np.asarray(block_relu(x, np.array([[1, 2]], np.int32)))
    np.testing.assert_array_equal(y.ravel(), [1.0, -1.0, 0.0, 0.0])


def test_leading_dims_and_unbatched():
    x = rand((2, 3, 7, 5, 12), seed=1)
    y = block_relu(x, MIXED)
    assert y.shape == x.shape
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(y[i]), np.asarray(block_relu(x[i], MIXED)))
    assert_matches_ref(block_relu(x[0, 0], MIXED), x[0, 0], MIXED)  # [H, W, C], no batch


def test_dtype_is_preserved():
    x32 = rand((1, 4, 4, 12))
    assert block_relu(x32, MIXED).dtype == jnp.float32
    assert block_relu(x32.astype(np.float64), MIXED).dtype == jnp.float64
    assert block_relu(jnp.asarray(x32, jnp.bfloat16), MIXED).dtype == jnp.bfloat16


@given(
    sizes=st.lists(
        st.one_of(
            st.tuples(st.integers(1, 12), st.integers(1, 15)),
            st.sampled_from([(0, 1), (1, 0), (1, 1)]),
        ),
        min_size=6,
        max_size=6,
    ),
    seed=st.integers(0, 2**16),
)
def test_property_random_sizes(sizes, seed):
    """Random per-channel sizes on a fixed non-square map (one compilation: sizes are traced)."""
    sizes = np.asarray(sizes, np.int32)
    x = rand((2, 9, 11, 6), seed=seed, offset=0.1)
    assert_matches_ref(jax.jit(block_relu)(x, sizes), x, sizes)


# --------------------------------------------------------------------------------------------
# vmap, gradient, jaxpr contract


def test_vmap_over_sizes():
    rng = np.random.default_rng(7)
    k, c = 16, 12
    stacked = rng.integers(1, 6, size=(k, c, 2)).astype(np.int32)
    stacked[::3, 0] = (0, 1)
    stacked[1::3, 1] = (1, 0)
    stacked[2] = 1  # an all-ReLU member: batched predicate of the fast path
    x = rand((2, 10, 7, c), seed=2)
    ys = jax.jit(jax.vmap(block_relu, in_axes=(None, 0)))(x, stacked)
    assert ys.shape == (k,) + x.shape
    for i in range(k):
        assert_matches_ref(ys[i], x, stacked[i])


def test_vmap_over_inputs_and_sizes():
    rng = np.random.default_rng(8)
    stacked = rng.integers(1, 4, size=(3, 5, 2)).astype(np.int32)
    xs = rand((3, 1, 6, 6, 5), seed=4)
    ys = jax.vmap(block_relu)(xs, stacked)
    for i in range(3):
        assert_matches_ref(ys[i], xs[i], stacked[i])


def test_gradient_is_straight_through():
    x = rand((2, 6, 7, 12), seed=5, offset=0.1)
    g = rand(x.shape, seed=6)
    grad = jax.grad(lambda x: jnp.sum(block_relu(x, MIXED) * g))(jnp.asarray(x))
    # d/dx of x * stop_gradient(mask) is the mask; compare where the mask is unambiguous.
    clear = np.abs(np.nan_to_num(ref_patch_means(x, MIXED), nan=1.0)) > 1e-4
    np.testing.assert_array_equal(np.asarray(grad)[clear], (g * ref_mask(x, MIXED))[clear])


def test_gradient_under_vmap_over_sizes():
    stacked = np.stack([np.ones((12, 2), np.int32), MIXED])
    x = jnp.asarray(rand((1, 5, 5, 12), seed=9))
    grads = jax.vmap(lambda s: jax.grad(lambda x: jnp.sum(block_relu(x, s)))(x))(stacked)
    np.testing.assert_array_equal(np.asarray(grads[0]), np.asarray(x >= 0, np.float32))


def _block_relu_eqns(jaxpr):
    return [e for e in jaxpr.eqns if e.params.get("name") == BLOCK_RELU_JIT_NAME]


def test_jaxpr_has_named_jit_equation():
    jaxpr = jax.make_jaxpr(block_relu)(jnp.ones((1, 4, 4, 12), jnp.float32), jnp.asarray(MIXED))
    eqns = _block_relu_eqns(jaxpr.jaxpr)
    assert len(eqns) == 1 and len(jaxpr.jaxpr.eqns) == 1
    assert eqns[0].primitive.name in ("jit", "pjit")
    assert [v.aval.shape for v in eqns[0].invars] == [(1, 4, 4, 12), (12, 2)]
    assert BLOCK_RELU_JIT_NAME in str(jaxpr)


# --------------------------------------------------------------------------------------------
# Errors


def test_errors_are_clear():
    x = jnp.ones((1, 4, 4, 3), jnp.float32)
    with pytest.raises(TypeError, match="float"):
        block_relu(jnp.ones((1, 4, 4, 3), jnp.int32), np.ones((3, 2), np.int32))
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W, C\]"):
        block_relu(jnp.ones((4, 3)), np.ones((3, 2), np.int32))
    with pytest.raises(ValueError, match="expected 3 channels"):
        block_relu(x, np.ones((4, 2), np.int32))
    with pytest.raises(ValueError, match="channel 1 has patch size"):
        block_relu(x, np.array([[1, 1], [0, 0], [1, 1]]))
    with pytest.raises(ValueError, match="channel 2"):
        block_relu(x, np.array([[1, 1], [2, 2], [-1, 3]]))
    with pytest.raises(TypeError, match="integer"):
        block_relu(x, np.full((3, 2), 1.5))
    with pytest.raises(TypeError, match="integer"):
        jax.jit(block_relu)(x, jnp.ones((3, 2), jnp.float32))
    with pytest.raises(ValueError, match="shape"):
        jax.jit(block_relu)(x, jnp.ones((3, 3), jnp.int32))


# --------------------------------------------------------------------------------------------
# The Flax layer


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return BlockReLU(name="act")(x)


def test_layer_initialises_to_relu():
    x = rand((2, 5, 5, 4), seed=10)
    variables = _Net().init(jax.random.key(0), x)
    sizes = variables["block_sizes"]["act"]["sizes"]
    assert sizes.dtype == jnp.int32 and sizes.shape == (4, 2)
    np.testing.assert_array_equal(np.asarray(sizes), 1)
    assert set(variables) == {"block_sizes"}
    np.testing.assert_array_equal(np.asarray(_Net().apply(variables, x)), np.maximum(x, 0))


def test_layer_follows_sizes_in_variables():
    x = rand((2, 6, 5, 4), seed=11)
    sizes = np.array([[1, 1], [0, 1], [1, 0], [3, 2]], np.int32)
    y = np.asarray(jax.jit(_Net().apply)({"block_sizes": {"act": {"sizes": sizes}}}, x))
    np.testing.assert_array_equal(y[..., 0], np.maximum(x[..., 0], 0))  # ReLU
    np.testing.assert_array_equal(y[..., 1], x[..., 1])  # identity
    np.testing.assert_array_equal(y[..., 2], 0)  # zero
    assert_matches_ref(y, x, sizes)


def test_layer_errors():
    x = jnp.ones((1, 3, 3, 4), jnp.float32)
    with pytest.raises(ValueError, match="'act'.*block_sizes"):
        _Net().apply({}, x)
    with pytest.raises(ValueError, match=r"'act'.*shape \(3, 2\)"):
        _Net().apply({"block_sizes": {"act": {"sizes": jnp.ones((3, 2), jnp.int32)}}}, x)
