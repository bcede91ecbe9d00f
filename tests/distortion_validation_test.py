"""Bad inputs to the distortion profiler raise clear errors before any work starts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.distortion import estimate_distortion, profile_distortion
from jaxmpc.nn import ResNetSmall, SpecError


@pytest.fixture(scope="module")
def setup():
    model = ResNetSmall()
    images = np.asarray(jax.random.normal(jax.random.key(0), (2, 8, 8, 1)), np.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, s: (
            jnp.ones(s.shape, s.dtype)
            if str(getattr(p[0], "key", "")) in ("block_sizes",) or str(getattr(p[-1], "key", "")) == "var"
            else jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype)
        ),
        shapes,
    )
    return model, variables, images


def no_work(_):
    raise AssertionError("work started")


CASES = [
    ("wrong channels for the model", lambda x: np.repeat(x, 3, axis=-1), {}, ValueError, "cannot be applied"),
    ("3-D images", lambda x: x[0], {}, ValueError, r"\[N, H, W, C\]"),
    ("integer images", lambda x: (x * 100).astype(np.int32), {}, TypeError, "floating-point"),
    ("uint8 images", lambda x: np.zeros(x.shape, np.uint8), {}, TypeError, "uint8"),
    ("NaN images", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 3, np.nan, x), {}, ValueError, "NaN"),
    ("inf images", lambda x: np.full(x.shape, np.inf, np.float32), {}, ValueError, "NaN or infinite"),
    ("empty sample set", lambda x: x[:0], {}, ValueError, "empty"),
    ("unknown layer", None, {"layers": ["stem/rleu"]}, ValueError, "did you mean 'stem/relu'"),
    ("empty layer list", None, {"layers": []}, ValueError, "empty list"),
    ("duplicate layers", None, {"layers": ["stem/relu", "stem/relu"]}, ValueError, "duplicate"),
    ("candidates for unknown layer", None, {"candidates": {"nope": [[1, 1]]}}, ValueError, "unknown layer 'nope'"),
    ("candidates not [n, 2]", None, {"candidates": {"stem/relu": [1, 1]}}, ValueError, r"\[n, 2\]"),
    ("empty candidates", None, {"candidates": np.zeros((0, 2), int)}, ValueError, r"\[n, 2\]"),
    ("float candidates", None, {"candidates": {"stem/relu": [[1.5, 1]]}}, TypeError, "integer"),
    ("invalid pair", None, {"candidates": {"stem/relu": [[0, 0]]}}, ValueError, r"\(0, 0\)"),
    ("negative size", None, {"candidates": [[1, 1], [-2, 2]]}, ValueError, "patch size"),
    ("bad base spec", None, {"base_spec": {"stem/relu": np.ones((3, 2), int)}}, SpecError, "base_spec"),
    ("shard without out_dir", None, {"shard": "0/2"}, ValueError, "needs out_dir"),
    ("bad shard", None, {"shard": "2/2", "out_dir": "RUN"}, ValueError, "0 <= i < n"),
    ("bad max_batch", None, {"max_batch": 0}, ValueError, "max_batch"),
    ("bad pairs_per_item", None, {"pairs_per_item": 0, "out_dir": "RUN"}, ValueError, "pairs_per_item"),
    ("too many devices", None, {"devices": 99}, ValueError, "local devices"),
]


@pytest.mark.parametrize("label,images_fn,kwargs,exc,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_before_work(setup, tmp_path, label, images_fn, kwargs, exc, match):
    model, variables, images = setup
    if images_fn is not None:
        images = images_fn(images)
    kwargs = dict(kwargs)
    if kwargs.get("out_dir") == "RUN":
        kwargs["out_dir"] = tmp_path / "run"
    with pytest.raises(exc, match=match):
        profile_distortion(model, variables, images, progress=False, on_item=no_work, **kwargs)
    assert not (tmp_path / "run").exists()


def test_variables_without_block_sizes(setup):
    model, variables, images = setup
    params_only = {k: v for k, v in variables.items() if k != "block_sizes"}
    with pytest.raises(ValueError, match="block_sizes"):
        profile_distortion(model, params_only, images, progress=False)


def test_not_a_model(setup):
    _, variables, images = setup
    with pytest.raises(TypeError, match="Module or a callable"):
        profile_distortion("ResNetSmall", variables, images, progress=False)


def test_model_without_block_relu():
    import flax.linen as nn

    from jaxmpc.distortion import ProgramError

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))

    model = Plain()
    x = jnp.ones((2, 4, 4, 1))
    variables = {"block_sizes": {}, **model.init(jax.random.key(0), x)}
    with pytest.raises(ProgramError, match="no BlockReLU"):
        profile_distortion(model, variables, x, progress=False)


def test_estimate_validates_the_same_way(setup):
    model, variables, images = setup
    with pytest.raises(ValueError, match="empty"):
        estimate_distortion(model, variables, images[:0])
    with pytest.raises(ValueError, match="num_probes"):
        estimate_distortion(model, variables, images, num_probes=0)
