"""A model's forward pass as a flat program that can be cut at every Block ReLU.

The distortion sweep (Gorski & Avidan, arXiv 2304.10442, §3; ``paper_reference.md`` §3.1)
needs, for each ReLU layer, "the rest of the network" as a function of that layer's output.
This module traces ``apply_fn(variables, x)`` to a jaxpr once and flattens it into a list of
:class:`Instr` (nested ``jit`` calls are inlined, so that a Block ReLU inside a jitted
sub-function is still found), with integer value ids instead of jaxpr variables. A Block ReLU
is recognised by its equation ``jit[name=jaxmpc_block_relu]`` (``jaxmpc.nn.BLOCK_RELU_JIT_NAME``)
whose ``sizes`` operand is a leaf of ``variables["block_sizes"]``; the leaf's key path names the
layer.

For a layer, the program splits into

* the *dependent* instructions: those after the Block ReLU that (transitively) read its
  output -- the part that changes with a candidate and is vmapped;
* the *cache*: every value those instructions read that they do not produce themselves
  (parameters, residual branches, the outputs of parallel branches, BatchNorm scales). It is
  computed once per layer from the inputs.

Everything here is pure Python over a traced structure; evaluation happens in the callers'
jitted functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.extend import core as jcore

from jaxmpc.nn.block_relu import BLOCK_RELU_JIT_NAME, BLOCK_SIZES_COLLECTION, jaxmpc_block_relu

# Higher-order primitives whose body is inlined into the flat program. Everything else is bound
# as recorded (and must not contain a Block ReLU).
_INLINE = ("jit", "pjit", "closed_call", "core_call", "remat", "remat2", "checkpoint", "custom_jvp_call")


@dataclasses.dataclass(frozen=True, eq=False)
class Lit:
    """A literal operand."""

    value: Any


@dataclasses.dataclass(frozen=True, eq=False)
class Instr:
    """One primitive application: ``outs = prim.bind(*ins, **params)``.

    ``ins`` holds value ids (ints) or :class:`Lit`; ``outs`` holds value ids, ``None`` for a
    dropped output. A Block ReLU has ``prim is None`` and ``ins == (x, sizes)``.
    """

    prim: Any
    params: Mapping[str, Any]
    ins: tuple
    outs: tuple
    avals: tuple  # output avals

    @property
    def is_block_relu(self) -> bool:
        return self.prim is None


@dataclasses.dataclass(frozen=True)
class Cut:
    """A Block ReLU layer of the program.

    Attributes:
      name: the layer name (key path of its ``sizes`` leaf without ``"sizes"``).
      index: position of its instruction in :attr:`Program.instrs`.
      x: id of the pre-activation (the ReLU's input).
      y: id of the layer output.
      sizes: id of the ``sizes`` input.
      shape: ``(N, H, W, C)`` of the activation (N = samples).
    """

    name: str
    index: int
    x: int
    y: int
    sizes: int
    shape: tuple[int, ...]


class ProgramError(ValueError):
    """The model cannot be profiled (no Block ReLU, or one the flattener cannot reach)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
    """A flattened forward pass with its Block ReLU cut points.

    Attributes:
      instrs: the instructions, in execution order, after dead-code elimination.
      inputs: ids of the flat inputs: the variables' leaves (in ``jax.tree_util`` order), then
        the images.
      input_paths: ``"/"``-joined key path of each variables leaf.
      consts: ``{id: value}`` of the traced constants.
      outputs: ids (or :class:`Lit`) of the flat outputs.
      out_tree: tree structure of the model output.
      cuts: the Block ReLU layers driven by ``variables["block_sizes"]``, in execution order.
      avals: ``{id: aval}`` of every value.
    """

    instrs: tuple[Instr, ...]
    inputs: tuple[int, ...]
    input_paths: tuple[str, ...]
    consts: Mapping[int, Any]
    outputs: tuple
    out_tree: Any
    cuts: tuple[Cut, ...]
    avals: Mapping[int, Any]

    def cut(self, name: str) -> Cut:
        for c in self.cuts:
            if c.name == name:
                return c
        raise KeyError(name)


def _path_str(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _contains_block_relu(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("jit", "pjit") and eqn.params.get("name") == BLOCK_RELU_JIT_NAME:
            return True
        for sub in jcore.jaxprs_in_params(eqn.params):
            if _contains_block_relu(sub):
                return True
    return False


def _sub_closed_jaxpr(eqn):
    """``(jaxpr, consts)`` of an inlinable call equation."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is None:
            continue
        if isinstance(sub, jcore.ClosedJaxpr):
            return sub.jaxpr, list(sub.consts)
        if isinstance(sub, jcore.Jaxpr):
            return sub, []
    return None


class _Builder:
    def __init__(self):
        self.instrs: list[Instr] = []
        self.consts: dict[int, Any] = {}
        self.avals: dict[int, Any] = {}
        self._next = 0

    def fresh(self, aval) -> int:
        i = self._next
        self._next += 1
        self.avals[i] = aval
        return i

    def flatten(self, jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list:
        """Appends ``jaxpr``'s equations; ``args`` are ids/Lits of its invars. Returns its outs."""
        env: dict[Any, Any] = {}
        for v, c in zip(jaxpr.constvars, consts):
            i = self.fresh(v.aval)
            self.consts[i] = c
            env[v] = i
        for v, a in zip(jaxpr.invars, args):
            env[v] = a

        def read(atom):
            if isinstance(atom, jcore.Literal):
                return Lit(atom.val)
            return env[atom]

        for eqn in jaxpr.eqns:
            ins = [read(a) for a in eqn.invars]
            name = eqn.primitive.name
            if name in ("jit", "pjit") and eqn.params.get("name") == BLOCK_RELU_JIT_NAME:
                outs = [self.fresh(v.aval) for v in eqn.outvars]
                self.instrs.append(Instr(None, {}, tuple(ins), tuple(outs), tuple(v.aval for v in eqn.outvars)))
            elif (
                name in _INLINE
                and _sub_closed_jaxpr(eqn) is not None
                and (name in ("jit", "pjit") or _contains_block_relu(_sub_closed_jaxpr(eqn)[0]))
            ):
                sub, sub_consts = _sub_closed_jaxpr(eqn)
                n_extra = len(sub.invars) - len(ins)
                if n_extra != 0:  # e.g. custom_jvp_call with extra args; bind as is
                    outs = self._record(eqn, ins)
                else:
                    outs = self.flatten(sub, sub_consts, ins)
            else:
                if any(_contains_block_relu(s) for s in jcore.jaxprs_in_params(eqn.params)):
                    raise ProgramError(
                        f"a Block ReLU sits inside a {name!r} primitive (e.g. a scan, cond or while loop), which the "
                        "distortion profiler cannot cut; call BlockReLU layers outside such transformations"
                    )
                outs = self._record(eqn, ins)
            for v, o in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def _record(self, eqn, ins) -> list:
        outs = [None if isinstance(v, jcore.DropVar) else self.fresh(v.aval) for v in eqn.outvars]
        self.instrs.append(
            Instr(
                eqn.primitive,
                eqn.primitive.get_bind_params(eqn.params),
                tuple(ins),
                tuple(outs),
                tuple(v.aval for v in eqn.outvars),
            )
        )
        # A dropped output still needs an id for evaluation bookkeeping; give it a throwaway one.
        return outs


def _dce(instrs: list[Instr], outputs: Sequence[Any]) -> list[Instr]:
    needed = {o for o in outputs if isinstance(o, int)}
    keep = []
    for ins in reversed(instrs):
        if any(o is not None and o in needed for o in ins.outs):
            keep.append(ins)
            needed.update(a for a in ins.ins if isinstance(a, int))
    keep.reverse()
    return keep


def trace_program(apply_fn: Callable, variables: Any, images: jax.ShapeDtypeStruct | jax.Array) -> Program:
    """Traces ``apply_fn(variables, images)`` into a :class:`Program`.

    Args:
      apply_fn: ``(variables, images) -> outputs`` (a pytree of arrays whose leading axis is
        the sample axis).
      variables: the model variables, with a ``"block_sizes"`` collection.
      images: the sample batch or its shape/dtype.

    Raises:
      ProgramError: if no Block ReLU of ``variables["block_sizes"]`` is found, if one sits in a
        loop or conditional, or if one ``sizes`` leaf drives two Block ReLUs.
    """
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(variables)
    paths = tuple(_path_str(p) for p, _ in leaves_with_path)
    leaves = [leaf for _, leaf in leaves_with_path]

    def flat_fn(leaves, x):
        out = apply_fn(jax.tree_util.tree_unflatten(treedef, leaves), x)
        return out

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(leaves, images)
    out_tree = jax.tree_util.tree_structure(out_shape)
    b = _Builder()
    inputs = [b.fresh(v.aval) for v in closed.jaxpr.invars]
    outputs = b.flatten(closed.jaxpr, closed.consts, inputs)
    instrs = _dce(b.instrs, outputs)

    sizes_ids = {}
    prefix = BLOCK_SIZES_COLLECTION + "/"
    for i, p in zip(inputs, paths):
        if p.startswith(prefix) and p.endswith("/sizes"):
            sizes_ids[i] = p[len(prefix) : -len("/sizes")]
    cuts = []
    seen: dict[str, int] = {}
    for k, ins in enumerate(instrs):
        if ins.is_block_relu and isinstance(ins.ins[1], int) and ins.ins[1] in sizes_ids:
            name = sizes_ids[ins.ins[1]]
            if name in seen:
                raise ProgramError(f"BlockReLU {name!r} is applied more than once; give every ReLU its own BlockReLU")
            seen[name] = k
            x = ins.ins[0]
            if not isinstance(x, int):
                raise ProgramError(f"BlockReLU {name!r} is applied to a literal")
            shape = tuple(int(d) for d in b.avals[x].shape)
            if len(shape) != 4:
                raise ProgramError(
                    f"BlockReLU {name!r} sees an activation of shape {shape}; the profiler needs [N, H, W, C]"
                )
            cuts.append(Cut(name, k, x, ins.outs[0], ins.ins[1], shape))
    if not cuts:
        raise ProgramError(
            "the model has no BlockReLU driven by variables['block_sizes'] (or none affects its output); "
            "nothing to profile"
        )
    return Program(
        instrs=tuple(instrs),
        inputs=tuple(inputs),
        input_paths=paths,
        consts=b.consts,
        outputs=tuple(outputs),
        out_tree=out_tree,
        cuts=tuple(cuts),
        avals=b.avals,
    )


# --------------------------------------------------------------------------------------------
# Slicing


@dataclasses.dataclass(frozen=True, eq=False)
class LayerSlice:
    """The parts of a program needed to sweep one layer.

    Attributes:
      cut: the layer.
      full: indices of the instructions that read (transitively) the layer output.
      delta: the subset of ``full`` that are *delta convolutions*: convolutions whose input is
        the layer output itself (``feature_group_count == 1``, channels last, weights not
        depending on the layer). Since a candidate changes one channel ``c`` only,
        ``conv(y) = conv(y_clean) + conv(y[..., c] - y_clean[..., c], w[:, :, c])``: the clean
        convolution is cached and the per-candidate part has a single input channel.
      dependent: ``full`` without ``delta``: what is evaluated per candidate.
      cache: ids the dependent instructions read but do not produce (this includes the clean
        outputs of the delta convolutions and their weights), plus ``cut.x`` and ``cut.y``;
        sorted.
      producers: indices of the instructions that compute the cache from the inputs (the
        Block ReLU of the cut itself, for the clean output, and the delta convolutions).
    """

    cut: Cut
    full: tuple[int, ...]
    delta: tuple[int, ...]
    dependent: tuple[int, ...]
    cache: tuple[int, ...]
    producers: tuple[int, ...]


def _is_delta_conv(ins: Instr, cut: Cut, tainted: set) -> bool:
    if ins.prim is None or ins.prim.name != "conv_general_dilated":
        return False
    lhs, rhs = ins.ins[0], ins.ins[1]
    if not (isinstance(lhs, int) and lhs == cut.y):
        return False
    if not isinstance(rhs, int) or rhs in tainted:
        return False
    p = ins.params
    dn = p["dimension_numbers"]
    return (
        p.get("feature_group_count", 1) == 1
        and p.get("batch_group_count", 1) == 1
        and tuple(dn.lhs_spec)[1] == len(cut.shape) - 1
        and p.get("preferred_element_type") in (None, ins.avals[0].dtype)
    )


def slice_layer(program: Program, cut: Cut, *, delta_convs: bool = True) -> LayerSlice:
    """Splits ``program`` at ``cut`` into the per-candidate part and the cache it needs.

    Args:
      program: the traced program.
      cut: one of ``program.cuts``.
      delta_convs: evaluate convolutions that read the layer output in delta form (see
        :class:`LayerSlice`); ``False`` evaluates them per candidate like everything else.
    """
    instrs = program.instrs
    tainted = {cut.y}
    full = []
    for k in range(cut.index + 1, len(instrs)):
        ins = instrs[k]
        if any(isinstance(a, int) and a in tainted for a in ins.ins):
            full.append(k)
            tainted.update(o for o in ins.outs if o is not None)
    delta = [k for k in full if delta_convs and _is_delta_conv(instrs[k], cut, tainted)]
    delta_set = set(delta)
    dependent = [k for k in full if k not in delta_set]
    produced = set()
    for k in dependent:
        produced.update(o for o in instrs[k].outs if o is not None)
    reads = set()
    for k in dependent:
        reads.update(a for a in instrs[k].ins if isinstance(a, int))
    for k in delta:
        reads.add(instrs[k].ins[1])  # the weights, sliced per candidate
    # Outputs that do not depend on the layer are still part of the distortion (zero change),
    # and are read from the cache so that the output tree can be rebuilt.
    reads.update(o for o in program.outputs if isinstance(o, int))
    cache = sorted((reads - produced - {cut.y} - set(program.consts)) | {cut.x, cut.y})
    # Producers of the cache: backwards from the cache ids, never through a dependent instruction.
    dep_set = set(dependent)
    needed = set(cache)
    producers = []
    for k in range(len(instrs) - 1, -1, -1):
        ins = instrs[k]
        if k in dep_set:
            continue
        if any(o is not None and o in needed for o in ins.outs):
            producers.append(k)
            needed.update(a for a in ins.ins if isinstance(a, int))
    producers.reverse()
    return LayerSlice(cut, tuple(full), tuple(delta), tuple(dependent), tuple(cache), tuple(producers))


def evaluate(
    program: Program, indices: Sequence[int], env: dict[int, Any], relu_sizes: frozenset = frozenset()
) -> dict[int, Any]:
    """Evaluates ``program.instrs[k]`` for ``k`` in ``indices``, reading and extending ``env``.

    Traced constants are read from ``program.consts``. Block ReLUs call
    :func:`jaxmpc.nn.block_relu.jaxmpc_block_relu`, so they trace like the model's own, except
    those whose ``sizes`` input id is in ``relu_sizes`` (known to be all ``(1, 1)``): they are
    evaluated as ``x * (x >= 0)``, the Block ReLU's own formula for that case (bit-identical,
    cheaper to compile and run).
    """

    def read(a):
        if isinstance(a, Lit):
            return a.value
        if a in env:
            return env[a]
        return program.consts[a]

    for k in indices:
        ins = program.instrs[k]
        args = [read(a) for a in ins.ins]
        if ins.is_block_relu and isinstance(ins.ins[1], int) and ins.ins[1] in relu_sizes:
            x = args[0]
            outs = [x * lax.stop_gradient(x >= 0).astype(x.dtype)]
        elif ins.is_block_relu:
            outs = [jaxmpc_block_relu(*args)]
        else:
            res = ins.prim.bind(*args, **ins.params)
            outs = res if ins.prim.multiple_results else [res]
        for o, v in zip(ins.outs, outs):
            if o is not None:
                env[o] = v
    return env


# --------------------------------------------------------------------------------------------
# FLOP and memory accounting


def instr_flops(ins: Instr, avals: Mapping[int, Any]) -> int:
    """Multiply-add FLOPs (2 per MAC) of a convolution or dot product; 0 for other primitives."""
    if ins.prim is None:
        return 0
    name = ins.prim.name
    if name == "conv_general_dilated":
        out = ins.avals[0]
        rhs = avals[ins.ins[1]] if isinstance(ins.ins[1], int) else np.shape(ins.ins[1].value)
        rhs_shape = rhs.shape if hasattr(rhs, "shape") else rhs
        dn = ins.params["dimension_numbers"]
        rhs_spec = dn.rhs_spec  # (out feature dim, in feature dim, spatial...)
        cin_per_group = int(rhs_shape[rhs_spec[1]])
        window = int(np.prod([rhs_shape[d] for d in rhs_spec[2:]]))
        return 2 * int(np.prod(out.shape)) * cin_per_group * window
    if name == "dot_general":
        (lc, _), _ = ins.params["dimension_numbers"]
        lhs = avals[ins.ins[0]] if isinstance(ins.ins[0], int) else None
        if lhs is None:
            return 0
        k = int(np.prod([lhs.shape[d] for d in lc])) if lc else 1
        return 2 * int(np.prod(ins.avals[0].shape)) * k
    return 0


def slice_flops(program: Program, indices: Sequence[int]) -> int:
    """Convolution and matmul FLOPs of the given instructions (per call, all samples)."""
    return int(sum(instr_flops(program.instrs[k], program.avals) for k in indices))


def slice_bytes(program: Program, indices: Sequence[int]) -> int:
    """Sum of the output sizes of the given instructions, in bytes (an upper bound on live memory)."""
    total = 0
    for k in indices:
        for a in program.instrs[k].avals:
            if hasattr(a, "shape") and hasattr(a, "dtype"):
                total += int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
    return total
