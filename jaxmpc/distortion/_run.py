"""Work lists, host shards, resumable run folders and merging.

A sweep's work is a flat list of *items*: ``(layer index, first channel, end channel)``, each
covering all candidates of a contiguous range of channels of one layer. The list depends
only on the problem (layers, channel counts, number of candidates and ``pairs_per_item``),
never on the machine, so every host of a multi-host run derives the same list.

Host shards (``shard=(i, n)`` or ``"i/n"``) are contiguous ranges of that list with roughly
equal estimated cost (FLOPs of the layer's dependent part times the pairs to evaluate), so
that each host compiles only the layers it works on.

A run folder holds::

    manifest.json            problem definition and fingerprint (deterministic content)
    items/LLLL-CCCCCC-CCCCCC.npy   float64 [channels, n_candidates] per finished item

Every file is written atomically (temporary file + ``os.replace``), so an interrupted run
leaves only complete items; rerunning with the same folder skips them. Several hosts may
write into one shared folder, or into folders that are merged afterwards with
:func:`merge_runs`, which checks that all runs profiled the same problem, that every item is
present and that items computed twice agree.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
from collections.abc import Sequence

import numpy as np

from jaxmpc._io import JSONFileError, atomic_write_bytes, atomic_write_text, read_json
from jaxmpc.distortion._table import DistortionTable, LayerDistortion, TableError

RUN_FORMAT = "jaxmpc-distortion-run"
RUN_VERSION = 1
_ITEM_RE = re.compile(r"^(\d{4})-(\d{6})-(\d{6})\.npy$")


class RunError(ValueError):
    """A run folder does not match the problem, or runs cannot be merged."""


@dataclasses.dataclass(frozen=True)
class Item:
    """A unit of work (and of resumption): all candidates of channels ``[c0, c1)`` of one layer."""

    layer: int
    c0: int
    c1: int

    @property
    def filename(self) -> str:
        return f"{self.layer:04d}-{self.c0:06d}-{self.c1:06d}.npy"


def parse_shard(shard: str | Sequence[int] | None) -> tuple[int, int]:
    """Parses ``"i/n"`` or ``(i, n)`` into ``(i, n)`` with ``0 <= i < n``; ``None`` is ``(0, 1)``.

    Raises:
      ValueError: for a malformed shard.

    Example::

      >>> parse_shard("1/4")
      (1, 4)
    """
    if shard is None:
        return (0, 1)
    if isinstance(shard, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if not m:
            raise ValueError(f"shard must look like 'i/n' (e.g. '0/4'), got {shard!r}")
        i, n = int(m.group(1)), int(m.group(2))
    else:
        try:
            i, n = (int(v) for v in shard)
        except (TypeError, ValueError) as e:
            raise ValueError(f"shard must be 'i/n' or a pair (i, n), got {shard!r}") from e
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 <= i < n and n >= 1")
    return (i, n)


def make_items(channels: Sequence[int], num_candidates: Sequence[int], pairs_per_item: int) -> list[Item]:
    """The flat work list: per layer, channel ranges of about ``pairs_per_item`` pairs each."""
    if isinstance(pairs_per_item, bool) or not isinstance(pairs_per_item, (int, np.integer)) or pairs_per_item < 1:
        raise ValueError(f"pairs_per_item must be a positive int, got {pairs_per_item!r}")
    items = []
    for li, (c, n) in enumerate(zip(channels, num_candidates)):
        step = max(1, math.ceil(int(pairs_per_item) / max(1, int(n))))
        for c0 in range(0, int(c), step):
            items.append(Item(li, c0, min(int(c), c0 + step)))
    return items


def select_shard(items: Sequence[Item], costs: Sequence[float], shard: tuple[int, int]) -> list[Item]:
    """The contiguous range of ``items`` of host ``shard = (i, n)``, balanced by ``costs``.

    Item ``k`` belongs to shard ``floor(n * (prefix cost before k + cost_k / 2) / total)``.
    Deterministic; every item belongs to exactly one shard.
    """
    i, n = shard
    if n == 1:
        return list(items)
    c = np.asarray(costs, dtype=np.float64)
    total = float(c.sum())
    if total <= 0:
        c = np.ones(len(items))
        total = float(len(items))
    mid = np.cumsum(c) - c / 2
    owner = np.minimum((n * mid / total).astype(np.int64), n - 1)
    return [it for it, o in zip(items, owner) if o == i]


# --------------------------------------------------------------------------------------------
# Run folders


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    name: str
    height: int
    width: int
    channels: int
    candidates: np.ndarray  # int32 [n, 2]


def manifest_dict(fingerprint: str, layers: Sequence[LayerInfo], items: Sequence[Item], meta: dict) -> dict:
    return {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "fingerprint": fingerprint,
        "layers": [
            {
                "name": layer.name,
                "height": layer.height,
                "width": layer.width,
                "channels": layer.channels,
                "candidates": np.asarray(layer.candidates).tolist(),
            }
            for layer in layers
        ],
        "items": [[it.layer, it.c0, it.c1] for it in items],
        "meta": meta,
    }


def _manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n"


def read_manifest(run_dir: str | os.PathLike) -> dict:
    path = os.path.join(os.fspath(run_dir), "manifest.json")
    try:
        man = read_json(path, "distortion run manifest")
    except FileNotFoundError:
        raise RunError(f"{run_dir}: not a distortion run folder (no manifest.json)") from None
    except JSONFileError as e:
        raise RunError(str(e)) from e
    if not isinstance(man, dict) or man.get("format") != RUN_FORMAT:
        raise RunError(f"{path}: not a jaxmpc distortion run manifest")
    if man.get("version") != RUN_VERSION:
        raise RunError(f"{path}: unsupported run version {man.get('version')!r}")
    return man


def open_run(run_dir: str | os.PathLike, manifest: dict) -> None:
    """Creates the run folder and its manifest, or checks that an existing one matches.

    Raises:
      RunError: if the folder holds a run of another problem (other model, weights, images,
        layers, candidates or work list).
    """
    run_dir = os.fspath(run_dir)
    os.makedirs(os.path.join(run_dir, "items"), exist_ok=True)
    path = os.path.join(run_dir, "manifest.json")
    if os.path.exists(path):
        old = read_manifest(run_dir)
        if old.get("fingerprint") != manifest["fingerprint"]:
            raise RunError(
                f"{run_dir} holds a run of a different problem (fingerprint {str(old.get('fingerprint'))[:12]} != "
                f"{manifest['fingerprint'][:12]}: other model, weights, images, base spec, layers or candidates); "
                "use a new folder or delete it"
            )
        for key in ("layers", "items"):
            if old.get(key) != manifest[key]:
                raise RunError(f"{run_dir}: the run's {key} differ from this call's (other pairs_per_item?)")
        return
    atomic_write_text(path, _manifest_text(manifest))


def item_path(run_dir: str | os.PathLike, item: Item) -> str:
    return os.path.join(os.fspath(run_dir), "items", item.filename)


def write_item(run_dir: str | os.PathLike, item: Item, values: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(values, dtype=np.float64), allow_pickle=False)
    atomic_write_bytes(item_path(run_dir, item), buf.getvalue())


def read_item(run_dir: str | os.PathLike, item: Item, num_candidates: int) -> np.ndarray | None:
    """The stored values of ``item``, or ``None`` if absent or unreadable/malformed."""
    path = item_path(run_dir, item)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if arr.shape != (item.c1 - item.c0, num_candidates) or arr.dtype != np.float64 or not np.all(np.isfinite(arr)):
        return None
    return arr


def done_items(run_dir: str | os.PathLike, items: Sequence[Item], num_candidates: Sequence[int]) -> set[Item]:
    """The items of ``items`` that have a valid file in the run folder."""
    folder = os.path.join(os.fspath(run_dir), "items")
    try:
        present = set(os.listdir(folder))
    except FileNotFoundError:
        return set()
    return {
        it for it in items if it.filename in present and read_item(run_dir, it, num_candidates[it.layer]) is not None
    }


def _layers_from_manifest(man: dict) -> list[LayerInfo]:
    return [
        LayerInfo(
            d["name"], int(d["height"]), int(d["width"]), int(d["channels"]), np.asarray(d["candidates"], np.int32)
        )
        for d in man["layers"]
    ]


def merge_runs(
    run_dirs: Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    meta: dict | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-9,
) -> DistortionTable:
    """Merges the item files of one or more run folders into a :class:`DistortionTable`.

    Args:
      run_dirs: one folder, or the folders of the hosts of a sharded run.
      meta: extra metadata for the table (merged over the manifest's ``meta``).
      rtol, atol: tolerance for items present in several folders.

    Returns:
      The complete table, layers in execution order.

    Raises:
      RunError: if the folders profiled different problems, if items are missing (with a count
        and the first missing ones), or if an item computed twice disagrees.

    Example::

      >>> table = merge_runs(["host0/", "host1/"])      # doctest: +SKIP
      >>> table.save("resnet18.distortion.npz")          # doctest: +SKIP
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = [os.fspath(d) for d in run_dirs]
    if not run_dirs:
        raise RunError("no run folders to merge")
    manifests = [read_manifest(d) for d in run_dirs]
    first = manifests[0]
    for d, m in zip(run_dirs[1:], manifests[1:]):
        if m["fingerprint"] != first["fingerprint"] or m["layers"] != first["layers"] or m["items"] != first["items"]:
            raise RunError(f"{d} and {run_dirs[0]} profiled different problems (fingerprints or work lists differ)")
    layers = _layers_from_manifest(first)
    ncand = [len(layer.candidates) for layer in layers]
    items = [Item(*map(int, t)) for t in first["items"]]
    tables = [np.full((layer.channels, len(layer.candidates)), np.nan) for layer in layers]
    missing = []
    for it in items:
        found = None
        where = None
        for d in run_dirs:
            arr = read_item(d, it, ncand[it.layer])
            if arr is None:
                continue
            if found is None:
                found, where = arr, d
            elif not np.allclose(arr, found, rtol=rtol, atol=atol):
                raise RunError(
                    f"item {it.filename} (layer {layers[it.layer].name!r}, channels {it.c0}-{it.c1}) differs between "
                    f"{where} and {d} (max abs diff {np.max(np.abs(arr - found)):.3g})"
                )
        if found is None:
            missing.append(it)
        else:
            tables[it.layer][it.c0 : it.c1] = found
    if missing:
        names = ", ".join(f"{layers[m.layer].name}[{m.c0}:{m.c1}]" for m in missing[:5])
        raise RunError(
            f"incomplete run: {len(missing)} of {len(items)} items missing (e.g. {names}); run the missing shards "
            "(or resume) with the same folder"
        )
    out_meta = dict(first.get("meta", {}))
    out_meta["fingerprint"] = first["fingerprint"]
    if meta:
        out_meta.update(meta)
    try:
        return DistortionTable(
            tuple(
                LayerDistortion.create(layer.name, layer.height, layer.width, layer.candidates, t)
                for layer, t in zip(layers, tables)
            ),
            out_meta,
        )
    except TableError as e:
        raise RunError(f"cannot build a table from {run_dirs[0]}: {e}") from e


def run_progress(run_dir: str | os.PathLike) -> tuple[int, int]:
    """``(finished items, total items)`` of a run folder."""
    man = read_manifest(run_dir)
    layers = _layers_from_manifest(man)
    items = [Item(*map(int, t)) for t in man["items"]]
    done = done_items(run_dir, items, [len(layer.candidates) for layer in layers])
    return len(done), len(items)
