"""Knapsack planner benchmark: JAX DP vs the reference's numpy DP, and paper-scale solves.

Every measurement runs in a fresh Python subprocess, so that peak memory (``ru_maxrss``) is
per solver. Times are wall-clock seconds of the solve call only (instance generation and imports
excluded); "cold" includes JIT compilation, "warm" is a second identical call in the same
process. Memory: peak RSS of the process, and the growth of RSS during the solve (peak minus
the RSS just before it); for the numpy reference also the tracemalloc peak (numpy allocations).

Instances are the synthetic paper-scale ones of :mod:`jaxmpc.knapsack.paper_instances`.

Usage::

    python benchmarks/knapsack.py                 # all default cases
    python benchmarks/knapsack.py --quick         # ResNet18-CIFAR comparison only
    python benchmarks/knapsack.py --full-dp       # also the plain DP on ResNet50 (minutes)
    python benchmarks/knapsack.py --markdown docs/bench_knapsack_table.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

RATIO = 0.06


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(case: dict) -> dict:
    """Runs one measurement in this process and returns its figures."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import jaxmpc.knapsack as kn
    from jaxmpc.knapsack import _dp
    from jaxmpc.knapsack._reference import merge_equal_costs, reference_dp

    model, kind, seed = case["model"], case["kind"], case.get("seed", 0)
    layers = kn.paper_instances.synthetic_layers(model, seed=seed)
    cost_model = kn.CostModel.communication() if case.get("bytes") else None
    weights, values, mask, _ = kn.build_problem(layers, cost_model)
    all_relu = sum(
        layer.channels * (cost_model or kn.CostModel()).relu_cost(layer.height, layer.width) for layer in layers
    )
    budget = int(np.floor(case.get("ratio", RATIO) * all_relu))
    out = {
        "model": model,
        "kind": kind,
        "items": int(weights.shape[0]),
        "options": int(mask.sum()),
        "budget": budget,
        "unit": "B" if case.get("bytes") else "DReLU",
    }
    # Start the JAX/XLA runtime first (thread pools, compiler), so that RSS growth is the solve's own.
    kn.solve(np.array([[0, 1]]), np.array([[0.0, 1.0]]), 1)
    rss0 = _rss_bytes()

    cpu = {}

    def timed(fn):
        t, c = time.perf_counter(), time.process_time()
        res = fn()
        cpu.setdefault("cold", time.process_time() - c)
        cpu["last"] = time.process_time() - c
        return res, time.perf_counter() - t

    if kind == "numpy_reference":
        import tracemalloc

        # Timed without tracing; a second run, traced, measures numpy's allocations and does the
        # reference's backtrack from the largest reachable cost.
        (_choice, value, cost), dt = timed(lambda: reference_dp(weights, values, mask, budget))
        tracemalloc.start()
        _, v_large, c_large = reference_dp(weights, values, mask, budget, backtrack_from="largest_cost")
        _, tm_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out.update(cold_s=dt, value=value, weight=int(cost), tracemalloc_peak=tm_peak)
        out["value_largest_cost_backtrack"] = v_large
        out["weight_largest_cost_backtrack"] = int(c_large)
        out["table_bytes"] = int(weights.shape[0]) * (budget + 1)
    elif kind == "jax_dp_same_options":
        # The JAX checkpointed DP on exactly the reference's option set (equal costs merged only).
        _, w, v, _ = merge_equal_costs(weights, values, mask)
        (res, dt) = timed(lambda: _dp.solve_dp(w, v, budget))
        (_, dt2) = timed(lambda: _dp.solve_dp(w, v, budget))
        out.update(cold_s=dt, warm_s=dt2, value=res[1], weight=int(res[2]))
        out["dp_memory_estimate"] = _dp.dp_memory_bytes(w.shape[0], w.shape[1], budget)
    elif kind in ("exact", "dp", "lagrangian"):
        res, dt = timed(lambda: kn.solve(weights, values, budget, mask=mask, method=kind))
        out.update(cold_s=dt, value=res.value, weight=res.weight, upper_bound=res.upper_bound)
        out.update(optimal=res.optimal, relative_gap=res.relative_gap)
        if kind != "dp" or case.get("warm", True):
            _res2, dt2 = timed(lambda: kn.solve(weights, values, budget, mask=mask, method=kind))
            out["warm_s"] = dt2
        st = res.stats
        out["dp_rounds"] = [
            {k: d[k] for k in ("items", "options", "capacity", "cells", "memory_bytes")}
            for d in st.get("dp_rounds", [])
        ]
    elif kind == "sweep":
        ratios = [0.03, 0.06, 0.09, 0.12, 0.15, 0.18]
        budgets = [int(np.floor(r * all_relu)) for r in ratios]
        res, dt = timed(lambda: kn.sweep_budgets(weights, values, budgets, mask=mask))
        out.update(cold_s=dt, ratios=ratios, relative_gaps=res.relative_gaps.tolist())
        out["relative_gap"] = float(res.relative_gaps.max())
    else:
        raise ValueError(kind)
    out["cold_cpu_s"] = cpu.get("cold")
    if "warm_s" in out:
        out["warm_cpu_s"] = cpu.get("last")
    out["peak_rss"] = _peak_rss_bytes()
    out["rss_before"] = rss0
    return out


