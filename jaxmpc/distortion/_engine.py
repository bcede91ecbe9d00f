"""Jitted kernels of the distortion sweep: layer caches, the vmapped and sharded candidate batch.

For a layer ``L`` (Gorski & Avidan, arXiv 2304.10442, §3.1; ``paper_reference.md`` §3.1), a
batch of (channel ``c``, patch size ``s``) pairs is evaluated as

1. ``y = relu_out(L)`` with channel ``c`` replaced by ``block_relu(x_L[..., c], s)`` -- the only
   difference from the clean output, so the clean output is computed once and cached;
2. the *dependent* part of the network (the instructions that read ``y``, see
   :func:`~jaxmpc.distortion._program.slice_layer`) on ``y`` and the cached values, with the
   convolutions that read ``y`` itself in delta form (cached clean output plus a one-channel
   convolution of the change);
3. the mean over samples of the mean over output elements of ``(out - clean_out)**2``.

Steps 1-3 are ``jax.vmap``-ed over the pairs and wrapped in ``jax.shard_map`` over a 1-D
device mesh (axis ``"cand"``): each device evaluates its slice of the batch against replicated
caches, with no communication.

Compilation reuse: every kernel is a module-level ``jax.jit`` function whose first argument is
a hashable *spec* identified by a structural signature of the instructions it evaluates (not by
object identity). jax's own compilation cache therefore reuses a compiled kernel for any layer,
model instance or call with the same structure and shapes -- e.g. when a sweep is resumed, when
the same architecture is profiled again with other weights or images, or when two layers have
identical dependent parts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmpc.distortion import _program as pg
from jaxmpc.nn.block_relu import jaxmpc_block_relu

AXIS = "cand"


# --------------------------------------------------------------------------------------------
# Structural signatures


def _value_digest(value: Any) -> str:
    arr = np.asarray(value)
    h = hashlib.sha256()
    h.update(str((arr.dtype, arr.shape)).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def _params_repr(params: Mapping[str, Any]) -> str:
    return repr(sorted((k, repr(v)) for k, v in params.items()))


def signature(
    program: pg.Program,
    indices: Sequence[int],
    entry: Sequence[int],
    exits: Sequence[Any],
    relu_sizes: frozenset = frozenset(),
) -> str:
    """A digest of ``program.instrs[indices]`` with values renamed by first appearance.

    Two instruction lists with the same digest compute the same function of their ``entry``
    values (in order) into their ``exits`` (in order).
    """
    names: dict[int, int] = {}
    for i in entry:
        names.setdefault(i, len(names))
    lines = [f"entry {[str(program.avals[i]) for i in entry]}"]

    def ref(a) -> str:
        if isinstance(a, pg.Lit):
            return f"lit({_value_digest(a.value)})"
        if a in names:
            return f"v{names[a]}"
        if a in program.consts:
            return f"const({_value_digest(program.consts[a])})"
        raise KeyError(a)  # not computed by the slice: a bug in slicing

    for k in indices:
        ins = program.instrs[k]
        args = ",".join(ref(a) for a in ins.ins)
        outs = []
        for o in ins.outs:
            if o is None:
                outs.append("_")
            else:
                names[o] = len(names)
                outs.append(f"v{names[o]}")
        if ins.is_block_relu:
            prim = "relu" if isinstance(ins.ins[1], int) and ins.ins[1] in relu_sizes else "block_relu"
        else:
            prim = ins.prim.name
        params = "" if ins.is_block_relu else _params_repr(ins.params)
        lines.append(f"{','.join(outs)} = {prim}[{params}]({args}) : {[str(a) for a in ins.avals]}")
    lines.append("exit " + ",".join(ref(o) for o in exits))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class _Spec:
    """Static argument of the kernels: hashed and compared by ``key`` (and mesh)."""

    key: str
    program: pg.Program = dataclasses.field(repr=False)
    payload: Any = dataclasses.field(repr=False)
    mesh: Mesh | None = None

    def __hash__(self) -> int:
        return hash((self.key, self.mesh))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Spec) and self.key == other.key and self.mesh == other.mesh


# --------------------------------------------------------------------------------------------
# Full forward pass and per-layer caches


@dataclasses.dataclass(frozen=True)
class _Eval:
    indices: tuple[int, ...]
    entry: tuple[int, ...]
    exits: tuple
    relu_sizes: frozenset


def forward_spec(program: pg.Program, relu_sizes: frozenset = frozenset()) -> _Spec:
    """Spec of the whole forward pass: inputs -> flat outputs.

    ``relu_sizes``: ids of ``sizes`` inputs known to be all ``(1, 1)`` (see
    :func:`~jaxmpc.distortion._program.evaluate`).
    """
    idx = tuple(range(len(program.instrs)))
    payload = _Eval(idx, program.inputs, program.outputs, relu_sizes)
    return _Spec("fwd" + signature(program, idx, program.inputs, program.outputs, relu_sizes), program, payload)


def cache_spec(
    program: pg.Program, sl: pg.LayerSlice, order: Sequence[int], relu_sizes: frozenset = frozenset()
) -> _Spec:
    """Spec of a layer's cache: inputs -> the values ``order`` (see :func:`cache_order`)."""
    payload = _Eval(sl.producers, program.inputs, tuple(order), relu_sizes)
    return _Spec("cache" + signature(program, sl.producers, program.inputs, order, relu_sizes), program, payload)


