"""Tests of the paper's models: DReLU counts (paper_reference.md §3.3/§7), layer names, forward passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.core import blocks
from jaxmpc.nn import (
    BLOCK_RELU_JIT_NAME,
    DeepLabV3MobileNetV2,
    DeepLabV3ResNet50,
    MobileNetV2,
    ResNet,
    ResNet18,
    ResNet50,
    ResNetSmall,
    apply_spec,
    count_drelus,
    make_divisible,
    models,
    relu_layers,
)


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
    """Tiny models: compile time dominates, so skip most XLA optimisations (as Flax's tests do)."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


# --------------------------------------------------------------------------------------------
# Paper counts (all-ReLU baselines at the canonical input sizes)

PAPER = {
    "resnet18": (ResNet18, (32, 32, 3), 17, 3_904, 557_056),
    "resnet50": (ResNet50, (224, 224, 3), 49, 22_720, 9_608_704),
    "deeplabv3_mobilenetv2": (DeepLabV3MobileNetV2, (512, 512, 3), 40, 17_344, 85_262_848),
    "deeplabv3_resnet50": (DeepLabV3ResNet50, (512, 512, 3), 57, 25_856, 127_402_496),
}


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_drelu_counts(name):
    preset, shape, n_layers, n_channels, drelus = PAPER[name]
    layers = relu_layers(preset(), shape)
    assert len(layers) == n_layers
    assert sum(c for _, (_, _, c) in layers) == n_channels
    count = count_drelus(preset(), None, shape)
    assert count.total == drelus
    assert list(count.per_layer) == [n for n, _ in layers]
    assert all(count.per_layer[n] == h * w * c for n, (h, w, c) in layers)


def _paper_name(name: str) -> str:
    """jaxmpc layer name -> the reference's layer name (paper_reference.md §3.3)."""
    decode = {"image_pool": 0, "aspp0": 1, "aspp1": 2, "aspp2": 3, "aspp3": 4, "bottleneck": 5}
    parts = name.split("/")
    if parts[0] == "backbone":
        parts = parts[1:]
    if parts[0] == "decode":
        return f"decode_{decode[parts[1]]}"
    if parts[0].startswith("stem"):
        return {"stem": "stem", "stem1": "stem_2", "stem2": "stem_5", "stem3": "stem_8"}[parts[0]]
    if parts[0] == "conv1":
        return "conv1"
    if parts[-1].startswith("relu") and len(parts) == 2:  # ResNet blocks
        return f"{parts[0]}_{parts[1][4:]}"
    layer = parts[0]
    convs = ["depthwise"] if layer.startswith("layer1_") else ["expand", "depthwise"]
    return f"{layer}_{convs.index(parts[1])}"


def _expected_paper_names(name):
    if name == "resnet18":
        return ["stem"] + [f"layer{s}_{b}_{k}" for s in range(1, 5) for b in range(2) for k in (1, 2)]
    stages = [(1, 3), (2, 4), (3, 6), (4, 3)]
    r50 = [f"layer{s}_{b}_{k}" for s, nb in stages for b in range(nb) for k in (1, 2, 3)]
    decode = [f"decode_{i}" for i in range(6)]
    if name == "resnet50":
        return ["stem"] + r50
    if name == "deeplabv3_resnet50":
        return ["stem_2", "stem_5", "stem_8"] + r50 + decode
    blocks = [(2, 2), (3, 3), (4, 4), (5, 3), (6, 3), (7, 1)]
    mnv2 = [f"layer{s}_{b}_{k}" for s, nb in blocks for b in range(nb) for k in (0, 1)]
    return ["conv1", "layer1_0_0"] + mnv2 + decode


@pytest.mark.parametrize("name", list(PAPER))
def test_layer_lists_match_the_paper(name):
    preset, shape, *_ = PAPER[name]
    names = [_paper_name(n) for n, _ in relu_layers(preset(), shape)]
    assert names == _expected_paper_names(name)


def test_paper_layer_shapes():
    """Spot checks of paper_reference.md §3.3: strided bottlenecks' first ReLU at the input size, etc."""
    r50 = dict(relu_layers(ResNet50(), (224, 224, 3)))
    assert r50["stem/relu"] == (112, 112, 64)
    assert r50["layer2_0/relu1"] == (56, 56, 128)
    assert r50["layer2_0/relu2"] == (28, 28, 128)
    assert r50["layer4_2/relu3"] == (7, 7, 2048)  # the block the reference skips (§6 defect 1)
    seg = dict(relu_layers(DeepLabV3MobileNetV2(), (512, 512, 3)))
    assert seg["decode/image_pool/relu"] == (1, 1, 512)
    assert all(seg[f"decode/{b}/relu"] == (64, 64, 512) for b in ("aspp0", "aspp1", "aspp2", "aspp3", "bottleneck"))
    assert seg["backbone/layer7_0/depthwise/relu"] == (64, 64, 960)
    r50seg = dict(relu_layers(DeepLabV3ResNet50(), (512, 512, 3)))
    assert r50seg["backbone/stem1/relu"] == (256, 256, 32)
    assert r50seg["backbone/layer4_2/relu3"] == (64, 64, 2048)


# --------------------------------------------------------------------------------------------
# Non-square inputs: counts re-derived by hand with PyTorch's output-size rule


def _out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def _r50_backbone_drelus(h, w, *, deep):
    """Per-stage (C, H, W) terms of a ResNet50 (v1.5) on an h x w input."""
    if deep:  # three 3x3 convs, the first with stride 2
        h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)
        total = (32 + 32 + 64) * h * w
    else:
        h, w = _out(h, 7, 2, 3), _out(w, 7, 2, 3)
        total = 64 * h * w
    h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)  # stem pool
    strides = (1, 2, 1, 1) if deep else (1, 2, 2, 2)
    for stage, (n_blocks, s) in enumerate(zip((3, 4, 6, 3), strides)):
        width = 64 * 2**stage
        h2, w2 = _out(h, 3, s, 1), _out(w, 3, s, 1)
        total += width * h * w + (width + 4 * width) * h2 * w2  # first block: relu1 at the input size
        total += (n_blocks - 1) * 6 * width * h2 * w2
        h, w = h2, w2
    return total, (h, w)