def _spawn(case: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_case", json.dumps(case)]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(case, error=f"timeout after {timeout:.0f} s")
    if p.returncode != 0:
        return dict(case, error=p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"rc {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _gib(x) -> str:
    return f"{x / 2**30:.2f}" if x is not None else "-"


def _fmt_s(x) -> str:
    return "-" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def _machine() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import jax
    import numpy

    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPU cores ({model}), no GPU; jax {jax.__version__}, numpy {numpy.__version__}; "
        f"load average at start {load[0]:.2f}"
    )


LABELS = {
    "numpy_reference": "numpy reference DP (full uint8 argmax table)",
    "jax_dp_same_options": "JAX checkpointed DP, same options as reference",
    "dp": 'jaxmpc `method="dp"` (dominance + checkpointed DP)',
    "exact": 'jaxmpc `method="exact"` (bounds + fixing + core DP)',
    "lagrangian": 'jaxmpc `method="lagrangian"` (certified gap)',
    "sweep": "jaxmpc `sweep_budgets`, 6 budgets 3-18%",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--_case", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="only the ResNet18-CIFAR comparison")
    ap.add_argument("--full-dp", action="store_true", help="also run the plain DP on ResNet50 at 6% (minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600.0, help="per case, seconds")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args(argv)
    if args._case:
        print(json.dumps(run_case(json.loads(args._case))))
        return 0

    s = args.seed
    cases = [
        {"model": "resnet18_cifar", "kind": "numpy_reference", "seed": s},
        {"model": "resnet18_cifar", "kind": "jax_dp_same_options", "seed": s},
        {"model": "resnet18_cifar", "kind": "dp", "seed": s},
        {"model": "resnet18_cifar", "kind": "exact", "seed": s},
        {"model": "resnet18_cifar", "kind": "lagrangian", "seed": s},
    ]
    if not args.quick:
        cases += [
            {"model": "resnet50_imagenet", "kind": "exact", "seed": s},
            {"model": "resnet50_imagenet", "kind": "lagrangian", "seed": s},
            {"model": "resnet50_imagenet", "kind": "sweep", "seed": s},
            {"model": "resnet50_imagenet", "kind": "exact", "seed": s, "bytes": True},
            {"model": "deeplabv3_resnet50", "kind": "exact", "seed": s},
            {"model": "deeplabv3_resnet50", "kind": "lagrangian", "seed": s},
            {"model": "deeplabv3_resnet50", "kind": "exact", "seed": s, "bytes": True},
        ]
        if args.full_dp:
            cases.append({"model": "resnet50_imagenet", "kind": "dp", "seed": s, "warm": False})
    header = (
        "| Instance | Solver | Wall cold (s) | Wall warm (s) | CPU cold / warm (s) | Peak RSS (GiB) | "
        "RSS growth (GiB) | Value | Optimal / rel. gap |\n|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    machine = _machine()
    print(f"# machine: {machine}", flush=True)
    print(header, flush=True)
    details = []
    for case in cases:
        r = _spawn(case, args.timeout)
        inst = f"{case['model']} {int(RATIO * 100)}% ({'bytes' if case.get('bytes') else 'DReLUs'})"
        if "error" in r:
            row = f"| {inst} | {LABELS[case['kind']]} | error: {r['error']} | | | | | | |"
        else:
            growth = r["peak_rss"] - r["rss_before"]
            if r["kind"] == "numpy_reference":
                opt = "optimal (backtrack from best)"
            elif r["kind"] == "jax_dp_same_options":
                opt = "optimal"
            elif r["kind"] == "sweep":
                opt = f"max rel. gap {r['relative_gap']:.1e}"
            else:
                opt = "optimal" if r.get("optimal") else f"gap {r['relative_gap']:.1e}"
                if r["kind"] == "lagrangian":
                    opt += f" (certified rel. gap {r['relative_gap']:.1e})" if r.get("optimal") else ""
            value = f"{r['value']:.6f}" if "value" in r else "-"
            row = (
                f"| {inst} | {LABELS[r['kind']]} | {_fmt_s(r.get('cold_s'))} | {_fmt_s(r.get('warm_s'))} | "
                f"{_fmt_s(r.get('cold_cpu_s'))} / {_fmt_s(r.get('warm_cpu_s'))} | "
                f"{_gib(r['peak_rss'])} | {_gib(growth)} | {value} | {opt} |"
            )
            details.append(r)
        rows.append(row)
        print(row, flush=True)
    print()
    for r in details:
        keys = ("items", "options", "budget", "dp_rounds", "dp_memory_estimate", "tracemalloc_peak", "table_bytes")
        extra = {k: r[k] for k in keys if k in r}
        if "value_largest_cost_backtrack" in r:
            extra["value_largest_cost_backtrack"] = r["value_largest_cost_backtrack"]
            extra["weight_largest_cost_backtrack"] = r["weight_largest_cost_backtrack"]
        if "relative_gaps" in r:
            extra["relative_gaps"] = [f"{g:.1e}" for g in r["relative_gaps"]]
        print(f"# {r['model']} {r['kind']}{' bytes' if r['unit'] == 'B' else ''}: {json.dumps(extra)}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"Machine: {machine}\n\n{header}\n" + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
