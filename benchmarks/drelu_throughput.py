"""DReLU throughput at 64 and 16 compared bits (10^6 elements, jit, best of 2 after a warm-up).

Usage: ``python benchmarks/drelu_throughput.py``. To compare two versions side by side in one
session, run it once per checkout (``PYTHONPATH=<worktree> python benchmarks/drelu_throughput.py``).
"""

import os
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import jaxmpc  # noqa: E402
from jaxmpc import ops  # noqa: E402


def main(n: int = 10**6):
    x = np.random.default_rng(2).normal(size=n) * 4
    print(f"jaxmpc from {os.path.dirname(jaxmpc.__file__)}, load average {os.getloadavg()[0]:.2f}")
    for cfg in [jaxmpc.ProtocolConfig(), jaxmpc.ProtocolConfig(compare_bits=16, lsb_drop_bits=4)]:
        def run(xx, cfg=cfg):
            return jaxmpc.simulate(ops.drelu, xx, config=cfg, key=jax.random.key(0))[0]

        jax.block_until_ready(run(x))
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            jax.block_until_ready(run(x))
            times.append(time.perf_counter() - t0)
        t = min(times)
        print(f"m={cfg.compare_bits}: {t:.2f} s per {n:,}, {n / t:,.0f} DReLU/s")


if __name__ == "__main__":
    main()
