"""Small grey-image datasets that need no download: scikit-learn's digits and Fashion-MNIST.

* **digits** -- scikit-learn's bundled copy of the UCI optical-digits test set: 1,797 images of
  8x8 pixels with values 0..16, 10 classes. Always available (it ships inside scikit-learn).
* **Fashion-MNIST** (Xiao et al. 2017) -- 70,000 28x28 grey images of clothes, 10 classes,
  read from the idx files of Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``) or any folder holding the four official files.

Both are the stand-ins for the paper's CIFAR/ImageNet experiments on a CPU: ``ResNetSmall``
from :mod:`jaxmpc.nn` is sized for them.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from jaxmpc.data._core import ArraySource, Dataset, DatasetInfo, DatasetNotFoundError, Subset, stratified_split

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEFAULT_DIR",
    "FASHION_MNIST_ENV",
    "load_digits",
    "load_fashion_mnist",
    "read_idx",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the idx files.
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
#: Environment variable naming a folder with the Fashion-MNIST idx files (used when no path is given).
FASHION_MNIST_ENV = "JAXMPC_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: Pixel mean and standard deviation of the 60,000 Fashion-MNIST training images, in [0, 1] units.
FASHION_MNIST_MEAN = 0.2860406
FASHION_MNIST_STD = 0.3530242

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an idx file (the MNIST/Fashion-MNIST format), gzipped (``.gz``) or not.

    Args:
      path: file name.

    Returns:
      The array, with the shape and dtype stored in the header.

    Raises:
      ValueError: if the header is not an idx header or the payload has the wrong size.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: idx header says {dims} ({expected} bytes), file has {len(data) - header}")
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def load_digits(*, split_seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1) -> Dataset:
    """scikit-learn's digits: 1,797 8x8 grey images, 10 classes, no download.

    Split (deterministic, stratified by class with :func:`~jaxmpc.data.stratified_split`): for
    each digit, ``round(n * test_fraction)`` images go to test and ``round(n * val_fraction)`` to
    validation, the rest to train. With the defaults and ``split_seed=0`` that is 1,259 train,
    179 validation and 359 test images.

    Preprocessing: pixel values 0..16 are divided by 16, then standardised with the mean and
    standard deviation of the training split's pixels (stored in ``info.mean``/``info.std``).

    Args:
      split_seed: seed of the split.
      test_fraction: fraction of each class held out for test.
      val_fraction: fraction of each class held out for validation (0 gives no validation split).

    Returns:
      A :class:`~jaxmpc.data.Dataset` with images float32 ``[N, 8, 8, 1]`` and int32 labels.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    raw = _sk_load_digits()
    images = (np.asarray(raw.images, np.float32) / np.float32(16.0))[..., None]
    labels = np.asarray(raw.target, np.int32)
    train, test, val = stratified_split(labels, (test_fraction, val_fraction), seed=split_seed)
    mean = float(images[train].mean())
    std = float(images[train].std())
    images = ((images - np.float32(mean)) / np.float32(std)).astype(np.float32)
    full = ArraySource(images, labels)
    info = DatasetInfo(
        name="digits",
        input_shape=(8, 8, 1),
        num_classes=10,
        mean=(mean,),
        std=(std,),
        class_names=tuple(str(d) for d in range(10)),
        notes=(
            f"scikit-learn digits; stratified split seed {split_seed}: {len(train)} train / {len(val)} validation / "
            f"{len(test)} test; pixels /16 then standardised with train statistics"
        ),
    )
    return Dataset(info, Subset(full, train), Subset(full, val) if len(val) else None, Subset(full, test))


def _find_fashion_mnist(path: str | os.PathLike | None) -> tuple[str, str]:
    """The folder holding the Fashion-MNIST files and a description of where it came from."""
    if path is not None:
        return os.fspath(path), "path argument"
    env = os.environ.get(FASHION_MNIST_ENV)
    if env:
        return env, f"${FASHION_MNIST_ENV}"
    return FASHION_MNIST_DEFAULT_DIR, "default location (Debian package dataset-fashion-mnist)"


