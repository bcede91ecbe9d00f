"""Datasets read from plain folders of image files (decoded with Pillow).

For data that tfds cannot provide without TensorFlow, or that users already have unpacked:

* :func:`image_folder_source` -- ImageNet-style classification folders, ``root/<class>/<image>``
  (``*.jpeg``, ``*.jpg``, ``*.png``, any case), classes sorted by folder name (for ImageNet the
  WordNet ids ``n01440764`` ... ``n15075141``, the usual label order of torchvision and tfds).
* :func:`segmentation_folder_source` -- image/label-map pairs matched by file stem, e.g.
  ADE20K's ``images/training/*.jpg`` + ``annotations/training/*.png`` or VOC's
  ``JPEGImages/*.jpg`` + ``SegmentationClass/*.png`` restricted to a list file.
* :func:`cifar_binary_source` -- the official "binary version" of CIFAR-100
  (``cifar-100-binary/{train,test}.bin``), read with numpy (no pickle).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxmpc.data._core import ArraySource, DatasetNotFoundError, LazySource
from jaxmpc.data._transforms import decode_image

__all__ = ["IMAGE_EXTENSIONS", "cifar_binary_source", "image_folder_source", "segmentation_folder_source"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _require_dir(path: str, what: str, layout: str) -> None:
    if not os.path.isdir(path):
        raise DatasetNotFoundError(f"{what}: folder {path!r} not found. Expected layout:\n{layout}")


def image_folder_source(
    root: str | os.PathLike,
    transform: Callable[[np.ndarray], np.ndarray],
    *,
    class_names: Sequence[str] | None = None,
    layout_hint: str = "  <root>/<class name>/<image>.jpeg",
) -> tuple[LazySource, tuple[str, ...]]:
    """Classification images in ``root/<class name>/*`` folders.

    Args:
      root: the split's folder (e.g. ``imagenet/train``).
      transform: ``uint8 [H, W, 3] -> float32 [h, w, 3]`` preprocessing (e.g. resize, crop,
        normalise); it must give every image the same shape to batch them.
      class_names: class folders in label order; default: the sorted sub-folders of ``root``.
        Pass the training split's names when reading the validation split, so labels agree.
      layout_hint: shown when the folder is missing.

    Returns:
      ``(source, class_names)``.

    Raises:
      DatasetNotFoundError: if ``root`` or a class folder is missing, or there are no images.
    """
    root = os.fspath(os.path.expanduser(root))
    _require_dir(root, "image folder dataset", layout_hint)
    if class_names is None:
        class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    class_names = tuple(class_names)
    files: list[tuple[str, int]] = []
    for label, name in enumerate(class_names):
        folder = os.path.join(root, name)
        _require_dir(folder, f"class {name!r}", layout_hint)
        for f in sorted(os.listdir(folder)):
            if f.lower().endswith(IMAGE_EXTENSIONS):
                files.append((os.path.join(folder, f), label))
    if not files:
        raise DatasetNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root!r}. Expected:\n{layout_hint}"
        )

    def load(i: int) -> tuple[np.ndarray, int]:
        path, label = files[i]
        return transform(decode_image(path, mode="RGB")), label

    return LazySource(len(files), load, name=f"image folder {root}"), class_names


def segmentation_folder_source(
    image_dir: str | os.PathLike,
    label_dir: str | os.PathLike,
    transform: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    *,
    list_file: str | os.PathLike | None = None,
    label_ext: str = ".png",
    layout_hint: str = "",
) -> LazySource:
    """Image / label-map pairs with the same file stem in two folders.

    Label maps are read without colour conversion, so a palette PNG (VOC) or a grey PNG (ADE20K,
    SBD "aug" labels) gives the class index of every pixel.

    Args:
      image_dir: folder of images (any of :data:`IMAGE_EXTENSIONS`).
      label_dir: folder of label maps ``<stem><label_ext>``.
      transform: ``(uint8 image [H, W, 3], label map [H, W]) -> (float32 image, int label map)``.
      list_file: optional text file of stems, one per line (VOC's ``ImageSets/Segmentation``);
        default: every image in ``image_dir``.
      label_ext: extension of the label maps.
      layout_hint: shown when something is missing.

    Returns:
      A :class:`~jaxmpc.data.LazySource` of ``(image, label map)`` pairs, sorted by stem.

    Raises:
      DatasetNotFoundError: naming what is missing (folders, list file, label maps).
    """
    image_dir = os.fspath(os.path.expanduser(image_dir))
    label_dir = os.fspath(os.path.expanduser(label_dir))
    _require_dir(image_dir, "segmentation images", layout_hint)
    _require_dir(label_dir, "segmentation labels", layout_hint)
    images = {
        os.path.splitext(f)[0]: os.path.join(image_dir, f)
        for f in os.listdir(image_dir)
        if f.lower().endswith(IMAGE_EXTENSIONS)
    }
    if list_file is not None:
        list_file = os.fspath(list_file)
        if not os.path.isfile(list_file):
            raise DatasetNotFoundError(f"split list {list_file!r} not found. Expected layout:\n{layout_hint}")
        with open(list_file, encoding="utf-8") as f:
            stems = [line.split()[0] for line in f if line.strip()]
        absent = [s for s in stems if s not in images]
        if absent:
            raise DatasetNotFoundError(
                f"{len(absent)} images of {list_file} are missing from {image_dir}, e.g. {absent[:3]}"
            )
    else:
        stems = sorted(images)
    if not stems:
        raise DatasetNotFoundError(f"no images in {image_dir!r}. Expected layout:\n{layout_hint}")
    pairs = [(images[s], os.path.join(label_dir, s + label_ext)) for s in stems]
    no_label = [lb for _, lb in pairs if not os.path.isfile(lb)]
    if no_label:
        raise DatasetNotFoundError(
            f"{len(no_label)} label maps are missing from {label_dir}, e.g. {[os.path.basename(p) for p in no_label[:3]]}"
        )

    def load(i: int) -> tuple[np.ndarray, Any]:
        img_path, lbl_path = pairs[i]
        label = decode_image(lbl_path, mode=None)
        if label.ndim == 3:  # a label map saved as RGB with equal channels
            label = label[..., 0]
        return transform(decode_image(img_path, mode="RGB"), label)

    return LazySource(len(pairs), load, name=f"segmentation folder {image_dir}")


def cifar_binary_source(
    root: str | os.PathLike, split: str, transform: Callable[[np.ndarray], np.ndarray]
) -> ArraySource:
    """CIFAR-100 from the official binary version (``cifar-100-binary/{train,test}.bin``).

    Each record is one coarse-label byte, one fine-label byte and 3,072 pixel bytes (32x32, R
    then G then B planes). The fine labels (100 classes) are used.

    Args:
      root: the ``cifar-100-binary`` folder.
      split: ``"train"`` or ``"test"``.
      transform: ``uint8 [N, 32, 32, 3] -> float32`` (vectorised over the batch).

    Raises:
      DatasetNotFoundError: if the file is missing.
      ValueError: if its size is not a whole number of records.
    """
    root = os.fspath(os.path.expanduser(root))
    path = os.path.join(root, f"{split}.bin")
    if not os.path.isfile(path):
        raise DatasetNotFoundError(
            f"CIFAR-100 binary file {path!r} not found. Expected the official 'CIFAR-100 binary version' "
            "(cifar-100-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html) unpacked as:\n"
            "  <root>/train.bin\n  <root>/test.bin"
        )
    raw = np.fromfile(path, np.uint8)
    if raw.size % 3074:
        raise ValueError(f"{path}: size {raw.size} is not a multiple of the 3,074-byte CIFAR-100 record")
    rec = raw.reshape(-1, 3074)
    images = rec[:, 2:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return ArraySource(transform(images), rec[:, 1].astype(np.int32))
