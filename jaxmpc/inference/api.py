"""``secure_apply`` and ``fixed_point_apply``: run a Flax (or JAX) model securely, or its reference."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc.core.config import ProtocolConfig, require_x64
from jaxmpc.inference.backends import FixedPointBackend, Pub, Sec, SecureBackend
from jaxmpc.inference.interpreter import Interpreter, Pending
from jaxmpc.inference.report import SecureReport
from jaxmpc.core.randomness import simulation_keys
from jaxmpc.core.ring import ENCODE_LIMIT, encode
from jaxmpc.simulate import StaticValue, check_key, memory_budget_bytes, run_planned

__all__ = ["secure_apply", "fixed_point_apply", "secure_cost", "trace_model", "TracedModel"]

PUBLIC_COLLECTIONS = ("block_sizes",)


@dataclasses.dataclass(frozen=True, eq=False)
class TracedModel:
    """A model's jaxpr with its inputs split into server-private and public leaves."""

    jaxpr: object  # ClosedJaxpr
    out_tree: object
    out_avals: tuple
    server_paths: tuple  # key paths of the server's leaves (weights, statistics)
    public_values: tuple  # concrete numpy public leaves, by position
    leaf_kinds: tuple  # "server" | "public" per variable leaf, in flattening order
    x_aval: jax.ShapeDtypeStruct
    top_name: str | None
    fingerprint: str  # hash of the structure and the public values (cache key)


def _collection_of(path) -> str:
    k = path[0]
    return str(getattr(k, "key", getattr(k, "name", k)))


def _load_spec_arg(model, variables, spec, input_shape):
    from jaxmpc import nn as jnn

    if spec is None:
        return variables
    if isinstance(spec, (str, os.PathLike)):
        spec = jnn.load_spec(spec, model=model, variables=variables, input_shape=input_shape)
        if hasattr(spec, "layers"):
            spec = spec.layers
    return jnn.apply_spec(variables, spec)


_TRACES: dict = {}  # structural key -> TracedModel (the model is traced once per structure)


def _structure_key(model, treedef, leaf_structs, kinds, public, x_shape, dtype, method, kwargs):
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((treedef, [(s.shape, str(s.dtype)) for s in leaf_structs], tuple(x_shape), str(dtype), kinds,
                   method, sorted(kwargs.items()))).encode())
    for p in public:
        h.update(np.ascontiguousarray(p).tobytes())
    try:
        model_key = hash(model)
    except TypeError:
        model_key = id(model)
    return (model_key, h.hexdigest())


def program_fingerprint(closed_jaxpr, public_values, x_aval) -> str:
    """A hash of the traced program itself: the jaxpr (operations, shapes, dtypes and the layer
    names that seed the randomness), its constants, the public values (the Block-ReLU spec) and
    the input shape. Every cache of compiled secure programs, and the networked handshake
    (``jaxmpc.net.party.model_fingerprint``), is keyed on it, never on parameter shapes alone.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(closed_jaxpr.jaxpr.pretty_print(name_stack=True, source_info=False).encode())
    for c in list(closed_jaxpr.consts) + list(public_values):
        a = np.asarray(c)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(f"{tuple(x_aval.shape)}{x_aval.dtype}".encode())
    return h.hexdigest()


def _leaf_dtype(leaf):
    return leaf.dtype if isinstance(leaf, jax.ShapeDtypeStruct) else jnp.asarray(leaf).dtype


def trace_model(model, variables, x_shape, *, dtype=jnp.float32, method=None,
                public_collections=PUBLIC_COLLECTIONS, **kwargs) -> TracedModel:
    """Traces ``model.apply(variables, x, **kwargs)`` (or a plain function ``model(variables, x)``).

    Cached per model, variable structure, public values, input shape and arguments. The server's
    leaves may be ``jax.ShapeDtypeStruct`` placeholders (what a networked client or CP knows);
    the public leaves (``public_collections``, the block spec) must be concrete.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(variables)
    kinds, public, server_paths = [], [], []
    for path, leaf in flat:
        if _collection_of(path) in public_collections:
            kinds.append("public")
            public.append(np.asarray(leaf))
        else:
            kinds.append("server")
            server_paths.append(path)
    # leaves may be placeholders (``jax.ShapeDtypeStruct``): a client or CP knows the shapes only
    leaf_structs = [jax.ShapeDtypeStruct(np.shape(leaf), _leaf_dtype(leaf)) for _, leaf in flat]
    skey = _structure_key(model, treedef, leaf_structs, tuple(kinds), public, x_shape, dtype, method, kwargs)
    if skey in _TRACES and _TRACES[skey][0] == model:
        return _TRACES[skey][1]

    if hasattr(model, "apply"):
        fn = lambda v, x: model.apply(v, x, method=method, **kwargs) if method else model.apply(v, x, **kwargs)
        top = type(model).__name__
    elif callable(model):
        fn = lambda v, x: model(v, x, **kwargs)
        top = None
    else:
        raise TypeError(f"model must be a Flax module or a function (variables, x) -> y, got {type(model).__name__}")

    def flat_fn(leaves, x):
        return fn(jax.tree_util.tree_unflatten(treedef, leaves), x)

    x_aval = jax.ShapeDtypeStruct(tuple(x_shape), dtype)
    try:
        closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(leaf_structs, x_aval)
    except Exception as e:  # noqa: BLE001 - any failure of the float model on this input shape
        raise ValueError(f"the model cannot run on an input of shape {tuple(x_shape)}: {type(e).__name__}: {e}") from e
    out_leaves, out_tree = jax.tree_util.tree_flatten(out_shape)
    traced = TracedModel(closed, out_tree, tuple(out_leaves), tuple(server_paths), tuple(public), tuple(kinds), x_aval,
                         top, program_fingerprint(closed, public, x_aval))
    if len(_TRACES) > 32:
        _TRACES.pop(next(iter(_TRACES)))
    _TRACES[skey] = (model, traced)
    return traced


