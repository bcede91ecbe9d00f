"""The distortion profiler: entry point, input validation and the sweep loop.

Gorski & Avidan (arXiv 2304.10442, §3.1; ``paper_reference.md`` §3.1) measure, for every
ReLU layer ``L``, channel ``c`` and candidate patch size ``s``, the distortion

    D(L, c, s) = mean over samples n of mean over output elements of
                 (f_{L,c,s}(x_n) - f(x_n))**2

where ``f`` is the network with every ReLU exact and ``f_{L,c,s}`` the same network with only
channel ``c`` of layer ``L`` replaced by a Block ReLU of patch size ``s``. The reference runs
one partial forward pass per (L, c, s). Here each layer's activations are computed once, and
thousands of (c, s) pairs are evaluated per compiled, vmapped and device-sharded call
(:mod:`jaxmpc.distortion._engine`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc.core import blocks
from jaxmpc.distortion import _engine as eng
from jaxmpc.distortion import _program as pg
from jaxmpc.distortion import _run as rn
from jaxmpc.distortion._table import DistortionTable, LayerDistortion
from jaxmpc.nn.block_relu import BLOCK_SIZES_COLLECTION
from jaxmpc.nn.spec import SpecError, apply_spec

#: Default memory budget per device on CPU.
CPU_MEMORY_LIMIT = 1 * 2**30
#: On CPU, batches are also sized so that one batched activation stays near this size:
#: larger batches fall out of the caches and run slower (see docs/bench_distortion.md).
CPU_TENSOR_TARGET = 4 * 2**20
#: Fraction of an accelerator's memory a batch may use by default.
ACCELERATOR_MEMORY_FRACTION = 0.5
#: Default cap on the candidates per device per call.
MAX_BATCH = 256


@dataclasses.dataclass(frozen=True)
class ItemDone:
    """Passed to ``on_item`` after a work item is finished (and stored, with ``out_dir``).

    Attributes:
      layer: layer name.
      c0, c1: channel range ``[c0, c1)``.
      pairs: (channel, candidate) pairs evaluated (base-equivalent and duplicate candidates
        are not evaluated).
      seconds: wall time of the item.
      values: float64 ``[c1 - c0, n_candidates]``.
    """

    layer: str
    c0: int
    c1: int
    pairs: int
    seconds: float
    values: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class _LayerPlan:
    index: int
    name: str
    cut: pg.Cut
    height: int
    width: int
    channels: int
    candidates: np.ndarray  # int32 [n, 2]
    base: np.ndarray  # int32 [C, 2]
    keys: tuple  # canonical key of each candidate
    reps: tuple[int, ...]  # representative column of each distinct key, in first-appearance order

    def columns(self, c: int) -> list[int]:
        """Representative columns to evaluate for channel ``c`` (those not equivalent to its base)."""
        base = _canonical(self.base[c], self.height, self.width)
        return [r for r in self.reps if self.keys[r] != base]

    def pairs(self, c0: int, c1: int) -> int:
        return sum(len(self.columns(c)) for c in range(c0, c1))

    def fill(self, c: int, rep_values: Mapping[int, float], row: np.ndarray) -> None:
        """Writes channel ``c``'s row from the values of its evaluated representative columns."""
        base = _canonical(self.base[c], self.height, self.width)
        first = {self.keys[r]: r for r in self.reps}
        for k, key in enumerate(self.keys):
            row[k] = 0.0 if key == base else rep_values[first[key]]


@dataclasses.dataclass(frozen=True, eq=False)
class _Problem:
    program: pg.Program
    inputs: tuple
    layers: tuple[_LayerPlan, ...]
    num_samples: int
    input_shape: tuple[int, ...]
    model_name: str
    base_is_relu: bool
    relu_sizes: frozenset  # ids of sizes inputs that are all (1, 1) in the base spec
    variables: Any
    images: Any


def _canonical(size, height: int, width: int) -> tuple[int, int]:
    """Patch sizes with the same effect on an ``height x width`` map get the same key."""
    bh, bw = int(size[0]), int(size[1])
    if bh >= 1 and bw >= 1:
        return (min(bh, height), min(bw, width))
    return (bh, bw)


# --------------------------------------------------------------------------------------------
# Validation


def _model_name(model: Any) -> str:
    if isinstance(model, nn.Module):
        return type(model).__name__
    return getattr(model, "__qualname__", type(model).__name__)


