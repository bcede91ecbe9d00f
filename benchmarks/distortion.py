"""Distortion-sweep benchmark: batched sweep vs a loop of single-candidate calls, and FLOP rates.

For each measured layer, both methods start from the same cached activations (the layer's
cache and the clean outputs are computed once, outside the timings) and evaluate the same
(channel, candidate) pairs:

* **batched**: :func:`jaxmpc.distortion._engine.sweep_batch`, the kernel of
  :func:`jaxmpc.distortion.profile_distortion`, at the batch size the profiler picks
  (``--batch`` overrides it);
* **loop**: one jitted single-candidate call per pair of the straightforward rest of the
  network (every instruction that depends on the layer output, evaluated on the perturbed
  output; the reference's way, but with caching), dispatched asynchronously and synchronised
  once at the end; also timed synchronously (each result fetched before the next call).

``--breakdown`` adds the two ablations: the batched kernel without delta convolutions, and the
loop with them. Compilation is excluded (one warm-up pass each). Throughput is candidates per
second. FLOPs per candidate are the convolution and matmul FLOPs each method executes, counted
from the jaxpr (2 per multiply-add), next to XLA's ``cost_analysis`` of the batched kernel;
"effective" rates divide the loop's (full) FLOPs by the batched time. The reference
FLOP rate is a plain float32 ``lax.conv_general_dilated`` (3x3, stride 1, SAME) measured the
same way, both for a standard shape (64 -> 64 channels, 32x32, batch 32) and, per model, the
conv shapes the model itself uses, weighted by their FLOPs in the sweep.

"Whole sweep" rows weight the layers by the number of pairs a full sweep evaluates in each
(time = sum over layers of pairs / rate).

Usage::

    python benchmarks/distortion.py                   # both models, default settings
    python benchmarks/distortion.py --quick           # fewer pairs (smoke run)
    python benchmarks/distortion.py --markdown docs/bench_distortion_table.md
    python benchmarks/distortion.py --breakdown --estimate   # + ablations and the estimate's Spearman
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc.distortion import _engine as eng
from jaxmpc.distortion import _profile as pf
from jaxmpc.distortion import _program as pg
from jaxmpc.nn import models


def _trained_like_variables(model, shape, key):
    """Random weights with non-trivial BatchNorm statistics (one train-mode pass on shifted data)."""
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (32,) + shape)
    variables = model.init(k2, x[:1])
    _, upd = model.apply(variables, 1.5 * x + 0.3, train=True, mutable=["batch_stats"])
    return {**variables, **upd}


def _timeit(fn, min_time: float, min_reps: int = 1) -> float:
    """Seconds per call of ``fn`` (which blocks), repeated for at least ``min_time``."""
    fn()
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        dt = time.perf_counter() - t0
        if reps >= min_reps and dt >= min_time:
            return dt / reps


def conv_rate(n: int, h: int, w: int, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> float:
    """GFLOP/s of one float32 convolution (NHWC, HWIO, SAME)."""
    x = jnp.ones((n, h, w, cin), jnp.float32)
    wt = jnp.full((k, k, cin // groups, cout), 0.01, jnp.float32)
    f = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
        )
    )
    out = jax.eval_shape(f, x, wt)
    flops = 2 * np.prod(out.shape) * (cin // groups) * k * k
    dt = _timeit(lambda: f(x, wt).block_until_ready(), 1.0, min_reps=3)
    return flops / dt / 1e9


def model_conv_mix(problem, layers) -> list[tuple[tuple, float]]:
    """Conv shapes of the dependent parts of ``layers`` with their share of the sweep's FLOPs."""
    prog = problem.program
    shares: dict[tuple, float] = {}
    for plan in layers:
        sl = pg.slice_layer(prog, plan.cut)
        pairs = sum(len(plan.columns(c)) for c in range(plan.channels))
        for k in sl.full:
            ins = prog.instrs[k]
            if ins.prim is None or ins.prim.name != "conv_general_dilated":
                continue
            lhs = prog.avals[ins.ins[0]]
            rhs = prog.avals[ins.ins[1]]
            out = ins.avals[0]
            key = (
                tuple(lhs.shape[1:]),
                tuple(rhs.shape),
                tuple(ins.params["window_strides"]),
                int(ins.params["feature_group_count"]),
                tuple(out.shape[1:]),
            )
            shares[key] = shares.get(key, 0.0) + pairs * pg.instr_flops(ins, prog.avals)
    total = sum(shares.values()) or 1.0
    return sorted(((k, v / total) for k, v in shares.items()), key=lambda kv: -kv[1])


