"""Evaluation metrics: accuracy (classification) and mean IoU (segmentation).

The per-batch pieces are jittable JAX functions that return *sums* (correct predictions, a
confusion matrix), so batches of any size combine exactly; the final ratios are taken in numpy.
Mean IoU follows mmseg's ``intersect_and_union``: per class, IoU = TP / (TP + FP + FN) over all
evaluated pixels, pixels labelled with the ignore index are skipped, and classes that appear in
neither the labels nor the predictions are left out of the mean (the paper's ADE20K/VOC mIoU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["accuracy", "confusion_matrix", "mean_iou", "pixel_accuracy"]


def accuracy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    """Top-1 accuracy of ``logits [..., K]`` against integer ``labels [...]`` (float32 scalar).

    Example::

      >>> accuracy(jnp.array([[0.1, 0.9], [0.8, 0.2]]), jnp.array([1, 1]))
      Array(0.5, dtype=float32)
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"accuracy: logits {logits.shape} do not match labels {labels.shape}")
    return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def confusion_matrix(
    predictions: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    num_classes: int,
    *,
    ignore_index: int | None = None,
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Confusion counts ``C[true, predicted]`` (int32 ``[K, K]``), jittable.

    Args:
      predictions: int class predictions, any shape.
      labels: int labels, same shape.
      num_classes: ``K``.
      ignore_index: label value to skip (e.g. 255).
      weights: optional 0/1 weights of the same shape (0 skips an element, e.g. padding).

    Returns:
      int32 ``[K, K]``. Labels outside ``[0, K)`` other than ``ignore_index`` are skipped too.
    """
    p = jnp.asarray(predictions).reshape(-1).astype(jnp.int32)
    t = jnp.asarray(labels).reshape(-1).astype(jnp.int32)
    if p.shape != t.shape:
        raise ValueError(
            f"confusion_matrix: predictions {jnp.shape(predictions)} and labels {jnp.shape(labels)} differ"
        )
    valid = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        valid &= t != ignore_index
    if weights is not None:
        valid &= jnp.asarray(weights).reshape(-1) > 0
    idx = jnp.where(valid, t * num_classes + p, 0)
    counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[idx].add(valid.astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


def mean_iou(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean intersection-over-union from a confusion matrix ``C[true, predicted]``.

    Returns:
      ``(mIoU, per-class IoU)``; classes with an empty union get ``nan`` and are left out of
      the mean (mmseg's convention). ``mIoU`` is ``nan`` if every class is empty.

    Example::

      >>> miou, iou = mean_iou(np.array([[2, 1], [0, 1]]))
      >>> round(miou, 4), iou.round(4).tolist()
      (0.5833, [0.6667, 0.5])
    """
    c = np.asarray(confusion, np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"mean_iou: confusion must be square [K, K], got {c.shape}")
    tp = np.diag(c)
    union = c.sum(0) + c.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    valid = ~np.isnan(iou)
    return (float(iou[valid].mean()) if valid.any() else float("nan")), iou


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Fraction of evaluated pixels predicted correctly (``trace / sum``; ``nan`` if empty)."""
    c = np.asarray(confusion, np.float64)
    total = c.sum()
    return float(np.trace(c) / total) if total > 0 else float("nan")
