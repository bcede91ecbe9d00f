"""Deterministic image preprocessing (numpy + Pillow), as the paper's pipelines use it.

Gorski & Avidan (arXiv 2304.10442, §5; ``paper_reference.md`` §3.2) evaluate and extract
distortions with test-style pipelines:

* CIFAR-100: no resizing, per-channel standardisation;
* ImageNet: resize the short side to 256, center crop 224, standardise;
* ADE20K / Pascal VOC 2012: resize the short side to 512, center crop 512 (labels with
  nearest-neighbour resampling), standardise.

Training-time augmentation (random shifts and flips) runs on the accelerator inside the jitted
train step (:mod:`jaxmpc.train`), so everything here is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "center_crop",
    "decode_image",
    "normalize",
    "resize_short_side",
]

#: mmcls/torchvision ImageNet statistics (also used by mmseg for ADE20K and VOC), in [0, 1] units.
IMAGENET_MEAN = (123.675 / 255, 116.28 / 255, 103.53 / 255)
IMAGENET_STD = (58.395 / 255, 57.12 / 255, 57.375 / 255)
#: mmcls CIFAR-100 statistics, in [0, 1] units.
CIFAR100_MEAN = (129.304 / 255, 124.070 / 255, 112.434 / 255)
CIFAR100_STD = (68.170 / 255, 65.392 / 255, 70.418 / 255)


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a dependency of the folder loaders
        raise ImportError("decoding image files needs Pillow: pip install pillow") from e
    return Image


def decode_image(path_or_bytes, *, mode: str | None = "RGB") -> np.ndarray:
    """Decodes an image file with Pillow.

    Args:
      path_or_bytes: a path or a binary file object.
      mode: convert to this Pillow mode (``"RGB"`` for photos); ``None`` keeps the file's own
        values, which is what label maps need (a VOC palette PNG then gives class indices).

    Returns:
      uint8 ``[H, W, 3]`` for ``"RGB"``, ``[H, W]`` for single-channel or palette images.
    """
    Image = _pil()
    with Image.open(path_or_bytes) as im:
        if mode is not None and im.mode != mode:
            im = im.convert(mode)
        return np.asarray(im).copy()


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(image / 255 - mean) / std`` for uint8 images (float images are taken as ``[0, 1]``).

    Returns:
      float32 array of the same shape.
    """
    x = np.asarray(image)
    x = x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)
    mean_ = np.asarray(mean, np.float32)
    std_ = np.asarray(std, np.float32)
    return ((x - mean_) / std_).astype(np.float32)


def resize_short_side(image: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resizes so that the shorter side is ``size``, keeping the aspect ratio (Pillow).

    The longer side becomes ``int(long * size / short + 0.5)``. Images use bilinear
    interpolation, label maps (``nearest=True``) nearest neighbour, so no new label values
    appear.

    Args:
      image: uint8 ``[H, W, C]`` or ``[H, W]``.
      size: target length of the shorter side.
      nearest: nearest-neighbour resampling (for label maps).

    Returns:
      The resized array, same dtype.
    """
    Image = _pil()
    arr = np.asarray(image)
    h, w = arr.shape[:2]
    if min(h, w) == size:
        return arr
    scale = size / min(h, w)
    nh, nw = (size, int(w * scale + 0.5)) if h <= w else (int(h * scale + 0.5), size)
    resample = Image.NEAREST if nearest else Image.BILINEAR
    im = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    out = np.asarray(im.resize((nw, nh), resample=resample))
    return out.reshape(out.shape + (1,)) if arr.ndim == 3 and arr.shape[2] == 1 else out


def center_crop(image: np.ndarray, size: int | tuple[int, int], *, fill: float = 0) -> np.ndarray:
    """Center crop to ``size`` (``int`` or ``(h, w)``), padding with ``fill`` where the image is smaller.

    The crop starts at ``round((H - h) / 2)`` (as torchvision's ``CenterCrop``).
    """
    arr = np.asarray(image)
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = arr.shape[:2]
    if h < th or w < tw:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        pads = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (arr.ndim - 2)
        arr = np.pad(arr, pads, constant_values=fill)
        h, w = arr.shape[:2]
    top = round((h - th) / 2.0)
    left = round((w - tw) / 2.0)
    return arr[top : top + th, left : left + tw]
