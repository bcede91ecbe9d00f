"""Tests of the PyTorch/torchvision weight import (jaxmpc.train._convert).

The state dicts are built here in numpy with torchvision's key names, following torchvision's
own construction rules (not the importer's mapping), and the imported Flax models are compared
with a reference forward pass written in NCHW/OIHW (torch layout) with ``lax`` directly from
those state dicts. A slow test compares against real torchvision models when torch is installed.
"""

from __future__ import annotations

import functools
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxmpc.nn import MobileNetV2, ResNet, ResNet18, ResNet50, ResNetSmall, models
from jaxmpc.nn.models import BasicBlock, make_divisible
from jaxmpc.train import (
    MMCLS_PREFIXES,
    WeightImportError,
    export_torch_state_dict,
    import_torch_state_dict,
    init_variables,
)

HI = lax.Precision.HIGHEST


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


# --------------------------------------------------------------------------------------------
# Synthetic torchvision-layout state dicts


def _conv(rng, o, i, k):
    return (rng.standard_normal((o, i, k, k)) * np.sqrt(2.0 / (i * k * k))).astype(np.float32)


def _bn(sd, rng, prefix, c):
    sd[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{prefix}.bias"] = (rng.standard_normal(c) * 0.1).astype(np.float32)
    sd[f"{prefix}.running_mean"] = (rng.standard_normal(c) * 0.1).astype(np.float32)
    sd[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{prefix}.num_batches_tracked"] = np.array(7, np.int64)


def torchvision_resnet_sd(seed, *, bottleneck, layers, width, num_classes, in_ch=3, stem_kernel=7):
    """torchvision.models.resnet naming: conv1/bn1, layerS.B.{conv,bn}k, downsample.{0,1}, fc."""
    rng = np.random.default_rng(seed)
    sd = {}
    sd["conv1.weight"] = _conv(rng, width, in_ch, stem_kernel)
    _bn(sd, rng, "bn1", width)
    inplanes, expansion = width, (4 if bottleneck else 1)
    for s, n in enumerate(layers):
        planes = width * 2**s
        stride = 1 if s == 0 else 2
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            if bottleneck:
                sd[f"{p}.conv1.weight"] = _conv(rng, planes, inplanes, 1)
                _bn(sd, rng, f"{p}.bn1", planes)
                sd[f"{p}.conv2.weight"] = _conv(rng, planes, planes, 3)
                _bn(sd, rng, f"{p}.bn2", planes)
                sd[f"{p}.conv3.weight"] = _conv(rng, planes * 4, planes, 1)
                _bn(sd, rng, f"{p}.bn3", planes * 4)
            else:
                sd[f"{p}.conv1.weight"] = _conv(rng, planes, inplanes, 3)
                _bn(sd, rng, f"{p}.bn1", planes)
                sd[f"{p}.conv2.weight"] = _conv(rng, planes, planes, 3)
                _bn(sd, rng, f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or inplanes != planes * expansion):
                sd[f"{p}.downsample.0.weight"] = _conv(rng, planes * expansion, inplanes, 1)
                _bn(sd, rng, f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    sd["fc.weight"] = (rng.standard_normal((num_classes, inplanes)) / np.sqrt(inplanes)).astype(np.float32)
    sd["fc.bias"] = (rng.standard_normal(num_classes) * 0.1).astype(np.float32)
    return sd


def torchvision_mobilenet_v2_sd(seed, *, arch, widen, last_channels, num_classes):
    """torchvision.models.mobilenet_v2 naming: features.0, features.k.conv.*, features.N, classifier.1."""
    rng = np.random.default_rng(seed)
    sd = {}
    inp = make_divisible(32 * widen)
    sd["features.0.0.weight"] = _conv(rng, inp, 3, 3)
    _bn(sd, rng, "features.0.1", inp)
    k = 1
    for t, c, n in arch:
        out = make_divisible(c * widen)
        for _ in range(n):
            hidden = round(inp * t)
            p = f"features.{k}.conv"
            layer = 0
            if t != 1:
                sd[f"{p}.0.0.weight"] = _conv(rng, hidden, inp, 1)
                _bn(sd, rng, f"{p}.0.1", hidden)
                layer = 1
            sd[f"{p}.{layer}.0.weight"] = (rng.standard_normal((hidden, 1, 3, 3)) * np.sqrt(2 / 9)).astype(np.float32)
            _bn(sd, rng, f"{p}.{layer}.1", hidden)
            sd[f"{p}.{layer + 1}.weight"] = _conv(rng, out, hidden, 1)
            _bn(sd, rng, f"{p}.{layer + 2}", out)
            inp = out
            k += 1
    sd[f"features.{k}.0.weight"] = _conv(rng, last_channels, inp, 1)
    _bn(sd, rng, f"features.{k}.1", last_channels)
    sd["classifier.1.weight"] = (rng.standard_normal((num_classes, last_channels)) / np.sqrt(last_channels)).astype(
        np.float32
    )
    sd["classifier.1.bias"] = (rng.standard_normal(num_classes) * 0.1).astype(np.float32)
    return sd


# --------------------------------------------------------------------------------------------
# Reference forward passes in torch layout (NCHW activations, OIHW weights)


def t_conv(x, w, stride=1, pad=0, groups=1):
    return lax.conv_general_dilated(
        x,
        jnp.asarray(w),
        (stride, stride),
        [(pad, pad), (pad, pad)],
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        feature_group_count=groups,
        precision=HI,
    )


def t_bn(x, sd, p, eps=1e-5):
    shape = (1, -1, 1, 1)
    scale = sd[f"{p}.weight"] / jnp.sqrt(sd[f"{p}.running_var"] + eps)
    return (x - sd[f"{p}.running_mean"].reshape(shape)) * scale.reshape(shape) + sd[f"{p}.bias"].reshape(shape)


def t_relu(x):
    return jnp.maximum(x, 0)


def t_maxpool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 3, 3), (1, 1, 2, 2), [(0, 0), (0, 0), (1, 1), (1, 1)])


def t_avgpool(x):  # AvgPool2d(3, 2, 1), count_include_pad=True
    s = lax.reduce_window(x, 0.0, lax.add, (1, 1, 3, 3), (1, 1, 2, 2), [(0, 0), (0, 0), (1, 1), (1, 1)])
    return s / 9.0


def t_linear(x, sd, p):
    return jnp.dot(x, jnp.asarray(sd[f"{p}.weight"]).T, precision=HI) + sd[f"{p}.bias"]


@functools.partial(jax.jit, static_argnames=("bottleneck", "layers", "stem_kernel", "stem_stride", "pool"))
def resnet_reference(sd, x, *, bottleneck, layers, stem_kernel, stem_stride, pool):
    y = t_relu(t_bn(t_conv(x, sd["conv1.weight"], stem_stride, stem_kernel // 2), sd, "bn1"))
    if pool == "max":
        y = t_maxpool(y)
    elif pool == "avg":
        y = t_avgpool(y)
    for s, n in enumerate(layers):
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            stride = 2 if (s > 0 and b == 0) else 1
            if bottleneck:
                h = t_relu(t_bn(t_conv(y, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                h = t_relu(t_bn(t_conv(h, sd[f"{p}.conv2.weight"], stride, 1), sd, f"{p}.bn2"))
                h = t_bn(t_conv(h, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            else:
                h = t_relu(t_bn(t_conv(y, sd[f"{p}.conv1.weight"], stride, 1), sd, f"{p}.bn1"))
                h = t_bn(t_conv(h, sd[f"{p}.conv2.weight"], 1, 1), sd, f"{p}.bn2")
            short = y
            if f"{p}.downsample.0.weight" in sd:
                short = t_bn(t_conv(y, sd[f"{p}.downsample.0.weight"], stride), sd, f"{p}.downsample.1")
            y = t_relu(h + short)
    return t_linear(jnp.mean(y, axis=(2, 3)), sd, "fc")


@functools.partial(jax.jit, static_argnames=("arch", "strides"))
def mobilenet_reference(sd, x, *, arch, strides):
    y = t_relu(t_bn(t_conv(x, sd["features.0.0.weight"], 2, 1), sd, "features.0.1"))
    k = 1
    for (t, _, n), s in zip(arch, strides):
        for i in range(n):
            p = f"features.{k}.conv"
            stride = s if i == 0 else 1
            h, layer = y, 0
            if t != 1:
                h = t_relu(t_bn(t_conv(h, sd[f"{p}.0.0.weight"]), sd, f"{p}.0.1"))
                layer = 1
            dw = sd[f"{p}.{layer}.0.weight"]
            h = t_relu(t_bn(t_conv(h, dw, stride, 1, groups=dw.shape[0]), sd, f"{p}.{layer}.1"))
            h = t_bn(t_conv(h, sd[f"{p}.{layer + 1}.weight"]), sd, f"{p}.{layer + 2}")
            y = y + h if (stride == 1 and y.shape[1] == h.shape[1]) else h
            k += 1
    y = t_relu(t_bn(t_conv(y, sd[f"features.{k}.0.weight"]), sd, f"features.{k}.1"))
    return t_linear(jnp.mean(y, axis=(2, 3)), sd, "classifier.1")


def flax_forward(model, variables, x_nchw):
    x = jnp.transpose(jnp.asarray(x_nchw), (0, 2, 3, 1))
    return jax.jit(functools.partial(model.apply, train=False))(variables, x)


def _check_close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * max(1.0, float(np.abs(b).max())))


# --------------------------------------------------------------------------------------------
# Cases

R18_CIFAR_TINY = {"bottleneck": False, "layers": (2, 2, 2, 2), "width": 4, "num_classes": 10, "stem_kernel": 3}
R50_TINY = {"bottleneck": True, "layers": (1, 1, 1, 1), "width": 4, "num_classes": 10, "stem_kernel": 7}
MNV2_TINY_ARCH = models._MobileNetV2Tiny.keywords["arch"]
SMALL_SD = {"bottleneck": False, "layers": (1, 1, 1), "width": 8, "in_ch": 1, "stem_kernel": 3}  # ResNetSmall


def test_resnet18_cifar_variant_matches_reference_forward():
    # Given a torchvision-layout state dict of the paper's CIFAR ResNet18 (3x3 stem, no pool), tiny width
    sd = torchvision_resnet_sd(0, **R18_CIFAR_TINY)
    model = ResNet18(num_filters=4, num_classes=10)
    # When it is imported
    variables = import_torch_state_dict(model, sd)
    # Then the Flax model computes the torch-layout reference function
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref = resnet_reference(sd, x, bottleneck=False, layers=(2, 2, 2, 2), stem_kernel=3, stem_stride=1, pool=None)
    _check_close(flax_forward(model, variables, x), ref)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables["params"]))
    assert all((np.asarray(a) == 1).all() for a in jax.tree.leaves(variables["block_sizes"]))


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_resnet50_matches_reference_forward(pool):
    sd = torchvision_resnet_sd(2, **R50_TINY)
    model = ResNet50(stage_sizes=(1, 1, 1, 1), num_filters=4, num_classes=10, stem_pool=pool)
    variables = import_torch_state_dict(model, sd)
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = resnet_reference(sd, x, bottleneck=True, layers=(1, 1, 1, 1), stem_kernel=7, stem_stride=2, pool=pool)
    _check_close(flax_forward(model, variables, x), ref)


def test_resnet18_imagenet_stem_matches_reference_forward():
    sd = torchvision_resnet_sd(4, bottleneck=False, layers=(2, 2, 2, 2), width=4, num_classes=7)
    model = ResNet(stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, num_filters=4, num_classes=7, stem_pool="max")
    variables = import_torch_state_dict(model, sd)
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref = resnet_reference(sd, x, bottleneck=False, layers=(2, 2, 2, 2), stem_kernel=7, stem_stride=2, pool="max")
    _check_close(flax_forward(model, variables, x), ref)


def test_mobilenet_v2_matches_reference_forward():
    sd = torchvision_mobilenet_v2_sd(6, arch=MNV2_TINY_ARCH, widen=0.25, last_channels=32, num_classes=10)
    model = models._MobileNetV2Tiny()
    variables = import_torch_state_dict(model, sd)
    x = np.random.default_rng(7).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = mobilenet_reference(sd, x, arch=MNV2_TINY_ARCH, strides=tuple(model.strides))
    _check_close(flax_forward(model, variables, x), ref)


def test_resnet_small_grey_input_channels_inferred():
    sd = torchvision_resnet_sd(8, num_classes=10, **SMALL_SD)
    variables = import_torch_state_dict(ResNetSmall(), sd)
    assert variables["params"]["stem"]["conv"]["kernel"].shape == (3, 3, 1, 8)
    x = np.random.default_rng(9).standard_normal((2, 1, 8, 8)).astype(np.float32)
    ref = resnet_reference(sd, x, bottleneck=False, layers=(1, 1, 1), stem_kernel=3, stem_stride=1, pool=None)
    _check_close(flax_forward(ResNetSmall(), variables, x), ref)


def test_layer_layouts_individually():
    # conv OIHW -> HWIO, depthwise [C, 1, 3, 3] -> [3, 3, 1, C], linear transposed, BN renamed.
    sd = torchvision_mobilenet_v2_sd(10, arch=MNV2_TINY_ARCH, widen=0.25, last_channels=32, num_classes=10)
    v = import_torch_state_dict(models._MobileNetV2Tiny(), sd)
    np.testing.assert_array_equal(
        v["params"]["conv1"]["conv"]["kernel"], sd["features.0.0.weight"].transpose(2, 3, 1, 0)
    )
    dw = v["params"]["layer1_0"]["depthwise"]["conv"]["kernel"]
    assert dw.shape == (3, 3, 1, sd["features.1.conv.0.0.weight"].shape[0])
    np.testing.assert_array_equal(dw[:, :, 0, :], sd["features.1.conv.0.0.weight"][:, 0].transpose(1, 2, 0))
    np.testing.assert_array_equal(
        v["params"]["layer2_0"]["expand"]["conv"]["kernel"][0, 0], sd["features.2.conv.0.0.weight"][:, :, 0, 0].T
    )
    np.testing.assert_array_equal(v["params"]["fc"]["kernel"], sd["classifier.1.weight"].T)
    np.testing.assert_array_equal(v["params"]["layer2_0"]["project_bn"]["scale"], sd["features.2.conv.3.weight"])
    np.testing.assert_array_equal(
        v["batch_stats"]["layer2_0"]["project_bn"]["var"], sd["features.2.conv.3.running_var"]
    )
    np.testing.assert_array_equal(v["batch_stats"]["conv2"]["bn"]["mean"], sd["features.9.1.running_mean"])


# --------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize(
    "make_model,make_sd",
    [
        (lambda: ResNet18(num_filters=4, num_classes=10), lambda: torchvision_resnet_sd(11, **R18_CIFAR_TINY)),
        (
            lambda: ResNet50(stage_sizes=(1, 1, 1, 1), num_filters=4, num_classes=10),
            lambda: torchvision_resnet_sd(12, **R50_TINY),
        ),
        (
            models._MobileNetV2Tiny,
            lambda: torchvision_mobilenet_v2_sd(13, arch=MNV2_TINY_ARCH, widen=0.25, last_channels=32, num_classes=10),
        ),
    ],
    ids=["resnet18_cifar", "resnet50", "mobilenet_v2"],
)
def test_round_trip(make_model, make_sd):
    model, sd = make_model(), make_sd()
    variables = import_torch_state_dict(model, sd)
    back = export_torch_state_dict(model, variables)
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype
        if not k.endswith("num_batches_tracked"):  # a counter torch keeps; exported as 0
            np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    again = import_torch_state_dict(model, back)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)


def test_export_of_initialised_model_reimports_exactly():
    model = ResNetSmall()
    variables = init_variables(model, (8, 8, 1))
    again = import_torch_state_dict(model, export_torch_state_dict(model, variables))
    for coll in ("params", "batch_stats"):
        for a, b in zip(jax.tree.leaves(again[coll]), jax.tree.leaves(variables[coll])):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------
# Validation and options


def test_missing_unexpected_and_mismatched_keys_are_listed():
    sd = torchvision_resnet_sd(14, **R18_CIFAR_TINY)
    del sd["layer2.0.downsample.0.weight"]
    del sd["bn1.running_var"]
    sd["layer9.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    sd["fc.weight"] = np.zeros((11, 32), np.float32)
    with pytest.raises(WeightImportError) as e:
        import_torch_state_dict(ResNet18(num_filters=4, num_classes=10), sd)
    msg = str(e.value)
    assert "missing keys (2)" in msg and "layer2.0.downsample.0.weight" in msg and "bn1.running_var" in msg
    assert "unexpected keys (1)" in msg and "layer9.0.conv1.weight" in msg
    assert "shape mismatches (1)" in msg and "fc.weight: got (11, 32), model expects (10, 32)" in msg


def test_skip_keeps_given_values_and_allows_new_head():
    sd = torchvision_resnet_sd(15, num_classes=10, **SMALL_SD)
    model = ResNetSmall(num_classes=3)
    with pytest.raises(WeightImportError, match="fc.weight"):
        import_torch_state_dict(model, sd)
    base = init_variables(model, (8, 8, 1), seed=1)
    v = import_torch_state_dict(model, sd, variables=base, skip=("fc.",))
    np.testing.assert_array_equal(v["params"]["fc"]["kernel"], base["params"]["fc"]["kernel"])
    np.testing.assert_array_equal(v["params"]["stem"]["conv"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))
    v2 = import_torch_state_dict(model, sd, skip=("fc.",))  # head from the model's own initialisation
    assert v2["params"]["fc"]["kernel"].shape == (32, 3)
    assert not np.array_equal(v2["params"]["fc"]["kernel"], v["params"]["fc"]["kernel"])


def test_block_sizes_of_given_variables_are_kept():
    from jaxmpc.nn import apply_spec

    model = ResNetSmall()
    sd = torchvision_resnet_sd(16, num_classes=10, **SMALL_SD)
    base = apply_spec(import_torch_state_dict(model, sd), {"stem/relu": np.tile([2, 2], (8, 1))})
    v = import_torch_state_dict(model, sd, variables=base)
    np.testing.assert_array_equal(v["block_sizes"]["stem"]["relu"]["sizes"], np.tile([2, 2], (8, 1)))


def test_prefixes_module_and_mmcls():
    sd = torchvision_resnet_sd(17, **R18_CIFAR_TINY)
    model = ResNet18(num_filters=4, num_classes=10)
    ref = import_torch_state_dict(model, sd)
    dp = {f"module.{k}": v for k, v in sd.items()}
    mm = {(f"head.{k}" if k.startswith("fc.") else f"backbone.{k}"): v for k, v in sd.items()}
    for other in (import_torch_state_dict(model, dp), import_torch_state_dict(model, mm, prefix_map=MMCLS_PREFIXES)):
        for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(WeightImportError, match="unexpected keys"):
        import_torch_state_dict(model, mm)
    extra = dict(sd, **{"extra.thing": np.zeros(3, np.float32)})
    import_torch_state_dict(model, extra, allow_unexpected=True)


def test_unsupported_model_and_bad_input():
    with pytest.raises(NotImplementedError, match="ResNet"):
        import_torch_state_dict(models._DeepLabV3MobileNetV2Tiny(), {})
    with pytest.raises(TypeError):
        import_torch_state_dict(ResNetSmall(), [("conv1.weight", np.zeros(1))])


def test_pt_file_needs_torch(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match="PyTorch"):
        import_torch_state_dict(ResNetSmall(), str(tmp_path / "model.pth"))


# --------------------------------------------------------------------------------------------
# Against real PyTorch / torchvision (slow; skipped without torch)


def _import_torchvision(monkeypatch):
    pytest.importorskip("torch")
    try:
        import torchvision
    except ImportError:
        pytest.skip("torchvision is not installed")
    except RuntimeError:
        # A CUDA build of torchvision next to a CPU build of torch: its C++ operators (nms, ...)
        # cannot register, but its model definitions work. Import it without the registrations.
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, "torchvision._meta_registrations", types.ModuleType("stub"))
        import torchvision
    return torchvision


@pytest.mark.slow
def test_against_torchvision(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    tv = _import_torchvision(monkeypatch)
    torch.manual_seed(0)

    def randomise_bn(net):
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                with torch.no_grad():
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
        return net.eval()

    def relu6_to_relu(net):
        for name, m in list(net.named_modules()):
            for child_name, child in list(m.named_children()):
                if isinstance(child, torch.nn.ReLU6):
                    setattr(m, child_name, torch.nn.ReLU())
        return net

    cases = [
        (
            randomise_bn(tv.models.resnet18(num_classes=10)),
            ResNet(stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, num_classes=10, stem_pool="max"),
        ),
        (randomise_bn(tv.models.resnet50(num_classes=10)), ResNet50(num_classes=10, stem_pool="max")),
        (relu6_to_relu(randomise_bn(tv.models.mobilenet_v2(num_classes=10))), MobileNetV2(num_classes=10)),
    ]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    for net, model in cases:
        path = tmp_path / "model.pth"
        torch.save(net.state_dict(), path)
        variables = import_torch_state_dict(model, str(path))
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        _check_close(flax_forward(model, variables, x), ref)
        # export loads back into torch strictly
        sd = {k: torch.from_numpy(np.asarray(v)) for k, v in export_torch_state_dict(model, variables).items()}
        net.load_state_dict(sd, strict=True)
        with torch.no_grad():
            np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), ref, rtol=1e-6, atol=1e-6)


def test_deep_stem_keys_follow_mmseg_resnetv1c():
    from jaxmpc.train import torch_key_map
    from jaxmpc.train._convert import _abstract_variables

    model = functools.partial(models.ResNet50V1cD8, stage_sizes=(1, 1, 1, 1), num_filters=4, stem_width=4)()
    keys = {tk for tk, _ in torch_key_map(model, _abstract_variables(model, (32, 32, 3))).values()}
    expected = {f"stem.{i}.weight" for i in (0, 1, 3, 4, 6, 7)} | {f"stem.{i}.running_var" for i in (1, 4, 7)}
    assert expected <= keys
    assert "conv1.weight" not in keys and not any(k.startswith("fc.") for k in keys)
    assert "layer1.0.downsample.0.weight" in keys and "layer4.0.conv3.weight" in keys
