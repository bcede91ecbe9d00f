"""A first-order (Gauss-Newton) estimate of the distortion, for instant previews.

Beyond the paper (Gorski & Avidan, arXiv 2304.10442, §3.1 measure every distortion exactly).
Replacing channel ``c`` of layer ``L`` by a Block ReLU of size ``s`` changes the layer output by

    delta = block_relu(x_c, s) - relu(x_c)        (non-zero in channel c only)

and, to first order, the network output by ``J delta`` where ``J`` is the Jacobian of the
output with respect to the layer output at the clean activations. The estimate is

    D_hat(L, c, s) = mean over samples of ||J delta||^2 / (output elements per sample),

the Gauss-Newton approximation of the exact distortion. It needs one vector-Jacobian product
of the whole network per *probe* (a row of the output Jacobian), which gives the gradient with
respect to every layer's output at once (an additive offset on each layer output is the
differentiated variable), and then only an ``H x W`` dot product per (channel, candidate) pair:

* classification (at most ``max_exact_probes`` outputs per sample): every output is a probe,
  and ``||J delta||^2`` is exact;
* otherwise (segmentation maps): ``num_probes`` Gaussian probes ``r`` with
  ``E[(r . J delta)^2] = ||J delta||^2`` (Hutchinson's estimator), unbiased with relative
  standard deviation about ``sqrt(2 / num_probes)``.

For a layer whose rest of the network is linear in its output (e.g. the last ReLU before
global pooling and a dense classifier) the estimate is exact. :func:`compare_tables` reports
its Spearman rank correlation with exact values; ``docs/distortion.md`` lists measured figures.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc.distortion import _engine as eng
from jaxmpc.distortion import _profile as pf
from jaxmpc.distortion import _program as pg
from jaxmpc.distortion._table import DistortionTable, LayerDistortion

#: Up to this many outputs per sample, every output is a probe (exact Gauss-Newton norm).
MAX_EXACT_PROBES = 256
#: Gaussian probes used beyond that.
NUM_PROBES = 64


def _flat(outs: Sequence[jax.Array]) -> jax.Array:
    n = outs[0].shape[0]
    return jnp.concatenate([o.reshape(n, -1).astype(jnp.float32) for o in outs], axis=1)


@dataclasses.dataclass(frozen=True)
class _Grads:
    xs: tuple[int, ...]  # pre-activation ids of the selected layers
    ys: tuple[int, ...]  # output ids of the selected layers
    relu_sizes: frozenset


def grads_spec(program: pg.Program, cuts: Sequence[pg.Cut], relu_sizes: frozenset) -> eng._Spec:
    """Spec of the whole-network kernels of the estimate for the given layers."""
    idx = tuple(range(len(program.instrs)))
    payload = _Grads(tuple(c.x for c in cuts), tuple(c.y for c in cuts), relu_sizes)
    key = "grads" + eng.signature(program, idx, program.inputs, program.outputs, relu_sizes)
    key += "|" + str([c.index for c in cuts])
    return eng._Spec(key, program, payload)


def _forward(spec: eng._Spec, inputs: tuple, offsets: Sequence[jax.Array] | None) -> tuple[dict, jax.Array]:
    """The forward pass, adding ``offsets[i]`` to the output of layer ``i`` when given."""
    prog = spec.program
    g: _Grads = spec.payload
    where = {y: i for i, y in enumerate(g.ys)}
    env = dict(zip(prog.inputs, inputs))
    for k, ins in enumerate(prog.instrs):
        pg.evaluate(prog, (k,), env, g.relu_sizes)
        if offsets is not None:
            for o in ins.outs:
                if o in where:
                    env[o] = env[o] + offsets[where[o]]
    return env, _flat([eng._read(prog, env, o) for o in prog.outputs])


@functools.partial(jax.jit, static_argnums=0)
def layer_inputs(spec: eng._Spec, inputs: tuple) -> tuple[tuple, tuple]:
    """Pre-activations and clean outputs of the selected layers, from one forward pass."""
    env, _ = _forward(spec, inputs, None)
    g: _Grads = spec.payload
    return tuple(env[x] for x in g.xs), tuple(env[y] for y in g.ys)


@functools.partial(jax.jit, static_argnums=0)
def probe_grads(spec: eng._Spec, probes: jax.Array, inputs: tuple) -> tuple:
    """``J_L^T r`` for every probe ``r`` (``[P, N, O]``) and selected layer ``L``, by one VJP of the
    whole network per probe: a tuple of float32 ``[P, N, H, W, C]``."""
    g: _Grads = spec.payload
    zeros = tuple(jnp.zeros(spec.program.avals[y].shape, spec.program.avals[y].dtype) for y in g.ys)
    _, vjp = jax.vjp(lambda eps: _forward(spec, inputs, eps)[1], zeros)
    return jax.vmap(lambda r: vjp(r)[0])(probes)


def _block_relu_static(x: jax.Array, bh: int, bw: int) -> jax.Array:
    """Block ReLU of every channel of ``x`` ``[N, H, W, C]`` at one static patch size.

    The semantics of :func:`jaxmpc.nn.block_relu` (patches from the top-left corner; the sign of
    the sum of a patch's valid pixels, i.e. of their mean, decides), computed with dense
    reshapes instead of a segment sum: cheap when the same size is applied to all channels.
    Sums may differ from the exact layer's in the last bits, which can flip patches whose mean
    is within rounding of zero; harmless for an estimate.
    """
    if (bh, bw) == (0, 1):
        return x
    if (bh, bw) == (1, 0):
        return jnp.zeros_like(x)
    n, h, w, c = x.shape
    bh, bw = min(bh, h), min(bw, w)
    if (bh, bw) == (1, 1):
        return x * (x >= 0).astype(x.dtype)
    ph, pw = -(-h // bh), -(-w // bw)
    xp = jnp.pad(x, ((0, 0), (0, ph * bh - h), (0, pw * bw - w), (0, 0)))
    keep = jnp.sum(xp.reshape(n, ph, bh, pw, bw, c), axis=(2, 4)) >= 0
    mask = jnp.repeat(jnp.repeat(keep, bh, axis=1), bw, axis=2)[:, :h, :w]
    return x * mask.astype(x.dtype)


@functools.partial(jax.jit, static_argnums=0)
def probe_sums(sizes: tuple, grads: jax.Array, x: jax.Array, y_clean: jax.Array) -> jax.Array:
    """``sum_p (g_p . delta_{c,s})^2`` for every channel ``c`` and static size ``s``: ``[R, N, C]``.

    ``delta_{c,s}`` is channel ``c`` of ``block_relu(x, s) - y_clean``; the contraction over
    ``H x W`` runs for all channels at once. Depends on shapes and sizes only, so layers with
    equal shapes and candidate lists share one compilation.
    """
    out = []
    for bh, bw in sizes:
        delta = (_block_relu_static(x, bh, bw) - y_clean).astype(jnp.float32)
        jd = jnp.einsum("pnhwc,nhwc->pnc", grads, delta)
        out.append(jnp.sum(jnp.square(jd), axis=0))
    return jnp.stack(out)


@dataclasses.dataclass(frozen=True)
class TableComparison:
    """Agreement of an estimated table with an exact one.

    Attributes:
      spearman: per layer, Spearman's rank correlation over its (channel, candidate) entries
        (entries that are exactly 0 in both tables, i.e. base-equivalent, are left out).
      spearman_pooled: the same over all layers' entries pooled (what a global knapsack sees).
      spearman_per_channel: per layer, the median over channels of the rank correlation across
        candidates (how well the estimate orders one channel's options).
      entries: number of entries compared.
    """

    spearman: dict[str, float]
    spearman_pooled: float
    spearman_per_channel: dict[str, float]
    entries: int


def rank_correlation(a: Any, b: Any) -> float:
    """Spearman's rank correlation of two equally long vectors (ties get average ranks).

    Returns NaN when fewer than 2 entries or one vector is constant.
    """
    from scipy.stats import rankdata

    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"rank_correlation: shapes differ, {a.shape} vs {b.shape}")
    if a.size < 2:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    if np.all(ra == ra[0]) or np.all(rb == rb[0]):
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def compare_tables(exact: DistortionTable, estimate: DistortionTable) -> TableComparison:
    """Spearman rank correlations between an estimated and an exact table (same layers/candidates).

    Raises:
      ValueError: if the tables do not cover the same layers with the same candidates.
    """
    per_layer, per_channel = {}, {}
    pooled_a, pooled_b = [], []
    for le in exact.layers:
        if le.name not in estimate:
            raise ValueError(f"layer {le.name!r} is missing from the estimate")
        lh = estimate[le.name]
        if not np.array_equal(le.candidates, lh.candidates) or le.distortion.shape != lh.distortion.shape:
            raise ValueError(f"layer {le.name!r}: the tables have different candidates or channels")
        keep = ~((le.distortion == 0) & (lh.distortion == 0))
        per_layer[le.name] = rank_correlation(le.distortion[keep], lh.distortion[keep])
        rows = []
        for c in range(le.channels):
            k = keep[c]
            if k.sum() >= 3:
                rows.append(rank_correlation(le.distortion[c, k], lh.distortion[c, k]))
        rows = [r for r in rows if not math.isnan(r)]
        per_channel[le.name] = float(np.median(rows)) if rows else float("nan")
        pooled_a.append(le.distortion[keep])
        pooled_b.append(lh.distortion[keep])
    a = np.concatenate(pooled_a) if pooled_a else np.zeros(0)
    b = np.concatenate(pooled_b) if pooled_b else np.zeros(0)
    return TableComparison(per_layer, rank_correlation(a, b), per_channel, int(a.size))


def estimate_distortion(
    model: Any,
    variables: Mapping[str, Any],
    images: Any,
    *,
    candidates: Mapping[str, Any] | Any = None,
    layers: Sequence[str] | None = None,
    base_spec: Mapping[str, Any] | None = None,
    num_probes: int = NUM_PROBES,
    max_exact_probes: int = MAX_EXACT_PROBES,
    seed: int = 0,
    memory_limit: int | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> DistortionTable:
    """First-order (Gauss-Newton) estimate of the distortion table; see the module docstring.

    Same inputs, validation and output layout as :func:`profile_distortion` (its table has
    ``meta["method"] == "first_order"``), at the cost of one vector-Jacobian product of the whole
    network per probe (for all layers at once) instead of one partial forward pass per (layer,
    channel, candidate). All selected layers' activations of the samples and one chunk of probe
    gradients are held in memory.

    Args:
      model, variables, images, candidates, layers, base_spec, apply_kwargs: as for
        :func:`profile_distortion`.
      num_probes: Gaussian probes per layer when the output has more than
        ``max_exact_probes`` elements per sample.
      max_exact_probes: up to this many outputs per sample, use every output as a probe.
      seed: seed of the Gaussian probes.
      memory_limit: bytes for a chunk of probe gradients (default as for the sweep).
      progress: show a progress bar over probe chunks.

    Returns:
      A :class:`DistortionTable` of estimates.

    Example::

      >>> import jax
      >>> from jaxmpc.nn import ResNetSmall
      >>> model = ResNetSmall()
      >>> x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
      >>> variables = model.init(jax.random.key(1), x)
      >>> est = estimate_distortion(model, variables, x)
      >>> est.meta["method"], est["stem/relu"].distortion.shape
      ('first_order', (8, 42))
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    for name, v in (("num_probes", num_probes), ("max_exact_probes", max_exact_probes)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    problem = pf.build_problem(
        model, variables, images, candidates=candidates, layers=layers, base_spec=base_spec, apply_kwargs=apply_kwargs
    )
    prog = problem.program
    dev = jax.local_devices()[0]
    mem = memory_limit if memory_limit is not None else pf.default_memory_limit(dev)
    n = problem.num_samples
    n_out = sum(int(np.prod(prog.avals[o].shape[1:])) for o in prog.outputs)
    exact_basis = n_out <= max_exact_probes
    total_probes = n_out if exact_basis else int(num_probes)
    rng = np.random.default_rng(seed)
    plans = problem.layers
    spec = grads_spec(prog, [p.cut for p in plans], problem.relu_sizes)
    xs, ys = layer_inputs(spec, problem.inputs)
    # Memory per probe: the gradients of every selected layer plus the backward pass's temporaries.
    grad_bytes = sum(int(np.prod(p.cut.shape)) * 4 for p in plans)
    per_probe = grad_bytes + pg.slice_bytes(prog, range(len(prog.instrs)))
    p_chunk = max(1, min(total_probes, int(mem // max(1, per_probe))))
    acc = [np.zeros((plan.channels, len(plan.reps), n)) for plan in plans]
    chunks = range(0, total_probes, p_chunk)
    for p0 in tqdm(chunks, disable=not progress, unit="probe chunk"):
        p1 = min(total_probes, p0 + p_chunk)
        probes = np.zeros((p_chunk, n, n_out), np.float32)
        if exact_basis:
            probes[np.arange(p1 - p0), :, np.arange(p0, p1)] = 1.0
        else:
            probes[: p1 - p0] = rng.standard_normal((p1 - p0, n, n_out), dtype=np.float32)
        grads = probe_grads(spec, jnp.asarray(probes), problem.inputs)
        for i, plan in enumerate(plans):
            sizes = tuple((int(a), int(b)) for a, b in plan.candidates[list(plan.reps)])
            sums = probe_sums(sizes, grads[i], xs[i], ys[i])  # [R, N, C]
            acc[i] += np.transpose(np.asarray(sums, np.float64), (2, 0, 1))
    out_layers = []
    for i, plan in enumerate(plans):
        norm = n_out if exact_basis else total_probes * n_out
        values = np.mean(acc[i], axis=2) / norm  # [C, reps]
        table = np.zeros((plan.channels, len(plan.candidates)))
        for ch in range(plan.channels):
            plan.fill(ch, dict(zip(plan.reps, values[ch])), table[ch])
        out_layers.append(LayerDistortion.create(plan.name, plan.height, plan.width, plan.candidates, table))
    meta = {
        "method": "first_order",
        "model": problem.model_name,
        "input_shape": list(problem.input_shape),
        "num_samples": n,
        "base": "relu" if problem.base_is_relu else "spec",
        "probes": "exact" if exact_basis else f"gaussian x{total_probes} (seed {seed})",
        "jax_version": jax.__version__,
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    return DistortionTable(tuple(out_layers), meta)
