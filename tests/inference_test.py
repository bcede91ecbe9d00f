"""Secure execution of whole networks (``jaxmpc.secure_apply``) against the fixed-point reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmpc
from jaxmpc import nn as jnn
from jaxmpc.inference import fixed_point_apply, secure_apply, secure_cost
from jaxmpc.nn import models as M

ULP = 2.0**-12
# Each truncation (products, pooling divisions) is off by -1 or 0 ulp and comparisons near zero
# may flip; through a tiny network's ~10 layers this stays far below 1e-2 on the logits.
TOL = 2e-2


def randomize(variables, seed=0):
    """Random but well-conditioned parameters and BatchNorm statistics (so folding matters)."""
    rng = np.random.default_rng(seed)
    out = jax.tree_util.tree_map(np.asarray, variables)

    def fix(path, a):
        name = jax.tree_util.keystr(path)
        if "block_sizes" in name:
            return a
        if name.endswith("['var']"):
            return rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        if name.endswith("['mean']"):
            return rng.normal(0, 0.1, a.shape).astype(np.float32)
        if name.endswith("['scale']"):
            return rng.uniform(0.8, 1.2, a.shape).astype(np.float32)
        if name.endswith("['bias']"):
            return rng.normal(0, 0.05, a.shape).astype(np.float32)
        return a

    return jax.tree_util.tree_map_with_path(fix, out)


def init(model, shape, seed=0):
    v = jax.jit(model.init)(jax.random.key(seed), jnp.zeros(shape, jnp.float32))
    return randomize(v, seed)


def check_secure(model, variables, x, *, spec=None, config=None, jit=False, key=0, **kw):
    y, report = secure_apply(model, variables, x, spec=spec, config=config, key=jax.random.key(key), jit=jit, **kw)
    ref = fixed_point_apply(model, variables, x, spec=spec, config=config, jit=jit, **kw)
    flo = model.apply(jnn.apply_spec(variables, spec) if spec else variables, x, **kw)
    y, ref, flo = (np.asarray(a, np.float64) for a in (y, ref, flo))
    assert y.shape == flo.shape and np.all(np.isfinite(y))
    # secure and fixed-point runs differ only by the truncations' +-1 LSB (2^-frac_bits) errors, which
    # deep nets amplify in proportion to their activations (DeepLab-ResNet50: 0.034 at logits ~5)
    np.testing.assert_allclose(y, ref, atol=TOL, rtol=1e-2)
    return y, ref, flo, report


def assert_same_labels(secure, flo, axis=-1, margin=4 * TOL):
    """Predicted labels agree wherever the float model's top-2 margin exceeds the error bound."""
    top2 = np.sort(flo, axis=axis)
    decided = (np.take(top2, -1, axis=axis) - np.take(top2, -2, axis=axis)) > margin
    assert decided.mean() > 0.5
    np.testing.assert_array_equal(np.argmax(secure, axis=axis)[decided], np.argmax(flo, axis=axis)[decided])


# ---- real images: scikit-learn digits -----------------------------------------------------------


@pytest.fixture(scope="module")
def digits_model():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    model = jnn.ResNetSmall()
    v = jax.jit(model.init)(jax.random.key(0), x[:1])
    params, stats = v["params"], v["batch_stats"]
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt, xb, yb):
        def loss(p):
            logits, upd = model.apply({**v, "params": p, "batch_stats": stats}, xb, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), upd

        (l, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), upd["batch_stats"], opt

    rng = np.random.default_rng(0)
    for _ in range(150):
        idx = rng.integers(0, 1500, 64)
        params, stats, opt = step(params, stats, opt, x[idx], y[idx])
    v = {**v, "params": params, "batch_stats": stats}
    acc = float(np.mean(np.argmax(model.apply(v, x[1500:]), -1) == y[1500:]))
    assert acc > 0.85, acc
    return model, v, x[1500:], y[1500:]


def test_digits_secure_equals_float_predictions(digits_model):
    model, v, x, y = digits_model
    xb = x[:32]
    sec, ref, flo, report = check_secure(model, v, xb)
    np.testing.assert_array_equal(np.argmax(sec, -1), np.argmax(flo, -1))
    assert report.drelus == 32 * jnn.count_drelus(model, v, xb.shape[1:]).total
    assert report.batch == 32 and report.total_bytes == report.comm.total_bytes > 0


