"""Protocol-level benchmark: secure conv vs float conv, exact ring products, DReLU throughput and bytes.

Usage:
    python benchmarks/protocol_ops.py            # full (a few minutes on a 2-core CPU)
    python benchmarks/protocol_ops.py --quick    # smaller sizes

Everything is measured side by side in one run on this machine; times are medians of repeated
calls after a warm-up (compile time reported separately).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import jaxmpc  # noqa: E402
from jaxmpc.protocols import costs
from jaxmpc import ops  # noqa: E402
from jaxmpc.core.ring import ring_conv, ring_dot_general  # noqa: E402


def timeit(fn, *args, repeat=3):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def bench_products(quick: bool):
    print("\n## Exact 64-bit products: native uint64 vs 16-bit limbs in float64 (XLA-CPU)\n")
    print("| op | shape | native s | limbs s | native/limbs | float32 s | auto picks |")
    print("|---|---|---:|---:|---:|---:|---|")
    rng = np.random.default_rng(0)
    n = 512 if quick else 1024
    a = jnp.asarray(rng.integers(0, 2**64, (n, n), dtype=np.uint64))
    dn = (((1,), (0,)), ((), ()))
    nat = jax.jit(functools.partial(ring_dot_general, dimension_numbers=dn, method="native"))
    lim = jax.jit(functools.partial(ring_dot_general, dimension_numbers=dn, method="limbs"))
    auto = "limbs" if jaxmpc.core.ring._default_method("dot", n) == "limbs" else "native"
    f32 = jax.jit(lambda x, y: x @ y)
    af = a.astype(jnp.float32)
    tn, tl, tf = timeit(nat, a, a, repeat=1)[0], timeit(lim, a, a)[0], timeit(f32, af, af)[0]
    print(f"| matmul | {n}x{n}x{n} | {tn:.3f} | {tl:.3f} | {tn / tl:.1f}x | {tf:.4f} | {auto} |")
    shapes = [(1, 56, 56, 64, 64), (1, 28, 28, 128, 128), (1, 14, 14, 256, 256), (8, 32, 32, 64, 64)]
    if quick:
        shapes = shapes[:2]
    for nb, h, w, ci, co in shapes:
        x = jnp.asarray(rng.integers(0, 2**64, (nb, h, w, ci), dtype=np.uint64))
        k = jnp.asarray(rng.integers(0, 2**64, (3, 3, ci, co), dtype=np.uint64))
        kw = dict(window_strides=(1, 1), padding="SAME")
        nat = jax.jit(functools.partial(ring_conv, method="native", **kw))
        lim = jax.jit(functools.partial(ring_conv, method="limbs", **kw))
        f32 = jax.jit(lambda p, q: lax.conv_general_dilated(p, q, (1, 1), "SAME",
                                                            dimension_numbers=("NHWC", "HWIO", "NHWC")))
        tn, tl = timeit(nat, x, k)[0], timeit(lim, x, k)[0]
        tf = timeit(f32, x.astype(jnp.float32), k.astype(jnp.float32))[0]
        auto = jaxmpc.core.ring._default_method("conv", 9 * ci, co)
        print(f"| conv3x3 | {nb}x{h}x{w}x{ci}->{co} | {tn:.3f} | {tl:.3f} | {tn / tl:.1f}x | {tf:.4f} | {auto} |")


def bench_secure_conv(quick: bool):
    print("\n## Secure conv (server weights, jit) vs plaintext float32 conv, ResNet-sized layer\n")
    print("| layer | config | secure s | float32 s | secure/float | secure bytes | online bytes |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(1)
    layers = [(1, 56, 56, 64, 64), (1, 14, 14, 256, 256)]
    if quick:
        layers = layers[:1]
    for nb, h, w, ci, co in layers:
        x = rng.normal(size=(nb, h, w, ci))
        wt = rng.normal(size=(3, 3, ci, co)) * 0.05
        f32 = jax.jit(lambda p, q: lax.conv_general_dilated(p, q, (1, 1), "SAME",
                                                            dimension_numbers=("NHWC", "HWIO", "NHWC")))
        tf = timeit(f32, jnp.asarray(x, jnp.float32), jnp.asarray(wt, jnp.float32))[0]
        for name, cfg in [("server_weights", jaxmpc.ProtocolConfig()),
                          ("shared_weights (reference)", jaxmpc.ProtocolConfig(linear_protocol="shared_weights"))]:
            fn = lambda a: ops.conv2d(a, wt)  # noqa: E731
            run = lambda xx: jaxmpc.simulate(fn, xx, config=cfg, key=jax.random.key(0))  # noqa: E731
            ts = timeit(lambda xx: run(xx)[0], x)[0]
            _, comm = run(x)
            lin = comm.select(kind=("linear", "weights"))
            print(f"| {h}x{w}x{ci}->{co} | {name} | {ts:.3f} | {tf:.4f} | {ts / tf:.0f}x | {lin.total_bytes:,} | "
                  f"{lin.online_bytes:,} |")


def bench_drelu(quick: bool):
    print("\n## DReLU throughput and bytes per DReLU\n")
    print("| protocol | compared bits m | elements | s per call | DReLU/s | bytes/DReLU (all parties) | "
          "reference bytes | rounds | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    n = 10**5 if quick else 10**6
    x = np.random.default_rng(2).normal(size=n) * 4
    cfgs = [("jaxmpc", jaxmpc.ProtocolConfig()), ("jaxmpc", jaxmpc.ProtocolConfig(compare_bits=16, lsb_drop_bits=4)),
            ("securenn (reference costs)", jaxmpc.ProtocolConfig.reference()),
            ("securenn (reference costs)", jaxmpc.ProtocolConfig.reference(compare_bits=16, lsb_drop_bits=4))]
    for name, cfg in cfgs:
        run = lambda xx, cfg=cfg: jaxmpc.simulate(ops.drelu, xx, config=cfg, key=jax.random.key(0))  # noqa: E731
        t, first = timeit(lambda xx: run(xx)[0], x, repeat=2)
        _, comm = run(x)
        d = comm.select(kind="drelu")
        per = d.total_bytes / n
        refb = 112 + 6 * cfg.compare_bits
        print(f"| {name} | {cfg.compare_bits} | {n:,} | {t:.2f} | {n / t:,.0f} | {per:.0f} | {refb} | {d.rounds} | "
              f"{max(first - t, 0):.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    args = ap.parse_args()
    print(f"# jaxmpc protocol benchmark ({time.strftime('%Y-%m-%d %H:%M %Z')})")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}, "
          f"backend {jax.default_backend()}, load average {os.getloadavg()[0]:.2f}")
    bench_products(args.quick)
    bench_secure_conv(args.quick)
    bench_drelu(args.quick)
    print(f"\nbytes per DReLU from the cost table: jaxmpc m=64 {costs.bytes_per_drelu(jaxmpc.ProtocolConfig())}, "
          f"m=16 {costs.bytes_per_drelu(jaxmpc.ProtocolConfig(compare_bits=16))}; "
          f"reference m=64 {costs.bytes_per_drelu(jaxmpc.ProtocolConfig.reference())}, "
          f"m=16 {costs.bytes_per_drelu(jaxmpc.ProtocolConfig.reference(compare_bits=16))}")


if __name__ == "__main__":
    main()