def make_apply_fn(model: Any, apply_kwargs: Mapping[str, Any] | None = None) -> Callable:
    """``(variables, x) -> outputs`` for a Flax module in inference mode, or a given callable.

    A Flax module is called as ``model.apply(variables, x, train=False, **apply_kwargs)`` when
    its ``__call__`` takes a ``train`` argument (BatchNorm with running averages), else as
    ``model.apply(variables, x, **apply_kwargs)``. Any other callable is used as is:
    ``model(variables, x)``.
    """
    kwargs = dict(apply_kwargs or {})
    if isinstance(model, nn.Module):
        try:
            params = inspect.signature(type(model).__call__).parameters
        except (TypeError, ValueError):
            params = {}
        if "train" in params and "train" not in kwargs:
            kwargs["train"] = False

        def apply(variables, x):
            return model.apply(variables, x, **kwargs)

        return apply
    if callable(model):
        if kwargs:
            raise TypeError("apply_kwargs are only used with a Flax module; bind them into your callable instead")
        return model
    raise TypeError(
        f"model must be a flax.linen.Module or a callable (variables, x) -> outputs, got {type(model).__name__}"
    )


def _check_images(images: Any) -> np.ndarray | jax.Array:
    if isinstance(images, jax.Array):
        arr = images
    else:
        try:
            arr = np.asarray(images)
        except Exception as e:
            raise TypeError(f"images must be an array [N, H, W, C], got {type(images).__name__}") from e
    if arr.dtype == bool or not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(
            f"images must be a floating-point array [N, H, W, C] (preprocessed as for the model), got dtype "
            f"{arr.dtype}; convert e.g. uint8 pixels with x.astype(np.float32) / 255 and the model's normalisation"
        )
    if arr.ndim != 4:
        raise ValueError(f"images must have shape [N, H, W, C], got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ValueError("images: the sample set is empty; the distortion is a mean over at least one image")
    if min(arr.shape[1:]) < 1:
        raise ValueError(f"images must have positive H, W and C, got shape {tuple(arr.shape)}")
    finite = bool(jnp.all(jnp.isfinite(arr))) if isinstance(arr, jax.Array) else bool(np.all(np.isfinite(arr)))
    if not finite:
        raise ValueError("images contain NaN or infinite values")
    return arr


def _check_candidates(cands: Any, name: str) -> np.ndarray:
    arr = np.asarray(cands)
    if arr.ndim != 2 or arr.shape[-1:] != (2,) or arr.shape[0] == 0:
        raise ValueError(f"candidates for layer {name!r}: expected a non-empty int array [n, 2], got shape {arr.shape}")
    try:
        return blocks.validate_block_sizes(arr, name=f"candidates for layer {name!r}")
    except TypeError as e:
        raise TypeError(str(e)) from e


def _unknown_layer_error(bad: str, known: Sequence[str], what: str) -> ValueError:
    close = difflib.get_close_matches(bad, list(known), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(
        f"{what}: unknown layer {bad!r}{hint} (the model's profiled Block ReLU layers are: "
        f"{', '.join(list(known)[:8])}{', ...' if len(known) > 8 else ''})"
    )


def build_problem(
    model: Any,
    variables: Any,
    images: Any,
    *,
    candidates: Mapping[str, Any] | Any = None,
    layers: Sequence[str] | None = None,
    base_spec: Mapping[str, Any] | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> _Problem:
    """Validates everything and traces the model; no FLOPs beyond tracing."""
    apply_fn = make_apply_fn(model, apply_kwargs)
    images = _check_images(images)
    if not isinstance(variables, Mapping):
        raise TypeError(
            f"variables must be a mapping of collections (model.init output), got {type(variables).__name__}"
        )
    if not isinstance(variables.get(BLOCK_SIZES_COLLECTION), Mapping):
        raise ValueError(  # noqa: TRY004 - a missing collection is a bad value
            f"variables must be the full model variables with a {BLOCK_SIZES_COLLECTION!r} collection "
            "(the output of model.init), not only params/batch_stats"
        )
    try:
        variables = apply_spec(variables, base_spec or {})
    except SpecError as e:
        raise SpecError(f"base_spec: {e}") from e
    struct = jax.ShapeDtypeStruct(tuple(images.shape), images.dtype)
    try:
        program = pg.trace_program(apply_fn, variables, struct)
    except pg.ProgramError:
        raise
    except Exception as e:
        raise ValueError(
            f"the model cannot be applied to images of shape {tuple(images.shape)} and dtype {images.dtype}: "
            f"{type(e).__name__}: {e}"
        ) from e
    n = int(images.shape[0])
    for o, aval in ((o, program.avals[o] if isinstance(o, int) else None) for o in program.outputs):
        shape = tuple(aval.shape) if aval is not None else ()
        if not shape or shape[0] != n or not jnp.issubdtype(aval.dtype, jnp.floating):
            raise ValueError(
                f"every model output must be a float array with the sample axis first (N = {n}); got an output of "
                f"shape {shape}"
            )
    cut_names = [c.name for c in program.cuts]
    if layers is None:
        selected = list(program.cuts)
    else:
        if isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        if not layers:
            raise ValueError("layers: empty list; pass None to profile every layer")
        for name in layers:
            if name not in cut_names:
                raise _unknown_layer_error(str(name), cut_names, "layers")
        if len(set(layers)) != len(layers):
            raise ValueError("layers: duplicate layer names")
        wanted = set(layers)
        selected = [c for c in program.cuts if c.name in wanted]
    if candidates is None:
        cand_map: dict[str, np.ndarray] = {}
        common = None
    elif isinstance(candidates, Mapping):
        for name in candidates:
            if name not in cut_names:
                raise _unknown_layer_error(str(name), cut_names, "candidates")
        cand_map = {k: _check_candidates(v, k) for k, v in candidates.items()}
        common = None
    else:
        common = _check_candidates(candidates, "<all layers>")
        cand_map = {}
    base_sizes = {name: np.asarray(v) for name, v in _base_sizes(variables).items()}
    plans = []
    for li, cut in enumerate(selected):
        _, h, w, c = cut.shape
        if cut.name in cand_map:
            cands = cand_map[cut.name]
        elif common is not None:
            cands = common
        else:
            cands = blocks.default_candidates(h, w)
        keys = tuple(_canonical(s, h, w) for s in cands)
        reps: dict[tuple, int] = {}
        for k, key in enumerate(keys):
            reps.setdefault(key, k)
        plans.append(_LayerPlan(li, cut.name, cut, h, w, c, cands, base_sizes[cut.name], keys, tuple(reps.values())))
    leaves = jax.tree_util.tree_leaves(variables)
    base_is_relu = all(np.all(b == 1) for b in base_sizes.values())
    relu_sizes = frozenset(c.sizes for c in program.cuts if np.all(base_sizes[c.name] == 1))
    return _Problem(
        program=program,
        inputs=tuple(leaves) + (images,),
        layers=tuple(plans),
        num_samples=n,
        input_shape=tuple(int(d) for d in images.shape[1:]),
        model_name=_model_name(model),
        base_is_relu=base_is_relu,
        relu_sizes=relu_sizes,
        variables=variables,
        images=images,
    )


def _base_sizes(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables[BLOCK_SIZES_COLLECTION])[0]:
        name = pg._path_str(path)
        out[name.removesuffix("/sizes")] = np.asarray(leaf)
    return out


def fingerprint(problem: _Problem, pairs_per_item: int) -> str:
    """A digest of everything the table depends on: architecture, weights, images, layers, candidates."""
    h = hashlib.sha256()
    prog = problem.program
    idx = range(len(prog.instrs))
    # The structural signature, with object addresses (e.g. of custom_jvp rules) masked.
    names: dict[int, int] = {i: k for k, i in enumerate(prog.inputs)}
    for k in idx:
        ins = prog.instrs[k]
        prim = "block_relu" if ins.is_block_relu else ins.prim.name
        params = "" if ins.is_block_relu else re.sub(r"0x[0-9a-fA-F]+", "0x", eng._params_repr(ins.params))
        args = []
        for a in ins.ins:
            if isinstance(a, pg.Lit):
                args.append("lit" + eng._value_digest(a.value))
            elif a in prog.consts:
                args.append("const" + eng._value_digest(prog.consts[a]))
            else:
                args.append(str(names.setdefault(a, len(names))))
        for o in ins.outs:
            if o is not None:
                names.setdefault(o, len(names))
        h.update(f"{prim}|{params}|{args}|{[str(a) for a in ins.avals]}\n".encode())
    for path, x in zip(prog.input_paths + ("<images>",), problem.inputs):
        arr = np.asarray(x)
        h.update(f"{path}|{arr.dtype}|{arr.shape}\n".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    for p in problem.layers:
        h.update(f"{p.name}|{p.cut.shape}|{p.candidates.tolist()}\n".encode())
    h.update(f"pairs_per_item={pairs_per_item}".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Devices and batch sizes


def _resolve_devices(devices: Any) -> list:
    if devices is None:
        return jax.local_devices()
    if isinstance(devices, int) and not isinstance(devices, bool):
        local = jax.local_devices()
        if not 1 <= devices <= len(local):
            raise ValueError(f"devices={devices}: this host has {len(local)} local devices")
        return local[:devices]
    devs = list(devices)
    if not devs:
        raise ValueError("devices: empty list")
    return devs


def default_memory_limit(device: Any) -> int:
    """Per-device bytes a candidate batch may use by default (see :data:`CPU_MEMORY_LIMIT`)."""
    if device.platform == "cpu":
        return CPU_MEMORY_LIMIT
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = {}
    limit = stats.get("bytes_limit")
    if not limit:
        return 4 * 2**30
    return int(ACCELERATOR_MEMORY_FRACTION * (limit - stats.get("bytes_in_use", 0)))


def batch_size(
    per_candidate_bytes: int,
    memory_limit: int,
    max_batch: int,
    num_devices: int,
    max_pairs: int,
    tensor_bytes: int | None = None,
) -> int:
    """Candidates per call.

    At most ``memory_limit // per_candidate_bytes`` and ``max_batch`` per device; with
    ``tensor_bytes`` (CPU) also at most ``CPU_TENSOR_TARGET // tensor_bytes``; never more than
    ``max_pairs`` need; at least 1 per device; a multiple of ``num_devices``.
    """
    per_dev = max(1, min(int(max_batch), int(memory_limit // max(1, per_candidate_bytes))))
    if tensor_bytes:
        per_dev = max(1, min(per_dev, int(CPU_TENSOR_TARGET // max(1, tensor_bytes))))
    per_dev = min(per_dev, max(1, math.ceil(max_pairs / num_devices)))
    return per_dev * num_devices


# --------------------------------------------------------------------------------------------
# The profiler


def profile_distortion(
    model: Any,
    variables: Mapping[str, Any],
    images: Any,
    *,
    candidates: Mapping[str, Any] | Any = None,
    layers: Sequence[str] | None = None,
    base_spec: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    shard: str | Sequence[int] | None = None,
    pairs_per_item: int = 2048,
    devices: Any = None,
    memory_limit: int | None = None,
    max_batch: int = MAX_BATCH,
    apply_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_item: Callable[[ItemDone], None] | None = None,
) -> DistortionTable | None:
    """Measures the distortion of every (layer, channel, candidate patch size) (paper §3.1).

    For each selected ReLU layer ``L`` with activation ``[H, W, C]``, each channel ``c`` and each
    candidate ``s``, the distortion is the mean over ``images`` of the mean over all output
    elements of ``(f_{L,c,s}(x) - f(x))**2``, where ``f`` is the network with every Block ReLU
    at its base size (all ReLU by default) and ``f_{L,c,s}`` is ``f`` with only channel ``c`` of
    ``L`` at size ``s``. BatchNorm runs in inference mode. For segmentation models the output is
    whatever the model returns (the 1/8-resolution logits for jaxmpc's DeepLabV3).

    How: the model is traced once; for each layer the activations it needs are computed once
    and cached, and batches of (channel, candidate) pairs are evaluated by one compiled,
    ``vmap``-ed call of the rest of the network, sharded over ``devices``. A candidate with the
    same effect as the channel's base size (e.g. ``(1, 1)`` under an all-ReLU base, or any
    patch covering the whole map when the base is that) is exactly 0 and not evaluated;
    duplicate candidates are evaluated once.

    Args:
      model: a Flax module (called with ``train=False`` if it takes ``train``) or a callable
        ``(variables, x) -> outputs``. Outputs: an array or pytree of arrays, sample axis first.
      variables: the model's full variables, including ``"block_sizes"``.
      images: float array ``[N, H, W, C]``, preprocessed as the model expects; N >= 1.
      candidates: ``None`` (the paper-style defaults of :func:`jaxmpc.core.blocks.default_candidates`
        for each layer's ``H x W``), one int array ``[n, 2]`` for all layers, or a mapping
        ``{layer: [n, 2]}`` (other layers get the defaults).
      layers: names of the layers to profile (default: all, in execution order).
      base_spec: a block spec for the unperturbed network (default: every ReLU exact, as the
        paper). Layers it leaves out are ReLUs.
      out_dir: run folder; makes the run resumable and shardable (see :mod:`._run`). Without
        it the run is in memory.
      shard: ``"i/n"`` or ``(i, n)``: work only on host ``i``'s part of the work list; needs
        ``out_dir``.
      pairs_per_item: (channel, candidate) pairs per work item (unit of storage, resumption
        and host sharding). Part of the problem definition: keep it equal across resumes and
        hosts.
      devices: local devices to shard candidate batches over: ``None`` (all), a count, or a
        list.
      memory_limit: bytes one device may spend on a batch (default: 1 GiB on CPU, half the
        free memory on accelerators). The batch size is derived from a per-candidate estimate;
        on CPU it is further limited so that a batched activation stays near
        :data:`CPU_TENSOR_TARGET` (cache-friendly; measured faster).
      max_batch: cap on candidates per device per call.
      apply_kwargs: extra keyword arguments for ``model.apply``.
      progress: show a tqdm progress bar (candidates/s and time left) on stderr.
      on_item: called with an :class:`ItemDone` after each finished (and stored) work item.

    Returns:
      The :class:`DistortionTable`; with ``shard``, ``None`` while other shards' items are still
      missing from ``out_dir`` (merge later with :func:`merge_runs`).

    Raises:
      TypeError: for non-float images, non-integer candidates, a bad model.
      ValueError: for a bad image shape (for the model), NaN images, an empty sample set,
        unknown layer names, malformed candidate arrays, a bad shard; ``RunError`` (a
        ValueError) for an ``out_dir`` holding another problem; ``SpecError`` for a bad
        ``base_spec``. All raised before any sweep work.

    Example::

      >>> import jax, jax.numpy as jnp
      >>> from jaxmpc.nn import ResNetSmall
      >>> model = ResNetSmall()
      >>> x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
      >>> variables = model.init(jax.random.key(1), x)
      >>> table = profile_distortion(model, variables, x, progress=False)
      >>> table["stem/relu"].distortion.shape  # 8 channels x 42 candidates at 8x8
      (8, 42)
    """
    t_start = time.perf_counter()
    shard_t = rn.parse_shard(shard)
    if shard is not None and out_dir is None:
        raise ValueError("shard needs out_dir: the shards' results are merged from their run folders")
    if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    if memory_limit is not None and (not isinstance(memory_limit, (int, np.integer)) or memory_limit < 1):
        raise ValueError(f"memory_limit must be a positive number of bytes, got {memory_limit!r}")
    devs = _resolve_devices(devices)
    problem = build_problem(
        model,
        variables,
        images,
        candidates=candidates,
        layers=layers,
        base_spec=base_spec,
        apply_kwargs=apply_kwargs,
    )
    prog = problem.program
    plans = problem.layers
    items = rn.make_items([p.channels for p in plans], [len(p.candidates) for p in plans], pairs_per_item)
    slices = {p.index: pg.slice_layer(prog, p.cut) for p in plans}
    flops = {p.index: max(1, eng.candidate_flops(prog, slices[p.index])) for p in plans}
    costs = [plans[it.layer].pairs(it.c0, it.c1) * flops[it.layer] for it in items]
    mine = rn.select_shard(items, costs, shard_t)
    meta = {
        "method": "exact",
        "model": problem.model_name,
        "input_shape": list(problem.input_shape),
        "num_samples": problem.num_samples,
        "base": "relu" if problem.base_is_relu else "spec",
        "pairs_per_item": int(pairs_per_item),
    }
    layer_infos = [rn.LayerInfo(p.name, p.height, p.width, p.channels, p.candidates) for p in plans]
    ncand = [len(p.candidates) for p in plans]
    results: dict[rn.Item, np.ndarray] = {}
    if out_dir is not None:
        fp = fingerprint(problem, pairs_per_item)
        rn.open_run(out_dir, rn.manifest_dict(fp, layer_infos, items, meta))
        done = rn.done_items(out_dir, mine, ncand)
    else:
        fp = None
        done = set()
    todo = [it for it in mine if it not in done]

    evaluated = 0
    if todo:
        evaluated = _sweep(problem, slices, todo, devs, memory_limit, max_batch, progress, on_item, out_dir, results)

    run_meta = dict(meta)
    run_meta.update(
        {
            "jax_version": jax.__version__,
            "devices": f"{len(devs)} x {devs[0].device_kind}",
            "pairs_evaluated": int(evaluated),
            "seconds": round(time.perf_counter() - t_start, 3),
        }
    )
    if out_dir is not None:
        if shard_t[1] > 1 and rn.run_progress(out_dir)[0] < len(items):
            return None
        return rn.merge_runs([out_dir], meta=run_meta)
    tables = [np.zeros((p.channels, len(p.candidates))) for p in plans]
    for it, arr in results.items():
        tables[it.layer][it.c0 : it.c1] = arr
    return DistortionTable(
        tuple(LayerDistortion.create(p.name, p.height, p.width, p.candidates, t) for p, t in zip(plans, tables)),
        run_meta,
    )


def layer_cache(problem: _Problem, sl: pg.LayerSlice) -> tuple[tuple, tuple[int, ...]]:
    """The cached values of a layer (in structural order) and that order."""
    order = eng.cache_order(problem.program, sl)
    spec = eng.cache_spec(problem.program, sl, order, problem.relu_sizes)
    return eng.run_eval(spec, problem.inputs), order


def clean_outputs(problem: _Problem) -> tuple:
    """The flat outputs of the unperturbed network."""
    return eng.run_eval(eng.forward_spec(problem.program, problem.relu_sizes), problem.inputs)


def _sweep(problem, slices, todo, devs, memory_limit, max_batch, progress, on_item, out_dir, results) -> int:
    from tqdm.auto import tqdm

    prog = problem.program
    plans = problem.layers
    mesh = eng.make_mesh(devs)
    ndev = len(devs)
    mem = memory_limit if memory_limit is not None else default_memory_limit(devs[0])
    total = sum(plans[it.layer].pairs(it.c0, it.c1) for it in todo)
    clean = eng.replicate(clean_outputs(problem), mesh)
    by_layer: dict[int, list[rn.Item]] = {}
    for it in todo:
        by_layer.setdefault(it.layer, []).append(it)
    evaluated = 0
    with tqdm(
        total=total, unit="cand", unit_scale=True, disable=not progress, smoothing=0.05, dynamic_ncols=True
    ) as bar:
        for li in sorted(by_layer):
            plan = plans[li]
            sl = slices[li]
            bar.set_postfix_str(plan.name, refresh=False)
            cache, _ = layer_cache(problem, sl)
            cache = eng.replicate(cache, mesh)
            spec = eng.sweep_spec(prog, sl, mesh, problem.relu_sizes)
            max_pairs = max(plan.pairs(it.c0, it.c1) for it in by_layer[li])
            tensor = eng.max_tensor_bytes(prog, sl) if devs[0].platform == "cpu" else None
            bsz = batch_size(eng.bytes_per_candidate(prog, sl), mem, max_batch, ndev, max_pairs, tensor)
            for it in by_layer[li]:
                t0 = time.perf_counter()
                chans, cols = [], []
                for c in range(it.c0, it.c1):
                    for r in plan.columns(c):
                        chans.append(c)
                        cols.append(r)
                npairs = len(chans)
                values = np.empty(0)
                if npairs:
                    nb = math.ceil(npairs / bsz)
                    pad = nb * bsz - npairs
                    ch = np.asarray(chans + [chans[0]] * pad, np.int32)
                    sz = plan.candidates[np.asarray(cols + [cols[0]] * pad)].astype(np.int32)
                    outs = [
                        eng.sweep_batch(
                            spec,
                            eng.shard(ch[b * bsz : (b + 1) * bsz], mesh),
                            eng.shard(sz[b * bsz : (b + 1) * bsz], mesh),
                            cache,
                            clean,
                        )
                        for b in range(nb)
                    ]
                    values = np.concatenate([np.asarray(o, dtype=np.float64) for o in outs])[:npairs]
                    if not np.all(np.isfinite(values)):
                        bad = int(np.flatnonzero(~np.isfinite(values))[0])
                        raise FloatingPointError(
                            f"layer {plan.name!r}: non-finite distortion for channel {chans[bad]}, candidate "
                            f"{tuple(plan.candidates[cols[bad]])} (the perturbed network overflows)"
                        )
                block = np.zeros((it.c1 - it.c0, len(plan.candidates)))
                pos = 0
                for c in range(it.c0, it.c1):
                    cs = plan.columns(c)
                    plan.fill(c, dict(zip(cs, values[pos : pos + len(cs)])), block[c - it.c0])
                    pos += len(cs)
                if out_dir is not None:
                    rn.write_item(out_dir, it, block)
                else:
                    results[it] = block
                evaluated += npairs
                bar.update(npairs)
                if on_item is not None:
                    on_item(ItemDone(plan.name, it.c0, it.c1, npairs, time.perf_counter() - t0, block))
    return evaluated