def test_digits_with_block_spec_and_jit(digits_model):
    model, v, x, _ = digits_model
    layers = jnn.relu_layers(model, x.shape[1:])
    rng = np.random.default_rng(1)
    options = np.array([(1, 1), (2, 2), (0, 1), (3, 2), (8, 8), (1, 0)], np.int32)

    def fit(sizes, shape):  # patches as large as the map at most (specs with larger ones are refused)
        out = sizes.copy()
        patch = (out[:, 0] >= 1) & (out[:, 1] >= 1)
        out[patch, 0] = np.minimum(out[patch, 0], shape[-3])
        out[patch, 1] = np.minimum(out[patch, 1], shape[-2])
        return out

    spec = {name: fit(options[rng.integers(0, len(options), shape[-1])], shape) for name, shape in layers}
    xb = x[:8]
    sec, ref, flo, report = check_secure(model, v, xb, spec=spec, jit=True)
    assert report.drelus == 8 * jnn.count_drelus(model, jnn.apply_spec(v, spec), xb.shape[1:]).total
    assert_same_labels(sec, flo)
    # the report's rows add up to the totals
    rows = report.rows()
    assert sum(r.total_bytes for r in rows) == report.total_bytes
    assert sum(r.rounds for r in rows) == report.rounds
    assert sum(r.drelus for r in rows) == report.drelus
    assert "block_relu" in report.table()


def test_traces_once_across_calls(digits_model):
    model, v, x, _ = digits_model
    from jaxmpc.inference import api

    secure_apply(model, v, x[:2], key=jax.random.key(0))
    traced = api.trace_model(model, v, x[:2].shape)
    jitted = api._cores(traced, jaxmpc.ProtocolConfig(), api.memory_budget_bytes("auto"))[0]
    n = jitted._cache_size()
    y1, _ = secure_apply(model, v, x[:2], key=jax.random.key(1))
    y2, _ = secure_apply(model, jax.tree_util.tree_map(lambda a: a, v), x[2:4], key=jax.random.key(2))
    assert jitted._cache_size() == n == 1
    assert np.all(np.isfinite(np.asarray(y1))) and np.all(np.isfinite(np.asarray(y2)))


def test_fashion_mnist_predictions_if_installed():
    import gzip
    import os

    path = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
    if not os.path.exists(path):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    with gzip.open(path) as f:
        imgs = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)[:8]
    x = (imgs / 255.0).astype(np.float32)
    model = jnn.ResNetSmall()
    v = init(model, (1, 28, 28, 1), seed=3)
    sec, ref, flo, _ = check_secure(model, v, x)
    assert_same_labels(sec, flo)


# ---- every architecture family (tiny presets, random weights) --------------------------------------

FAMILIES = [
    ("resnet18", M._ResNet18Tiny, (2, 8, 8, 3)),
    ("resnet50_avg", M._ResNet50Tiny, (1, 32, 32, 3)),
    ("resnet50_max", lambda: M._ResNet50Tiny(stem_pool="max"), (1, 32, 32, 3)),
    ("mobilenetv2", M._MobileNetV2Tiny, (1, 32, 32, 3)),
    ("deeplab_mobilenetv2", M._DeepLabV3MobileNetV2Tiny, (1, 32, 32, 3)),
    ("deeplab_resnet50", M._DeepLabV3ResNet50Tiny, (1, 32, 40, 3)),
]


