"""The paper's datasets (CIFAR-100, ImageNet, ADE20K, Pascal VOC 2012) and one entry point for all.

Preprocessing follows the paper's test-style pipelines (Gorski & Avidan, arXiv 2304.10442, §5;
``paper_reference.md`` §3.2): CIFAR-100 standardised only; ImageNet resized to a short side of
256 then center-cropped to 224; ADE20K and VOC resized to a short side of 512 then
center-cropped to 512 (label maps with nearest-neighbour resampling). Training augmentation
(shifts, flips) is applied later, inside the jitted train step.

Sources, in order of preference:

* CIFAR-100: the official binary files (``root=``), else tfds ``cifar100`` (array_record).
* ImageNet: an ImageNet-style folder (``root=``), else tfds ``imagenet2012`` (array_record).
* ADE20K: the ``ADEChallengeData2016`` folder (``root=``). tfds's ``scene_parse150`` is *not*
  used: it packs the 2017 challenge's ``annotations_instance`` maps, not the 150-class
  semantic maps the paper (mmseg) evaluates on.
* Pascal VOC 2012: the ``VOCdevkit/VOC2012`` folder (``root=``); tfds has no VOC segmentation
  builder.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from jaxmpc.data import _transforms as T
from jaxmpc.data._core import (
    ArraySource,
    Dataset,
    DatasetInfo,
    DatasetNotFoundError,
    Source,
    Subset,
    batches,
    stratified_split,
)
from jaxmpc.data._folders import cifar_binary_source, image_folder_source, segmentation_folder_source
from jaxmpc.data._small import load_digits, load_fashion_mnist
from jaxmpc.data._tfds import tfds_source

__all__ = [
    "DATASETS",
    "load_ade20k",
    "load_cifar100",
    "load_dataset",
    "load_imagenet",
    "load_voc2012",
    "materialize",
]

#: Label value that segmentation losses and metrics ignore (mmseg's convention).
IGNORE_INDEX = 255


def materialize(source: Source, *, batch_size: int = 1024, num_threads: int = 0) -> ArraySource:
    """Loads a whole source into memory (e.g. a lazily decoded CIFAR-100 split).

    Args:
      source: any source whose examples all have one shape.
      batch_size: examples loaded per call.
      num_threads: decoding threads for lazy sources.

    Returns:
      An :class:`~jaxmpc.data.ArraySource` with the same examples in the same order.
    """
    parts = list(batches(source, batch_size, num_threads=num_threads))
    if not parts:
        raise ValueError("materialize: empty source")
    return ArraySource(np.concatenate([p["image"] for p in parts]), np.concatenate([p["label"] for p in parts]))


def _carve_validation(train: Source, labels: np.ndarray, val_size: int, seed: int) -> tuple[Source, Source | None]:
    if val_size <= 0:
        return train, None
    if val_size >= len(train):
        raise ValueError(f"val_size={val_size} must be smaller than the training split ({len(train)})")
    rest, val = stratified_split(labels, (val_size / len(train),), seed=seed)
    return Subset(train, rest), Subset(train, val)


# --------------------------------------------------------------------------------------------
# CIFAR-100


def load_cifar100(
    *,
    root: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    val_size: int = 0,
    split_seed: int = 0,
    num_threads: int = 0,
) -> Dataset:
    """CIFAR-100 (50,000 train / 10,000 test, 32x32x3, 100 fine classes), standardised.

    Images are ``(x / 255 - mean) / std`` with mmcls's CIFAR-100 statistics and no resizing,
    as in the paper's ResNet18 experiments. The whole dataset is held in memory (0.7 GB as
    float32).

    Args:
      root: folder of the official binary version (``train.bin``, ``test.bin``); if ``None``,
        tfds ``cifar100`` in ``data_dir`` (array_record format, see :mod:`jaxmpc.data._tfds`).
      data_dir: tfds data folder.
      val_size: images carved out of the training set as a validation split (stratified); the
        paper trains on all 50,000 (``val_size=0``, no validation split).
      split_seed: seed of that split.
      num_threads: decoding threads when reading from tfds.

    Raises:
      DatasetNotFoundError: with instructions, if neither source is available.
    """
    norm = functools.partial(T.normalize, mean=T.CIFAR100_MEAN, std=T.CIFAR100_STD)
    if root is not None:
        train_all = cifar_binary_source(root, "train", norm)
        test = cifar_binary_source(root, "test", norm)
        origin = f"binary files in {root}"
    else:
        hint = "Or pass root=<folder with train.bin/test.bin> (the official CIFAR-100 binary version)."

        def decode(ex):
            return norm(ex["image"]), int(ex["label"])

        train_all = materialize(
            tfds_source("cifar100", "train", decode, data_dir=data_dir, extra_hint=hint), num_threads=num_threads
        )
        test = materialize(
            tfds_source("cifar100", "test", decode, data_dir=data_dir, extra_hint=hint), num_threads=num_threads
        )
        origin = "tfds cifar100"
    train, val = _carve_validation(train_all, train_all.labels, val_size, split_seed)
    info = DatasetInfo(
        name="cifar100",
        input_shape=(32, 32, 3),
        num_classes=100,
        mean=T.CIFAR100_MEAN,
        std=T.CIFAR100_STD,
        notes=f"CIFAR-100 from {origin}; {len(train)} train / {len(val) if val else 0} validation / {len(test)} test",
    )
    return Dataset(info, train, val, test)


# --------------------------------------------------------------------------------------------
# ImageNet

_IMAGENET_LAYOUT = (
    "  <root>/train/<wnid>/*.JPEG   (e.g. <root>/train/n01440764/n01440764_10026.JPEG)\n"
    "  <root>/val/<wnid>/*.JPEG     (the validation images sorted into class folders, e.g. with the usual "
    "valprep.sh)"
)


def load_imagenet(
    *,
    root: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    resize: int = 256,
    crop: int = 224,
) -> Dataset:
    """ImageNet-1k (ILSVRC 2012), resized to a short side of ``resize`` and center-cropped to ``crop``.

    Lazy: images are decoded when a batch is requested (use ``num_threads``/``prefetch`` of
    :func:`~jaxmpc.data.batches`). ``test`` is the official validation set (50,000 images), the
    split the paper reports.

    Args:
      root: ImageNet-style folder (``train/<wnid>/``, ``val/<wnid>/``); if ``None``, tfds
        ``imagenet2012`` in ``data_dir`` (array_record format).
      data_dir: tfds data folder.
      resize: short side after resizing (bilinear).
      crop: center crop size.
    """

    def transform(img):
        img = T.center_crop(T.resize_short_side(img, resize), crop)
        return T.normalize(img, T.IMAGENET_MEAN, T.IMAGENET_STD)

    if root is not None:
        root = os.fspath(os.path.expanduser(root))
        train, classes = image_folder_source(os.path.join(root, "train"), transform, layout_hint=_IMAGENET_LAYOUT)
        val, _ = image_folder_source(
            os.path.join(root, "val"), transform, class_names=classes, layout_hint=_IMAGENET_LAYOUT
        )
        origin, class_names = f"folder {root}", classes
    else:
        hint = "Or pass root=<ImageNet folder> laid out as:\n" + _IMAGENET_LAYOUT

        def decode(ex):
            return transform(ex["image"]), int(ex["label"])

        train = tfds_source("imagenet2012", "train", decode, data_dir=data_dir, extra_hint=hint)
        val = tfds_source("imagenet2012", "validation", decode, data_dir=data_dir, extra_hint=hint)
        origin, class_names = "tfds imagenet2012", None
    info = DatasetInfo(
        name="imagenet",
        input_shape=(crop, crop, 3),
        num_classes=len(class_names) if class_names else 1000,
        mean=T.IMAGENET_MEAN,
        std=T.IMAGENET_STD,
        class_names=class_names,
        notes=(
            f"ImageNet from {origin}; resize short side {resize} + center crop {crop}; test = official validation "
            f"set ({len(val)} images)"
        ),
    )
    return Dataset(info, train, val, val)


# --------------------------------------------------------------------------------------------
# Segmentation


def _seg_transform(size: int, crop: int | None, reduce_zero_label: bool):
    def transform(img, label):
        label = np.asarray(label)
        if reduce_zero_label:  # ADE20K: 0 = "other" -> ignored; classes 1..150 -> 0..149
            label = np.where(label == 0, IGNORE_INDEX, label.astype(np.int32) - 1)
        label = label.astype(np.uint8)
        img = T.resize_short_side(img, size)
        label = T.resize_short_side(label, size, nearest=True)
        if crop is not None:
            img = T.center_crop(img, crop)
            label = T.center_crop(label, crop, fill=IGNORE_INDEX)
        return T.normalize(img, T.IMAGENET_MEAN, T.IMAGENET_STD), label.astype(np.int32)

    return transform


_ADE_LAYOUT = (
    "  <root>/images/training/ADE_train_00000001.jpg        <root>/annotations/training/ADE_train_00000001.png\n"
    "  <root>/images/validation/ADE_val_00000001.jpg        <root>/annotations/validation/ADE_val_00000001.png\n"
    "  (<root> is ADEChallengeData2016 from http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip)"
)


def load_ade20k(root: str | os.PathLike | None = None, *, size: int = 512, crop: int | None = 512) -> Dataset:
    """ADE20K SceneParsing (``ADEChallengeData2016``): 20,210 train / 2,000 val images, 150 classes.

    Labels follow mmseg's ``reduce_zero_label``: the annotation value 0 ("other") becomes the
    ignore index 255 and classes 1..150 become 0..149. Images are resized to a short side of
    ``size`` (bilinear; labels nearest) and center-cropped to ``crop`` (the paper's distortion
    and evaluation pipeline); ``crop=None`` keeps whole resized images, which then differ in
    size and need ``batch_size=1``. ``test`` is the validation set.

    Args:
      root: the ``ADEChallengeData2016`` folder (layout in the error message).
      size: short side after resizing.
      crop: center crop, or ``None``.

    Raises:
      DatasetNotFoundError: if ``root`` is not given or incomplete.
    """
    if root is None:
        raise DatasetNotFoundError(
            "ADE20K is read from its folder: pass root=<ADEChallengeData2016>. Expected layout:\n" + _ADE_LAYOUT
        )
    root = os.fspath(os.path.expanduser(root))
    tf = _seg_transform(size, crop, reduce_zero_label=True)
    split = {
        s: segmentation_folder_source(
            os.path.join(root, "images", s), os.path.join(root, "annotations", s), tf, layout_hint=_ADE_LAYOUT
        )
        for s in ("training", "validation")
    }
    shape = (crop, crop, 3) if crop else (size, size, 3)
    info = DatasetInfo(
        name="ade20k",
        input_shape=shape,
        num_classes=150,
        task="segmentation",
        ignore_index=IGNORE_INDEX,
        mean=T.IMAGENET_MEAN,
        std=T.IMAGENET_STD,
        notes=f"ADE20K from {root}; short side {size}, center crop {crop}; test = validation; 0 -> ignore",
    )
    return Dataset(info, split["training"], split["validation"], split["validation"])


_VOC_LAYOUT = (
    "  <root>/JPEGImages/2007_000032.jpg\n"
    "  <root>/SegmentationClass/2007_000032.png            (or SegmentationClassAug/ for the 'aug' set)\n"
    "  <root>/ImageSets/Segmentation/{train,val}.txt        (aug.txt for the 10,582-image 'aug' training set)\n"
    "  (<root> is VOCdevkit/VOC2012)"
)


def load_voc2012(
    root: str | os.PathLike | None = None,
    *,
    train_list: str = "train",
    size: int = 512,
    crop: int | None = 512,
) -> Dataset:
    """Pascal VOC 2012 segmentation: 21 classes (background + 20), 255 = ignored boundary.

    Args:
      root: the ``VOCdevkit/VOC2012`` folder.
      train_list: ``"train"`` (1,464 images, labels in ``SegmentationClass``) or ``"aug"``
        (10,582 images with the SBD labels in ``SegmentationClassAug`` and
        ``ImageSets/Segmentation/aug.txt``, mmseg's usual training set).
      size: short side after resizing (bilinear; labels nearest).
      crop: center crop (the paper's pipeline), or ``None``.

    Returns:
      The dataset; ``validation`` and ``test`` are both the 1,449-image ``val`` list.

    Raises:
      DatasetNotFoundError: if ``root`` is not given or incomplete.
    """
    if root is None:
        raise DatasetNotFoundError(
            "Pascal VOC 2012 is read from its folder: pass root=<VOCdevkit/VOC2012>. Expected layout:\n" + _VOC_LAYOUT
        )
    if train_list not in ("train", "aug"):
        raise ValueError(f"train_list must be 'train' or 'aug', got {train_list!r}")
    root = os.fspath(os.path.expanduser(root))
    tf = _seg_transform(size, crop, reduce_zero_label=False)
    lists = os.path.join(root, "ImageSets", "Segmentation")
    train = segmentation_folder_source(
        os.path.join(root, "JPEGImages"),
        os.path.join(root, "SegmentationClassAug" if train_list == "aug" else "SegmentationClass"),
        tf,
        list_file=os.path.join(lists, f"{train_list}.txt"),
        layout_hint=_VOC_LAYOUT,
    )
    val = segmentation_folder_source(
        os.path.join(root, "JPEGImages"),
        os.path.join(root, "SegmentationClass"),
        tf,
        list_file=os.path.join(lists, "val.txt"),
        layout_hint=_VOC_LAYOUT,
    )
    shape = (crop, crop, 3) if crop else (size, size, 3)
    info = DatasetInfo(
        name="voc2012",
        input_shape=shape,
        num_classes=21,
        task="segmentation",
        ignore_index=IGNORE_INDEX,
        mean=T.IMAGENET_MEAN,
        std=T.IMAGENET_STD,
        notes=f"Pascal VOC 2012 from {root}; train list {train_list!r}; short side {size}, center crop {crop}; "
        "test = val",
    )
    return Dataset(info, train, val, val)


# --------------------------------------------------------------------------------------------
# Registry

#: Dataset name -> loader. Every loader takes keyword arguments only and returns a Dataset.
DATASETS = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "cifar100": load_cifar100,
    "imagenet": load_imagenet,
    "ade20k": load_ade20k,
    "voc2012": load_voc2012,
}


def load_dataset(name: str, **kwargs: Any) -> Dataset:
    """Loads a dataset by name: ``digits``, ``fashion_mnist``, ``cifar100``, ``imagenet``, ``ade20k``, ``voc2012``.

    Args:
      name: one of :data:`DATASETS`.
      **kwargs: passed to the loader (e.g. ``root=``, ``data_dir=``, ``path=``, ``split_seed=``).

    Returns:
      A :class:`~jaxmpc.data.Dataset`.

    Raises:
      ValueError: for an unknown name.
      DatasetNotFoundError: if the data is not available; the message says how to get it.

    Example::

      >>> ds = load_dataset("digits")
      >>> ds.info.input_shape, ds.info.num_classes, len(ds.train)
      ((8, 8, 1), 10, 1259)
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name](**kwargs)