@functools.partial(jax.jit, static_argnums=0)
def run_eval(spec: _Spec, inputs: tuple) -> tuple:
    """Evaluates a forward or cache spec on the flat inputs."""
    e: _Eval = spec.payload
    env = dict(zip(e.entry, inputs))
    pg.evaluate(spec.program, e.indices, env, e.relu_sizes)
    return tuple(_read(spec.program, env, o) for o in e.exits)


def _read(program: pg.Program, env: Mapping[int, Any], a: Any) -> Any:
    if isinstance(a, pg.Lit):
        return jnp.asarray(a.value)
    if a in env:
        return env[a]
    return program.consts[a]


def cache_order(program: pg.Program, sl: pg.LayerSlice) -> tuple[int, ...]:
    """Cache values in a structural order: ``x``, ``y``, then by first read, then outputs."""
    order: dict[int, None] = {sl.cut.x: None, sl.cut.y: None}
    produced: set[int] = set()
    delta = set(sl.delta)
    consts = program.consts
    for k in sl.full:
        ins = program.instrs[k]
        if k in delta:
            order.setdefault(ins.ins[1], None)  # weights
            order.setdefault(ins.outs[0], None)  # clean output
            continue
        for a in ins.ins:
            if isinstance(a, int) and a not in produced and a not in consts:
                order.setdefault(a, None)
        produced.update(o for o in ins.outs if o is not None)
    for o in program.outputs:
        if isinstance(o, int) and o not in produced and o not in consts:
            order.setdefault(o, None)
    return tuple(order)


# --------------------------------------------------------------------------------------------
# The candidate sweep


@dataclasses.dataclass(frozen=True)
class _Sweep:
    full: tuple[int, ...]
    delta: tuple[int, ...]
    dependent: tuple[int, ...]
    order: tuple[int, ...]
    x: int
    y: int
    channels: int
    relu_sizes: frozenset


def sweep_spec(program: pg.Program, sl: pg.LayerSlice, mesh: Mesh | None, relu_sizes: frozenset = frozenset()) -> _Spec:
    """Spec of a layer's candidate-batch kernel on ``mesh``."""
    order = cache_order(program, sl)
    payload = _Sweep(sl.full, sl.delta, sl.dependent, order, sl.cut.x, sl.cut.y, sl.cut.shape[-1], relu_sizes)
    key = "sweep" + signature(program, sl.full, order, program.outputs, relu_sizes)
    key += "|delta" + str([sl.full.index(k) for k in sl.delta])
    return _Spec(key, program, payload, mesh)


def mean_squared_change(outs: Sequence[jax.Array], clean: Sequence[jax.Array]) -> jax.Array:
    """Mean over samples (axis 0) of the mean over all output elements of ``(out - clean)**2``."""
    total = 0.0
    count = 0
    for o, c in zip(outs, clean):
        d = (o - c).astype(jnp.result_type(o.dtype, jnp.float32))
        total = total + jnp.sum(jnp.square(d).reshape(d.shape[0], -1), axis=1)
        count += int(np.prod(o.shape[1:]))
    return jnp.mean(total / count)


