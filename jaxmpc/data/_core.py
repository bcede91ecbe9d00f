"""Dataset descriptors, random-access sources and deterministic batching.

Everything here is plain numpy: a *source* is a random-access collection of examples that returns
whole batches as numpy arrays (``{"image": float32 [N, H, W, C], "label": int32 [N] or [N, H, W]}``),
and :func:`batches` walks a source in a deterministic order. The order of an epoch is a pure
function of ``(seed, epoch)``, so a training run that is interrupted can restart in the middle of
an epoch and see exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "ArraySource",
    "Batch",
    "Dataset",
    "DatasetInfo",
    "DatasetNotFoundError",
    "LazySource",
    "Source",
    "Subset",
    "batches",
    "epoch_permutation",
    "num_batches",
    "stratified_split",
]

Task = Literal["classification", "segmentation"]
Batch = dict[str, np.ndarray]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not available locally; the message says how to get it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    Attributes:
      name: dataset name (``"digits"``, ``"fashion_mnist"``, ``"cifar100"``, ...).
      input_shape: ``(H, W, C)`` of one preprocessed image.
      num_classes: number of classes (segmentation: classes that are scored, without the ignore
        label).
      task: ``"classification"`` or ``"segmentation"``.
      ignore_index: segmentation label value that is excluded from the loss and the metrics
        (255 for ADE20K and VOC); ``None`` for classification.
      mean: per-channel mean subtracted from images scaled to ``[0, 1]``.
      std: per-channel standard deviation images were divided by (after subtracting ``mean``).
      class_names: optional names, one per class.
      notes: free text: where the data came from, how it was split and preprocessed.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    task: Task = "classification"
    ignore_index: int | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    class_names: tuple[str, ...] | None = None
    notes: str = ""

    def __post_init__(self):
        if self.task not in ("classification", "segmentation"):
            raise ValueError(f"DatasetInfo: task must be 'classification' or 'segmentation', got {self.task!r}")
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"DatasetInfo: input_shape must be (H, W, C) with positive sizes, got {self.input_shape}")
        if self.num_classes < 1:
            raise ValueError(f"DatasetInfo: num_classes must be positive, got {self.num_classes}")
        if self.task == "segmentation" and self.ignore_index is None:
            raise ValueError("DatasetInfo: a segmentation dataset needs an ignore_index")
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for checkpoints and logs)."""
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        return d


