"""Import (and export) of PyTorch/torchvision-layout weights for jaxmpc's ResNets and MobileNetV2.

Users can start from published checkpoints instead of training from scratch. The importer takes
a state dict as a mapping from names to numpy arrays (no torch needed), or a ``.pt``/``.pth``
file when torch is installed, and returns Flax variables for a :mod:`jaxmpc.nn` model:

* conv weights ``[O, I, kh, kw]`` (OIHW) -> Flax kernels ``[kh, kw, I, O]`` (HWIO; depthwise
  ``[C, 1, 3, 3]`` -> ``[3, 3, 1, C]``);
* linear weights ``[out, in]`` -> Flax kernels ``[in, out]``; biases unchanged;
* BatchNorm ``weight``, ``bias``, ``running_mean``, ``running_var`` -> ``params`` ``scale``,
  ``bias`` and ``batch_stats`` ``mean``, ``var`` (``num_batches_tracked`` is ignored).

Key names are torchvision's:

* ResNet (``torchvision.models.resnet*``, and the CIFAR variant with a 3x3 ``conv1``):
  ``conv1``, ``bn1``, ``layer{S}.{B}.conv{k}``, ``layer{S}.{B}.bn{k}``,
  ``layer{S}.{B}.downsample.{0,1}``, ``fc``; a deep stem (ResNetV1c) is ``stem.{0,1,3,4,6,7}``
  as in mmcls/mmseg.
* MobileNetV2 (``torchvision.models.mobilenet_v2``): ``features.0.{0,1}`` (stem),
  ``features.{k}.conv.*`` (inverted residuals), ``features.{n+1}.{0,1}`` (last 1x1 conv),
  ``classifier.1`` (linear).

Checkpoints in another layout can be renamed with ``prefix_map`` (e.g. :data:`MMCLS_PREFIXES`
for mmcls ResNets: ``backbone.`` -> ``""``, ``head.fc.`` -> ``fc.``).

Exactness notes: torchvision's ResNets use a stem MaxPool, so import them into
``ResNet50(stem_pool="max")`` (or the matching ``ResNet`` with ``stem="imagenet"``) to compute
the same function; the paper's AvgPool models need finetuning after the swap (paper §5,
``paper_reference.md`` §0). torchvision's MobileNetV2 uses ReLU6 where jaxmpc (like the paper)
uses ReLU, so imported MobileNetV2 weights compute a slightly different function until
finetuned.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc.nn import BLOCK_SIZES_COLLECTION, MobileNetV2, ResNet
from jaxmpc.train._steps import init_variables

__all__ = [
    "MMCLS_PREFIXES",
    "WeightImportError",
    "export_torch_state_dict",
    "import_torch_state_dict",
    "load_torch_state_dict",
    "torch_key_map",
]

#: ``prefix_map`` for mmcls classification checkpoints of ResNets.
MMCLS_PREFIXES = {"backbone.": "", "head.fc.": "fc."}

_BN_LEAVES = {
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


class WeightImportError(ValueError):
    """A state dict does not fit the model; the message lists every missing, unexpected and mis-shaped key."""


# --------------------------------------------------------------------------------------------
# Key mapping


def _module_prefix_resnet(mods: tuple[str, ...]) -> str:
    head = mods[0]
    if head == "stem":
        return {"conv": "conv1", "bn": "bn1"}[mods[1]]
    m = re.fullmatch(r"stem(\d)", head)
    if m:
        k = int(m.group(1)) - 1
        return f"stem.{3 * k + (0 if mods[1] == 'conv' else 1)}"
    m = re.fullmatch(r"layer(\d+)_(\d+)", head)
    if m:
        base = f"layer{m.group(1)}.{m.group(2)}"
        sub = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(mods[1], mods[1])
        return f"{base}.{sub}"
    if head == "fc":
        return "fc"
    raise KeyError(head)


def _module_prefix_mobilenet(mods: tuple[str, ...], index: Mapping[str, int], expands: set[str], last: int) -> str:
    head = mods[0]
    if head == "conv1":
        return f"features.0.{0 if mods[1] == 'conv' else 1}"
    if head == "conv2":
        return f"features.{last}.{0 if mods[1] == 'conv' else 1}"
    if head == "fc":
        return "classifier.1"
    if head in index:
        k = index[head]
        has_expand = head in expands
        sub = mods[1]
        if sub in ("expand", "depthwise"):
            pos = (0 if sub == "expand" else 1) if has_expand else 0
            return f"features.{k}.conv.{pos}.{0 if mods[2] == 'conv' else 1}"
        pos = 2 if has_expand else 1
        return f"features.{k}.conv.{pos + (0 if sub == 'project_conv' else 1)}"
    raise KeyError(head)


def _leaf_name(collection: str, mods: tuple[str, ...], leaf: str, kind: str) -> str:
    if kind == "bn":
        return _BN_LEAVES[(collection, leaf)]
    return {"kernel": "weight", "bias": "bias"}[leaf]


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in path)


def _family(model: nn.Module) -> str:
    if isinstance(model, ResNet):
        return "resnet"
    if isinstance(model, MobileNetV2):
        return "mobilenetv2"
    raise NotImplementedError(
        f"torch weight import supports jaxmpc.nn ResNet (ResNet18/50, ResNetSmall, ...) and MobileNetV2 models, "
        f"not {type(model).__name__}"
    )


def _abstract_variables(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def torch_key_map(model: nn.Module, abstract: Mapping[str, Any]) -> dict[tuple[str, tuple[str, ...]], tuple[str, str]]:
    """Maps each ``(collection, flax path)`` leaf to ``(torch key, kind)``, kind in ``conv``, ``dense``, ``bn``, ``bias``.

    Args:
      model: a jaxmpc ResNet or MobileNetV2.
      abstract: its variables (or their shapes, from ``jax.eval_shape``).

    Raises:
      NotImplementedError: for other model families.
    """
    family = _family(model)
    params = abstract["params"]
    if family == "mobilenetv2":
        blocks = sorted(
            (k for k in params if re.fullmatch(r"layer\d+_\d+", k)),
            key=lambda k: tuple(int(v) for v in k[5:].split("_")),
        )
        index = {k: i + 1 for i, k in enumerate(blocks)}
        expands = {k for k in blocks if "expand" in params[k]}
        last = len(blocks) + 1
    out: dict[tuple[str, tuple[str, ...]], tuple[str, str]] = {}
    for coll in ("params", "batch_stats"):
        if coll not in abstract:
            continue
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract[coll])[0]:
            names = _path_names(path)
            mods, name = names[:-1], names[-1]
            if family == "resnet":
                prefix = _module_prefix_resnet(mods)
            else:
                prefix = _module_prefix_mobilenet(mods, index, expands, last)
            last_mod = mods[-1]
            if (
                coll == "batch_stats"
                or last_mod in ("bn",)
                or last_mod.endswith("_bn")
                or re.fullmatch(r"bn\d", last_mod)
            ):
                kind = "bn"
            elif name == "bias":
                kind = "bias"
            else:
                kind = "conv" if len(leaf.shape) == 4 else "dense"
            out[(coll, names)] = (f"{prefix}.{_leaf_name(coll, mods, name, kind)}", kind)
    return out


def _torch_shape(flax_shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    if kind == "conv":
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if kind == "dense":
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def _to_flax(arr: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return np.transpose(arr, (2, 3, 1, 0))
    if kind == "dense":
        return arr.T
    return arr


def _to_torch(arr: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return np.transpose(arr, (3, 2, 0, 1))
    if kind == "dense":
        return arr.T
    return arr


# --------------------------------------------------------------------------------------------
# State dicts


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _rename(keys: Sequence[str], prefix_map: Mapping[str, str] | None) -> dict[str, str]:
    """new name -> original name. Without ``prefix_map``, strips ``module.`` if every key has it."""
    if prefix_map is None:
        prefix_map = {"module.": ""} if keys and all(k.startswith("module.") for k in keys) else {}
    out: dict[str, str] = {}
    for k in keys:
        new = k
        for old, rep in prefix_map.items():
            if new.startswith(old):
                new = rep + new[len(old) :]
                break
        if new in out:
            raise WeightImportError(f"keys {out[new]!r} and {k!r} both map to {new!r} under prefix_map")
        out[new] = k
    return out


def _listing(title: str, items: Sequence[str], limit: int = 20) -> str:
    shown = "\n".join(f"    {s}" for s in items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n{shown}{more}"


def _infer_in_channels(names: Mapping[str, str], state_dict: Mapping[str, Any]) -> int:
    for key in ("conv1.weight", "features.0.0.weight", "stem.0.weight"):
        if key in names:
            shape = np.shape(state_dict[names[key]])
            if len(shape) == 4:
                return int(shape[1])
    return 3


def import_torch_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    *,
    variables: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    skip: Sequence[str] = (),
    allow_unexpected: bool = False,
    prefix_map: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Flax variables for ``model`` from a PyTorch/torchvision-layout state dict.

    Args:
      model: a jaxmpc ResNet (any preset, CIFAR or ImageNet stem, deep stem) or MobileNetV2.
      state_dict: ``{name: array}`` (numpy arrays, or torch tensors), or a path to a
        ``.pt``/``.pth`` file (needs torch; see :func:`load_torch_state_dict`).
      variables: existing variables of the model; their values are kept for skipped keys and
        their ``"block_sizes"`` (spec) are kept. Default: the model's initialisation (seed 0) for
        skipped keys and an all-ReLU spec.
      input_shape: ``(H, W, C)`` to trace the model with (default: 32x32 with the channel count
        of the first conv in the state dict). Parameter shapes do not depend on ``H, W``.
      skip: torch key prefixes to leave out (e.g. ``("fc.",)`` to keep a freshly initialised
        classifier with another class count); such keys are neither required nor unexpected.
      allow_unexpected: ignore state-dict keys the model has no use for.
      prefix_map: rename key prefixes first (e.g. :data:`MMCLS_PREFIXES`); by default a
        ``module.`` prefix (DataParallel) present on every key is stripped.

    Returns:
      ``{"params", "batch_stats", "block_sizes"}`` (float32 jax arrays; int32 sizes).

    Raises:
      WeightImportError: listing every missing key, unexpected key and shape mismatch (with the
        expected torch-layout shape).
      NotImplementedError: for a model family other than ResNet and MobileNetV2.

    Example::

      >>> sd = torchvision.models.resnet18().state_dict()                   # doctest: +SKIP
      >>> variables = import_torch_state_dict(                              # doctest: +SKIP
      ...     ResNet(stage_sizes=(2, 2, 2, 2), stem_pool="max"), sd)
    """
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = load_torch_state_dict(state_dict)
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict must be a mapping of names to arrays or a file path, got {type(state_dict).__name__}"
        )
    names = _rename(list(state_dict), prefix_map)
    if input_shape is None:
        input_shape = (32, 32, _infer_in_channels(names, state_dict))
    abstract = _abstract_variables(model, input_shape)
    key_map = torch_key_map(model, abstract)
    skip = tuple(skip)

    def skipped(key: str) -> bool:
        return any(key.startswith(p) for p in skip)

    needed = {tk: (coll_path, kind) for coll_path, (tk, kind) in key_map.items() if not skipped(tk)}
    missing = sorted(k for k in needed if k not in names)
    unexpected = sorted(
        names[k] for k in names if k not in needed and not skipped(k) and not k.endswith("num_batches_tracked")
    )
    if allow_unexpected:
        unexpected = []
    mismatched = []
    for tk, ((coll, path), kind) in needed.items():
        if tk in names:
            got = tuple(np.shape(state_dict[names[tk]]))
            leaf = abstract[coll]
            for p in path:
                leaf = leaf[p]
            want = _torch_shape(tuple(leaf.shape), kind)
            if got != want:
                mismatched.append(f"{names[tk]}: got {got}, model expects {want}")
    if missing or unexpected or mismatched:
        parts = [f"state dict does not fit {type(model).__name__}:"]
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if mismatched:
            parts.append(_listing("shape mismatches", mismatched))
        parts.append(
            "  (use skip=(prefix, ...) to keep the model's own values for some keys, allow_unexpected=True to "
            "ignore extra keys, prefix_map to rename prefixes)"
        )
        raise WeightImportError("\n".join(parts))

    if variables is None and skip:
        variables = init_variables(model, input_shape, 0)
    out: dict[str, Any] = {}
    for coll in ("params", "batch_stats"):
        if coll not in abstract:
            continue

        def fill(path, leaf, coll=coll):
            names_ = _path_names(path)
            tk, kind = key_map[(coll, names_)]
            if skipped(tk):
                base = variables[coll]
                for p in names_:
                    base = base[p]
                return jnp.asarray(base, jnp.float32)
            arr = _as_numpy(state_dict[names[tk]]).astype(np.float32)
            return jnp.asarray(_to_flax(arr, kind))

        out[coll] = jax.tree_util.tree_map_with_path(fill, abstract[coll])
    if variables is not None and BLOCK_SIZES_COLLECTION in variables:
        out[BLOCK_SIZES_COLLECTION] = variables[BLOCK_SIZES_COLLECTION]
    else:
        out[BLOCK_SIZES_COLLECTION] = jax.tree.map(
            lambda s: jnp.ones(s.shape, jnp.int32), abstract[BLOCK_SIZES_COLLECTION]
        )
    return out


