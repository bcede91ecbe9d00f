"""Block-size specs: the file format, and helpers that tie specs to models.

A *spec* maps a ReLU layer's name to an int32 ``[C, 2]`` array of per-channel patch sizes (the
encoding of :mod:`jaxmpc.core.blocks`). It is what the knapsack planner produces, what finetuning
and plaintext evaluation load into a model, and what secure inference runs (Gorski & Avidan,
arXiv 2304.10442, §3-§4; ``paper_reference.md`` §4.3). The layer names are the ``"/"``-joined
module paths of the model's :class:`~jaxmpc.nn.BlockReLU` layers, i.e. the key paths of the
``"sizes"`` leaves of ``variables["block_sizes"]`` without the trailing ``"sizes"``.

**Completeness rule.** In memory (:func:`check_spec`, :func:`apply_spec`,
:func:`count_drelus`), a layer that a spec does not mention is an ordinary ReLU (all ``(1, 1)``):
the exact, most expensive choice, never a silently cheaper or less accurate one (``{}`` is the
all-ReLU model); pass ``strict=True`` to require every layer instead. A spec *file* checked
against a model (:func:`load_spec` with ``variables`` or ``model``) must name every ReLU layer
of the model: a missing layer is refused unless the caller passes ``strict=False``. Unknown
layers, wrong channel counts and invalid sizes are always errors.

**Patch sizes larger than the map are refused** wherever the layers' map sizes are known
(a check against :func:`relu_layers`, i.e. :func:`count_drelus`, and :func:`load_spec` with a
``model`` and an input shape): ``bh > H`` or ``bw > W`` is a :class:`SpecError` naming the layer,
the channel and the map, not clamped. (Such a patch would act as ``min(bh, H) x min(bw, W)``; a
spec that holds one was made for another input size or is corrupt.) A check against
``variables`` alone knows the channel counts but not the map sizes.

**File format** (version 1), UTF-8 JSON, one layer per line so that files diff well::

    {
      "format": "jaxmpc-block-spec",
      "version": 1,
      "meta": {"model": "ResNet18", "input_shape": [32, 32, 3], "budget": 33423},
      "layers": {
        "stem/relu": [[1, 1], [2, 2], [0, 1], ...],
        "layer1_0/relu1": [[1, 1], ...]
      }
    }

``format`` and ``version`` are required; ``meta`` is an optional object of JSON values (by
convention ``model``, ``input_shape`` as ``[H, W, C]``, ``budget``, ``drelus``); ``layers``
maps each layer name to a list of ``C`` pairs ``[bh, bw]`` in channel order. Files are written
atomically (a temporary file in the same folder, then ``os.replace``). Pickle is never used.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc.core import blocks
from jaxmpc._io import atomic_write_text, dumps_json
from jaxmpc.nn.block_relu import BLOCK_SIZES_COLLECTION, BlockReLU

__all__ = [
    "SPEC_FORMAT",
    "SPEC_VERSION",
    "DReluCount",
    "SpecError",
    "apply_spec",
    "candidate_table",
    "check_spec",
    "count_drelus",
    "load_spec",
    "relu_layers",
    "save_spec",
    "spec_from_variables",
]

SPEC_FORMAT = "jaxmpc-block-spec"
SPEC_VERSION = 1

Spec = dict[str, np.ndarray]


class SpecError(ValueError):
    """A block spec (or spec file) is malformed or does not fit the model."""


class DReluCount(NamedTuple):
    """DReLUs of one image: the total and the count of each ReLU layer (in model order)."""

    total: int
    per_layer: dict[str, int]


# --------------------------------------------------------------------------------------------
# Model introspection


def _input_struct(input_shape: Sequence[int]) -> jax.ShapeDtypeStruct:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) or (N, H, W, C) with positive sizes, got {tuple(input_shape)}")
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def relu_layers(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, tuple[int, int, int]]]:
    """The model's BlockReLU layers in execution order, with their per-image ``(H, W, C)``.

    Runs ``model.init`` under :func:`jax.eval_shape` (tracing only, no FLOPs), so it is
    instant for paper-size models and any input size, square or not.

    Args:
      model: a Flax module called as ``model(x, train=False)`` (or ``model(x)``).
      input_shape: ``(H, W, C)`` of one image, or ``(N, H, W, C)``.

    Returns:
      ``[(layer name, (H, W, C)), ...]``.

    Raises:
      ValueError: on a bad ``input_shape``, or if one BlockReLU is called more than once (its
        one spec entry would then stand for several activations).

    Example::

      >>> from jaxmpc.nn import ResNet18
      >>> relu_layers(ResNet18(), (32, 32, 3))[:2]
      [('stem/relu', (32, 32, 64)), ('layer1_0/relu1', (32, 32, 64))]
    """
    x = _input_struct(input_shape)
    calls: list[tuple[str, tuple[int, int, int]]] = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, BlockReLU) and context.method_name == "__call__":
            shape = tuple(int(d) for d in args[0].shape[-3:])
            calls.append(("/".join(context.module.path), shape))
        return next_fun(*args, **kwargs)

    def init(x):
        with nn.intercept_methods(record):
            return model.init(jax.random.key(0), x)

    jax.eval_shape(init, x)
    seen: set[str] = set()
    for name, _ in calls:
        if name in seen:
            raise ValueError(f"BlockReLU {name!r} is called more than once; give every ReLU its own BlockReLU")
        seen.add(name)
    return calls


def _sizes_leaves(variables: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``[(layer name, sizes leaf)]`` of ``variables["block_sizes"]``, in the mappings' own order.

    The order is the model's for variables straight from ``model.init``; containers that went
    through ``jax.jit`` come back with sorted keys (use :func:`relu_layers` for model order).
    """
    if not isinstance(variables, Mapping) or not isinstance(variables.get(BLOCK_SIZES_COLLECTION), Mapping):
        raise SpecError(
            f"variables have no {BLOCK_SIZES_COLLECTION!r} collection; use the full variables returned by model.init"
        )
    out: list[tuple[str, Any]] = []

    def walk(node: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, prefix + (str(key),))
            elif key == "sizes" and prefix:
                out.append(("/".join(prefix), value))
            else:
                raise SpecError(
                    f"unexpected leaf {'/'.join(prefix + (str(key),))!r} in variables[{BLOCK_SIZES_COLLECTION!r}]"
                )

    walk(variables[BLOCK_SIZES_COLLECTION], ())
    return out