@pytest.mark.parametrize("hw", [(224, 320), (200, 301), (97, 64)])
def test_resnet50_nonsquare_counts(hw):
    expected, _ = _r50_backbone_drelus(*hw, deep=False)
    assert count_drelus(ResNet50(), None, hw + (3,)).total == expected


def test_resnet18_nonsquare_counts():
    h, w = 32, 48
    expected = 64 * h * w + 4 * 64 * h * w
    for stage in range(1, 4):
        h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)
        expected += 4 * (64 * 2**stage) * h * w
    assert count_drelus(ResNet18(), None, (32, 48, 3)).total == expected
    assert dict(relu_layers(ResNet18(), (32, 48, 3)))["layer4_1/relu2"] == (4, 6, 512)


def test_deeplabv3_resnet50_nonsquare_counts():
    backbone, (h, w) = _r50_backbone_drelus(512, 683, deep=True)
    assert (h, w) == (64, 86)
    expected = backbone + 512 + 5 * 512 * h * w
    assert count_drelus(DeepLabV3ResNet50(), None, (512, 683, 3)).total == expected


def test_deeplabv3_mobilenetv2_nonsquare_counts():
    h, w = _out(512, 3, 2, 1), _out(683, 3, 2, 1)  # conv1
    total = 2 * 32 * h * w  # conv1 and layer1's depthwise
    c_in = 16
    for t, c, n, s in [(6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 1), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1)]:
        for b in range(n):
            hidden = c_in * t
            h2, w2 = (_out(h, 3, s, 1), _out(w, 3, s, 1)) if b == 0 else (h, w)
            total += hidden * h * w + hidden * h2 * w2
            h, w, c_in = h2, w2, c
    assert (h, w) == (64, 86)
    total += 512 + 5 * 512 * h * w
    assert count_drelus(DeepLabV3MobileNetV2(), None, (512, 683, 3)).total == total


def test_maxpool_variants():
    base = count_drelus(ResNet50(stem_pool="max"), None, (224, 224, 3))
    assert base.total == 9_608_704
    swapped = ResNet50(stem_pool="max", pool_before_relu=True)
    assert dict(relu_layers(swapped, (224, 224, 3)))["stem/relu"] == (56, 56, 64)
    assert count_drelus(swapped, None, (224, 224, 3)).total == 9_608_704 - 64 * (112**2 - 56**2)
    with pytest.raises(ValueError, match="pool_before_relu"):
        relu_layers(ResNet50(pool_before_relu=True), (224, 224, 3))


# --------------------------------------------------------------------------------------------
# Every architecture family: init, eval and train forward passes (tiny presets)