def _check_inputs(x, variables_leaves, config: ProtocolConfig):
    arr = np.asarray(x)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"x must be a real array, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("x contains NaN or infinite values")
    encode(arr, config.frac_bits)  # range check with a clear message
    lim = ENCODE_LIMIT / 2.0**config.frac_bits
    for path, leaf in variables_leaves:
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating):
            if not np.all(np.isfinite(a)):
                raise ValueError(f"model variable {jax.tree_util.keystr(path)} contains NaN or infinite values")
            if a.size and np.max(np.abs(a)) > lim:
                raise ValueError(f"model variable {jax.tree_util.keystr(path)} exceeds the fixed-point range +-{lim:g}")


def _program(backend, traced: TracedModel, x_enc, server_leaves, config: ProtocolConfig):
    """Runs the interpreter; returns (decoded outputs, interpreter)."""
    it = Interpreter(backend, config.frac_bits, top_name=traced.top_name)
    args, si, pi = [], 0, 0
    for kind in traced.leaf_kinds:
        if kind == "public":
            args.append(Pub(traced.public_values[pi]))
            pi += 1
        else:
            args.append(backend.server_input(server_leaves[si]))
            si += 1
    args.append(backend.input(x_enc))
    outs = it.run(traced.jaxpr.jaxpr, traced.jaxpr.consts, args)
    results = []
    for v, aval in zip(outs, traced.out_avals):
        if isinstance(v, Pending):
            v = it.materialize(v)
        if isinstance(v, Sec):
            y = backend.reveal(v)
        elif isinstance(v, Pub):
            y = jnp.asarray(v.value)
        else:
            raise ValueError("the model returns a value computed from the weights alone; jaxmpc would have to reveal it")
        if isinstance(y, jax.ShapeDtypeStruct):  # party mode, not the client: the output is not ours
            results.append(jax.ShapeDtypeStruct(tuple(aval.shape), aval.dtype))
        else:
            results.append(jnp.asarray(y).astype(aval.dtype))
    return results, it


_CACHE: dict = {}  # fingerprint -> jitted cores (compiled programs are reused across calls)


def _cores(traced: TracedModel, config: ProtocolConfig, memory_budget: int | None = None):
    key = (traced.fingerprint, config, memory_budget)
    if key in _CACHE:
        return _CACHE[key]

    def secure_core(rng, x_enc, server_leaves):
        def body(rt, x_enc, server_leaves):
            return _program(SecureBackend(rt), traced, x_enc, server_leaves, config)[0]

        outs, rt = run_planned(config, simulation_keys(rng), body, x_enc, server_leaves, return_runtime=True,
                               memory_budget=memory_budget)
        layers = tuple((path, what) for path, what, _ in rt.annotations)
        report = SecureReport(rt.comm(), layers, tuple(rt.notes), batch=int(traced.x_aval.shape[0]))
        return outs, StaticValue(report)

    def fixed_core(x_enc, server_leaves):
        outs, _ = _program(FixedPointBackend(config), traced, x_enc, server_leaves, config)
        return outs

    cores = (jax.jit(secure_core), jax.jit(fixed_core), secure_core, fixed_core)
    if len(_CACHE) > 32:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = cores
    return cores


