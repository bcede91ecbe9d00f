"""Cold compile vs warm start from the persistent compilation cache, ResNet18-CIFAR secure forward
pass, each in a new process (as a user's second notebook session or a service restart).

Usage: ``python benchmarks/compile_cache.py [--batch 1] [--bits 64]``. Prints, per process, the
first call (trace + lower + compile or cache load + run) and a steady call, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

CASE = r'''
import json, sys, time
t0 = time.perf_counter()
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
import jaxmpc
from jaxmpc import nn as jnn
cache, batch, bits = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
jaxmpc.enable_compilation_cache(cache)
model = jnn.ResNet18()
v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
x = np.random.default_rng(0).normal(size=(batch, 32, 32, 3)).astype(np.float32)
cfg = jaxmpc.ProtocolConfig() if bits == 64 else jaxmpc.ProtocolConfig(compare_bits=bits, lsb_drop_bits=4)
t1 = time.perf_counter()
y, _ = jaxmpc.secure_apply(model, v, x, config=cfg, train=False)
jax.block_until_ready(y)
t2 = time.perf_counter()
y, _ = jaxmpc.secure_apply(model, v, x, config=cfg, train=False)
jax.block_until_ready(y)
t3 = time.perf_counter()
print(json.dumps(dict(setup_s=t1 - t0, first_s=t2 - t1, steady_s=t3 - t2)))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--bits", type=int, default=64)
    args = ap.parse_args()
    print(f"# Persistent compilation cache, secure ResNet18-CIFAR batch {args.batch}, {args.bits} compared bits "
          f"({time.strftime('%Y-%m-%d %H:%M %Z')})")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}\n")
    print("| process | imports + init s | first call s | steady call s | first - steady s |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as cache:
        res = {}
        for name in ("cold (empty cache)", "warm (new process, cache filled)"):
            proc = subprocess.run([sys.executable, "-c", CASE, cache, str(args.batch), str(args.bits)],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{name} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
            r = res[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"| {name} | {r['setup_s']:.1f} | {r['first_s']:.1f} | {r['steady_s']:.2f} | "
                  f"{r['first_s'] - r['steady_s']:.1f} |", flush=True)
        cold, warm = res.values()
        print(f"\nfirst call, cold / warm: {cold['first_s'] / warm['first_s']:.1f}x; "
              f"cache size {sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