TINY = {
    "resnet18": (models._ResNet18Tiny, (8, 8, 3), (10,)),
    "resnet50": (models._ResNet50Tiny, (32, 32, 3), (10,)),
    "mobilenetv2": (models._MobileNetV2Tiny, (32, 32, 3), (10,)),
    "deeplabv3_mobilenetv2": (models._DeepLabV3MobileNetV2Tiny, (32, 32, 3), (4, 4, 5)),
    "deeplabv3_resnet50": (models._DeepLabV3ResNet50Tiny, (32, 32, 3), (4, 4, 5)),
    "small_28": (ResNetSmall, (28, 28, 1), (10,)),
    "small_8": (ResNetSmall, (8, 8, 1), (10,)),
}


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(2,) + shape), jnp.float32)


def _random_variables(model, shape, seed=0):
    """Variables with the structure of ``model.init`` filled from numpy (He-normal kernels).

    ``model.init`` itself is tested once (``test_model_init``); compiling every tiny model's
    RNG initialisers would dominate the test time.
    """
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((2,) + shape, jnp.float32))

    def fill(path, leaf):
        collection, name = str(path[0].key), str(path[-1].key)
        if collection == "block_sizes":
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)
        elif name in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, size=leaf.shape)
        else:  # bias, mean
            value = rng.normal(size=leaf.shape) * 0.1
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module")
def tiny_runs():
    """Lazily computed variables and eval + train forward of each tiny preset (one compilation each)."""
    cache = {}

    def get(name):
        if name not in cache:
            preset, shape, _ = TINY[name]
            model = preset()
            variables = _random_variables(model, shape)

            @jax.jit
            def run(variables, x):
                y_eval = model.apply(variables, x)
                y_train, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
                return y_eval, y_train, updates

            cache[name] = (variables, *run(variables, _x(shape)))
        return cache[name]

    return get


def test_model_init():
    """A real ``model.init``: structure as traced, float32 params, all-(1, 1) block sizes."""
    model = ResNetSmall()
    x = _x((8, 8, 1))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.tree.structure(variables) == jax.tree.structure(abstract)
    assert set(variables) == {"params", "batch_stats", "block_sizes"}
    assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
    assert all(bool(jnp.all(s == 1)) for s in jax.tree.leaves(variables["block_sizes"]))
    assert bool(jnp.all(jnp.isfinite(jax.jit(model.apply)(variables, x))))


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_models_forward(name, tiny_runs):
    preset, shape, out_shape = TINY[name]
    variables, y_eval, y_train, updates = tiny_runs(name)
    abstract = jax.eval_shape(preset().init, jax.random.key(0), jax.ShapeDtypeStruct((1,) + shape, jnp.float32))
    assert set(abstract) == {"params", "batch_stats", "block_sizes"}
    assert {p.dtype for p in jax.tree.leaves(abstract["params"])} == {jnp.dtype(jnp.float32)}
    assert y_eval.shape == y_train.shape == (2,) + out_shape
    assert y_eval.dtype == y_train.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y_eval))) and bool(jnp.all(jnp.isfinite(y_train)))
    assert {p.dtype for p in jax.tree.leaves(abstract["block_sizes"])} == {jnp.dtype(jnp.int32)}
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
    assert any(jax.tree.leaves(moved))  # train mode updates the running statistics
    assert len(jax.tree.leaves(variables["block_sizes"])) == len(relu_layers(preset(), shape))


def test_pool_before_relu_is_the_same_function(tiny_runs):
    """MaxPool commutes with a plain ReLU: both stems give identical outputs from the same variables."""
    variables = tiny_runs("resnet50")[0]  # the stem pool kind does not change the variables
    a = models._ResNet50Tiny(stem_pool="max")
    b = models._ResNet50Tiny(stem_pool="max", pool_before_relu=True)
    ya, yb = jax.jit(lambda v, x: (a.apply(v, x), b.apply(v, x)))(variables, _x((32, 32, 3), seed=1))
    np.testing.assert_allclose(np.asarray(ya), np.asarray(yb), rtol=1e-5, atol=1e-6)


ALLOWED_PRIMITIVES = {
    "add", "sub", "mul", "div", "rsqrt", "broadcast_in_dim", "reshape", "concatenate", "conv_general_dilated",
    "dot_general", "reduce_sum", "reduce_window_sum", "reduce_window_max", "convert_element_type", "squeeze",
}  # fmt: skip


