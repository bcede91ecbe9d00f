"""The distortion table: per layer, the distortion of every (channel, candidate), and its file format.

This is what the knapsack planner consumes (Gorski & Avidan, arXiv 2304.10442, §3.2;
``paper_reference.md`` §3.1 and §4.1): for every ReLU layer, an array ``[C, n_candidates]`` of
distortions, the candidate patch sizes, and the DReLU cost of each candidate for one channel
of one image at the profiled input size.

File format (version 1): a NumPy ``.npz`` archive, read with ``allow_pickle=False``:

* ``meta``: a uint8 array holding UTF-8 JSON::

      {"format": "jaxmpc-distortion", "version": 1,
       "layers": [{"name": "stem/relu", "height": 32, "width": 32, "channels": 64}, ...],
       "meta": {...free-form: model, input_shape, num_samples, method, fingerprint, ...}}

* for layer ``i`` (in the order of ``layers``): ``distortion_{i}`` float64 ``[C, n]``,
  ``candidates_{i}`` int32 ``[n, 2]``, ``costs_{i}`` int64 ``[n]``.

Files are written atomically (a temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from jaxmpc.core import blocks
from jaxmpc._io import atomic_write_bytes, dumps_json

__all__ = ["DISTORTION_FORMAT", "DISTORTION_VERSION", "DistortionTable", "LayerDistortion", "TableError"]

DISTORTION_FORMAT = "jaxmpc-distortion"
DISTORTION_VERSION = 1


class TableError(ValueError):
    """A distortion table (or file) is malformed or inconsistent."""


@dataclasses.dataclass(frozen=True, eq=False)
class LayerDistortion:
    """The distortions of one ReLU layer.

    Attributes:
      name: the layer name (a key of the block spec, e.g. ``"layer1_0/relu1"``).
      height, width, channels: the activation map of one image (``H x W``, ``C`` channels).
      candidates: int32 ``[n, 2]`` candidate patch sizes (encoding of :mod:`jaxmpc.core.blocks`).
      distortion: float64 ``[C, n]``: mean over the samples of the mean squared change of the
        network output when only this channel uses this candidate (paper §3.1).
      costs: int64 ``[n]``: DReLUs of one channel of one image under each candidate
        (:func:`jaxmpc.core.blocks.num_patches` at ``H x W``; 0 for identity and zero).

    Raises:
      TableError: on construction, if the arrays are inconsistent.
    """

    name: str
    height: int
    width: int
    channels: int
    candidates: np.ndarray
    distortion: np.ndarray
    costs: np.ndarray

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TableError(f"layer name must be a non-empty string, got {self.name!r}")
        for f in ("height", "width", "channels"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise TableError(f"layer {self.name!r}: {f} must be a positive int, got {v!r}")
            object.__setattr__(self, f, int(v))
        try:
            cand = blocks.validate_block_sizes(np.asarray(self.candidates), name=f"layer {self.name!r} candidates")
        except (TypeError, ValueError) as e:
            raise TableError(str(e)) from e
        if cand.shape[0] == 0:
            raise TableError(f"layer {self.name!r}: no candidates")
        dist = np.asarray(self.distortion, dtype=np.float64)
        if dist.shape != (self.channels, cand.shape[0]):
            raise TableError(
                f"layer {self.name!r}: distortion has shape {dist.shape}, expected [C, n] = "
                f"{(self.channels, cand.shape[0])}"
            )
        costs = np.asarray(self.costs)
        expected = blocks.num_patches(self.height, self.width, cand).astype(np.int64)
        if costs.shape != expected.shape or not np.array_equal(costs, expected):
            raise TableError(f"layer {self.name!r}: costs do not match the candidates at {self.height}x{self.width}")
        for arr in (cand, dist, expected):
            arr.setflags(write=False)
        object.__setattr__(self, "candidates", cand)
        object.__setattr__(self, "distortion", dist)
        object.__setattr__(self, "costs", expected)

    @classmethod
    def create(cls, name: str, height: int, width: int, candidates, distortion) -> LayerDistortion:
        """Builds a layer entry, computing the costs from the candidates."""
        cand = np.asarray(candidates)
        dist = np.asarray(distortion)
        return cls(
            name,
            height,
            width,
            int(dist.shape[0]) if dist.ndim == 2 else -1,
            cand,
            dist,
            blocks.num_patches(int(height), int(width), cand).astype(np.int64),
        )

    @property
    def relu_cost(self) -> int:
        """DReLUs of one channel as an ordinary ReLU (``H * W``)."""
        return self.height * self.width


@dataclasses.dataclass(frozen=True, eq=False)
class DistortionTable:
    """Per-layer distortion tables of a model, in execution order (paper §3.1).

    Attributes:
      layers: one :class:`LayerDistortion` per profiled ReLU layer.
      meta: JSON-serialisable metadata (``model``, ``input_shape``, ``num_samples``,
        ``method`` = ``"exact"`` or ``"first_order"``, ``fingerprint``, timings, ...).

    Example::

      >>> table = DistortionTable.load("r18.distortion.npz")        # doctest: +SKIP
      >>> table["stem/relu"].distortion.shape                       # doctest: +SKIP
      (64, 80)
    """

    layers: tuple[LayerDistortion, ...]
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        layers = tuple(self.layers)
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise TableError(f"layer {dup!r} appears twice in the table")
        for layer in layers:
            if not isinstance(layer, LayerDistortion):
                raise TableError(f"layers must be LayerDistortion objects, got {type(layer).__name__}")
        try:
            meta = json.loads(dumps_json(dict(self.meta), indent=None, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise TableError(f"meta must be JSON-serialisable: {e}") from e
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "meta", meta)

    # Mapping-like access -----------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __getitem__(self, name: str) -> LayerDistortion:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in the table (layers: {', '.join(self.names[:5])}...)")

    def __contains__(self, name: object) -> bool:
        return any(layer.name == name for layer in self.layers)

    def __iter__(self) -> Iterator[LayerDistortion]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def num_channels(self) -> int:
        return sum(layer.channels for layer in self.layers)

    @property
    def num_entries(self) -> int:
        """Number of (channel, candidate) entries."""
        return sum(layer.distortion.size for layer in self.layers)

    def relu_drelus(self) -> int:
        """DReLUs of one image when every profiled channel is an ordinary ReLU."""
        return sum(layer.channels * layer.relu_cost for layer in self.layers)

    def planner_layers(self, *, drop_zero: bool = True) -> list:
        """The table as :class:`jaxmpc.knapsack.LayerCandidates`, the planner's input (paper §3.2).

        Args:
          drop_zero: leave out the ``(1, 0)`` (zero) candidate, as the reference does
            (``paper_reference.md`` §4.1); the knapsack would otherwise be free to zero
            channels, whose effect on accuracy finetuning cannot recover in general.
        """
        from jaxmpc.knapsack import LayerCandidates  # lazy: the planner is an optional consumer

        out = []
        for layer in self.layers:
            keep = np.ones(len(layer.candidates), dtype=bool)
            if drop_zero:
                keep &= ~((layer.candidates[:, 0] == 1) & (layer.candidates[:, 1] == 0))
            out.append(
                LayerCandidates(
                    name=layer.name,
                    height=layer.height,
                    width=layer.width,
                    candidates=layer.candidates[keep],
                    distortion=layer.distortion[:, keep],
                )
            )
        return out

    def select(self, names: Sequence[str]) -> DistortionTable:
        """A table with only the given layers, in the given order."""
        return DistortionTable(tuple(self[n] for n in names), self.meta)

    # Files -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Writes the table as ``.npz`` (format version 1, see the module docstring), atomically.

        Raises:
          OSError: if the folder does not exist or is not writable (nothing is written).
        """
        header = {
            "format": DISTORTION_FORMAT,
            "version": DISTORTION_VERSION,
            "layers": [
                {"name": layer.name, "height": layer.height, "width": layer.width, "channels": layer.channels}
                for layer in self.layers
            ],
            "meta": self.meta,
        }
        arrays: dict[str, np.ndarray] = {
            "meta": np.frombuffer(json.dumps(header, allow_nan=False).encode("utf-8"), dtype=np.uint8)
        }
        for i, layer in enumerate(self.layers):
            arrays[f"distortion_{i}"] = layer.distortion
            arrays[f"candidates_{i}"] = layer.candidates
            arrays[f"costs_{i}"] = layer.costs
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> DistortionTable:
        """Reads a table written by :meth:`save`. Never unpickles.

        Raises:
          TableError: naming the file, if it is not a jaxmpc distortion table, has another
            version, or its arrays are missing or inconsistent.
        """
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise TableError(f"{path}: not a readable .npz distortion table ({e})") from e
        if "meta" not in data:
            raise TableError(f"{path}: not a jaxmpc distortion table (no 'meta' entry)")
        try:
            header = json.loads(bytes(data["meta"].astype(np.uint8)).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TableError(f"{path}: unreadable metadata ({e})") from e
        if not isinstance(header, dict) or header.get("format") != DISTORTION_FORMAT:
            got = header.get("format") if isinstance(header, dict) else None
            raise TableError(f"{path}: not a jaxmpc distortion table (format {got!r})")
        if header.get("version") != DISTORTION_VERSION:
            raise TableError(
                f"{path}: unsupported version {header.get('version')!r}; this jaxmpc reads {DISTORTION_VERSION}"
            )
        layers = []
        for i, info in enumerate(header.get("layers", [])):
            try:
                layers.append(
                    LayerDistortion(
                        info["name"],
                        info["height"],
                        info["width"],
                        info["channels"],
                        data[f"candidates_{i}"],
                        data[f"distortion_{i}"],
                        data[f"costs_{i}"],
                    )
                )
            except KeyError as e:
                raise TableError(f"{path}: layer {i} is incomplete (missing {e})") from e
            except TableError as e:
                raise TableError(f"{path}: {e}") from e
        return cls(tuple(layers), header.get("meta", {}))