@runtime_checkable
class Source(Protocol):
    """A random-access collection of examples.

    ``get(indices)`` returns one batch, a dict of numpy arrays with leading dimension
    ``len(indices)``: ``"image"`` (float32 NHWC) and ``"label"`` (int32). ``map_fn`` is the
    ``map`` used to load the examples of a lazy source (e.g. a thread pool's ``map``); array
    sources ignore it.
    """

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray, *, map_fn: Callable = map) -> Batch: ...


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
    """An in-memory source: float32 NHWC images and int32 labels.

    Attributes:
      images: float32 ``[N, H, W, C]``.
      labels: int32 ``[N]`` (classification) or ``[N, H, W]`` (segmentation).
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        images, labels = np.asarray(self.images), np.asarray(self.labels)
        if images.ndim != 4:
            raise ValueError(f"ArraySource: images must be [N, H, W, C], got shape {images.shape}")
        if labels.shape[:1] != images.shape[:1]:
            raise ValueError(f"ArraySource: {images.shape[0]} images but labels of shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"ArraySource: labels must be integers, got {labels.dtype}")
        object.__setattr__(self, "images", np.asarray(images, np.float32))
        object.__setattr__(self, "labels", np.asarray(labels, np.int32))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def get(self, indices: np.ndarray, *, map_fn: Callable = map) -> Batch:
        del map_fn
        idx = np.asarray(indices, np.int64)
        return {"image": self.images[idx], "label": self.labels[idx]}


@dataclasses.dataclass(frozen=True, eq=False)
class LazySource:
    """A source that loads (decodes, preprocesses) each example on demand.

    Attributes:
      length: number of examples.
      load: ``load(i) -> (image float32 [H, W, C], label int)`` or ``(image, label [H, W])``.
        It must be safe to call from several threads at once (decoding with Pillow is).
      name: shown in error messages.
    """

    length: int
    load: Callable[[int], tuple[np.ndarray, Any]]
    name: str = "lazy source"

    def __len__(self) -> int:
        return int(self.length)

    def get(self, indices: np.ndarray, *, map_fn: Callable = map) -> Batch:
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        for i in idx:
            if not 0 <= i < self.length:
                raise IndexError(f"{self.name}: index {i} out of range for {self.length} examples")
        examples = list(map_fn(self.load, idx))
        if not examples:
            raise ValueError(f"{self.name}: empty batch")
        shapes = {np.shape(im) for im, _ in examples}
        if len(shapes) != 1:
            raise ValueError(
                f"{self.name}: examples of different shapes {sorted(shapes)} cannot be batched; "
                "crop them to one size (e.g. crop=512) or use batch_size=1"
            )
        images = np.stack([np.asarray(im, np.float32) for im, _ in examples])
        labels = np.stack([np.asarray(lb, np.int32) for _, lb in examples])
        return {"image": images, "label": labels}


@dataclasses.dataclass(frozen=True, eq=False)
class Subset:
    """The examples ``indices`` of another source, in that order."""

    source: Source
    indices: np.ndarray

    def __post_init__(self):
        idx = np.asarray(self.indices, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.source)):
            raise IndexError(f"Subset: indices out of range for a source of {len(self.source)} examples")
        object.__setattr__(self, "indices", idx)

    def __len__(self) -> int:
        return int(self.indices.size)

    def get(self, indices: np.ndarray, *, map_fn: Callable = map) -> Batch:
        return self.source.get(self.indices[np.asarray(indices, np.int64)], map_fn=map_fn)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset: its descriptor and its splits.

    Attributes:
      info: the :class:`DatasetInfo`.
      train: training split.
      validation: validation split, or ``None`` when the dataset has none (see ``info.notes``).
      test: test split. For ImageNet, ADE20K and VOC, whose test labels are not public, this is
        the official validation set (what the paper reports on), the same object as
        ``validation``.
    """

    info: DatasetInfo
    train: Source
    validation: Source | None
    test: Source

    def split(self, name: str) -> Source:
        """The split called ``name`` (``"train"``, ``"validation"`` or ``"test"``).

        Raises:
          ValueError: for another name, or ``"validation"`` when there is none.
        """
        if name not in ("train", "validation", "test"):
            raise ValueError(f"unknown split {name!r}; expected 'train', 'validation' or 'test'")
        src = getattr(self, name)
        if src is None:
            raise ValueError(f"dataset {self.info.name!r} has no {name} split ({self.info.notes})")
        return src


# --------------------------------------------------------------------------------------------
# Splitting and ordering