def _prepare(model, variables, x, spec, config, kwargs):
    require_x64()
    config = ProtocolConfig() if config is None else config
    if not isinstance(config, ProtocolConfig):
        raise TypeError(f"config must be a jaxmpc.ProtocolConfig, got {type(config).__name__}")
    if not isinstance(variables, Mapping):
        raise TypeError("variables must be a mapping of collections (e.g. {'params': ..., 'batch_stats': ...})")
    x_arr = np.asarray(x)
    if x_arr.ndim < 1:
        raise ValueError("x must have a batch dimension")
    variables = _load_spec_arg(model, variables, spec, x_arr.shape[1:])
    public = kwargs.pop("public_collections", PUBLIC_COLLECTIONS)
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    server_flat = [(p, leaf) for p, leaf in flat if _collection_of(p) not in public]
    _check_inputs(x_arr, server_flat, config)
    traced = trace_model(model, variables, x_arr.shape, public_collections=public, **kwargs)
    x_enc = jnp.asarray(encode(x_arr, config.frac_bits))
    server_leaves = [jnp.asarray(leaf) for _, leaf in server_flat]
    return traced, config, x_enc, server_leaves


def secure_apply(model, variables, x, *, spec=None, config: ProtocolConfig | None = None, key=None, jit: bool = True,
                 memory_budget="auto", **kwargs):
    """Runs ``model`` on ``x`` with the client, server and crypto provider simulated in one jit program.

    The model is traced to a jaxpr and interpreted with secure protocols
    (:mod:`jaxmpc.inference.interpreter`): the server holds ``variables`` (BatchNorm is folded
    into the convolutions), the client holds ``x``, the CP deals randomness; the output is
    revealed to the client. Compiled programs are cached per model structure, public values
    (the spec), input shape and config, so repeated calls with the same shapes trace once.

    Args:
      model: a ``flax.linen`` module, or a function ``(variables, x) -> y``.
      variables: the model's variables. The ``"block_sizes"`` collection (the Block-ReLU spec) is
        public; every other collection is the server's.
      x: input batch (real array, e.g. ``[N, H, W, C]``).
      spec: optional block spec (``{layer: int[C, 2]}`` or a spec file path) applied first.
      config: protocol parameters.
      key: root key of all correlated randomness: ``None`` (default) draws 256 bits from OS
        entropy; ``uint32[8]`` key words, or a ``jax.random`` key for reproducible experiments.
      jit: compile the whole secure forward pass into one XLA program (default; compiling takes
        about a second per ReLU layer on a 2-core CPU, then runs fast). ``False`` runs op by op:
        same results, no whole-program compile (useful for small inputs and tests).
      memory_budget: working set of one chunk of a large nonlinear layer
        (:func:`jaxmpc.simulate.memory_budget_bytes`): ``"auto"`` (default: an eighth of the
        device's memory), bytes, ``"4GiB"``, or ``None`` (each layer at once). The output and the
        report do not depend on it.
      **kwargs: passed to ``model.apply`` (e.g. ``train=False``, ``method=...``).

    Returns:
      ``(output, report)``: the revealed output (same pytree structure and dtype as
      ``model.apply``) and a :class:`~jaxmpc.inference.report.SecureReport`.

    Raises:
      TypeError / ValueError: bad model, variables, spec, input dtype/shape/range (before any
        secure work); ``NotImplementedError`` for operations jaxmpc cannot run on secrets.
    """
    traced, config, x_enc, server_leaves = _prepare(model, variables, x, spec, config, kwargs)
    key = check_key(key, config)
    cores = _cores(traced, config, memory_budget_bytes(memory_budget))
    outs, static = (cores[0] if jit else cores[2])(key, x_enc, server_leaves)
    return jax.tree_util.tree_unflatten(traced.out_tree, outs), static.value


def fixed_point_apply(model, variables, x, *, spec=None, config: ProtocolConfig | None = None, jit: bool = True,
                      **kwargs):
    """The plaintext fixed-point reference of :func:`secure_apply`: same interpretation, same
    folded weights and encodings, in the clear with floor truncation. Returns the output."""
    traced, config, x_enc, server_leaves = _prepare(model, variables, x, spec, config, kwargs)
    cores = _cores(traced, config)
    outs = (cores[1] if jit else cores[3])(x_enc, server_leaves)
    return jax.tree_util.tree_unflatten(traced.out_tree, outs)


def secure_cost(model, variables, x_shape, *, spec=None, config: ProtocolConfig | None = None, **kwargs) -> SecureReport:
    """The report of a secure forward pass without running it (traces abstractly: fast at any size)."""
    require_x64()
    config = ProtocolConfig() if config is None else config
    variables = _load_spec_arg(model, variables, spec, tuple(x_shape)[1:])
    public = kwargs.pop("public_collections", PUBLIC_COLLECTIONS)
    traced = trace_model(model, variables, tuple(x_shape), public_collections=public, **kwargs)
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    server_structs = [jax.ShapeDtypeStruct(np.shape(leaf), _leaf_dtype(leaf)) for p, leaf in flat
                      if _collection_of(p) not in public]
    secure_core = _cores(traced, config)[2]
    _, static = jax.eval_shape(secure_core, jax.random.key(0), jax.ShapeDtypeStruct(tuple(x_shape), jnp.uint64),
                               server_structs)
    return static.value