def _layer_channels(variables: Mapping[str, Any]) -> dict[str, int]:
    """``{layer name: C}`` from the shapes of ``variables["block_sizes"]`` (arrays or shape structs)."""
    out = {}
    for name, leaf in _sizes_leaves(variables):
        shape = tuple(np.shape(leaf))
        if len(shape) != 2 or shape[1] != 2:
            raise SpecError(f"layer {name!r}: block sizes have shape {shape}, expected [C, 2]")
        out[name] = int(shape[0])
    return out


def _is_variables(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get(BLOCK_SIZES_COLLECTION, None), Mapping)


# --------------------------------------------------------------------------------------------
# Validation


def _maps_of(reference: Any) -> dict[str, tuple[int, int]] | None:
    """``{layer name: (H, W)}`` when ``reference`` is a :func:`relu_layers` list, else ``None``."""
    if isinstance(reference, Mapping):
        return None
    out = {}
    for name, shape in reference:
        if len(shape) != 3:
            return None
        out[name] = (int(shape[0]), int(shape[1]))
    return out


def _check_fits_map(sizes: np.ndarray, hw: tuple[int, int], where: str) -> None:
    h, w = hw
    too_big = blocks.is_patch(sizes) & ((sizes[:, 0] > h) | (sizes[:, 1] > w))
    if np.any(too_big):
        c = int(np.flatnonzero(too_big)[0])
        bh, bw = (int(v) for v in sizes[c])
        raise SpecError(
            f"{where}: channel {c} has patch size ({bh}, {bw}), larger than the layer's {h}x{w} activation map "
            f"({int(np.sum(too_big))} such channels); a patch can be at most ({h}, {w}) (was the spec made for "
            "another input size?)"
        )


