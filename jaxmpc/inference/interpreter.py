"""Secure execution of whole networks by interpreting their jaxpr.

``secure_apply(model, variables, x)`` traces ``model.apply`` to a jaxpr once and walks it
equation by equation. Every value is one of

* :class:`~jaxmpc.inference.backends.Pub` -- known to all (constants, the block spec),
* :class:`~jaxmpc.inference.backends.Srv` -- known to the server only (the weights and everything
  it computes from them in the clear, e.g. BatchNorm's ``scale * rsqrt(var + eps)``),
* :class:`~jaxmpc.inference.backends.Sec` -- depends on the client's input: secret-shared,
* :class:`Pending` -- the output of a convolution or dense layer with server weights whose
  evaluation is deferred, so that following per-channel affine maps with server or public
  coefficients (BatchNorm, biases) are folded into the weights and the bias: *BatchNorm is
  folded into the convolutions automatically*, for any network.

Equations without a secret operand run in the clear (at the server, or everywhere for public
values); equations with one are mapped to protocols: linear structural ops (reshape, slicing,
padding, sums, average pooling ...) act on each share locally, products with public constants
are local, products with server weights use the server-weights protocol, ``max(x, 0)`` (how
``jax.nn.relu`` lowers) is a secure ReLU, ``reduce_window_max`` a secure MaxPool, comparisons
give secret bits, ``select_n`` a secure select, and the jitted ``jaxmpc_block_relu`` of
:class:`jaxmpc.nn.BlockReLU` a secure Block ReLU with the public per-channel patch sizes. No
per-architecture secure code exists: any ``flax.linen`` (or plain JAX) network built from these
operations runs as it is. Anything else on secret data raises ``NotImplementedError`` naming the
primitive and the layer.

Fixed point: secret values carry a scale (``frac_bits``; 0 for bits); every product of two
fixed-point operands is truncated back once (``trunc_a``), so each layer adds at most one
``-1``/``0`` ulp error per truncation (plus the division of average pooling).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from jaxmpc.core import ring as _ring
from jaxmpc.inference.backends import Pub, Sec, Srv

__all__ = ["Interpreter", "Pending", "UnsupportedOperation"]

U64 = jnp.uint64
BLOCK_RELU_NAME = "jaxmpc_block_relu"


class UnsupportedOperation(NotImplementedError):
    """A primitive jaxmpc cannot evaluate on secret data."""


@dataclasses.dataclass(eq=False)
class Pending:
    """``(bilinear(x, w) * scale + bias)`` with server weights ``w``, not yet evaluated."""

    x: Sec
    w: Srv | Pub  # float kernel (server's)
    kind: str  # "conv" | "dot"
    params: dict
    out_shape: tuple
    chan_dims: tuple  # output dims that come from the kernel's free dims
    origin: str
    scale: object = None  # Srv | Pub float broadcastable to out_shape, varying only along chan_dims
    bias: object = None  # Srv | Pub float broadcastable to out_shape

    @property
    def shape(self):
        return self.out_shape


def _is_secret(v) -> bool:
    return isinstance(v, (Sec, Pending))


def _integer_valued(a: np.ndarray) -> bool:
    return bool(a.size) and np.all(np.isfinite(a)) and np.all(a == np.round(a)) and np.max(np.abs(a)) < 2**31


STRUCTURAL = {
    "reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "rev", "slice", "dynamic_slice",
    "dynamic_update_slice", "gather", "concatenate", "pad", "reduce_sum", "reduce_window_sum", "cumsum",
    "copy", "copy_p", "split",
}
IDENTITY = {"stop_gradient", "optimization_barrier", "reduce_precision"}
CALLS = {"pjit", "jit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call", "custom_vjp_call",
         "custom_vjp_call_jaxpr", "custom_lin"}
# operands of structural primitives that are indices (must be public), by position
INDEX_OPERANDS = {"dynamic_slice": lambda n: range(1, n), "dynamic_update_slice": lambda n: range(2, n),
                  "gather": lambda n: range(1, n)}


class Interpreter:
    """Walks a jaxpr with Pub/Srv/Sec values on a backend (secure or fixed point)."""

    def __init__(self, backend, frac_bits: int, top_name: str | None = None):
        self.b = backend
        self.f = frac_bits
        self.top = top_name
        self.layers: list[tuple[str, str]] = []

    # -- driver --------------------------------------------------------------------------------
    def run(self, jaxpr: jcore.Jaxpr, consts, args, prefix: str = ""):
        env: dict = {}

        def read(v):
            if isinstance(v, jcore.Literal):
                return Pub(np.asarray(v.val))
            return env[v]

        for var, val in zip(jaxpr.constvars, consts):
            env[var] = val if isinstance(val, (Pub, Srv, Sec, Pending)) else Pub(np.asarray(val))
        for var, val in zip(jaxpr.invars, args):
            env[var] = val
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            label = self._label(eqn, prefix)
            outvals = self.eqn(eqn, invals, label)
            for v, o in zip(eqn.outvars, outvals):
                if not isinstance(v, jcore.DropVar):
                    env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def _label(self, eqn, prefix: str) -> str:
        stack = str(eqn.source_info.name_stack)
        parts = [p for p in stack.split("/") if p]
        if self.top and parts and parts[0] == self.top and not prefix:
            parts = parts[1:]
        label = "/".join(([prefix] if prefix else []) + parts)
        return label or eqn.primitive.name

    def note_layer(self, label: str, op: str):
        if not self.layers or self.layers[-1] != (label, op):
            self.layers.append((label, op))
            annotate = getattr(self.b, "annotate", None)
            if annotate is not None:
                annotate(label, op)

    # -- one equation --------------------------------------------------------------------------
    def eqn(self, eqn, invals, label: str):
        name = eqn.primitive.name
        if name in CALLS:
            return self._call(eqn, invals, label)
        if not any(_is_secret(v) for v in invals):
            return self._clear(eqn, invals)
        if name in IDENTITY:
            return [self.materialize(v) if isinstance(v, Pending) else v for v in invals[: len(eqn.outvars)]]
        rule = RULES.get(name)
        if rule is None and name in STRUCTURAL:
            rule = _rule_structural
        if rule is None:
            raise UnsupportedOperation(
                f"jaxmpc cannot evaluate '{name}' on secret data (in layer '{label}'). Supported on secrets: linear "
                "maps, products with public or server values, max/ReLU, comparisons, select, max/avg pooling and "
                "jaxmpc_block_relu."
            )
        with self.b.scope(label, absolute=True):
            out = rule(self, eqn, invals, label)
        return out if isinstance(out, (list, tuple)) else [out]

    def _clear(self, eqn, invals):
        prim, params = eqn.primitive, eqn.params
        fn = lambda *a: prim.bind(*a, **params)  # noqa: E731
        if all(isinstance(v, Pub) for v in invals):
            with jax.ensure_compile_time_eval():
                out = fn(*[v.value for v in invals])
            outs = out if prim.multiple_results else [out]
            return [Pub(np.asarray(o)) for o in outs]
        out = self.b.server(lambda *a: tuple(fn(*a)) if prim.multiple_results else fn(*a), *invals)
        return list(out) if prim.multiple_results else [out]

    def _call(self, eqn, invals, label: str):
        name = eqn.primitive.name
        params = eqn.params
        if name in ("pjit", "jit") and params.get("name") == BLOCK_RELU_NAME and _is_secret(invals[0]):
            sizes = invals[1]
            if not isinstance(sizes, Pub):
                raise ValueError(f"layer '{label}': Block ReLU patch sizes must be public constants (the block spec)")
            x = self.as_sec(invals[0])
            with self.b.scope(label, absolute=True):
                self.note_layer(label, "block_relu")
                return [self.b.block_relu(x, np.asarray(sizes.value))]
        if not any(_is_secret(v) for v in invals):
            return self._clear(eqn, invals)
        inner = params.get("jaxpr") or params.get("call_jaxpr") or params.get("fun_jaxpr")
        if inner is None:
            raise UnsupportedOperation(f"cannot look inside '{name}' (layer '{label}')")
        if isinstance(inner, jcore.ClosedJaxpr):
            jaxpr, consts = inner.jaxpr, inner.consts
        else:
            jaxpr, consts = inner, ()
        n = len(jaxpr.invars)
        return self.run(jaxpr, consts, invals[len(invals) - n:] if len(invals) > n else invals, prefix=label)

    # -- conversions ---------------------------------------------------------------------------
    def encode_pub(self, v: Pub, scale: int):
        a = np.asarray(v.value, np.float64)
        return jnp.asarray(_ring.encode(a, scale))

    def as_sec(self, v, shape=None, scale=None) -> Sec:
        """Any value as a secret (public/server values become trivial sharings)."""
        if isinstance(v, Pending):
            v = self.materialize(v)
        s = self.f if scale is None else scale
        if isinstance(v, Sec):
            out = v
        elif isinstance(v, Pub):
            arr = np.asarray(v.value)
            if arr.dtype == bool:
                out = self.b.sec_from_pub(jnp.asarray(arr.astype(np.uint64)), 0)
            else:
                out = self.b.sec_from_pub(self.encode_pub(v, s), s)
        else:
            out = self.b.sec_from_srv(self.b.encode_srv(v, s), s)
        if shape is not None and tuple(out.shape) != tuple(shape):
            out = self.b.map(out, lambda a: jnp.broadcast_to(a, shape))
        return out

    def rescale(self, a: Sec, scale: int) -> Sec:
        if a.scale == scale:
            return a
        if a.scale < scale:
            k = jnp.asarray(np.uint64(2 ** (scale - a.scale)))
            return self.b.mul_pub(a, k, scale - a.scale)
        return self.b.trunc(a, a.scale - scale)

    def fixed(self, a: Sec) -> Sec:
        """Truncates a product back to ``frac_bits`` (bits keep scale 0)."""
        return self.b.trunc(a, a.scale - self.f) if a.scale > self.f else a

    # -- deferred linear layers ----------------------------------------------------------------
    def materialize(self, p: Pending) -> Sec:
        b, f = self.b, self.f
        with b.scope(p.origin, absolute=True):
            w = p.w
            if p.scale is not None:
                w = b.server(functools.partial(_fold_scale, kind=p.kind, params=p.params, chan_dims=p.chan_dims,
                                               out_shape=p.out_shape), w, p.scale)
            w_ring = b.encode_srv(w, f)
            y = self.fixed(b.bilinear_srv(p.x, w_ring, _ring_op(p.kind, p.params), f))
            if p.bias is not None:
                shape = p.out_shape
                bias = b.server(lambda v: encode_traced_bcast(v, shape, y.scale), p.bias)
                y = b.add_srv(y, bias)
        return y


def encode_traced_bcast(v, shape, scale):
    return _ring.encode_traced(jnp.broadcast_to(v, shape), scale)


def _fold_scale(w, s, *, kind, params, chan_dims, out_shape):
    """Multiplies the kernel by a per-output-channel scale (BatchNorm folding)."""
    s = jnp.broadcast_to(s, tuple(out_shape[d] if d in chan_dims else 1 for d in range(len(out_shape))))
    vals = s.reshape(tuple(out_shape[d] for d in chan_dims))
    if kind == "conv":
        dn = params["dimension_numbers"]
        out_feat_w = dn.rhs_spec[0]
        shape = [1] * w.ndim
        shape[out_feat_w] = vals.size
        return w * vals.reshape(shape)
    (_, rc), (_, rb) = params["dimension_numbers"]
    free = [d for d in range(w.ndim) if d not in rc and d not in rb]
    shape = [1] * w.ndim
    for d, n in zip(free, vals.shape):
        shape[d] = n
    return w * vals.reshape(shape)


def _ring_op(kind: str, params: dict):
    if kind == "conv":
        if params.get("batch_group_count", 1) != 1:
            raise UnsupportedOperation("batch_group_count != 1")
        return functools.partial(
            _ring.ring_conv, window_strides=params["window_strides"], padding=params["padding"],
            lhs_dilation=params["lhs_dilation"], rhs_dilation=params["rhs_dilation"],
            dimension_numbers=params["dimension_numbers"], feature_group_count=params["feature_group_count"],
        )
    return functools.partial(_ring.ring_dot_general, dimension_numbers=params["dimension_numbers"])


def _chan_dims(kind: str, params: dict, out_ndim: int, w_ndim: int):
    if kind == "conv":
        return (params["dimension_numbers"].out_spec[1],)
    (_, rc), (_, rb) = params["dimension_numbers"]
    n_free = w_ndim - len(rc) - len(rb)
    return tuple(range(out_ndim - n_free, out_ndim))


def _varies_only_on(shape, out_shape, dims) -> bool:
    s = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    return all(s[d] == 1 for d in range(len(out_shape)) if d not in dims)


# ----------------------------------------------------------------------------------------------
# rules: each gets (interp, eqn, invals, label) with at least one secret operand


def _out_shape(eqn):
    return tuple(eqn.outvars[0].aval.shape)


def _broadcast_sec(it: Interpreter, a: Sec, shape):
    if tuple(a.shape) == tuple(shape):
        return a
    return it.b.map(a, lambda v: jnp.broadcast_to(v, shape))


def _rule_linear_layer(it: Interpreter, eqn, invals, label, kind: str):
    x, w = invals
    out_shape = _out_shape(eqn)
    params = eqn.params
    if kind == "conv" and params.get("batch_group_count", 1) != 1:
        raise UnsupportedOperation(f"layer '{label}': grouped batch convolution")
    if _is_secret(x) and isinstance(w, (Srv, Pub)):
        x = it.as_sec(x)
        if isinstance(w, Pub):
            # public kernel (e.g. an interpolation matrix): local product
            arr = np.asarray(w.value)
            scale = 0 if _integer_valued(arr) else it.f
            it.note_layer(label, "linear_public")
            y = it.b.bilinear_pub(x, it.encode_pub(w, scale), _ring_op(kind, params), scale)
            return it.fixed(y)
        if kind == "dot":
            (_, rc), (_, rb) = params["dimension_numbers"]
            if rb:
                y = it.b.bilinear_srv(x, it.b.encode_srv(w, it.f), _ring_op(kind, params), it.f)
                it.note_layer(label, "matmul")
                return it.fixed(y)
        it.note_layer(label, "conv2d" if kind == "conv" else "dense")
        return Pending(x, w, kind, dict(params), out_shape, _chan_dims(kind, params, len(out_shape), len(w.shape)),
                       label)
    a, bb = it.as_sec(x), it.as_sec(w)
    it.note_layer(label, "bilinear_secret")
    return it.fixed(it.b.bilinear_sec(a, bb, _ring_op(kind, params)))


def _rule_conv(it, eqn, invals, label):
    return _rule_linear_layer(it, eqn, invals, label, "conv")


def _rule_dot(it, eqn, invals, label):
    return _rule_linear_layer(it, eqn, invals, label, "dot")


def _rule_add_sub(it: Interpreter, eqn, invals, label, sign: int):
    a, bb = invals
    out_shape = _out_shape(eqn)
    # fold public/server additive terms into a pending linear layer
    if isinstance(a, Pending) and isinstance(bb, (Pub, Srv)):
        term = bb if sign > 0 else it.b.server(lambda v: -v, bb) if isinstance(bb, Srv) else Pub(-np.asarray(bb.value))
        a.bias = term if a.bias is None else _combine_clear(it, a.bias, term, jnp.add)
        return a
    if sign > 0 and isinstance(bb, Pending) and isinstance(a, (Pub, Srv)):
        bb.bias = a if bb.bias is None else _combine_clear(it, bb.bias, a, jnp.add)
        return bb
    if isinstance(a, (Pub, Srv)) and sign < 0:
        # c - x = -(x - c)
        x = it.as_sec(bb)
        return it.b.neg(_rule_add_sub(it, eqn, [x, a], label, -1))
    if isinstance(a, (Pub, Srv)):
        a, bb = bb, a
    x = _broadcast_sec(it, it.as_sec(a), out_shape)
    if isinstance(bb, Pub):
        enc = it.encode_pub(Pub(np.broadcast_to(np.asarray(bb.value, np.float64) * sign, out_shape)), x.scale)
        return it.b.add_pub(x, enc)
    if isinstance(bb, Srv):
        enc = it.b.server(lambda v: encode_traced_bcast(v * sign, out_shape, x.scale), bb)
        return it.b.add_srv(x, enc)
    y = _broadcast_sec(it, it.as_sec(bb), out_shape)
    scale = max(x.scale, y.scale)
    x, y = it.rescale(x, scale), it.rescale(y, scale)
    return it.b.add(x, y) if sign > 0 else it.b.sub(x, y)


def _combine_clear(it, u, v, op):
    if isinstance(u, Pub) and isinstance(v, Pub):
        return Pub(np.asarray(op(np.asarray(u.value), np.asarray(v.value))))
    return it.b.server(lambda p, q: op(p, q), u, v)


def _rule_add(it, eqn, invals, label):
    return _rule_add_sub(it, eqn, invals, label, +1)


def _rule_sub(it, eqn, invals, label):
    return _rule_add_sub(it, eqn, invals, label, -1)


def _rule_neg(it, eqn, invals, label):
    return it.b.neg(it.as_sec(invals[0]))


def _rule_mul(it: Interpreter, eqn, invals, label):
    a, bb = invals
    out_shape = _out_shape(eqn)
    if not _is_secret(a):
        a, bb = bb, a
    # fold per-channel public/server factors into a pending linear layer (BatchNorm)
    if isinstance(a, Pending) and isinstance(bb, (Pub, Srv)) and _varies_only_on(bb.shape, out_shape, a.chan_dims):
        a.scale = bb if a.scale is None else _combine_clear(it, a.scale, bb, jnp.multiply)
        if a.bias is not None:
            a.bias = _combine_clear(it, a.bias, bb, jnp.multiply)
        return a
    x = _broadcast_sec(it, it.as_sec(a), out_shape)
    if isinstance(bb, Pub):
        arr = np.broadcast_to(np.asarray(bb.value, np.float64), out_shape)
        if _integer_valued(arr):
            k = _ring.from_signed(jnp.asarray(arr.astype(np.int64)))
            return it.b.mul_pub(x, jnp.broadcast_to(k, out_shape), 0)
        return it.fixed(it.b.mul_pub(x, it.encode_pub(Pub(arr), it.f), it.f))
    if isinstance(bb, Srv):
        it.note_layer(label, "mul_server")
        w = it.b.server(lambda v: encode_traced_bcast(v, out_shape, it.f), bb)
        return it.fixed(it.b.bilinear_srv(x, w, lambda p, q: p * q, it.f))
    y = _broadcast_sec(it, it.as_sec(bb), out_shape)
    # a scale-0 factor (a comparison's bit, or an integer): no truncation needed, and a DReLU
    # output uses the cheaper dealer-bit product (mul_bit falls back to Beaver otherwise)
    if y.scale == 0:
        it.note_layer(label, "mul_bit")
        return it.b.mul_bit(x, y)
    if x.scale == 0:
        it.note_layer(label, "mul_bit")
        return it.b.mul_bit(y, x)
    it.note_layer(label, "mul")
    return it.fixed(it.b.bilinear_sec(x, y, lambda p, q: p * q))


def _rule_div(it: Interpreter, eqn, invals, label):
    a, bb = invals
    if not isinstance(bb, Pub):
        raise UnsupportedOperation(f"layer '{label}': division by a secret or server value")
    out_shape = _out_shape(eqn)
    x = _broadcast_sec(it, it.as_sec(a), out_shape)
    d = np.broadcast_to(np.asarray(bb.value, np.float64), out_shape)
    if np.any(d == 0):
        raise ValueError(f"layer '{label}': division by zero")
    if _integer_valued(d) and np.all(d > 0):
        if np.all(d == d.flat[0]):
            return it.b.div(x, int(d.flat[0]))
        return it.b.div(x, d.astype(np.int64))
    return it.fixed(it.b.mul_pub(x, it.encode_pub(Pub(1.0 / d), it.f), it.f))


def _relu_of(it: Interpreter, x: Sec, label: str) -> Sec:
    it.note_layer(label, "relu")
    return it.b.relu(x)


def _rule_max_min(it: Interpreter, eqn, invals, label, is_max: bool):
    a, bb = invals
    out_shape = _out_shape(eqn)
    if not _is_secret(a):
        a, bb = bb, a
    x = _broadcast_sec(it, it.as_sec(a), out_shape)
    if isinstance(bb, Pub) and np.all(np.asarray(bb.value) == 0):
        if is_max:
            return _relu_of(it, x, label)
        return it.b.sub(x, _relu_of(it, x, label))  # min(x, 0) = x - relu(x)
    y = _broadcast_sec(it, it.as_sec(bb, scale=x.scale), out_shape)
    scale = max(x.scale, y.scale)
    x, y = it.rescale(x, scale), it.rescale(y, scale)
    d = it.b.sub(x, y)
    r = _relu_of(it, d, label)
    return it.b.add(y, r) if is_max else it.b.sub(x, r)  # max = y + relu(x-y); min = x - relu(x-y)


def _rule_max(it, eqn, invals, label):
    return _rule_max_min(it, eqn, invals, label, True)


def _rule_min(it, eqn, invals, label):
    return _rule_max_min(it, eqn, invals, label, False)


def _rule_compare(it: Interpreter, eqn, invals, label):
    name = eqn.primitive.name
    a, bb = invals
    out_shape = _out_shape(eqn)
    sa = _broadcast_sec(it, it.as_sec(a), out_shape)
    sb = _broadcast_sec(it, it.as_sec(bb, scale=sa.scale), out_shape)
    scale = max(sa.scale, sb.scale)
    sa, sb = it.rescale(sa, scale), it.rescale(sb, scale)
    it.note_layer(label, "compare")
    one = jnp.ones(out_shape, U64)
    if name == "ge":  # a >= b
        return it.b.drelu(it.b.sub(sa, sb))
    if name == "le":
        return it.b.drelu(it.b.sub(sb, sa))
    if name == "gt":  # a > b = 1 - [b - a >= 0]
        return it.b.add_pub(it.b.neg(it.b.drelu(it.b.sub(sb, sa))), one)
    if name == "lt":
        return it.b.add_pub(it.b.neg(it.b.drelu(it.b.sub(sa, sb))), one)
    raise UnsupportedOperation(f"layer '{label}': comparison '{name}' on secret data")


def _rule_select(it: Interpreter, eqn, invals, label):
    pred, *cases = invals
    out_shape = _out_shape(eqn)
    if isinstance(pred, Pub):
        p = np.broadcast_to(np.asarray(pred.value), out_shape)
        secs = [_broadcast_sec(it, it.as_sec(c), out_shape) for c in cases]
        scale = max(s.scale for s in secs)
        secs = [it.rescale(s, scale) for s in secs]
        pj = jnp.asarray(p.astype(np.int32))
        return it.b.combine(lambda *v: lax.select_n(pj, *v), *secs)
    if len(cases) != 2:
        raise UnsupportedOperation(f"layer '{label}': select_n with a secret predicate and {len(cases)} cases")
    bit = _broadcast_sec(it, it.as_sec(pred), out_shape)
    x0 = _broadcast_sec(it, it.as_sec(cases[0]), out_shape)
    x1 = _broadcast_sec(it, it.as_sec(cases[1]), out_shape)
    scale = max(x0.scale, x1.scale)
    x0, x1 = it.rescale(x0, scale), it.rescale(x1, scale)
    it.note_layer(label, "select")
    return it.b.add(x0, it.b.mul_bit(it.b.sub(x1, x0), bit))


def _rule_convert(it: Interpreter, eqn, invals, label):
    (x,) = invals
    new = np.dtype(eqn.params["new_dtype"])
    if np.issubdtype(new, np.floating) or new == bool:
        return x if isinstance(x, Sec) else it.as_sec(x)
    raise UnsupportedOperation(f"layer '{label}': conversion of secret data to {new}")


def _rule_maxpool(it: Interpreter, eqn, invals, label):
    (x,) = invals
    p = eqn.params
    if any(d != 1 for d in p["base_dilation"]) or any(d != 1 for d in p["window_dilation"]):
        raise UnsupportedOperation(f"layer '{label}': dilated max pooling")
    it.note_layer(label, "maxpool")
    return it.b.maxpool(it.as_sec(x), p["window_dimensions"], p["window_strides"], p["padding"])


def _rule_reduce_max(it: Interpreter, eqn, invals, label):
    (x,) = invals
    x = it.as_sec(x)
    axes = tuple(eqn.params["axes"])
    window = tuple(x.shape[d] if d in axes else 1 for d in range(len(x.shape)))
    it.note_layer(label, "max")
    y = it.b.maxpool(x, window, window, "VALID")
    return it.b.map(y, lambda v: v.reshape(_out_shape(eqn)))


def _rule_integer_pow(it: Interpreter, eqn, invals, label):
    (x,) = invals
    y = eqn.params["y"]
    if y < 1:
        raise UnsupportedOperation(f"layer '{label}': integer_pow with exponent {y}")
    x = it.as_sec(x)
    out = x
    for _ in range(y - 1):
        out = it.fixed(it.b.bilinear_sec(out, x, lambda p, q: p * q))
    it.note_layer(label, "pow")
    return out


def _rule_structural(it: Interpreter, eqn, invals, label):
    prim, params = eqn.primitive, dict(eqn.params)
    name = prim.name
    idx = set(INDEX_OPERANDS.get(name, lambda n: ())(len(invals)))
    for i in idx:
        if not isinstance(invals[i], Pub):
            raise UnsupportedOperation(f"layer '{label}': '{name}' with secret indices")
    if name == "pad":
        x, pv = invals
        x = it.as_sec(x)
        if not isinstance(pv, Pub):
            raise UnsupportedOperation(f"layer '{label}': pad with a secret padding value")
        zero = jnp.asarray(np.uint64(0))
        y = it.b.map(x, lambda a: lax.pad(a, zero, params["padding_config"]))
        v = float(np.asarray(pv.value))
        if v != 0.0:
            mask = lax.pad(jnp.zeros(x.shape, U64), jnp.asarray(np.uint64(1)), params["padding_config"])
            enc = int(np.asarray(_ring.encode(np.array(v), x.scale)).view(np.uint64))
            y = it.b.add_pub(y, mask * jnp.asarray(np.uint64(enc)))
        return y
    data_pos = [i for i in range(len(invals)) if i not in idx]
    secs = [it.as_sec(invals[i]) for i in data_pos]
    scale = max(s.scale for s in secs)
    secs = [it.rescale(s, scale) for s in secs]
    consts = {i: jnp.asarray(invals[i].value) for i in idx}

    def apply(*datas):
        args, k = [], 0
        for i in range(len(invals)):
            if i in idx:
                args.append(consts[i])
            else:
                args.append(datas[k])
                k += 1
        out = prim.bind(*args, **params)
        return out

    if prim.multiple_results:
        # e.g. split: apply once per output
        n = len(eqn.outvars)
        return [it.b.combine(lambda *d, j=j: apply(*d)[j], *secs) for j in range(n)]
    return it.b.combine(apply, *secs)


RULES = {
    "conv_general_dilated": _rule_conv,
    "dot_general": _rule_dot,
    "add": _rule_add,
    "add_any": _rule_add,
    "sub": _rule_sub,
    "neg": _rule_neg,
    "mul": _rule_mul,
    "div": _rule_div,
    "max": _rule_max,
    "min": _rule_min,
    "ge": _rule_compare,
    "gt": _rule_compare,
    "le": _rule_compare,
    "lt": _rule_compare,
    "select_n": _rule_select,
    "convert_element_type": _rule_convert,
    "reduce_window_max": _rule_maxpool,
    "reduce_max": _rule_reduce_max,
    "integer_pow": _rule_integer_pow,
}