def perturbed_output(s: _Sweep, env: dict, c: jax.Array, size: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The layer output with channel ``c`` evaluated by a Block ReLU of patch size ``size``.

    Returns:
      ``(y, delta_c)``: the perturbed output ``[N, H, W, C]`` and the change of channel ``c``,
      ``[N, H, W, 1]``.
    """
    x, y_clean = env[s.x], env[s.y]
    axis = x.ndim - 1
    xc = lax.dynamic_index_in_dim(x, c, axis=axis, keepdims=True)
    yc = jaxmpc_block_relu(xc, size[None, :])
    delta = yc - lax.dynamic_index_in_dim(y_clean, c, axis=axis, keepdims=True)
    onehot = (jnp.arange(s.channels) == c).reshape((1,) * axis + (s.channels,))
    return jnp.where(onehot, yc, y_clean), delta


def _apply_candidate(spec: _Spec, env: dict, c: jax.Array, size: jax.Array) -> tuple[list, jax.Array]:
    """Evaluates the network from the cache for one (channel, size) pair.

    Returns:
      The flat outputs, and whether the candidate changes the layer output at all.
    """
    s: _Sweep = spec.payload
    y, delta = perturbed_output(s, env, c, size)
    env[s.y] = y
    for k in s.delta:
        ins = spec.program.instrs[k]
        rhs = env[ins.ins[1]]
        axis = ins.params["dimension_numbers"].rhs_spec[1]
        rhs_c = lax.dynamic_slice_in_dim(rhs, c, 1, axis=axis)
        out = ins.outs[0]
        env[out] = env[out] + ins.prim.bind(delta.astype(rhs.dtype), rhs_c, **ins.params)
    pg.evaluate(spec.program, s.dependent, env, s.relu_sizes)
    return [_read(spec.program, env, o) for o in spec.program.outputs], jnp.any(delta != 0)


def _distortion(spec: _Spec, env: dict, c: jax.Array, size: jax.Array, clean: Sequence[jax.Array]) -> jax.Array:
    """The distortion of one pair; exactly 0 when the candidate leaves the layer output unchanged
    (the perturbed network is then the clean one; the computed value would be float noise)."""
    outs, changed = _apply_candidate(spec, env, c, size)
    return jnp.where(changed, mean_squared_change(outs, clean), 0.0)


def _sweep_local(spec: _Spec, channels, sizes, cache, clean):
    s: _Sweep = spec.payload

    def one(c, size):
        return _distortion(spec, dict(zip(s.order, cache)), c, size, clean)

    return jax.vmap(one)(channels, sizes)


@functools.partial(jax.jit, static_argnums=0)
def sweep_batch(spec: _Spec, channels: jax.Array, sizes: jax.Array, cache: tuple, clean: tuple) -> jax.Array:
    """Distortions of a batch of (channel, patch size) pairs of one layer.

    Args:
      spec: from :func:`sweep_spec`; its mesh shards the batch.
      channels: int32 ``[B]``, ``B`` a multiple of the mesh size, sharded over the mesh.
      sizes: int32 ``[B, 2]``.
      cache: the layer cache (from :func:`run_eval` with :func:`cache_spec`), replicated.
      clean: the clean flat outputs, replicated.

    Returns:
      float32 ``[B]``, sharded like ``channels``.
    """
    body = functools.partial(_sweep_local, spec)
    f = jax.shard_map(body, mesh=spec.mesh, in_specs=(P(AXIS), P(AXIS), P(), P()), out_specs=P(AXIS), check_vma=False)
    return f(channels, sizes, cache, clean)


@functools.partial(jax.jit, static_argnums=0)
def sweep_single(spec: _Spec, channel: jax.Array, size: jax.Array, cache: tuple, clean: tuple) -> jax.Array:
    """One pair, unbatched (the one-candidate-per-call baseline of the benchmark and tests)."""
    s: _Sweep = spec.payload
    return _distortion(spec, dict(zip(s.order, cache)), channel, size, clean)


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all local devices) with axis ``"cand"``."""
    devs = list(devices) if devices is not None else jax.local_devices()
    if not devs:
        raise ValueError("no devices to run on")
    return Mesh(np.array(devs, dtype=object), (AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P(AXIS)))


def bytes_per_candidate(program: pg.Program, sl: pg.LayerSlice) -> int:
    """Upper estimate of the memory one candidate of a batch needs, in bytes.

    The sum of the sizes of every value the dependent part produces (XLA reuses buffers, so
    the real peak is lower), plus the perturbed layer output and the Block ReLU's temporaries.
    """
    y = program.avals[sl.cut.y]
    y_bytes = int(np.prod(y.shape)) * np.dtype(y.dtype).itemsize
    n, h, w, _ = sl.cut.shape
    brelu = 6 * n * h * w * 8  # channel slice, patch sums, segment ids (int32/int64), mask
    return pg.slice_bytes(program, sl.full) + 2 * y_bytes + brelu


def max_tensor_bytes(program: pg.Program, sl: pg.LayerSlice) -> int:
    """Bytes of the largest single value one candidate of a batch produces (cache-sizing on CPU)."""
    best = 0
    for k in sl.full:
        for a in program.instrs[k].avals:
            if hasattr(a, "shape") and hasattr(a, "dtype"):
                best = max(best, int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize)
    y = program.avals[sl.cut.y]
    return max(best, int(np.prod(y.shape)) * np.dtype(y.dtype).itemsize)


def candidate_flops(program: pg.Program, sl: pg.LayerSlice) -> int:
    """Convolution/matmul FLOPs executed per candidate (all samples).

    The dependent part, plus the delta convolutions at one input channel.
    """
    total = pg.slice_flops(program, sl.dependent)
    for k in sl.delta:
        ins = program.instrs[k]
        rhs = program.avals[ins.ins[1]]
        cin = int(rhs.shape[ins.params["dimension_numbers"].rhs_spec[1]])
        total += pg.instr_flops(ins, program.avals) // max(1, cin)
    return total
