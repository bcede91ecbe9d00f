"""Flax (linen) models of the paper, with a :class:`~jaxmpc.nn.BlockReLU` for every ReLU.

The architectures reproduce the networks of Gorski & Avidan (arXiv 2304.10442, §5;
``paper_reference.md`` §3.3 and §7) layer for layer, so that their ReLU layers, channel counts
and DReLU counts equal the paper's:

* :data:`ResNet18` -- the CIFAR variant (3x3 stem, stride 1, no pooling), 100 classes.
* :data:`ResNet50` -- bottleneck ResNet, v1.5 (stride on the 3x3 conv, as torchvision / mmcls),
  with the stem MaxPool replaced by AvgPool(3, s2, p1) as in the paper (``stem_pool="max"``
  restores the original).
* :data:`MobileNetV2` -- with ReLU instead of ReLU6, width multiplier ``widen_factor``.
* :data:`DeepLabV3MobileNetV2` and :data:`DeepLabV3ResNet50` -- mmseg's DeepLabV3 (ASPP head,
  512 channels, dilations 1/12/24/36) on dilated backbones with output stride 8; the ResNet50
  backbone is mmseg's ResNetV1c (three-conv "deep stem") with AvgPool.
* :data:`ResNetSmall` -- a ~20k-parameter ResNet for grey images (28x28 Fashion-MNIST,
  8x8 scikit-learn digits).

Conventions: NHWC inputs, float32 parameters and activations (also under ``jax_enable_x64``),
``__call__(x, train=False)`` where ``train`` switches BatchNorm to batch statistics (apply with
``mutable=["batch_stats"]``). Only standard layers are used (``nn.Conv``, ``nn.BatchNorm``,
``nn.Dense``, ``nn.avg_pool``, ``nn.max_pool``, ``jnp.mean``, residual adds, ``jnp.concatenate``,
``jnp.broadcast_to`` and BlockReLU), so the secure interpreter can run every model; BatchNorm is
kept as BatchNorm (the interpreter folds it). Convolutions use PyTorch's explicit symmetric
padding ``dilation * (k - 1) // 2``, so feature-map sizes (and DReLU counts) equal the reference's
for every input size, including odd and non-square ones.

Layer names (``"/"``-joined module paths of the BlockReLUs, used by block specs):

* ResNet: ``stem/relu`` (deep stem: ``stem1/relu``, ``stem2/relu``, ``stem3/relu``), then
  ``layer{S}_{B}/relu{k}`` with S = 1..4, B = block index, k = 1, 2 (basic) or 1, 2, 3
  (bottleneck), the last one after the residual add. The paper's ``layerS_B_k``.
* MobileNetV2: ``conv1/relu``, ``layer{S}_{B}/expand/relu`` (absent in layer1),
  ``layer{S}_{B}/depthwise/relu``, and ``conv2/relu`` for the classifier's last 1x1 conv.
* DeepLabV3: ``backbone/<backbone layer>``, then ``decode/image_pool/relu`` (the paper's
  ``decode_0``), ``decode/aspp{0..3}/relu`` (``decode_1..4``), ``decode/bottleneck/relu``
  (``decode_5``).

Presets are ``functools.partial`` objects; presets whose names start with an underscore are tiny
versions used by the tests.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmpc.nn.block_relu import BlockReLU

__all__ = [
    "ASPPHead",
    "BasicBlock",
    "Bottleneck",
    "ConvBNReLU",
    "DeepLabV3",
    "DeepLabV3MobileNetV2",
    "DeepLabV3ResNet50",
    "InvertedResidual",
    "MobileNetV2",
    "MobileNetV2D8",
    "ResNet",
    "ResNet18",
    "ResNet50",
    "ResNet50V1cD8",
    "ResNetSmall",
    "make_divisible",
]

ModuleDef = Any
Dtype = Any

#: He-normal initialisation on fan-out, as torchvision/mmcv initialise ResNet convolutions.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad(kernel: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    """PyTorch-style symmetric padding ``dilation * (kernel - 1) // 2`` on both spatial axes."""
    p = dilation * (kernel - 1) // 2
    return ((p, p), (p, p))


