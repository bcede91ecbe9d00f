"""Where a simulated DReLU's time goes: XLA:CPU thunk time per jaxmpc source function.

Runs ``simulate(ops.drelu, x)`` on ``n`` elements under ``jax.profiler``, reads the trace (the
time of every executed XLA thunk) and the optimised HLO (dumped by XLA: each fusion's root
instruction names the source line it was traced from) and sums the thunk time per
``file:function`` of the jaxmpc code that produced it. Thunks of both cores' threads are added,
so the total exceeds the wall time when work runs in parallel.

Usage:
    python benchmarks/drelu_profile.py                  # 10^6 elements, 64 bits
    python benchmarks/drelu_profile.py --n 200000 --bits 16
    PYTHONPATH=<checkout> python benchmarks/drelu_profile.py   # another jaxmpc (cwd outside it)
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time

_DUMP = tempfile.mkdtemp(prefix="jaxmpc_hlo_")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={_DUMP} --xla_dump_hlo_as_text "
                           "--xla_dump_hlo_module_re=.*simulate_core.*").strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import jaxmpc  # noqa: E402
from jaxmpc import ops  # noqa: E402

_CONTAINERS = ("while", "conditional", "call")  # their time is their body thunks' time


def _source_map(hlo_text: str) -> dict:
    """Instruction name -> 'file:function:line' of its stack frame (the innermost traced frame)."""
    def table(title):
        m = re.search(rf"^{title}\n(.*?)(?:\n\n|\Z)", hlo_text, re.S | re.M)
        return m.group(1).splitlines() if m else []

    files = {int(i): s.strip('"') for i, s in (ln.split(" ", 1) for ln in table("FileNames"))}
    funcs = {int(i): s.strip('"') for i, s in (ln.split(" ", 1) for ln in table("FunctionNames"))}
    locs = {}
    for ln in table("FileLocations"):
        i, rest = ln.split(" ", 1)
        kv = dict(re.findall(r"(\w+)=(\d+)", rest))
        locs[int(i)] = (files.get(int(kv["file_name_id"]), "?"), funcs.get(int(kv["function_name_id"]), "?"),
                        int(kv["line"]))
    frames = {}
    for ln in table("StackFrames"):
        i, rest = ln.split(" ", 1)
        frames[int(i)] = int(re.search(r"file_location_id=(\d+)", rest).group(1))
    out = {}
    for name, sf in re.findall(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?stack_frame_id=(\d+)", hlo_text, re.M):
        loc = locs.get(frames.get(int(sf), -1))
        if loc:
            path, fn, line = loc
            out[name] = (path.split("jaxmpc/")[-1] if "jaxmpc/" in path else os.path.basename(path), fn, line)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10**6, help="DReLU elements")
    ap.add_argument("--bits", type=int, default=64, help="compared bits (64 = exact; else lsb_drop_bits=4)")
    ap.add_argument("--top", type=int, default=15, help="rows to print")
    args = ap.parse_args()
    if args.n < 1:
        ap.error("--n must be >= 1")
    if not 2 <= args.bits <= 64 or (args.bits < 64 and args.bits + 4 > 64):
        ap.error("--bits must lie in [2, 60] or be 64")
    _profile(args)


def _profile(args):
    cfg = jaxmpc.ProtocolConfig() if args.bits == 64 else jaxmpc.ProtocolConfig(compare_bits=args.bits, lsb_drop_bits=4)
    x = np.random.default_rng(2).normal(size=args.n) * 4

    def run():
        return jax.block_until_ready(jaxmpc.simulate(ops.drelu, x, config=cfg, key=jax.random.key(0))[0])

    run()
    times = []
    for _ in range(2):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    trace_dir = tempfile.mkdtemp(prefix="jaxmpc_trace_")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    run()
    jax.profiler.stop_trace()
    try:
        _report(args, times, trace_dir)
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)


def _report(args, times, trace_dir):

    events = json.load(gzip.open(sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))[-1]))["traceEvents"]
    hlo_files = glob.glob(f"{_DUMP}/*simulate_core*after_optimizations.txt")
    if not hlo_files:
        sys.exit(f"no optimised HLO was dumped to {_DUMP}")
    src = _source_map(open(max(hlo_files, key=os.path.getsize)).read())
    by_fn, by_line, total = collections.Counter(), collections.Counter(), 0.0
    for e in events:
        op = e.get("args", {}).get("hlo_op")
        if e.get("ph") != "X" or not op or "simulate_core" not in e["args"].get("hlo_module", ""):
            continue
        if op.split(".")[0] in _CONTAINERS:
            continue
        path, fn, line = src.get(op, ("?", "(no source)", 0))
        by_fn[f"{path}:{fn}"] += e["dur"] / 1e6
        by_line[f"{path}:{line} ({fn})"] += e["dur"] / 1e6
        total += e["dur"] / 1e6

    print(f"# DReLU profile: n = {args.n:,}, {args.bits} bits, jaxmpc {os.path.dirname(jaxmpc.__file__)}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load average {os.getloadavg()[0]:.2f}")
    print(f"wall time per call: {min(times):.2f} s (runs {', '.join(f'{t:.2f}' for t in times)}); "
          f"thunk time summed over threads: {total:.2f} s\n")
    for title, counter in (("source function", by_fn), ("source line", by_line)):
        print(f"| {title} | thunk s | share |\n|---|---:|---:|")
        for k, v in counter.most_common(args.top):
            print(f"| `{k}` | {v:.3f} | {v / total:.0%} |")
        print()


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(_DUMP, ignore_errors=True)
