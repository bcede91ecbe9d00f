"""Secure forward pass of ResNet18-CIFAR (32x32): secure time / plaintext time and bytes.

Usage:
    python benchmarks/secure_forward.py              # batch 1 and 8, all-ReLU and 6% spec
    python benchmarks/secure_forward.py --batches 1  # faster

The 6% spec comes from the exact knapsack on synthetic distortions shaped like measured ones
(``jaxmpc.knapsack.paper_instances.synthetic_distortions``) with this model's ReLU layers, so its
structure (many channels identity or large patches, a few exact) is realistic; accuracy is not
the point here, cost is. Weights are random (BatchNorm statistics non-trivial), which does not
change the cost of the protocols.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxmpc  # noqa: E402
from jaxmpc.core import blocks
from jaxmpc import knapsack  # noqa: E402
from jaxmpc import nn as jnn  # noqa: E402
from jaxmpc.inference import secure_apply  # noqa: E402


def spec_at_ratio(model, shape, ratio, seed=0):
    rng = np.random.default_rng(seed)
    layers = []
    for name, (h, w, c) in jnn.relu_layers(model, shape):
        cand = blocks.default_candidates(h, w)
        dist = knapsack.paper_instances.synthetic_distortions(c, h, w, cand, rng,
                                                              layer_scale=float(rng.lognormal(0, 0.5)))
        layers.append(knapsack.LayerCandidates(name=name, height=h, width=w, candidates=cand, distortion=dist))
    return knapsack.plan_block_sizes(layers, ratio=ratio).spec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    print(f"# Secure forward pass, ResNet18-CIFAR 32x32 ({time.strftime('%Y-%m-%d %H:%M %Z')})")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    model = jnn.ResNet18()
    v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
    spec6 = spec_at_ratio(model, (32, 32, 3), 0.06)
    print(f"6% spec: {jnn.count_drelus(model, jnn.apply_spec(v, spec6), (32, 32, 3)).total:,} DReLUs "
          f"(all ReLU {jnn.count_drelus(model, v, (32, 32, 3)).total:,})\n")
    print("| batch | spec | protocol | compile s | secure s/batch | plaintext s/batch | secure/plain | "
          "MB/image | online MB/image | DReLUs/image | rounds | linear / drelu / mult MB |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    plain = jax.jit(lambda vv, x: model.apply(vv, x))
    for batch in args.batches:
        x = np.random.default_rng(1).normal(size=(batch, 32, 32, 3)).astype(np.float32)
        for spec_name, spec in [("all ReLU", None), ("6% knapsack", spec6)]:
            vv = jnn.apply_spec(v, spec) if spec else v
            jax.block_until_ready(plain(vv, x))
            tp = statistics.median([_time(lambda: plain(vv, x)) for _ in range(5)])
            for pname, cfg in [("jaxmpc", jaxmpc.ProtocolConfig()), ("reference", jaxmpc.ProtocolConfig.reference())]:
                t0 = time.perf_counter()
                y, rep = secure_apply(model, vv, x, config=cfg, key=jax.random.key(0))
                jax.block_until_ready(y)
                first = time.perf_counter() - t0
                ts = statistics.median([_time(lambda: secure_apply(model, vv, x, config=cfg, key=jax.random.key(1))[0])
                                        for _ in range(args.repeat)])
                k = rep.by_kind()
                print(f"| {batch} | {spec_name} | {pname} | {max(first - ts, 0):.0f} | {ts:.2f} | {tp:.4f} | "
                      f"{ts / tp:,.0f}x | {rep.total_bytes / batch / 1e6:.1f} | {rep.online_bytes / batch / 1e6:.1f} | "
                      f"{rep.drelus // batch:,} | {rep.rounds} | {k.get('linear', 0) / batch / 1e6:.1f} / "
                      f"{k.get('drelu', 0) / batch / 1e6:.1f} / {k.get('mult', 0) / batch / 1e6:.1f} |", flush=True)


def _time(fn):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