def mix_rate(mix, batch_images: int) -> float:
    """FLOP-weighted harmonic mean of the conv rates of a model's conv shapes."""
    t = 0.0
    for (lhs, rhs, strides, groups, _), share in mix:
        if share < 0.01:
            continue
        h, w, cin = lhs
        k, _, _, cout = rhs
        r = conv_rate(batch_images, h, w, cin, cout, k=k, stride=strides[0], groups=groups)
        t += share / r
    kept = sum(s for (_, s) in mix if s >= 0.01)
    return kept / t if t else float("nan")


def bench_layer(problem, plan, mesh, batch, pairs, loop_pairs, min_time, devices, breakdown=False, target=3.0):
    """Times the profiler's batched kernel and the naive single-candidate loop on one layer.

    At most ``pairs`` (batched) and ``loop_pairs`` (loop) pairs are timed, fewer when a pass
    over them would take much longer than ``target`` seconds (estimated at 30 GFLOP/s).
    """
    prog = problem.program
    sl = pg.slice_layer(prog, plan.cut)  # what profile_distortion runs (delta convolutions on)
    sl_plain = pg.slice_layer(prog, plan.cut, delta_convs=False)  # the straightforward rest of the network
    clean = eng.replicate(pf.clean_outputs(problem), mesh)
    chans, cols = [], []
    for c in range(plan.channels):
        for r in plan.columns(c):
            chans.append(c)
            cols.append(r)
    total_pairs = len(chans)
    if batch is None:
        mem = pf.default_memory_limit(devices[0])
        tensor = eng.max_tensor_bytes(prog, sl) if devices[0].platform == "cpu" else None
        bsz = pf.batch_size(eng.bytes_per_candidate(prog, sl), mem, pf.MAX_BATCH, len(devices), total_pairs, tensor)
    else:
        bsz = batch * len(devices)
    seconds_per_pair = max(1e-6, eng.candidate_flops(prog, sl_plain) / 30e9)
    pairs = int(min(pairs, total_pairs, max(2 * bsz, target / seconds_per_pair)))
    loop_pairs = int(min(loop_pairs, pairs, max(4, target / seconds_per_pair)))
    sel = np.linspace(0, total_pairs - 1, pairs).astype(int)
    ch = np.asarray(chans)[sel].astype(np.int32)
    sz = plan.candidates[np.asarray(cols)[sel]].astype(np.int32)
    nb = int(np.ceil(len(ch) / bsz))
    pad = nb * bsz - len(ch)
    chp = np.concatenate([ch, np.repeat(ch[:1], pad)])
    szp = np.concatenate([sz, np.repeat(sz[:1], pad, axis=0)])
    batches = [
        (eng.shard(chp[i * bsz : (i + 1) * bsz], mesh), eng.shard(szp[i * bsz : (i + 1) * bsz], mesh))
        for i in range(nb)
    ]
    nl = min(loop_pairs, len(ch))
    dev0 = devices[0]
    lch = [jax.device_put(jnp.int32(c), dev0) for c in ch[:nl]]
    lsz = [jax.device_put(jnp.asarray(s), dev0) for s in sz[:nl]]

    def batched_rate(slc):
        cache, _ = pf.layer_cache(problem, slc)
        cache = eng.replicate(cache, mesh)
        spec = eng.sweep_spec(prog, slc, mesh, problem.relu_sizes)

        def run():
            outs = [eng.sweep_batch(spec, c, s, cache, clean) for c, s in batches]
            return np.concatenate([np.asarray(o) for o in outs])[: len(ch)]

        dt = _timeit(run, min_time)
        compiled = eng.sweep_batch.lower(spec, *batches[0], cache, clean).compile()
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        xla = float(ca.get("flops", float("nan"))) * len(devices) / bsz if ca else float("nan")
        return len(ch) / dt, run(), xla

    def loop_rate(slc):
        cache, _ = pf.layer_cache(problem, slc)
        spec = eng.sweep_spec(prog, slc, None, problem.relu_sizes)
        cache0 = jax.device_put(cache, dev0)
        clean0 = jax.device_put(clean, dev0)

        def run():
            outs = [eng.sweep_single(spec, c, s, cache0, clean0) for c, s in zip(lch, lsz)]
            return np.asarray([float(o) for o in outs])

        def run_sync():  # fetch every result before the next call, as a plain Python loop does
            return np.asarray([float(eng.sweep_single(spec, c, s, cache0, clean0)) for c, s in zip(lch, lsz)])

        dt = _timeit(run, min_time)
        dt_sync = _timeit(run_sync, min_time)
        return nl / dt, run(), nl / dt_sync

    b_cps, res_b, xla_flops = batched_rate(sl)
    l_cps, res_l, l_sync_cps = loop_rate(sl_plain)
    err = float(np.max(np.abs(res_l - res_b[:nl]) / (np.abs(res_l) + 1e-9)))
    row = {
        "layer": plan.name,
        "shape": plan.cut.shape[1:],
        "total_pairs": total_pairs,
        "timed_pairs": (len(ch), nl),
        "batch": bsz,
        "batched_cps": b_cps,
        "loop_cps": l_cps,
        "loop_sync_cps": l_sync_cps,
        "flops": eng.candidate_flops(prog, sl),  # executed by the batched sweep
        "plain_flops": eng.candidate_flops(prog, sl_plain),  # executed by the loop
        "xla_flops": xla_flops,
        "max_rel_err": err,
    }
    if breakdown:
        row["batched_plain_cps"] = batched_rate(sl_plain)[0]
        row["loop_delta_cps"] = loop_rate(sl)[0]
    return row


