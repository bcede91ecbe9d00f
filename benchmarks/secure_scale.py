"""Secure ResNet18-CIFAR (or ResNet50-ImageNet) at scale: time, first call and peak RSS per
(batch, compared bits, memory budget), each case in its own process (peak RSS is per process),
checked against the fixed-point reference.

Usage:
    python benchmarks/secure_scale.py                          # the default grid
    python benchmarks/secure_scale.py --cases 1:64:none 8:64:1GiB
    python benchmarks/secure_scale.py --model resnet50 --spec 0.06 --cases 1:64:256MiB
    PYTHONPATH=<old checkout> python benchmarks/secure_scale.py --cases 1:64:-   # an older jaxmpc
                                                                 # (no memory_budget argument)

A case is ``batch:bits:budget`` (budget ``none``, ``auto``, ``1GiB``..., or ``-`` to not pass the
argument). Weights are random (BatchNorm statistics non-trivial): cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CASE = r'''
import json, os, resource, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
import jaxmpc
from jaxmpc import nn as jnn
from jaxmpc.inference import fixed_point_apply, secure_apply
batch, bits, budget, name, ratio = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
kw = {} if budget == "-" else {"memory_budget": None if budget == "none" else budget}
model, hw = (jnn.ResNet18(), 32) if name == "resnet18" else (jnn.ResNet50(), 224)
v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, hw, hw, 3), jnp.float32))
if ratio < 1:
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[6])))
    from secure_forward import spec_at_ratio
    v = jnn.apply_spec(v, spec_at_ratio(model, (hw, hw, 3), ratio))
x = np.random.default_rng(0).normal(size=(batch, hw, hw, 3)).astype(np.float32)
cfg = jaxmpc.ProtocolConfig() if bits == 64 else jaxmpc.ProtocolConfig(compare_bits=bits, lsb_drop_bits=4)
def run():
    t = time.perf_counter()
    y, rep = secure_apply(model, v, x, config=cfg, train=False, **kw)
    return np.asarray(y), time.perf_counter() - t, rep
y, first, rep = run()
times = [run()[1] for _ in range(2)]
rss_secure = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the reference compiles
ref = np.asarray(fixed_point_apply(model, v, x, config=cfg, train=False))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
np.asarray(fixed_point_apply(model, v, x, config=cfg, train=False))
ref_s = time.perf_counter() - t  # steady: one uint64 conv per layer, a floor for the secure linear layers
print(json.dumps(dict(drelus=rep.drelus // batch, first_s=first, run_s=min(times), peak_rss=rss, peak_rss_secure=rss_secure, argmax_equal=bool(np.all(y.argmax(-1) == ref.argmax(-1))),
                      max_abs_diff=float(np.max(np.abs(y - ref))), max_abs_ref=float(np.max(np.abs(ref))), ref_s=ref_s, jaxmpc=os.path.dirname(jaxmpc.__file__))))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["1:64:none", "1:64:auto", "1:64:1GiB", "8:64:1GiB", "1:16:1GiB"])
    ap.add_argument("--model", choices=["resnet18", "resnet50"], default="resnet18",
                    help="resnet18: CIFAR 32x32; resnet50: ImageNet 224x224")
    ap.add_argument("--spec", type=float, default=1.0,
                    help="DReLU budget ratio of a knapsack spec on synthetic distortions (1 = all ReLUs)")
    args = ap.parse_args()
    if not 0 < args.spec <= 1:
        ap.error("--spec must lie in (0, 1]")
    print(f"# Secure {args.model}, spec {'all ReLUs' if args.spec == 1 else f'{args.spec:.0%}'} at scale ({time.strftime('%Y-%m-%d %H:%M %Z')})")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}\n")
    print("| batch | compared bits | memory budget | DReLUs/image | first call s | s/batch | s/image | peak RSS GiB secure (with reference) | argmax = reference "
          "| max abs diff (max abs logit) | fixed-point reference s/batch |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for case in args.cases:
        batch, bits, budget = case.split(":")
        proc = subprocess.run([sys.executable, "-c", CASE, batch, bits, budget, args.model, str(args.spec), __file__], capture_output=True, text=True)
        if proc.returncode:
            print(f"| {batch} | {bits} | {budget} | failed (exit {proc.returncode}): "
                  f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''} |||||||")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {batch} | {bits} | {budget} | {r['drelus']:,} | {r['first_s']:.1f} | {r['run_s']:.2f} | {r['run_s'] / int(batch):.2f} | "
              f"{r['peak_rss_secure'] / 2**30:.2f} ({r['peak_rss'] / 2**30:.2f}) | {r['argmax_equal']} | {r['max_abs_diff']:.4f} ({r['max_abs_ref']:.1f}) | {r['ref_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
