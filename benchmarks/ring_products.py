"""Exact Z_2^64 convolutions on the layer shapes of ResNet50-224 and ResNet18-CIFAR (batch 1 and 8):
native uint64 vs 16-bit limbs vs "signed_rhs" (22-bit limbs of the activation times the server's
small signed weights), side by side in one run, each checked bit for bit against native.

Usage:
    python benchmarks/ring_products.py            # every distinct shape (a few minutes, 2-core CPU)
    python benchmarks/ring_products.py --quick    # four shapes

Activations are uniform in Z_2^64 (shares); weights are He-initialised kernels at 12 fractional
bits (what the server multiplies by). Times are the minimum of 3 calls after a warm-up.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from jaxmpc.core import ring  # noqa: E402

# (name, batch, H, W, Cin, Cout, k, stride)
SHAPES = [
    ("r50 stem", 1, 224, 224, 3, 64, 7, 2),
    ("r50 56 1x1 64->64", 1, 56, 56, 64, 64, 1, 1),
    ("r50 56 3x3 64->64", 1, 56, 56, 64, 64, 3, 1),
    ("r50 56 1x1 64->256", 1, 56, 56, 64, 256, 1, 1),
    ("r50 56 1x1 256->64", 1, 56, 56, 256, 64, 1, 1),
    ("r50 28 3x3 128->128", 1, 28, 28, 128, 128, 3, 1),
    ("r50 28 1x1 512->128", 1, 28, 28, 512, 128, 1, 1),
    ("r50 14 3x3 256->256", 1, 14, 14, 256, 256, 3, 1),
    ("r50 14 1x1 1024->256", 1, 14, 14, 1024, 256, 1, 1),
    ("r50 7 3x3 512->512", 1, 7, 7, 512, 512, 3, 1),
    ("r50 7 1x1 2048->512", 1, 7, 7, 2048, 512, 1, 1),
    ("r18 32 3x3 64->64", 1, 32, 32, 64, 64, 3, 1),
    ("r18 4 3x3 512->512", 1, 4, 4, 512, 512, 3, 1),
    ("r18 b8 32 3x3 64->64", 8, 32, 32, 64, 64, 3, 1),
    ("r18 b8 8 3x3 256->256", 8, 8, 8, 256, 256, 3, 1),
]
QUICK = ["r50 56 3x3 64->64", "r50 7 3x3 512->512", "r18 32 3x3 64->64", "r18 b8 32 3x3 64->64"]


def best_of(fn, *args, repeat=3):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="four shapes")
    args = ap.parse_args()
    shapes = [s for s in SHAPES if not args.quick or s[0] in QUICK]
    print(f"# exact ring convolutions ({time.strftime('%Y-%m-%d %H:%M %Z')})")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}, "
          f"backend {jax.default_backend()}, load average {os.getloadavg()[0]:.2f}\n")
    print("| layer | native s | limbs s | signed_rhs s | native/signed_rhs | limbs/signed_rhs | auto picks | equal |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    rng = np.random.default_rng(0)
    totals = np.zeros(3)
    for name, nb, h, w, ci, co, k, s in shapes:
        x = rng.integers(0, 2**64, (nb, h, w, ci), dtype=np.uint64)
        wf = rng.normal(0.0, np.sqrt(2.0 / (k * k * ci)), (k, k, ci, co))
        kern = np.round(wf * 2**12).astype(np.int64).view(np.uint64)
        kw = dict(window_strides=(s, s), padding="SAME")
        fns = [jax.jit(functools.partial(ring.ring_conv, method=m, **kw)) for m in ("native", "limbs", "signed_rhs")]
        outs = [np.asarray(f(x, kern)) for f in fns]
        equal = all(np.array_equal(outs[0], o) for o in outs[1:])
        t = np.array([best_of(f, x, kern) for f in fns])
        totals += t
        auto = ring._default_method("conv", k * k * ci, co)
        print(f"| {name} | {t[0]:.3f} | {t[1]:.3f} | {t[2]:.3f} | {t[0] / t[2]:.1f}x | {t[1] / t[2]:.1f}x | {auto} | {equal} |")
        if not equal:
            raise SystemExit(f"{name}: the methods disagree")
    print(f"| **sum** | {totals[0]:.3f} | {totals[1]:.3f} | {totals[2]:.3f} | {totals[0] / totals[2]:.1f}x | "
          f"{totals[1] / totals[2]:.1f}x | | |")


if __name__ == "__main__":
    main()
