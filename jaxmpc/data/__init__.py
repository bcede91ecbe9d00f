"""Datasets for training, finetuning and evaluating jaxmpc's models, as numpy batches.

Every loader returns a :class:`Dataset`: a :class:`DatasetInfo` descriptor (name, input shape,
number of classes, task, ignore index, normalisation) and ``train``/``validation``/``test``
splits. A split is a random-access *source*; :func:`batches` iterates over it in a deterministic
order drawn from an explicit seed, and yields ``{"image": float32 [B, H, W, C], "label": int32}``
(labels ``[B]`` for classification, ``[B, H, W]`` with an ignore index for segmentation).

Datasets (see ``docs/data_and_training.md``):

* ``digits`` -- scikit-learn's bundled 8x8 digits (no download, always available);
* ``fashion_mnist`` -- 70,000 28x28 images from Debian's ``dataset-fashion-mnist`` files;
* ``cifar100``, ``imagenet`` -- the paper's classification sets, from tfds (array_record,
  no TensorFlow needed to read) or from local files;
* ``ade20k``, ``voc2012`` -- the paper's segmentation sets, from their folders.

Example::

  >>> from jaxmpc import data
  >>> ds = data.load_dataset("digits")
  >>> batch = next(data.batches(ds.train, 32, shuffle=True, seed=0))
  >>> batch["image"].shape, batch["label"].dtype
  ((32, 8, 8, 1), dtype('int32'))
"""

from jaxmpc.data._core import ArraySource as ArraySource
from jaxmpc.data._core import Batch as Batch
from jaxmpc.data._core import Dataset as Dataset
from jaxmpc.data._core import DatasetInfo as DatasetInfo
from jaxmpc.data._core import DatasetNotFoundError as DatasetNotFoundError
from jaxmpc.data._core import LazySource as LazySource
from jaxmpc.data._core import Source as Source
from jaxmpc.data._core import Subset as Subset
from jaxmpc.data._core import batches as batches
from jaxmpc.data._core import epoch_permutation as epoch_permutation
from jaxmpc.data._core import num_batches as num_batches
from jaxmpc.data._core import stratified_split as stratified_split
from jaxmpc.data._folders import cifar_binary_source as cifar_binary_source
from jaxmpc.data._folders import image_folder_source as image_folder_source
from jaxmpc.data._folders import segmentation_folder_source as segmentation_folder_source
from jaxmpc.data._registry import DATASETS as DATASETS
from jaxmpc.data._registry import IGNORE_INDEX as IGNORE_INDEX
from jaxmpc.data._registry import load_ade20k as load_ade20k
from jaxmpc.data._registry import load_cifar100 as load_cifar100
from jaxmpc.data._registry import load_dataset as load_dataset
from jaxmpc.data._registry import load_imagenet as load_imagenet
from jaxmpc.data._registry import load_voc2012 as load_voc2012
from jaxmpc.data._registry import materialize as materialize
from jaxmpc.data._small import FASHION_MNIST_DEFAULT_DIR as FASHION_MNIST_DEFAULT_DIR
from jaxmpc.data._small import FASHION_MNIST_ENV as FASHION_MNIST_ENV
from jaxmpc.data._small import load_digits as load_digits
from jaxmpc.data._small import load_fashion_mnist as load_fashion_mnist
from jaxmpc.data._small import read_idx as read_idx
from jaxmpc.data._tfds import tfds_source as tfds_source
from jaxmpc.data._transforms import CIFAR100_MEAN as CIFAR100_MEAN
from jaxmpc.data._transforms import CIFAR100_STD as CIFAR100_STD
from jaxmpc.data._transforms import IMAGENET_MEAN as IMAGENET_MEAN
from jaxmpc.data._transforms import IMAGENET_STD as IMAGENET_STD
from jaxmpc.data._transforms import center_crop as center_crop
from jaxmpc.data._transforms import decode_image as decode_image
from jaxmpc.data._transforms import normalize as normalize
from jaxmpc.data._transforms import resize_short_side as resize_short_side

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "FASHION_MNIST_DEFAULT_DIR",
    "FASHION_MNIST_ENV",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArraySource",
    "Batch",
    "Dataset",
    "DatasetInfo",
    "DatasetNotFoundError",
    "LazySource",
    "Source",
    "Subset",
    "batches",
    "center_crop",
    "cifar_binary_source",
    "decode_image",
    "epoch_permutation",
    "image_folder_source",
    "load_ade20k",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_imagenet",
    "load_voc2012",
    "materialize",
    "normalize",
    "num_batches",
    "read_idx",
    "resize_short_side",
    "segmentation_folder_source",
    "stratified_split",
    "tfds_source",
]
