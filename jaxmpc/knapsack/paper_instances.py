"""ReLU layer tables of the paper's models and synthetic distortions at paper scale.

The knapsack of Gorski & Avidan (arXiv 2304.10442, §3.3 and §7 of ``paper_reference.md``) has
one item per channel of every ReLU layer, and each item's options are the layer's candidate
patch sizes. To test and benchmark the planner at that scale without the (GPU-days) distortion
extraction, this module rebuilds each model's ReLU layers ``(name, C, H, W)`` from the standard
architectures and generates synthetic distortions with the qualitative shape of the measured
ones.

The tables reproduce the paper's totals exactly (checked in ``tests/knapsack_test.py``):

=============================  ======  ========  ============  ==========
Model                          Layers  Channels  ReLUs         6% budget
=============================  ======  ========  ============  ==========
ResNet18, CIFAR, 32x32            17     3,904       557,056      33,423
ResNet50 (AvgPool), 224x224       49    22,720     9,608,704     576,522
DeepLabV3-ResNet50 d8, 512x512    57    25,856   127,402,496   7,644,149
=============================  ======  ========  ============  ==========

Architectures:

* ResNet18-CIFAR (``ResNet_CIFAR_V2``): a 3x3 stem without pooling, four stages of two basic
  blocks (64/128/256/512 channels at 32/16/8/4); every block has two ReLUs (``_1`` after conv1,
  ``_2`` after the residual addition), both at the block's output resolution.
* ResNet50 (torchvision v1.5 with MaxPool replaced by AvgPool): a 7x7/2 stem (64 x 112 x 112),
  stages of 3/4/6/3 bottlenecks (widths 64/128/256/512, outputs 4x wider) at 56/28/14/7. The
  stride is on the 3x3 conv, so the first ReLU of a stage's first block runs at the input
  resolution (``layer2_0_1`` is 128 x 56 x 56).
* DeepLabV3-ResNet50 d8 (mmseg ``ResNetV1c`` with AvgPool): a deep stem of three 3x3 convs
  (32/32/64 channels at 256x256), layer1 at 128x128, layer2 down to 64x64, layers 3-4 dilated at
  64x64, then the ASPP head: ``decode_0`` the 512-channel image-pool branch at 1x1, ``decode_1..4``
  the four ASPP branches and ``decode_5`` the bottleneck, 512 channels at 64x64 each.
"""

from __future__ import annotations

import numpy as np

from jaxmpc.core import blocks
from jaxmpc.knapsack._planner import LayerCandidates

__all__ = [
    "MODELS",
    "channel_count",
    "layer_table",
    "relu_count",
    "synthetic_distortions",
    "synthetic_layers",
]


def _resnet18_cifar() -> list[tuple[str, int, int, int]]:
    layers = [("stem", 64, 32, 32)]
    for stage, (c, d) in enumerate([(64, 32), (128, 16), (256, 8), (512, 4)], start=1):
        for b in range(2):
            layers += [(f"layer{stage}_{b}_1", c, d, d), (f"layer{stage}_{b}_2", c, d, d)]
    return layers


def _bottleneck_stages(stages, in_res: int, name_fmt: str = "layer{s}_{b}_{r}"):
    """``stages``: (stage index, blocks, width, output resolution); the input of stage 1 is ``in_res``."""
    layers = []
    res = in_res
    for s, n_blocks, width, out_res in stages:
        for b in range(n_blocks):
            first_res = res if b == 0 else out_res  # stride sits on the 3x3 conv (ResNet v1.5 / V1c)
            layers += [
                (name_fmt.format(s=s, b=b, r=1), width, first_res, first_res),
                (name_fmt.format(s=s, b=b, r=2), width, out_res, out_res),
                (name_fmt.format(s=s, b=b, r=3), 4 * width, out_res, out_res),
            ]
        res = out_res
    return layers


def _resnet50_imagenet() -> list[tuple[str, int, int, int]]:
    return [("stem", 64, 112, 112)] + _bottleneck_stages(
        [(1, 3, 64, 56), (2, 4, 128, 28), (3, 6, 256, 14), (4, 3, 512, 7)], in_res=56
    )


def _deeplabv3_resnet50() -> list[tuple[str, int, int, int]]:
    stem = [("stem_2", 32, 256, 256), ("stem_5", 32, 256, 256), ("stem_8", 64, 256, 256)]
    body = _bottleneck_stages([(1, 3, 64, 128), (2, 4, 128, 64), (3, 6, 256, 64), (4, 3, 512, 64)], in_res=128)
    decode = [("decode_0", 512, 1, 1)] + [(f"decode_{i}", 512, 64, 64) for i in range(1, 6)]
    return stem + body + decode