def stratified_split(labels: np.ndarray, fractions: Sequence[float], *, seed: int) -> tuple[np.ndarray, ...]:
    """Deterministic stratified split of ``range(len(labels))``.

    For each class with ``n`` examples, a permutation drawn from ``seed`` (numpy PCG64) takes
    ``round(n * f)`` examples for each fraction ``f`` in order; the rest form the first output.
    Each output is sorted, so the splits keep the dataset's order.

    Args:
      labels: int ``[N]`` class labels.
      fractions: fractions of each class for the held-out parts, e.g. ``(0.2, 0.1)``.
      seed: split seed.

    Returns:
      ``(rest, part_1, ..., part_k)`` index arrays (int64).

    Example::

      >>> rest, test = stratified_split(np.array([0, 0, 0, 0, 1, 1]), (0.5,), seed=0)
      >>> len(rest), len(test)
      (3, 3)
    """
    labels = np.asarray(labels).reshape(-1)
    fr = [float(f) for f in fractions]
    if any(f < 0 for f in fr) or sum(fr) > 1:
        raise ValueError(f"fractions must be non-negative and sum to at most 1, got {fractions}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fr) + 1)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for k, f in enumerate(fr):
            m = round(len(idx) * f)
            parts[k + 1].append(idx[start : start + m])
            start += m
        parts[0].append(idx[start:])
    return tuple(np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch``: a permutation of ``range(n)`` that depends only on ``(seed, epoch)``."""
    if n < 0 or epoch < 0:
        raise ValueError(f"epoch_permutation: n and epoch must be non-negative, got n={n}, epoch={epoch}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))
    return rng.permutation(n)


def num_batches(n: int, batch_size: int, *, drop_remainder: bool) -> int:
    """Batches in one pass over ``n`` examples."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_remainder else -(-n // batch_size)


def _pad_batch(batch: Batch, size: int, ignore_label: int) -> Batch:
    n = batch["image"].shape[0]
    out = {"mask": np.concatenate([np.ones(n, np.float32), np.zeros(size - n, np.float32)])}
    for k, v in batch.items():
        fill = ignore_label if k == "label" else 0
        pad = np.full((size - n,) + v.shape[1:], fill, v.dtype)
        out[k] = np.concatenate([v, pad])
    return out


def batches(
    source: Source,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    epoch: int = 0,
    drop_remainder: bool = False,
    pad: bool = False,
    ignore_label: int = 0,
    start: int = 0,
    num_threads: int = 0,
    prefetch: int = 0,
) -> Iterator[Batch]:
    """Iterates over one epoch of ``source`` in batches.

    The order is ``epoch_permutation(len(source), seed, epoch)`` when ``shuffle`` (an explicit
    ``seed`` is required) and the source's order otherwise. ``start`` skips the first batches of
    the epoch, so an interrupted run resumes mid-epoch on exactly the same batches.

    Args:
      source: any :class:`Source`.
      batch_size: examples per batch.
      shuffle: draw the epoch's order from ``(seed, epoch)``.
      seed: shuffle seed (required when ``shuffle``).
      epoch: epoch number (selects the permutation).
      drop_remainder: drop the last, incomplete batch (training).
      pad: pad the last batch to ``batch_size`` and add ``"mask"`` (float32, 1 for real
        examples), so that every batch has one shape and a jitted evaluation compiles once.
        Padded labels are ``ignore_label``. With ``pad`` every batch has a ``"mask"``.
      ignore_label: label of padded examples (use the ignore index for segmentation).
      start: index of the first batch to yield.
      num_threads: load the examples of lazy sources with this many threads (0: in this thread).
      prefetch: prepare up to this many batches ahead in a background thread (0: none).

    Yields:
      Dicts ``{"image": float32 [B, H, W, C], "label": int32 [B] or [B, H, W]}`` (+ ``"mask"``).

    Raises:
      ValueError: on bad arguments (e.g. ``shuffle`` without ``seed``).

    Example::

      >>> src = ArraySource(np.zeros((5, 2, 2, 1), np.float32), np.arange(5))
      >>> [b["label"].tolist() for b in batches(src, 2)]
      [[0, 1], [2, 3], [4]]
    """
    n = len(source)
    if shuffle and seed is None:
        raise ValueError("batches: shuffle=True needs an explicit seed")
    if pad and drop_remainder:
        raise ValueError("batches: use either pad or drop_remainder, not both")
    total = num_batches(n, batch_size, drop_remainder=drop_remainder)
    if not 0 <= start <= total:
        raise ValueError(f"batches: start={start} outside [0, {total}] for {n} examples in batches of {batch_size}")
    order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)

    def make(b: int, map_fn: Callable) -> Batch:
        idx = order[b * batch_size : (b + 1) * batch_size]
        batch = source.get(idx, map_fn=map_fn)
        if pad:
            batch = _pad_batch(batch, batch_size, ignore_label)
        return batch

    pool = concurrent.futures.ThreadPoolExecutor(num_threads) if num_threads > 0 else None
    map_fn = pool.map if pool is not None else map
    try:
        if prefetch <= 0:
            for b in range(start, total):
                yield make(b, map_fn)
        else:
            yield from _prefetched((lambda b=b: make(b, map_fn) for b in range(start, total)), prefetch)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


_DONE = object()


def _prefetched(thunks: Iterable[Callable[[], Batch]], depth: int) -> Iterator[Batch]:
    """Evaluates ``thunks`` in order in one background thread, at most ``depth`` ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def worker():
        try:
            for thunk in thunks:
                if stop.is_set():
                    return
                item = thunk()
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
            q.put((True, _DONE))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put((False, e))

    thread = threading.Thread(target=worker, name="jaxmpc-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)