def _walk(jaxpr, prims, n_block_relu):
    for e in jaxpr.eqns:
        if e.params.get("name") == BLOCK_RELU_JIT_NAME:
            n_block_relu.append(e)
            continue
        prims.add(e.primitive.name)
        for p in e.params.values():
            inner = getattr(p, "jaxpr", None)
            if inner is not None:
                _walk(getattr(inner, "jaxpr", inner), prims, n_block_relu)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet18", {}),
        ("resnet50", {}),
        ("resnet50", {"stem_pool": "max"}),
        ("resnet50", {"stem_pool": "max", "pool_before_relu": True}),
        ("mobilenetv2", {}),
        ("deeplabv3_mobilenetv2", {}),
        ("deeplabv3_resnet50", {}),
        ("small_28", {}),
    ],
)
def test_eval_jaxpr_uses_only_secure_friendly_ops(name, kwargs):
    """The contract with the secure interpreter: linear ops, pools, and one named jit per Block ReLU."""
    preset, shape, _ = TINY[name]
    model = preset(**kwargs)
    x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(model.apply)(variables, x)
    prims, eqns = set(), []
    _walk(jaxpr.jaxpr, prims, eqns)
    assert prims <= ALLOWED_PRIMITIVES, prims - ALLOWED_PRIMITIVES
    assert len(eqns) == len(relu_layers(model, shape))
    assert all(e.invars[0].aval.dtype == jnp.float32 for e in eqns)


def test_width_and_presets():
    assert make_divisible(32 * 0.25) == 8 and make_divisible(24 * 0.5) == 16 and make_divisible(320 * 1.4) == 448
    layers = dict(relu_layers(MobileNetV2(widen_factor=0.5), (64, 64, 3)))
    assert layers["conv1/relu"] == (32, 32, 16)
    assert layers["conv2/relu"] == (2, 2, 1280)
    assert dict(relu_layers(MobileNetV2(widen_factor=1.4), (64, 64, 3)))["conv2/relu"][-1] == 1792
    small = jax.eval_shape(ResNetSmall().init, jax.random.key(0), jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(small["params"]))
    assert 5_000 <= n_params <= 100_000


def test_invalid_configurations():
    x = (8, 8, 3)
    with pytest.raises(ValueError, match="stem"):
        relu_layers(ResNet(stage_sizes=(1,), stem="bad"), x)
    with pytest.raises(ValueError, match="one entry per stage"):
        relu_layers(ResNet(stage_sizes=(1, 1), strides=(1,)), x)
    with pytest.raises(ValueError, match="stage_sizes"):
        relu_layers(ResNet(stage_sizes=(1, 0)), x)
    with pytest.raises(ValueError, match="widen_factor"):
        relu_layers(MobileNetV2(widen_factor=0.0), x)


def test_vmap_model_over_candidate_specs(tiny_runs):
    """The distortion profiler's pattern: one model, vmapped over stacked block-size collections."""
    model = models._ResNet18Tiny()
    variables = tiny_runs("resnet18")[0]
    x = _x((8, 8, 3), seed=3)
    layers = relu_layers(model, (8, 8, 3))
    (first, (_, _, c0)), (fourth, (_, _, c3)) = layers[0], layers[3]
    specs = [{}, {first: np.tile([2, 2], (c0, 1))}, {fourth: np.tile([0, 1], (c3, 1))}]
    trees = [apply_spec(variables, s)["block_sizes"] for s in specs]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *trees)
    apply = jax.jit(lambda bs: model.apply({**variables, "block_sizes": bs}, x))
    ys = jax.jit(jax.vmap(apply))(stacked)
    for i, tree in enumerate(trees):
        np.testing.assert_allclose(np.asarray(ys[i]), np.asarray(apply(tree)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(ys[0]), np.asarray(ys[1]))
    assert not np.allclose(np.asarray(ys[0]), np.asarray(ys[2]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, shape",
    [("resnet18", (32, 32, 3)), ("resnet50", (224, 224, 3)), ("deeplabv3_mobilenetv2", (128, 96, 3)),
     ("deeplabv3_resnet50", (128, 96, 3))],
)  # fmt: skip
def test_paper_models_forward_with_spec(name, shape):
    """Full-size presets run forward (eval) with a random Block ReLU spec; logits are finite."""
    model = PAPER[name][0]()
    variables = _random_variables(model, shape, seed=1)
    rng = np.random.default_rng(0)
    spec = {}
    for layer, (h, w, c) in relu_layers(model, shape):
        cands = blocks.default_candidates(h, w)
        spec[layer] = cands[rng.integers(0, len(cands) - 1, size=c)]  # never the zero option
    y = jax.jit(model.apply)(apply_spec(variables, spec), _x(shape))
    expected = {
        "resnet18": (2, 100),
        "resnet50": (2, 1000),
        "deeplabv3_mobilenetv2": (2, 16, 12, 150),  # output stride 8, ADE20K classes
        "deeplabv3_resnet50": (2, 16, 12, 21),  # output stride 8, VOC classes
    }[name]
    assert y.shape == expected and y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
