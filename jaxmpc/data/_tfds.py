"""Random-access reading of prepared tensorflow-datasets (tfds) datasets, without TensorFlow.

What works without TensorFlow (tensorflow-datasets 4.9.10):

* **Reading** a dataset that has been prepared in the ``array_record`` (or ``parquet``) file
  format, through ``tfds.data_source``: random access by index, and ``Image`` features decoded
  to numpy with Pillow (or OpenCV when installed). This is what :func:`tfds_source` uses.
* **Not** reading the default ``tfrecord`` format (``tfds.load`` / ``tf.data`` need TensorFlow),
  and **not** preparing (``tfds build``) the paper's datasets: their builders encode images
  with TensorFlow. Prepare once on a machine with TensorFlow::

      pip install tensorflow tensorflow-datasets
      tfds build cifar100 --file_format=array_record --data_dir=~/tensorflow_datasets

  (ImageNet ``imagenet2012`` and ADE20K ``scene_parse150`` need their archives downloaded by
  hand first, see the tfds catalog.) An existing ``tfrecord`` copy can be converted with
  ``tfds convert_format --dataset_version_dir=<data_dir>/<name>/<version> --out_file_format=array_record``
  (reading the tfrecords needs TensorFlow too).

tfds has no Pascal VOC *segmentation* builder (``voc/2012`` holds detection boxes only), so VOC
is read from its folder (:mod:`jaxmpc.data._folders`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxmpc.data._core import DatasetNotFoundError, LazySource

__all__ = ["tfds_prepare_hint", "tfds_source"]


def tfds_prepare_hint(name: str, data_dir: str | None) -> str:
    """How to prepare ``name`` in the array_record format (for error messages)."""
    where = f" --data_dir={data_dir}" if data_dir else ""
    manual = ""
    if name.startswith(("imagenet2012", "scene_parse150")):
        manual = (
            f"\n  ({name} needs its archives downloaded by hand into <data_dir>/downloads/manual first; see "
            f"https://www.tensorflow.org/datasets/catalog/{name.split('/')[0].split(':')[0]})"
        )
    return (
        "tensorflow-datasets reads datasets without TensorFlow only in the array_record format. Prepare it once on a "
        "machine with TensorFlow:\n"
        f"  pip install tensorflow tensorflow-datasets && tfds build {name.split(':')[0]} --file_format=array_record"
        f"{where}{manual}"
    )


def _builder(name: str, data_dir: str | None):
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a dependency
        raise ImportError("reading tfds datasets needs tensorflow-datasets: pip install tensorflow-datasets") from e
    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises its own DatasetNotFoundError for unknown names
        if isinstance(e, DatasetNotFoundError):
            raise
        raise ValueError(f"tensorflow-datasets has no dataset {name!r}: {e}") from e


def tfds_source(
    name: str,
    split: str,
    decode: Callable[[dict[str, Any]], tuple[np.ndarray, Any]],
    *,
    data_dir: str | os.PathLike | None = None,
    extra_hint: str = "",
) -> LazySource:
    """A lazy source over a prepared tfds split, read with ``tfds.data_source`` (no TensorFlow).

    Args:
      name: tfds name, optionally with config and version (``"cifar100"``, ``"imagenet2012:5.*.*"``).
      split: tfds split name (``"train"``, ``"test"``, ``"validation"``) or slice (``"train[:90%]"``).
      decode: turns one tfds example (a dict of numpy values, images already decoded to uint8)
        into ``(image float32 [H, W, C], label)``.
      data_dir: tfds data folder (default: tfds's own, ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      extra_hint: appended to the not-found message (e.g. how to use a folder instead).

    Returns:
      A :class:`~jaxmpc.data.LazySource`.

    Raises:
      DatasetNotFoundError: if the dataset is not prepared there, or only in the ``tfrecord``
        format; the message says how to prepare it.
    """
    data_dir = os.fspath(os.path.expanduser(data_dir)) if data_dir is not None else None
    builder = _builder(name, data_dir)
    hint = tfds_prepare_hint(name, data_dir) + (f"\n{extra_hint}" if extra_hint else "")
    if not builder.is_prepared():
        raise DatasetNotFoundError(f"tfds dataset {name!r} is not prepared in {builder.data_dir}.\n{hint}")
    file_format = getattr(builder.info.file_format, "value", str(builder.info.file_format))
    if file_format not in ("array_record", "parquet"):
        raise DatasetNotFoundError(
            f"tfds dataset {name!r} in {builder.data_dir} is stored as {file_format!r}, which needs TensorFlow to "
            f"read. Convert it (this step needs TensorFlow): tfds convert_format --dataset_version_dir={builder.data_dir} "
            f"--out_file_format=array_record\n{hint}"
        )
    ds = builder.as_data_source(split=split)
    return LazySource(len(ds), lambda i: decode(ds[i]), name=f"tfds {name} [{split}]")