def export_torch_state_dict(
    model: nn.Module,
    variables: Mapping[str, Any],
    *,
    input_shape: Sequence[int] | None = None,
    num_batches_tracked: bool = True,
) -> dict[str, np.ndarray]:
    """The inverse of :func:`import_torch_state_dict`: torchvision-layout numpy arrays.

    Args:
      model: the jaxmpc model.
      variables: its variables (``params`` and ``batch_stats``).
      input_shape: ``(H, W, C)`` to trace the model with (default: 32x32, channels of the
        first kernel).
      num_batches_tracked: add a ``num_batches_tracked`` (int64 0) per BatchNorm, so the result
        loads into a torch module with ``strict=True``.

    Returns:
      ``{torch key: array}`` in the model's order.
    """
    if input_shape is None:  # the input channels are those of the first conv (stem / stem1 / conv1)
        params = variables["params"]
        c = 3
        for name in ("stem", "stem1", "conv1"):
            if name in params and "conv" in params[name]:
                c = int(np.shape(params[name]["conv"]["kernel"])[2])
                break
        input_shape = (32, 32, c)
    abstract = _abstract_variables(model, input_shape)
    key_map = torch_key_map(model, abstract)
    out: dict[str, np.ndarray] = {}
    for (coll, path), (tk, kind) in key_map.items():
        leaf = variables[coll]
        for p in path:
            leaf = leaf[p]
        out[tk] = np.array(_to_torch(np.asarray(leaf, np.float32), kind), order="C")  # a writable copy
        if num_batches_tracked and tk.endswith(".running_var"):
            out[tk[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch checkpoint file into ``{name: numpy array}`` (needs ``torch``).

    Accepts a bare state dict or a checkpoint dict holding one under ``"state_dict"`` (mmcv) or
    ``"model"``. Loads with ``weights_only=True`` (no arbitrary code from the file).

    Raises:
      ImportError: if torch is not installed.
      ValueError: if the file holds no state dict.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "reading .pt/.pth files needs PyTorch (pip install torch); or convert the state dict to "
            "{name: numpy array} yourself and pass that"
        ) from e
    obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(hasattr(v, "shape") for v in obj.values()):
        raise ValueError(f"{path}: no state dict (a mapping of names to tensors) found")
    return {k: _as_numpy(v) for k, v in obj.items()}