def _idx_file(folder: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None


def load_fashion_mnist(path: str | os.PathLike | None = None, *, val_size: int = 5000, split_seed: int = 0) -> Dataset:
    """Fashion-MNIST: 60,000 train and 10,000 test 28x28 grey images of clothes, 10 classes.

    The four idx files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
    ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``) are read from ``path``,
    else from the folder in ``$JAXMPC_FASHION_MNIST_DIR``, else from
    ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).

    Split: the official 10,000 test images are the test split; ``val_size`` images of the
    official training set (the same number from each class, drawn with ``split_seed``) are the
    validation split and the rest is train (55,000 / 5,000 with the defaults).

    Preprocessing: ``(pixel / 255 - 0.2860) / 0.3530``, the training set's mean and standard
    deviation.

    Args:
      path: folder with the idx files (overrides the environment variable and the default).
      val_size: validation images carved out of the training set (a multiple of 10; 0: none).
      split_seed: seed of that split.

    Returns:
      A :class:`~jaxmpc.data.Dataset` with images float32 ``[N, 28, 28, 1]`` and int32 labels.

    Raises:
      DatasetNotFoundError: if a file is missing; the message says how to install the data.
      ValueError: if a file is not a valid idx file or the counts do not match.
    """
    folder, origin = _find_fashion_mnist(path)
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    files = {s: _idx_file(folder, s) for s in stems}
    missing = [s for s, f in files.items() if f is None]
    if missing:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found in {folder!r} ({origin}): missing {', '.join(s + '[.gz]' for s in missing)}.\n"
            "Get it with one of:\n"
            "  * sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu; installs to "
            f"{FASHION_MNIST_DEFAULT_DIR})\n"
            "  * download the four idx files from https://github.com/zalandoresearch/fashion-mnist and pass "
            f"path=<folder> or set ${FASHION_MNIST_ENV}=<folder>"
        )
    if val_size < 0 or val_size % 10:
        raise ValueError(f"val_size must be a non-negative multiple of 10, got {val_size}")
    arrays = {s: read_idx(f) for s, f in files.items()}
    x_train, y_train = arrays[stems[0]], arrays[stems[1]]
    x_test, y_test = arrays[stems[2]], arrays[stems[3]]
    for (x, y), name in (((x_train, y_train), "train"), ((x_test, y_test), "t10k")):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
            raise ValueError(f"{folder}: unexpected Fashion-MNIST {name} shapes {x.shape} / {y.shape}")

    def prep(x):
        return (
            (x.astype(np.float32) / np.float32(255.0) - np.float32(FASHION_MNIST_MEAN)) / np.float32(FASHION_MNIST_STD)
        )[..., None]

    train_all = ArraySource(prep(x_train), y_train.astype(np.int32))
    test = ArraySource(prep(x_test), y_test.astype(np.int32))
    counts = np.bincount(y_train, minlength=10)
    train_idx, val_idx = stratified_split(y_train, (val_size / len(y_train),), seed=split_seed)
    if val_size and np.all(counts == counts[0]) and len(val_idx) != val_size:  # pragma: no cover - guard
        raise AssertionError("stratified split size mismatch")
    info = DatasetInfo(
        name="fashion_mnist",
        input_shape=(28, 28, 1),
        num_classes=10,
        mean=(FASHION_MNIST_MEAN,),
        std=(FASHION_MNIST_STD,),
        class_names=FASHION_MNIST_CLASSES,
        notes=(
            f"Fashion-MNIST from {folder}; {len(train_idx)} train / {len(val_idx)} validation (stratified, seed "
            f"{split_seed}, from the official train set) / {len(test)} test (official)"
        ),
    )
    train = Subset(train_all, train_idx) if len(val_idx) else train_all
    val = Subset(train_all, val_idx) if len(val_idx) else None
    return Dataset(info, train, val, test)