MODELS = {
    "resnet18_cifar": _resnet18_cifar,
    "resnet50_imagenet": _resnet50_imagenet,
    "deeplabv3_resnet50": _deeplabv3_resnet50,
}


def layer_table(model: str) -> list[tuple[str, int, int, int]]:
    """The ReLU layers ``(name, channels, height, width)`` of ``model``, in forward order.

    Args:
      model: one of ``"resnet18_cifar"``, ``"resnet50_imagenet"``, ``"deeplabv3_resnet50"``.

    Raises:
      ValueError: for an unknown model name.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {sorted(MODELS)}")
    return MODELS[model]()


def relu_count(model: str) -> int:
    """All-ReLU DReLU count ``sum(C * H * W)`` of ``model`` (the base of the ratio budget)."""
    return sum(c * h * w for _, c, h, w in layer_table(model))


def channel_count(model: str) -> int:
    """Number of channels (knapsack items) of ``model``."""
    return sum(c for _, c, _, _ in layer_table(model))


def synthetic_distortions(
    channels: int, height: int, width: int, candidates, rng: np.random.Generator, *, layer_scale: float = 1.0
) -> np.ndarray:
    """Synthetic per-channel distortions ``[channels, n_cand]`` with the shape of measured ones.

    The model, per channel ``c`` with a random log-normal scale ``s_c`` and slope ``a_c``:

    * ``(1, 1)``: 0 (the exact ReLU);
    * a ``bh x bw`` patch: ``s_c * a_c * log2(1 + area) ** p_c * (1 + 0.15 * |log2(bh / bw)|)``
      times log-normal noise (sigma 0.2), where ``area`` is the patch area clipped to the map,
      so distortion grows roughly with the log of the patch area;
    * identity ``(0, 1)``: cheap but bad -- as bad as a random large patch (60-150% of the
      whole-map patch);
    * zero ``(1, 0)``: the worst option, 1.2-2 times the largest other distortion.

    Args:
      channels, height, width: the layer shape.
      candidates: ``[n_cand, 2]`` patch sizes (see :mod:`jaxmpc.core.blocks`).
      rng: numpy random generator.
      layer_scale: multiplies every distortion of the layer.

    Returns:
      float64 ``[channels, n_cand]``, finite and non-negative.
    """
    cand = blocks.validate_block_sizes(candidates, name="candidates")
    bh = np.minimum(cand[:, 0], height).astype(np.float64)
    bw = np.minimum(cand[:, 1], width).astype(np.float64)
    patch = blocks.is_patch(cand)
    area = np.where(patch, bh * bw, 1.0)
    aspect = np.where(patch, np.abs(np.log2(np.maximum(bh, 1) / np.maximum(bw, 1))), 0.0)
    s = layer_scale * rng.lognormal(0.0, 1.0, size=(channels, 1))
    a = rng.uniform(0.5, 1.5, size=(channels, 1))
    p = rng.uniform(0.8, 1.6, size=(channels, 1))
    noise = rng.lognormal(0.0, 0.2, size=(channels, len(cand)))
    base = s * a * np.log2(1.0 + area)[None, :] ** p * (1.0 + 0.15 * aspect)[None, :] * noise
    relu = (cand[:, 0] == 1) & (cand[:, 1] == 1)
    base[:, relu] = 0.0
    full = s[:, 0] * a[:, 0] * np.log2(1.0 + height * width) ** p[:, 0]
    identity = (cand[:, 0] == 0) & (cand[:, 1] == 1)
    zero = (cand[:, 0] == 1) & (cand[:, 1] == 0)
    if identity.any():
        base[:, identity] = (full * rng.uniform(0.6, 1.5, size=channels))[:, None]
    if zero.any():
        worst = np.max(np.where(zero[None, :], 0.0, base), axis=1)
        worst = np.maximum(worst, full)
        base[:, zero] = (worst * rng.uniform(1.2, 2.0, size=channels))[:, None]
    return base


def synthetic_layers(model: str, seed: int = 0):
    """Planner input for ``model``: one :class:`~jaxmpc.knapsack.LayerCandidates` per ReLU layer.

    Candidates are :func:`jaxmpc.core.blocks.default_candidates` of each layer's map; distortions come
    from :func:`synthetic_distortions` with a random per-layer scale (log-normal, sigma 0.5).

    Args:
      model: a key of :data:`MODELS`.
      seed: seed of the numpy generator.
    """
    rng = np.random.default_rng(seed)
    out = []
    for name, c, h, w in layer_table(model):
        cand = blocks.default_candidates(h, w)
        dist = synthetic_distortions(c, h, w, cand, rng, layer_scale=float(rng.lognormal(0.0, 0.5)))
        out.append(LayerCandidates(name=name, height=h, width=w, candidates=cand, distortion=dist))
    return out