def run_model(name, model, shape, nsamples, layer_names, args, devices):
    mesh = eng.make_mesh(devices)
    variables = _trained_like_variables(model, shape, jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (nsamples,) + shape)
    problem = pf.build_problem(model, variables, images, layers=layer_names)
    rows = []
    for plan in problem.layers:
        r = bench_layer(
            problem, plan, mesh, args.batch, args.pairs, args.loop_pairs, args.min_time, devices, args.breakdown
        )
        rows.append(r)
        extra = ""
        if args.breakdown:
            extra = f"  [batched w/o delta {r['batched_plain_cps']:.1f}, loop with delta {r['loop_delta_cps']:.1f}]"
        print(
            f"  {name:12s} {r['layer']:16s} {r['shape']!s:14s} B={r['batch']:4d} batched {r['batched_cps']:8.1f} "
            f"cand/s  loop {r['loop_cps']:8.1f} cand/s  x{r['batched_cps'] / r['loop_cps']:.2f}  "
            f"executed {r['flops'] * r['batched_cps'] / 1e9:5.1f} GFLOP/s (loop {r['plain_flops'] * r['loop_cps'] / 1e9:5.1f})"
            f"  MFLOP/cand {r['flops'] / 1e6:.1f} (XLA {r['xla_flops'] / 1e6:.1f}; loop {r['plain_flops'] / 1e6:.1f})"
            f"  max rel diff {r['max_rel_err']:.1e}  (synchronous loop {r['loop_sync_cps']:.1f} cand/s){extra}",
            flush=True,
        )
    t_b = sum(r["total_pairs"] / r["batched_cps"] for r in rows)
    t_l = sum(r["total_pairs"] / r["loop_cps"] for r in rows)
    t_ls = sum(r["total_pairs"] / r["loop_sync_cps"] for r in rows)
    fl = sum(r["total_pairs"] * r["flops"] for r in rows)
    fl_plain = sum(r["total_pairs"] * r["plain_flops"] for r in rows)
    pairs = sum(r["total_pairs"] for r in rows)
    mix = model_conv_mix(problem, problem.layers)
    bsz_images = int(np.median([r["batch"] for r in rows])) // len(devices) * nsamples
    conv_mix = mix_rate(mix, max(nsamples, bsz_images))
    summary = {
        "model": name,
        "samples": nsamples,
        "layers": len(rows),
        "pairs": pairs,
        "batched_cps": pairs / t_b,
        "loop_cps": pairs / t_l,
        "speedup": t_l / t_b,
        "loop_sync_cps": pairs / t_ls,
        "speedup_sync": t_ls / t_b,
        "batched_gflops": fl / t_b / 1e9,
        "batched_effective_gflops": fl_plain / t_b / 1e9,
        "loop_gflops": fl_plain / t_l / 1e9,
        "conv_mix_gflops": conv_mix,
    }
    print(
        f"  {name}: whole sweep of these {len(rows)} layers ({pairs} pairs, {nsamples} samples): batched "
        f"{summary['batched_cps']:.1f} cand/s, loop {summary['loop_cps']:.1f} cand/s, x{summary['speedup']:.2f} "
        f"(synchronous loop {summary['loop_sync_cps']:.1f} cand/s, x{summary['speedup_sync']:.2f}); "
        f"executed {summary['batched_gflops']:.1f} GFLOP/s (effective {summary['batched_effective_gflops']:.1f}; "
        f"loop {summary['loop_gflops']:.1f}) vs the model's own conv shapes at {conv_mix:.1f} GFLOP/s",
        flush=True,
    )
    return rows, summary