def real_images(shape):
    """scikit-learn digits (real images) resized to ``shape`` = [N, H, W, C] (nearest, tiled channels)."""
    from sklearn.datasets import load_digits

    n, h, w, c = shape
    imgs = load_digits().images[:n] / 16.0
    rows = (np.arange(h) * 8 // h)
    cols = (np.arange(w) * 8 // w)
    x = imgs[:, rows][:, :, cols][..., None]
    return np.repeat((x - 0.3) / 0.4, c, axis=-1).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name,ctor,shape", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family(name, ctor, shape):
    model = ctor()
    v = init(model, shape)
    x = real_images(shape)
    sec, ref, flo, report = check_secure(model, v, x)
    axis = -1
    assert_same_labels(sec, flo, axis=axis)
    assert report.drelus >= shape[0] * jnn.count_drelus(model, v, shape[1:]).total


def test_resnet18_tiny_family_default():
    name, ctor, shape = FAMILIES[0]
    model = ctor()
    v = init(model, shape)
    x = real_images(shape)
    sec, ref, flo, report = check_secure(model, v, x)
    assert_same_labels(sec, flo)


# ---- a network jaxmpc did not write --------------------------------------------------------------


class ForeignNet(nn.Module):
    """Standard flax.linen layers only: Conv, BatchNorm, relu, max/avg pooling, residual, mean, Dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(6, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.relu(x)
        r = x
        x = nn.Conv(6, (3, 3), use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.relu(x + r)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.avg_pool(x, (2, 2), (1, 1), padding="SAME")
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(5)(x)
        return jnp.maximum(x, -1.0)


def test_foreign_flax_network():
    model = ForeignNet()
    v = init(model, (1, 8, 8, 2), seed=4)
    x = np.random.default_rng(2).normal(size=(3, 8, 8, 2)).astype(np.float32)
    sec, ref, flo, report = check_secure(model, v, x)
    np.testing.assert_allclose(sec, flo, atol=TOL)
    ops = {op for _, op in report.layers}
    assert {"conv2d", "relu", "maxpool", "dense"} <= ops


def test_nnx_module():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(4, use_running_average=True, rngs=rngs)
            self.fc = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.bn(self.conv(x)))
            return self.fc(x.mean(axis=(1, 2)))

    net = Net(nnx.Rngs(0))
    graphdef, state = nnx.split(net)
    params = jax.tree_util.tree_map(np.asarray, nnx.to_pure_dict(state))

    def apply(variables, x):
        st = nnx.State(variables) if not isinstance(variables, nnx.State) else variables
        model = nnx.merge(graphdef, st)
        return model(x)

    x = np.random.default_rng(3).normal(size=(2, 6, 6, 1)).astype(np.float32)
    y, report = secure_apply(
        lambda v, x: apply(v["params"], x), {"params": params}, x, key=jax.random.key(0), jit=False
    )
    want = apply(params, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), atol=TOL)
    assert report.drelus == 2 * 6 * 6 * 4


# ---- costs at paper scale (abstract traces: no arithmetic) -----------------------------------------


def _abstract_vars(model, shape):
    v = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
    v = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), v)
    v["block_sizes"] = jax.tree_util.tree_map(lambda a: np.ones(a.shape, np.int32), v["block_sizes"])
    return v


def test_resnet18_cifar_drelus_from_protocol():
    model = jnn.ResNet18()
    rep = secure_cost(model, _abstract_vars(model, (1, 32, 32, 3)), (1, 32, 32, 3))
    assert rep.drelus == 557_056


@pytest.mark.slow
def test_resnet50_reference_cost_reproduces_published_6356_gb():
    model = jnn.ResNet50(stem_pool="max", pool_before_relu=True)
    v = _abstract_vars(model, (1, 224, 224, 3))
    ref = secure_cost(model, v, (1, 224, 224, 3), config=jaxmpc.ProtocolConfig.reference())
    assert abs(ref.total_bytes / 1e9 - 6.356) / 6.356 < 0.01
    ours = secure_cost(model, v, (1, 224, 224, 3))
    assert ours.total_bytes < ref.total_bytes


# ---- bad input -------------------------------------------------------------------------------------


def test_bad_inputs_raise_before_work(digits_model):
    model, v, x, _ = digits_model
    with pytest.raises(ValueError, match="NaN"):
        secure_apply(model, v, np.full((1, 8, 8, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match="representable"):
        secure_apply(model, v, np.full((1, 8, 8, 1), 1e16, np.float32))
    with pytest.raises((TypeError, ValueError), match="shape"):
        secure_apply(model, v, np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="no_such_layer"):
        secure_apply(model, v, x[:1], spec={"no_such_layer": np.ones((8, 2), np.int32)})
    bad = jax.tree_util.tree_map(lambda a: a, v)
    bad["params"]["fc"]["kernel"] = np.full_like(np.asarray(bad["params"]["fc"]["kernel"]), np.nan)
    with pytest.raises(ValueError, match="NaN"):
        secure_apply(model, bad, x[:1])
    with pytest.raises(TypeError, match="ProtocolConfig"):
        secure_apply(model, v, x[:1], config={"frac_bits": 12})


def test_unsupported_operation_is_named():
    def fn(variables, x):
        return jnp.tanh(x @ variables["params"]["w"])

    with pytest.raises(NotImplementedError, match="tanh"):
        secure_apply(fn, {"params": {"w": np.ones((4, 2), np.float32)}}, np.ones((1, 4), np.float32), jit=False)


def test_report_separates_per_session_weights_from_per_inference_traffic():
    """The masked weights (8 B per kernel entry, server-weights protocol) are sent once per
    session; everything else scales with the batch."""
    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(6)(x))
            return nn.Dense(3)(x)

    model = Tiny()
    v = model.init(jax.random.key(0), jnp.zeros((1, 5)))
    reports = {}
    for batch in (1, 3):
        x = np.random.default_rng(batch).normal(size=(batch, 5)).astype(np.float32)
        _, reports[batch] = secure_apply(model, v, x)
    one, three = reports[1], reports[3]
    kernel_entries = 5 * 6 + 6 * 3
    assert one.session_bytes == three.session_bytes == 8 * kernel_entries
    assert one.session_bytes + one.inference_bytes == one.total_bytes
    assert three.inference_bytes == 3 * one.inference_bytes
    assert three.inference_bytes_per_image == one.inference_bytes_per_image
    t = three.totals()
    assert t["session_bytes"] == 8 * kernel_entries and t["inference_bytes"] == three.inference_bytes
    assert "per session" in three.table() and "per image per inference" in str(three)