def _check_positive(owner: str, **values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{owner}: {name} must be a positive int, got {v!r}")


def make_divisible(value: float, divisor: int = 8, min_ratio: float = 0.9) -> int:
    """Rounds a channel count to a multiple of ``divisor`` (MobileNetV2's width rule, as in mmcv).

    The result is at least ``divisor`` and never below ``min_ratio * value``.
    """
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < min_ratio * value:
        new += divisor
    return new


class _Layers:
    """Conv/BN factories bound to a model's injectable fields, dtype and the train flag."""

    def __init__(self, conv: ModuleDef, norm: ModuleDef, dtype: Dtype, train: bool):
        self.conv = functools.partial(conv, use_bias=False, dtype=dtype, param_dtype=dtype, kernel_init=conv_init)
        self.norm = functools.partial(
            norm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=dtype
        )


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> BlockReLU, named ``conv``, ``bn``, ``relu`` inside the module.

    Attributes:
      features: output channels.
      kernel_size: square kernel side.
      strides: stride on both axes.
      dilation: kernel dilation (padding ``dilation * (kernel_size - 1) // 2``).
      groups: feature groups (``groups == in channels`` makes a depthwise conv).
      pre_act: optional function applied between BatchNorm and the ReLU (a pooling layer).
      conv, norm, act: injectable layer constructors.
      dtype: parameter and computation dtype.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    groups: int = 1
    pre_act: Any = None
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    act: ModuleDef = BlockReLU
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        layers = _Layers(self.conv, self.norm, self.dtype, train)
        k = self.kernel_size
        x = layers.conv(
            self.features,
            (k, k),
            strides=(self.strides, self.strides),
            padding=_pad(k, self.dilation),
            kernel_dilation=(self.dilation, self.dilation),
            feature_group_count=self.groups,
            name="conv",
        )(x)
        x = layers.norm(name="bn")(x)
        if self.pre_act is not None:
            x = self.pre_act(x)
        return self.act(name="relu")(x)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs; ReLUs ``relu1`` (after bn1) and ``relu2`` (after the add).

    As in mmseg's ``BasicBlock``, only the first conv is dilated. A 1x1 projection shortcut
    (``downsample_conv``, ``downsample_bn``) is used when the stride or the width changes.

    Attributes:
      filters: output channels.
      strides: stride of the first conv (and of the shortcut).
      dilation: dilation of the first conv.
      stride_in_1x1: unused (a bottleneck option, accepted so that blocks are interchangeable).
      conv, norm, act, dtype: see :class:`ResNet`.
    """

    filters: int
    strides: int = 1
    dilation: int = 1
    stride_in_1x1: bool = False
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    act: ModuleDef = BlockReLU
    dtype: Dtype = jnp.float32

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        layers = _Layers(self.conv, self.norm, self.dtype, train)
        s, d = self.strides, self.dilation
        y = layers.conv(self.filters, (3, 3), (s, s), padding=_pad(3, d), kernel_dilation=(d, d), name="conv1")(x)
        y = layers.norm(name="bn1")(y)
        y = self.act(name="relu1")(y)
        y = layers.conv(self.filters, (3, 3), padding=_pad(3), name="conv2")(y)
        y = layers.norm(name="bn2")(y)
        shortcut = x
        if s != 1 or x.shape[-1] != self.filters:
            shortcut = layers.conv(self.filters, (1, 1), (s, s), padding="VALID", name="downsample_conv")(x)
            shortcut = layers.norm(name="downsample_bn")(shortcut)
        return self.act(name="relu2")(shortcut + y)


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1 -> 3x3 -> 1x1, expansion 4) with ReLUs ``relu1..3``.

    ``relu3`` follows the residual add. By default the stride sits on the 3x3 conv (ResNet v1.5,
    torchvision / mmcls ``style="pytorch"``), which puts ``relu1`` of a strided block at the
    *input* resolution, as in the paper's layer list (``paper_reference.md`` §3.3). Dilation
    applies to the 3x3 conv only.

    Attributes:
      filters: bottleneck width (output channels are ``4 * filters``).
      strides: block stride.
      dilation: dilation of the 3x3 conv.
      stride_in_1x1: put the stride on the first 1x1 conv instead (ResNet v1 / ``"caffe"``).
      conv, norm, act, dtype: see :class:`ResNet`.
    """

    filters: int
    strides: int = 1
    dilation: int = 1
    stride_in_1x1: bool = False
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    act: ModuleDef = BlockReLU
    dtype: Dtype = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        layers = _Layers(self.conv, self.norm, self.dtype, train)
        s, d = self.strides, self.dilation
        s1, s3 = (s, 1) if self.stride_in_1x1 else (1, s)
        out = self.filters * self.expansion
        y = layers.conv(self.filters, (1, 1), (s1, s1), padding="VALID", name="conv1")(x)
        y = layers.norm(name="bn1")(y)
        y = self.act(name="relu1")(y)
        y = layers.conv(self.filters, (3, 3), (s3, s3), padding=_pad(3, d), kernel_dilation=(d, d), name="conv2")(y)
        y = layers.norm(name="bn2")(y)
        y = self.act(name="relu2")(y)
        y = layers.conv(out, (1, 1), padding="VALID", name="conv3")(y)
        y = layers.norm(name="bn3")(y)
        shortcut = x
        if s != 1 or x.shape[-1] != out:
            shortcut = layers.conv(out, (1, 1), (s, s), padding="VALID", name="downsample_conv")(x)
            shortcut = layers.norm(name="downsample_bn")(shortcut)
        return self.act(name="relu3")(shortcut + y)


StemKind = Literal["cifar", "imagenet", "deep"]
PoolKind = Literal["max", "avg"]


def stem_pool(x: jax.Array, kind: PoolKind) -> jax.Array:
    """The ResNet stem pool: 3x3 window, stride 2, padding 1, max or average.

    The average divides every window sum by 9, padding included (PyTorch ``AvgPool2d``'s
    ``count_include_pad=True``, the reference's ``MyAvgPool``).
    """
    pad = ((1, 1), (1, 1))
    if kind == "max":
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad)
    if kind == "avg":
        return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=pad, count_include_pad=True)
    raise ValueError(f"stem pool must be 'max' or 'avg', got {kind!r}")