def run_estimate(nsamples: int) -> dict:
    """End to end on ResNetSmall (28x28): exact sweep and first-order estimate, cold and warm.

    "cold" includes tracing and compilation (run this first in a fresh process); "warm" is a
    second identical call, whose kernels come from jax's compilation cache.
    """
    from jaxmpc.distortion import compare_tables, estimate_distortion, profile_distortion

    model = models.ResNetSmall()
    variables = _trained_like_variables(model, (28, 28, 1), jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (nsamples, 28, 28, 1))
    times = {}
    for kind, fn in (
        ("exact", lambda: profile_distortion(model, variables, images, progress=False)),
        ("estimate", lambda: estimate_distortion(model, variables, images)),
    ):
        for run in ("cold", "warm"):
            t0 = time.perf_counter()
            table = fn()
            times[f"{kind}_{run}"] = time.perf_counter() - t0
        times[kind + "_table"] = table
    exact, est = times.pop("exact_table"), times.pop("estimate_table")
    cmp = compare_tables(exact, est)
    pairs = exact.meta["pairs_evaluated"]
    print(
        f"  end to end, ResNetSmall 28x28, {nsamples} samples, {exact.num_entries} entries ({pairs} evaluated): "
        f"exact sweep {times['exact_cold']:.1f} s cold / {times['exact_warm']:.1f} s warm "
        f"({pairs / times['exact_warm']:.0f} cand/s); estimate {times['estimate_cold']:.1f} s cold / "
        f"{times['estimate_warm']:.1f} s warm; Spearman pooled {cmp.spearman_pooled:.3f}",
        flush=True,
    )
    for name in exact.names:
        print(
            f"    {name:16s} Spearman {cmp.spearman[name]:.3f}  median per channel {cmp.spearman_per_channel[name]:.3f}"
        )
    return {**times, "cmp": cmp, "pairs": pairs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer pairs and shorter timings")
    ap.add_argument("--samples", type=int, default=16, help="sample images per candidate")
    ap.add_argument("--pairs", type=int, default=512, help="pairs timed per layer (batched)")
    ap.add_argument("--loop-pairs", type=int, default=96, help="pairs timed per layer (loop)")
    ap.add_argument("--batch", type=int, default=None, help="candidates per device per call (default: auto)")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per timing")
    ap.add_argument("--models", default="small,r18", help="comma list of: small, r18")
    ap.add_argument("--markdown", default=None, help="write a markdown table here")
    ap.add_argument("--breakdown", action="store_true", help="also time batched without delta convs, loop with")
    ap.add_argument("--estimate", action="store_true", help="also compare the first-order estimate with exact values")
    args = ap.parse_args(argv)
    if args.quick:
        args.pairs, args.loop_pairs, args.min_time = 128, 32, 0.2
    devices = jax.local_devices()
    load0 = os.getloadavg()
    date = subprocess.run(["date"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"date: {date}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
        f"{len(devices)} x {devices[0].device_kind}; load average before: {load0}"
    )
    print(f"command: python {' '.join(sys.argv)}")
    est = run_estimate(args.samples) if args.estimate else None  # first: its cold timings include compilation
    conv_rate(32, 32, 32, 64, 64)  # warm-up
    std = conv_rate(32, 32, 32, 64, 64)
    print(f"plain float32 conv 3x3 64->64 on 32x32, batch 32: {std:.1f} GFLOP/s")
    results = []
    if "small" in args.models:
        results.append(run_model("ResNetSmall", models.ResNetSmall(), (28, 28, 1), args.samples, None, args, devices))
    if "r18" in args.models:
        results.append(
            run_model(
                "ResNet18",
                models.ResNet18(),
                (32, 32, 3),
                args.samples,
                ["stem/relu", "layer2_0/relu1", "layer3_1/relu2", "layer4_1/relu1"],
                args,
                devices,
            )
        )
    load1 = os.getloadavg()
    print(f"load average after: {load1}")
    if args.markdown:
        lines = [
            (
                f"Measured {date}; `python {' '.join(sys.argv)}`; {os.cpu_count()}-core CPU "
                f"({platform.processor() or platform.machine()}), jax {jax.__version__}, {len(devices)} device(s); "
                f"load average before {load0[0]:.2f}, after {load1[0]:.2f}. Plain float32 conv (3x3, 64->64, 32x32, "
                f"batch 32): {std:.1f} GFLOP/s."
            ),
            "",
            (
                "| model | layer | H x W x C | batch | batched cand/s | loop cand/s (sync) | speed-up (vs sync) | "
                "batched GFLOP/s | loop GFLOP/s | MFLOP/cand batched / loop |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for rows, s in results:
            for r in rows:
                lines.append(
                    f"| {s['model']} | {r['layer']} | {'x'.join(map(str, r['shape']))} | {r['batch']} | "
                    f"{r['batched_cps']:.1f} | {r['loop_cps']:.1f} ({r['loop_sync_cps']:.1f}) | "
                    f"{r['batched_cps'] / r['loop_cps']:.2f} ({r['batched_cps'] / r['loop_sync_cps']:.2f}) | "
                    f"{r['flops'] * r['batched_cps'] / 1e9:.1f} | {r['plain_flops'] * r['loop_cps'] / 1e9:.1f} | "
                    f"{r['flops'] / 1e6:.1f} / {r['plain_flops'] / 1e6:.1f} |"
                )
            lines.append(
                f"| **{s['model']}** | **sweep of these layers** | | | **{s['batched_cps']:.1f}** | "
                f"**{s['loop_cps']:.1f}** ({s['loop_sync_cps']:.1f}) | **{s['speedup']:.2f}** ({s['speedup_sync']:.2f}) | "
                f"**{s['batched_gflops']:.1f}** (effective {s['batched_effective_gflops']:.1f}) | "
                f"{s['loop_gflops']:.1f} | model's conv shapes: {s['conv_mix_gflops']:.1f} GFLOP/s |"
            )
        if est is not None:
            cmp = est["cmp"]
            lines += [
                "",
                (
                    f"End to end, ResNetSmall 28x28, {args.samples} samples ({est['pairs']} evaluated pairs; "
                    f"{cmp.entries} entries compared): `profile_distortion` {est['exact_cold']:.1f} s cold "
                    f"(tracing + compilation) / {est['exact_warm']:.1f} s warm "
                    f"({est['pairs'] / est['exact_warm']:.0f} cand/s); `estimate_distortion` "
                    f"{est['estimate_cold']:.1f} s cold / {est['estimate_warm']:.1f} s warm. Spearman of the "
                    f"estimate with the exact values, pooled over all layers: {cmp.spearman_pooled:.3f}."
                ),
                "",
                "| layer | Spearman | median per-channel Spearman |",
                "|---|---|---|",
            ]
            lines += [f"| {n} | {cmp.spearman[n]:.3f} | {cmp.spearman_per_channel[n]:.3f} |" for n in cmp.spearman]
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    main()
