"""The first-order (Gauss-Newton) distortion estimate and its rank agreement with exact values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.distortion import compare_tables, estimate_distortion, profile_distortion, rank_correlation
from jaxmpc.nn import ResNetSmall
from jaxmpc.nn import models as nn_models


def random_variables(model, images, seed):
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if str(getattr(path[0], "key", path[0])) == "block_sizes":
            return jnp.ones(s.shape, s.dtype)
        if name == "var":
            return jnp.asarray(rng.uniform(0.3, 2.0, s.shape), s.dtype)
        if name in ("mean", "bias"):
            return jnp.asarray(0.4 * rng.standard_normal(s.shape), s.dtype)
        if name == "scale":
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        return jnp.asarray(rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in), s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def tables():
    model = ResNetSmall()
    images = jax.random.normal(jax.random.key(0), (4, 8, 8, 1), jnp.float32)
    variables = random_variables(model, images, 1)
    exact = profile_distortion(model, variables, images, progress=False)
    est = estimate_distortion(model, variables, images)
    return exact, est


def test_layout_and_metadata(tables):
    exact, est = tables
    assert est.names == exact.names and est.meta["method"] == "first_order" and est.meta["probes"] == "exact"
    for a, b in zip(exact.layers, est.layers):
        np.testing.assert_array_equal(a.candidates, b.candidates)
        assert b.distortion.shape == a.distortion.shape and np.all(b.distortion >= 0)
        np.testing.assert_array_equal(b.distortion[:, 0], 0.0)  # (1, 1): no change


def test_exact_when_the_rest_of_the_network_is_linear(tables):
    exact, est = tables
    # After the last ReLU only global pooling and the dense classifier remain: first order is exact.
    name = "layer3_0/relu2"
    np.testing.assert_allclose(est[name].distortion, exact[name].distortion, rtol=1e-4, atol=1e-12)


def test_rank_correlation_with_exact_values(tables):
    exact, est = tables
    cmp = compare_tables(exact, est)
    assert set(cmp.spearman) == set(exact.names)
    assert cmp.entries > 1000
    assert cmp.spearman_pooled > 0.8
    assert min(cmp.spearman.values()) > 0.6
    assert cmp.spearman["layer3_0/relu2"] > 0.999


def test_gaussian_probes_are_unbiased():
    model = nn_models._DeepLabV3MobileNetV2Tiny()
    images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3), jnp.float32)
    variables = random_variables(model, images, 3)
    name = "decode/bottleneck/relu"  # followed by the 1x1 classifier only: linear
    cands = np.array([[1, 1], [2, 2], [0, 1], [1, 0]])
    kw = {"layers": [name], "candidates": {name: cands}}
    exact_basis = estimate_distortion(model, variables, images, **kw)  # 80 outputs per sample: exact basis
    probed = estimate_distortion(model, variables, images, max_exact_probes=8, num_probes=400, seed=1, **kw)
    assert probed.meta["probes"].startswith("gaussian x400")
    a, b = exact_basis[name].distortion[:, 1:], probed[name].distortion[:, 1:]
    # Relative standard deviation of each entry is about sqrt(2 / 400) = 7%; the mean is unbiased.
    assert abs(np.mean(b) / np.mean(a) - 1) < 0.05
    assert np.median(np.abs(b / a - 1)) < 0.15
    exact = profile_distortion(model, variables, images, progress=False, **kw)
    np.testing.assert_allclose(exact_basis[name].distortion, exact[name].distortion, rtol=1e-3, atol=1e-12)


def test_rank_correlation_basics():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # ties
    assert np.isnan(rank_correlation([1], [2])) and np.isnan(rank_correlation([1, 1], [1, 2]))
    with pytest.raises(ValueError):
        rank_correlation([1, 2], [1, 2, 3])


def test_static_block_relu_matches_the_layer():
    from jaxmpc.distortion._estimate import _block_relu_static
    from jaxmpc.nn import block_relu

    x = jax.random.normal(jax.random.key(5), (2, 7, 5, 3), jnp.float32)
    for size in [(1, 1), (2, 2), (3, 2), (7, 5), (8, 9), (1, 5), (0, 1), (1, 0)]:
        ref = block_relu(x, np.tile(np.asarray(size), (3, 1)))
        np.testing.assert_allclose(_block_relu_static(x, *size), ref, rtol=0, atol=0, err_msg=str(size))