class ResNet(nn.Module):
    """ResNet family (He et al. 2016) with BlockReLUs, in the variants the paper uses.

    Stems:

    * ``"cifar"``: 3x3 conv, stride 1, ``num_filters`` channels (the paper's CIFAR ResNet18,
      ``paper_reference.md`` §3.3);
    * ``"imagenet"``: 7x7 conv, stride 2, padding 3;
    * ``"deep"``: three 3x3 convs (stride 2, 1, 1) with ``stem_width, stem_width,
      num_filters`` channels (mmseg ``ResNetV1c``; the paper's ``stem_2, stem_5, stem_8``).

    followed by ``stem_pool`` (3x3, stride 2, padding 1) when not ``None``. ``"avg"`` is the
    paper's replacement of the MaxPool (§0 step 1) and is what its secure runs use: PyTorch
    ``AvgPool2d(3, 2, 1)`` with ``count_include_pad=True``, i.e. the window sum divided by 9
    everywhere (``nn.avg_pool``'s default). A constant divisor keeps the layer linear, so it costs
    no communication in the secure protocol, and it matches the reference (``MyAvgPool``) and the
    checkpoints finetuned with it.

    Attributes:
      stage_sizes: blocks per stage.
      block_cls: :class:`BasicBlock` or :class:`Bottleneck`.
      num_classes: classifier outputs; ``None`` returns the last feature map (backbone use).
      num_filters: width of the first stage (doubled at each stage).
      stem: ``"cifar"``, ``"imagenet"`` or ``"deep"``.
      stem_width: channels of the first two deep-stem convs (default ``num_filters // 2``).
      stem_pool: ``"max"``, ``"avg"`` or ``None``.
      pool_before_relu: apply the stem MaxPool before the stem ReLU (the reference's secure
        MaxPool ResNet does this, ``paper_reference.md`` §1.6: with a plain ReLU it is exactly
        the same function, with 4x fewer ReLUs). Only with ``stem_pool="max"`` and a one-conv
        stem. It moves the stem ReLU layer to the pooled resolution.
      strides: stride of each stage (default ``(1, 2, 2, 2)``).
      dilations: dilation of each stage (default all 1).
      contract_dilation: the first block of a stage with dilation ``d > 1`` uses ``d // 2``
        (mmseg's ``contract_dilation=True`` for ResNetV1c).
      stride_in_1x1: bottleneck stride on the first 1x1 conv (v1) instead of the 3x3 (v1.5).
      conv, norm, act: injectable constructors (``nn.Conv``, ``nn.BatchNorm``, BlockReLU).
      dtype: parameter and activation dtype (float32).
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef = BasicBlock
    num_classes: int | None = 1000
    num_filters: int = 64
    stem: StemKind = "imagenet"
    stem_width: int | None = None
    stem_pool: PoolKind | None = "max"
    pool_before_relu: bool = False
    strides: Sequence[int] | None = None
    dilations: Sequence[int] | None = None
    contract_dilation: bool = True
    stride_in_1x1: bool = False
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    act: ModuleDef = BlockReLU
    dtype: Dtype = jnp.float32

    def _config(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        n = len(self.stage_sizes)
        if n < 1:
            raise ValueError("ResNet: stage_sizes must not be empty")
        for i, b in enumerate(self.stage_sizes):
            _check_positive("ResNet", **{f"stage_sizes[{i}]": b})
        _check_positive("ResNet", num_filters=self.num_filters)
        if self.num_classes is not None:
            _check_positive("ResNet", num_classes=self.num_classes)
        strides = tuple(self.strides) if self.strides is not None else (1,) + (2,) * (n - 1)
        dilations = tuple(self.dilations) if self.dilations is not None else (1,) * n
        if len(strides) != n or len(dilations) != n:
            raise ValueError(
                f"ResNet: strides {strides} and dilations {dilations} need one entry per stage ({n} stages)"
            )
        for i, (s, d) in enumerate(zip(strides, dilations)):
            _check_positive("ResNet", **{f"strides[{i}]": s, f"dilations[{i}]": d})
        if self.stem not in ("cifar", "imagenet", "deep"):
            raise ValueError(f"ResNet: stem must be 'cifar', 'imagenet' or 'deep', got {self.stem!r}")
        if self.stem_pool not in ("max", "avg", None):
            raise ValueError(f"ResNet: stem_pool must be 'max', 'avg' or None, got {self.stem_pool!r}")
        if self.pool_before_relu and (self.stem_pool != "max" or self.stem == "deep"):
            raise ValueError(
                "ResNet: pool_before_relu is only exact (and allowed) with stem_pool='max' and a one-conv stem"
            )
        return strides, dilations

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        strides, dilations = self._config()
        x = jnp.asarray(x, self.dtype)
        cbr = functools.partial(ConvBNReLU, conv=self.conv, norm=self.norm, act=self.act, dtype=self.dtype)
        if self.stem == "deep":
            sw = self.stem_width or max(self.num_filters // 2, 1)
            x = cbr(sw, 3, strides=2, name="stem1")(x, train)
            x = cbr(sw, 3, name="stem2")(x, train)
            x = cbr(self.num_filters, 3, name="stem3")(x, train)
        else:
            k, s = (3, 1) if self.stem == "cifar" else (7, 2)
            pre_act = functools.partial(stem_pool, kind="max") if self.pool_before_relu else None
            x = cbr(self.num_filters, k, strides=s, pre_act=pre_act, name="stem")(x, train)
        if self.stem_pool is not None and not self.pool_before_relu:
            x = stem_pool(x, self.stem_pool)
        block = functools.partial(
            self.block_cls,
            stride_in_1x1=self.stride_in_1x1,
            conv=self.conv,
            norm=self.norm,
            act=self.act,
            dtype=self.dtype,
        )
        for i, n_blocks in enumerate(self.stage_sizes):
            d = dilations[i]
            for j in range(n_blocks):
                # mmseg's ResLayer: the first block of a dilated stage uses half the dilation.
                dil = d // 2 if (j == 0 and d > 1 and self.contract_dilation) else d
                x = block(
                    self.num_filters * 2**i,
                    strides=strides[i] if j == 0 else 1,
                    dilation=dil,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
        if self.num_classes is None:
            return x
        x = jnp.mean(x, axis=(-3, -2))
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype, name="fc")(x)


# --------------------------------------------------------------------------------------------
# MobileNetV2


#: (expand ratio, output channels, blocks) per stage, as in MobileNetV2 (Sandler et al. 2018).
MOBILENETV2_ARCH = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection.

    Submodules ``expand`` (only when ``expand_ratio != 1``) and ``depthwise`` are
    :class:`ConvBNReLU`; the projection (``project_conv``, ``project_bn``) is linear. The
    residual is added when the stride is 1 and the channel count is kept. The depthwise conv
    carries the stride and the dilation (mmseg's ``InvertedResidual``).

    Attributes:
      features: output channels.
      strides: depthwise stride.
      expand_ratio: hidden width is ``round(in_channels * expand_ratio)``.
      dilation: depthwise dilation.
      conv, norm, act, dtype: see :class:`MobileNetV2`.
    """

    features: int
    strides: int = 1
    expand_ratio: int = 6
    dilation: int = 1
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    act: ModuleDef = BlockReLU
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        layers = _Layers(self.conv, self.norm, self.dtype, train)
        cbr = functools.partial(ConvBNReLU, conv=self.conv, norm=self.norm, act=self.act, dtype=self.dtype)
        c_in = x.shape[-1]
        hidden = round(c_in * self.expand_ratio)
        y = x
        if self.expand_ratio != 1:
            y = cbr(hidden, 1, name="expand")(y, train)
        y = cbr(hidden, 3, strides=self.strides, dilation=self.dilation, groups=hidden, name="depthwise")(y, train)
        y = layers.conv(self.features, (1, 1), padding="VALID", name="project_conv")(y)
        y = layers.norm(name="project_bn")(y)
        if self.strides == 1 and c_in == self.features:
            y = x + y
        return y


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) with ReLU in place of ReLU6, as the paper uses it.

    The stem ``conv1`` is a 3x3 stride-2 conv with ``make_divisible(32 * widen_factor)``
    channels; stage ``S`` (1..7) has the settings of ``arch[S - 1]``, its first block taking
    ``strides[S - 1]``; every block of stage ``S`` uses dilation ``dilations[S - 1]``. With
    ``last_channels`` a final 1x1 ``conv2`` (ReLU) follows; with ``num_classes`` a global
    average pool and a ``fc`` layer.

    Attributes:
      widen_factor: width multiplier for every stage.
      arch: ``(expand ratio, channels, blocks)`` per stage.
      strides: first-block stride per stage (ImageNet default ``(1, 2, 2, 2, 1, 2, 1)``).
      dilations: depthwise dilation per stage.
      last_channels: channels of ``conv2`` (1280; scaled when ``widen_factor > 1``); ``None``
        drops it (segmentation backbones).
      num_classes: classifier outputs; ``None`` returns the feature map.
      conv, norm, act: injectable constructors.
      dtype: parameter and activation dtype.
    """

    widen_factor: float = 1.0
    arch: Sequence[tuple[int, int, int]] = MOBILENETV2_ARCH
    strides: Sequence[int] = (1, 2, 2, 2, 1, 2, 1)
    dilations: Sequence[int] = (1, 1, 1, 1, 1, 1, 1)
    last_channels: int | None = 1280
    num_classes: int | None = 1000
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    act: ModuleDef = BlockReLU
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        n = len(self.arch)
        if len(self.strides) != n or len(self.dilations) != n:
            raise ValueError(f"MobileNetV2: strides and dilations need one entry per stage ({n} stages)")
        if not self.widen_factor > 0:
            raise ValueError(f"MobileNetV2: widen_factor must be positive, got {self.widen_factor}")
        for i, (t, c, b) in enumerate(self.arch):
            _check_positive("MobileNetV2", **{f"arch[{i}] expand": t, f"arch[{i}] channels": c, f"arch[{i}] blocks": b})
            _check_positive("MobileNetV2", **{f"strides[{i}]": self.strides[i], f"dilations[{i}]": self.dilations[i]})
        x = jnp.asarray(x, self.dtype)
        cbr = functools.partial(ConvBNReLU, conv=self.conv, norm=self.norm, act=self.act, dtype=self.dtype)
        x = cbr(make_divisible(32 * self.widen_factor), 3, strides=2, name="conv1")(x, train)
        for i, (t, c, b) in enumerate(self.arch):
            for j in range(b):
                x = InvertedResidual(
                    make_divisible(c * self.widen_factor),
                    strides=self.strides[i] if j == 0 else 1,
                    expand_ratio=t,
                    dilation=self.dilations[i],
                    conv=self.conv,
                    norm=self.norm,
                    act=self.act,
                    dtype=self.dtype,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
        if self.last_channels is not None:
            last = int(self.last_channels * self.widen_factor) if self.widen_factor > 1.0 else self.last_channels
            x = cbr(last, 1, name="conv2")(x, train)
        if self.num_classes is None:
            return x
        x = jnp.mean(x, axis=(-3, -2))
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype, name="fc")(x)


# --------------------------------------------------------------------------------------------
# DeepLabV3


class ASPPHead(nn.Module):
    """DeepLabV3 decode head (Chen et al. 2017) as mmseg's ``ASPPHead``.

    Branches on the backbone map ``x`` (``[N, H, W, C]``):

    * ``image_pool``: global average pool -> 1x1 ConvBNReLU -> broadcast back to ``H x W``
      (bilinear upsampling of a 1x1 map is a broadcast); the paper's ``decode_0``, a ReLU
      layer of ``channels`` channels on a 1x1 map;
    * ``aspp{k}``: a 1x1 ConvBNReLU for dilation 1, else a 3x3 ConvBNReLU with that dilation;

    concatenated in that order, then ``bottleneck`` (3x3 ConvBNReLU, as in mmseg) and the
    ``conv_seg`` 1x1 classifier with bias. mmseg's dropout (0.1) before ``conv_seg`` is a training
    regulariser and is omitted.

    Attributes:
      num_classes: output channels of ``conv_seg``.
      channels: width of every branch and of the bottleneck (512 in the paper's models).
      dilations: one ASPP branch per dilation.
      bottleneck_kernel: kernel of the projection conv (3 in mmseg).
      conv, norm, act, dtype: injectable constructors and dtype.
    """

    num_classes: int
    channels: int = 512
    dilations: Sequence[int] = (1, 12, 24, 36)
    bottleneck_kernel: int = 3
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    act: ModuleDef = BlockReLU
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_positive("ASPPHead", num_classes=self.num_classes, channels=self.channels)
        for i, d in enumerate(self.dilations):
            _check_positive("ASPPHead", **{f"dilations[{i}]": d})
        cbr = functools.partial(ConvBNReLU, conv=self.conv, norm=self.norm, act=self.act, dtype=self.dtype)
        pooled = jnp.mean(x, axis=(-3, -2), keepdims=True)
        pooled = cbr(self.channels, 1, name="image_pool")(pooled, train)
        outs = [jnp.broadcast_to(pooled, x.shape[:-1] + (self.channels,))]
        for k, d in enumerate(self.dilations):
            kernel = 1 if d == 1 else 3
            outs.append(cbr(self.channels, kernel, dilation=d, name=f"aspp{k}")(x, train))
        y = jnp.concatenate(outs, axis=-1)
        y = cbr(self.channels, self.bottleneck_kernel, name="bottleneck")(y, train)
        return self.conv(
            self.num_classes, (1, 1), use_bias=True, dtype=self.dtype, param_dtype=self.dtype, name="conv_seg"
        )(y)


class DeepLabV3(nn.Module):
    """DeepLabV3 segmentation network: a dilated backbone and an :class:`ASPPHead`.

    The output is the logits map at the backbone's resolution (1/8 of the input for the
    output-stride-8 presets), ``[N, H/8, W/8, num_classes]``; the client resizes it to the
    image and takes the per-pixel argmax in the clear (``paper_reference.md`` §1.2).

    Attributes:
      backbone: constructor of a module ``(x, train) -> feature map`` (e.g.
        :data:`MobileNetV2D8` or :data:`ResNet50V1cD8`); instantiated as ``backbone``.
      num_classes: segmentation classes.
      channels: ASPP width.
      dilations: ASPP dilations.
      bottleneck_kernel: kernel of the ASPP projection conv.
      conv, norm, act: injectable constructors for the head.
      dtype: parameter and activation dtype.
    """

    backbone: ModuleDef
    num_classes: int = 21
    channels: int = 512
    dilations: Sequence[int] = (1, 12, 24, 36)
    bottleneck_kernel: int = 3
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    act: ModuleDef = BlockReLU
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.asarray(x, self.dtype)
        feats = self.backbone(name="backbone")(x, train)
        return ASPPHead(
            self.num_classes,
            channels=self.channels,
            dilations=self.dilations,
            bottleneck_kernel=self.bottleneck_kernel,
            conv=self.conv,
            norm=self.norm,
            act=self.act,
            dtype=self.dtype,
            name="decode",
        )(feats, train)


# --------------------------------------------------------------------------------------------
# Presets

#: ResNet18, CIFAR variant of the paper (3x3 stride-1 stem, no pooling; 32x32 inputs, CIFAR-100).
ResNet18 = functools.partial(
    ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, stem="cifar", stem_pool=None, num_classes=100
)
#: ResNet50 v1.5 for ImageNet (224x224) with the paper's AvgPool stem; ``stem_pool="max"`` for the original.
ResNet50 = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, stem="imagenet", stem_pool="avg", num_classes=1000
)
#: Dilated ResNet50 backbone of mmseg's DeepLabV3 (ResNetV1c deep stem, AvgPool, output stride 8).
ResNet50V1cD8 = functools.partial(
    ResNet,
    stage_sizes=(3, 4, 6, 3),
    block_cls=Bottleneck,
    stem="deep",
    stem_width=32,
    stem_pool="avg",
    strides=(1, 2, 1, 1),
    dilations=(1, 1, 2, 4),
    num_classes=None,
)
#: Dilated MobileNetV2 backbone of mmseg's DeepLabV3 (output stride 8, no final 1x1 conv).
MobileNetV2D8 = functools.partial(
    MobileNetV2, strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4, 4), last_channels=None, num_classes=None
)
#: DeepLabV3 on MobileNetV2-D8 for ADE20K (150 classes, 512x512 crops), as in the paper.
DeepLabV3MobileNetV2 = functools.partial(DeepLabV3, backbone=MobileNetV2D8, num_classes=150)
#: DeepLabV3 on ResNet50V1c-D8 with AvgPool for Pascal VOC (21 classes, 512x512), as in the paper.
DeepLabV3ResNet50 = functools.partial(DeepLabV3, backbone=ResNet50V1cD8, num_classes=21)
#: Small ResNet for grey images (28x28 Fashion-MNIST or 8x8 digits), 10 classes, ~20k parameters.
ResNetSmall = functools.partial(
    ResNet, stage_sizes=(1, 1, 1), block_cls=BasicBlock, num_filters=8, stem="cifar", stem_pool=None, num_classes=10
)
#: Wider :data:`ResNetSmall` (16 base filters, ~78k parameters).
ResNetSmall16 = functools.partial(ResNetSmall, num_filters=16)

# Tiny presets, used for testing only (every architecture family in well under a second).
_ResNet18Tiny = functools.partial(ResNet18, num_filters=4, num_classes=10)  # 8x8 inputs
_ResNet50Tiny = functools.partial(ResNet50, stage_sizes=(1, 1, 1, 1), num_filters=4, num_classes=10)  # 32x32
_MobileNetV2Tiny = functools.partial(
    MobileNetV2,
    widen_factor=0.25,
    arch=((1, 16, 1), (6, 24, 2), (6, 32, 1), (6, 64, 1), (6, 96, 1), (6, 160, 1), (6, 320, 1)),
    last_channels=32,
    num_classes=10,
)  # 32x32
_DeepLabV3MobileNetV2Tiny = functools.partial(
    DeepLabV3,
    backbone=functools.partial(
        _MobileNetV2Tiny,
        strides=MobileNetV2D8.keywords["strides"],
        dilations=MobileNetV2D8.keywords["dilations"],
        last_channels=None,
        num_classes=None,
    ),
    num_classes=5,
    channels=8,
    dilations=(1, 2, 3, 4),
)  # 32x32 -> 4x4
_DeepLabV3ResNet50Tiny = functools.partial(
    DeepLabV3,
    backbone=functools.partial(ResNet50V1cD8, stage_sizes=(1, 2, 1, 2), num_filters=4, stem_width=4),
    num_classes=5,
    channels=8,
    dilations=(1, 2, 3, 4),
)  # 32x32 -> 4x4