def _channels_of(reference: Any) -> dict[str, int]:
    """Accepts ``variables``, a ``relu_layers`` list or a ``{name: C}`` mapping."""
    if isinstance(reference, Mapping):
        if BLOCK_SIZES_COLLECTION in reference or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in reference.values()
        ):
            return _layer_channels(reference)
        return {str(k): int(v) for k, v in reference.items()}
    return {name: int(shape[-1]) for name, shape in reference}


def check_spec(spec: Mapping[str, Any], reference: Any, *, strict: bool = False, source: str = "spec") -> Spec:
    """Validates a spec against a model's layers and returns it complete, in the reference's order.

    Args:
      spec: ``{layer name: [C, 2] sizes}``.
      reference: the model's layers: full ``variables`` (with ``"block_sizes"``), the list from
        :func:`relu_layers` (then patch sizes must also fit each layer's map), or
        ``{layer name: channels}``.
      strict: require every layer; otherwise missing layers become all ``(1, 1)`` (ReLU).
      source: how errors refer to the spec (e.g. a file name).

    Returns:
      ``{layer name: int32 [C, 2]}`` with every layer of ``reference``, in its order.

    Raises:
      SpecError: naming the layer, for an unknown layer (with close matches), a missing layer
        under ``strict``, a wrong channel count or shape, an invalid patch size, or (against a
        :func:`relu_layers` list) a patch larger than the layer's map.
    """
    if not isinstance(spec, Mapping):
        raise SpecError(f"{source}: expected a mapping from layer name to [C, 2] sizes, got {type(spec).__name__}")
    channels = _channels_of(reference)
    maps = _maps_of(reference)
    unknown = [k for k in spec if k not in channels]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(str(name), list(channels), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise SpecError(
            f"{source}: unknown layer {name!r} ({len(unknown)} unknown in total){hint} "
            f"The model has {len(channels)} ReLU layers."
        )
    out: Spec = {}
    for name, c in channels.items():
        if name not in spec:
            out[name] = np.ones((c, 2), np.int32)
            continue
        try:
            out[name] = blocks.validate_block_sizes(np.asarray(spec[name]), c, name=f"{source}: layer {name!r}")
        except (TypeError, ValueError) as e:
            raise SpecError(str(e)) from e
        if maps is not None:
            _check_fits_map(out[name], maps[name], f"{source}: layer {name!r}")
    missing = [k for k in channels if k not in spec]
    if strict and missing:
        raise SpecError(f"{source}: missing layer {missing[0]!r} ({len(missing)} missing in total; strict=True)")
    return out


# --------------------------------------------------------------------------------------------
# Variables <-> specs


def spec_from_variables(variables: Mapping[str, Any]) -> Spec:
    """The spec held in ``variables["block_sizes"]``: ``{layer name: int32 [C, 2]}``.

    Layers come in the order of the variables' mappings: the model's order for the output of
    an eager ``model.init``, sorted for variables returned from a jitted function.

    Raises:
      SpecError: if the collection is missing or malformed, or holds invalid sizes.
    """
    out: Spec = {}
    channels = _layer_channels(variables)
    for name, leaf in _sizes_leaves(variables):
        try:
            out[name] = blocks.validate_block_sizes(np.asarray(leaf), channels[name], name=f"variables: layer {name!r}")
        except (TypeError, ValueError) as e:
            raise SpecError(str(e)) from e
    return out


def apply_spec(variables: Mapping[str, Any], spec: Mapping[str, Any], *, strict: bool = False):
    """Returns new variables whose ``"block_sizes"`` collection holds ``spec``.

    The other collections are shared, not copied; the input is not modified. Layers the spec
    does not mention become ReLUs (all ``(1, 1)``) unless ``strict``. The model itself is not
    touched: ``model.apply(apply_spec(variables, spec), x)`` runs it with that spec.

    Args:
      variables: the full variables of a model (``model.init`` output; dict or FrozenDict).
      spec: ``{layer name: [C, 2] sizes}``.
      strict: require every layer.

    Returns:
      Variables of the same mapping type with ``"block_sizes"`` replaced (int32 arrays).

    Raises:
      SpecError: see :func:`check_spec`.
    """
    full = check_spec(spec, _layer_channels(variables), strict=strict)

    def leaf(path, old):
        name = "/".join(str(getattr(k, "key", k)) for k in path[:-1])
        return jnp.asarray(full[name], jnp.int32)

    new_sizes = jax.tree_util.tree_map_with_path(leaf, variables[BLOCK_SIZES_COLLECTION])
    out = {k: v for k, v in variables.items()}
    out[BLOCK_SIZES_COLLECTION] = new_sizes
    if not isinstance(variables, dict):
        try:
            return type(variables)(out)
        except TypeError:
            return out
    return out


# --------------------------------------------------------------------------------------------
# Counting


def count_drelus(
    model: nn.Module, variables_or_spec: Mapping[str, Any] | None, input_shape: Sequence[int]
) -> DReluCount:
    """DReLUs of one image of shape ``input_shape`` (paper §3; ``paper_reference.md`` §7).

    Each layer's count is :func:`jaxmpc.core.blocks.drelu_count` at that layer's real ``H x W``
    (non-square maps included). Only Block ReLU layers are counted; a MaxPool's comparisons are
    not (jaxmpc's paper models use AvgPool).

    Args:
      model: the Flax module.
      variables_or_spec: full variables (their ``"block_sizes"`` are used), a spec (missing
        layers are ReLUs), or ``None`` for the all-ReLU baseline.
      input_shape: ``(H, W, C)`` or ``(N, H, W, C)``; counts are per image.

    Returns:
      ``DReluCount(total, per_layer)``.

    Example::

      >>> from jaxmpc.nn import ResNet18
      >>> count_drelus(ResNet18(), None, (32, 32, 3)).total
      557056
    """
    layers = relu_layers(model, input_shape)
    if variables_or_spec is None:
        spec: Mapping[str, Any] = {}
    elif _is_variables(variables_or_spec):
        spec = spec_from_variables(variables_or_spec)
    else:
        spec = variables_or_spec
    full = check_spec(spec, layers)
    per_layer = {name: blocks.drelu_count(h, w, full[name]) for name, (h, w, _) in layers}
    return DReluCount(int(sum(per_layer.values())), per_layer)


def candidate_table(model: nn.Module, input_shape: Sequence[int]) -> dict[str, np.ndarray]:
    """Default candidate patch sizes per layer, from :func:`jaxmpc.core.blocks.default_candidates`.

    Each layer gets the list for its own ``H x W`` (``paper_reference.md`` §3.3: the list
    follows the activation's spatial size; e.g. the 1x1 image-pool layer of DeepLabV3 gets
    ``[(1, 1), (0, 1), (1, 0)]``).

    Returns:
      ``{layer name: int32 [n, 2]}`` in model order.
    """
    return {name: blocks.default_candidates(h, w) for name, (h, w, _) in relu_layers(model, input_shape)}


# --------------------------------------------------------------------------------------------
# Files


def save_spec(path: str | os.PathLike, spec: Mapping[str, Any], **meta: Any) -> None:
    """Writes a spec file (format version 1, see the module docstring), atomically.

    Args:
      path: destination; its folder must exist.
      spec: ``{layer name: [C, 2] sizes}``; every entry is validated first.
      **meta: JSON-serialisable metadata (numpy scalars and arrays are converted), e.g.
        ``model="ResNet18", input_shape=(32, 32, 3), budget=33423, drelus=33401``.

    Raises:
      SpecError: if a layer's sizes are invalid (nothing is written).
      TypeError: if some metadata cannot be written as JSON.
    """
    if not isinstance(spec, Mapping):
        raise SpecError(f"spec must be a mapping from layer name to [C, 2] sizes, got {type(spec).__name__}")
    layers = {}
    for name, sizes in spec.items():
        if not isinstance(name, str) or not name:
            raise SpecError(f"layer names must be non-empty strings, got {name!r}")
        try:
            layers[name] = blocks.validate_block_sizes(np.asarray(sizes), name=f"layer {name!r}")
        except (TypeError, ValueError) as e:
            raise SpecError(str(e)) from e
    meta_text = dumps_json(meta, indent=None, allow_nan=False)
    lines = ["{", f'  "format": {json.dumps(SPEC_FORMAT)},', f'  "version": {SPEC_VERSION},']
    lines.append(f'  "meta": {meta_text},')
    items = [
        f"    {json.dumps(name)}: {json.dumps(arr.tolist(), separators=(',', ':'))}" for name, arr in layers.items()
    ]
    body = '  "layers": {\n' + ",\n".join(items) + "\n  }" if items else '  "layers": {}'
    lines += [body, "}", ""]
    text = "\n".join(lines)
    atomic_write_text(path, text)


def load_spec(
    path: str | os.PathLike,
    *,
    variables: Mapping[str, Any] | None = None,
    model: nn.Module | None = None,
    input_shape: Sequence[int] | None = None,
    strict: bool | None = None,
    with_meta: bool = False,
):
    """Reads and validates a spec file.

    Without a reference model the file is checked on its own (format, version, one valid
    ``[C, 2]`` array per layer) and returned as written. With ``variables`` (full model
    variables) or ``model`` (plus ``input_shape``, or the file's ``meta.input_shape``) it is
    also checked against the model -- unknown layers, wrong channel counts and missing layers
    are errors, and with a model and an input shape so are patches larger than a layer's map --
    and returned complete, in model order.

    Args:
      path: spec file.
      variables: full variables of the model to check against.
      model: model to check against; with an input shape (``input_shape`` or the file's) it is
        preferred to ``variables``, since it also gives each layer's map size.
      input_shape: ``(H, W, C)`` to trace ``model`` with; defaults to ``meta["input_shape"]``.
      strict: require every layer of the model. ``None`` (default): ``True`` when a model or
        variables are given. ``False`` accepts a partial file (missing layers become ReLUs).
      with_meta: also return the ``meta`` object.

    Returns:
      ``{layer name: int32 [C, 2]}``, or ``(spec, meta)`` with ``with_meta``.

    Raises:
      SpecError: naming the file and the problem (not JSON, wrong format or version, bad layer
        entries, or a mismatch with the model).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise SpecError(f"{path}: not a valid JSON block-spec file ({e})") from e
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not a UTF-8 text file (a pickle?); expected a JSON block spec") from e
    if not isinstance(doc, dict) or doc.get("format") != SPEC_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise SpecError(f"{path}: not a jaxmpc block spec (format {got!r}, expected {SPEC_FORMAT!r})")
    version = doc.get("version")
    if version != SPEC_VERSION or isinstance(version, bool):
        raise SpecError(f"{path}: unsupported spec version {version!r}; this jaxmpc reads version {SPEC_VERSION}")
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise SpecError(f"{path}: 'meta' must be an object, got {type(meta).__name__}")
    layers = doc.get("layers")
    if not isinstance(layers, dict):
        raise SpecError(f"{path}: 'layers' must be an object mapping layer names to [[bh, bw], ...]")
    spec: Spec = {}
    for name, sizes in layers.items():
        where = f"{path}: layer {name!r}"
        if (
            not isinstance(sizes, list)
            or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
                for p in sizes
            )
            or not sizes
        ):
            raise SpecError(f"{where}: expected a non-empty list of [bh, bw] integer pairs")
        try:
            spec[name] = blocks.validate_block_sizes(np.asarray(sizes, np.int64), name=where)
        except (TypeError, ValueError) as e:
            raise SpecError(str(e)) from e
    shape = input_shape if input_shape is not None else meta.get("input_shape")
    if strict is None:
        strict = variables is not None or model is not None
    if model is not None and shape is not None:
        try:
            layers = relu_layers(model, shape)
        except (TypeError, ValueError) as e:
            raise SpecError(f"{path}: cannot trace the model at input shape {shape!r}: {e}") from e
        spec = check_spec(spec, layers, strict=strict, source=path)
        if variables is not None:
            check_spec(spec, variables, strict=strict, source=path)
    elif variables is not None:
        spec = check_spec(spec, variables, strict=strict, source=path)
    elif model is not None:
        raise ValueError(f"{path}: give input_shape to check the spec against a model (the file has none)")
    elif strict:
        raise ValueError("strict=True needs a reference: pass variables or model")
    return (spec, meta) if with_meta else spec
