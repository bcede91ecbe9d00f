"""Side by side: jaxmpc's secure ResNet18-CIFAR vs SecretFlow SPU (ABY3, 3 simulated parties).

Usage (from the repository root, in jaxmpc's venv; SPU in its own venv, see README.md):
    python benchmarks/peers/compare.py --batches 1 8 --spu-python /tmp/spu-venv/bin/python

In one run: exports the model once (``export_resnet18.py``: random weights, non-trivial
BatchNorm, folded for SPU), then for each batch runs, each in its own process (peak RSS is per
process, one process at a time): SPU (``spu_resnet18.py`` with the SPU venv's python), jaxmpc's
``secure_apply`` and the plaintext Flax model, all on the same weights and images. Prints a
markdown table and the jaxmpc/SPU time ratio. Not part of CI.

Columns: first call = compile + first run; s/batch = best of ``--repeats`` later calls;
MB/image = bytes sent by all parties per image, per inference (SPU: its link counters, weights
shared before the timed calls and not counted; jaxmpc: ``report.inference_bytes_per_image``, the
once-per-session masked weights excluded and shown below the table); rounds = jaxmpc's online
rounds, for SPU the send actions of one party (an upper bound: SPU does not count rounds);
other load = cores kept busy by other processes while the case ran (from /proc/stat less the
case's own CPU time; 0 on an idle machine, 2 = both cores taken).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

JAXMPC_CASE = r'''
import json, resource, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import jaxmpc
from jaxmpc import nn as jnn
from jaxmpc.inference import secure_apply
sys.path.insert(0, sys.argv[1])
from export_resnet18 import variables_from_npz
npz, batch, repeats, budget = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
with np.load(npz) as z:
    variables, x, ref = variables_from_npz(z), z["x"][:batch], z["y_plain"][:batch]
model = jnn.ResNet18()
def run():
    t = time.perf_counter()
    y, rep = secure_apply(model, variables, x, config=jaxmpc.ProtocolConfig(), train=False,
                          memory_budget=None if budget == "none" else budget)
    y = np.asarray(y)
    return y, rep, time.perf_counter() - t
y, rep, first = run()
runs = [run() for _ in range(repeats)]
y, rep, _ = runs[-1]
print(json.dumps(dict(system="jaxmpc", batch=batch, first_s=first, run_s=min(r[2] for r in runs),
    bytes_per_image=rep.inference_bytes_per_image, session_bytes=rep.session_bytes, total_bytes=rep.total_bytes,
    rounds=rep.rounds, peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    max_abs_diff=float(np.max(np.abs(y - ref))), argmax_equal=bool(np.all(y.argmax(-1) == ref.argmax(-1))))))
'''

PLAIN_CASE = r'''
import json, resource, sys, time
import jax
import numpy as np
from jaxmpc import nn as jnn
sys.path.insert(0, sys.argv[1])
from export_resnet18 import variables_from_npz
npz, batch, repeats = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with np.load(npz) as z:
    variables, x, ref = variables_from_npz(z), z["x"][:batch], z["y_plain"][:batch]
model = jnn.ResNet18()
f = jax.jit(lambda v, a: model.apply(v, a, train=False))
def run():
    t = time.perf_counter()
    y = np.asarray(jax.block_until_ready(f(variables, x)))
    return y, time.perf_counter() - t
y, first = run()
times = [run()[1] for _ in range(repeats)]
print(json.dumps(dict(system="plaintext jax", batch=batch, first_s=first, run_s=min(times),
    peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    max_abs_diff=float(np.max(np.abs(y - ref))), argmax_equal=bool(np.all(y.argmax(-1) == ref.argmax(-1))))))
'''


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has been busy since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            t = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(t[:8]) - t[3] - t[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_case(cmd: list[str], timeout: float) -> dict:
    """Runs one case; its last stdout line is a JSON object. Failures become ``{"error": ...}``.
    Adds ``other_load``: CPU cores that other processes kept busy, on average, while it ran."""
    busy, mine, t = _busy_cpu_s(), _children_cpu_s(), time.perf_counter()
    r = _run(cmd, timeout)
    wall, busy2 = time.perf_counter() - t, _busy_cpu_s()
    r["other_load"] = None if busy is None else max(0.0, (busy2 - busy) - (_children_cpu_s() - mine)) / wall
    return r


def _run(cmd: list[str], timeout: float) -> dict:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        return {"error": f"exit {proc.returncode}: {tail[0][:300]}"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": f"unreadable output: {lines[-1][:300]}"}


def fmt(v, spec: str, none: str = "n/a") -> str:
    return none if v is None else format(v, spec)


def row(name: str, batch: int, r: dict) -> str:
    if "error" in r:
        return f"| {name} | {batch} | failed: {r['error']} ||||||||"
    mb = r.get("bytes_per_image")
    if r.get("system") == "spu":
        rounds = f"<= {r['sends_per_party']} sends" if r.get("sends_per_party") is not None else "n/a"
    else:
        rounds = fmt(r.get("rounds"), "d", "-")
    return (f"| {name} | {batch} | {r['first_s']:.2f} | {r['run_s']:.3f} | {r['run_s'] / batch:.3f} | "
            f"{fmt(mb and mb / 1e6, '.1f', '-')} | {rounds} | {r['peak_rss'] / 2**30:.2f} | {r['argmax_equal']} | "
            f"{r['max_abs_diff']:.2e} | {fmt(r['other_load'], '.2f')} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    ap.add_argument("--spu-python", default="/tmp/spu-venv/bin/python", help="python of the SPU venv")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls after the first (best is reported)")
    ap.add_argument("--memory-budget", default="256MiB", help="jaxmpc secure_apply memory_budget ('none' for None)")
    ap.add_argument("--seed", type=int, default=0, help="weights and images")
    ap.add_argument("--npz", default=None, help="where to write the export (default: a temporary file)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    ap.add_argument("--skip", nargs="*", default=[], choices=["spu", "jaxmpc", "plain"], help="systems to leave out")
    args = ap.parse_args()
    if any(b < 1 for b in args.batches):
        ap.error("--batches must be positive")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if "spu" not in args.skip and not os.access(args.spu_python, os.X_OK):
        ap.error(f"--spu-python {args.spu_python}: not an executable (set up the SPU venv, see README.md)")

    load_start = os.getloadavg()
    tmpdir = tempfile.TemporaryDirectory(prefix="peers-")
    npz = args.npz or os.path.join(tmpdir.name, "resnet18_folded.npz")
    export = subprocess.run([sys.executable, os.path.join(HERE, "export_resnet18.py"), "--out", npz,
                             "--batch", str(max(args.batches)), "--seed", str(args.seed)], capture_output=True, text=True)
    if export.returncode:
        sys.exit(f"error: export failed (exit {export.returncode}):\n{export.stderr.strip()[-2000:]}{export.stdout}")

    spu_version = "n/a"
    results = []
    for b in args.batches:
        if "spu" not in args.skip:
            r = run_case([args.spu_python, os.path.join(HERE, "spu_resnet18.py"), "--npz", npz, "--batch", str(b),
                          "--repeats", str(args.repeats)], args.timeout)
            spu_version = r.get("spu_version", spu_version)
            results.append(("SPU ABY3 (FM64, 18 frac bits)", b, r))
        if "jaxmpc" not in args.skip:
            r = run_case([sys.executable, "-c", JAXMPC_CASE, HERE, npz, str(b), str(args.repeats), args.memory_budget],
                         args.timeout)
            results.append(("jaxmpc secure_apply", b, r))
        if "plain" not in args.skip:
            r = run_case([sys.executable, "-c", PLAIN_CASE, HERE, npz, str(b), str(args.repeats)], args.timeout)
            results.append(("plaintext jax (float32)", b, r))

    print(f"# ResNet18-CIFAR (32x32x3, 100 classes): jaxmpc vs SPU ({time.strftime('%Y-%m-%d %H:%M %Z')})")
    load = lambda a: " ".join(f"{v:.2f}" for v in a)  # noqa: E731
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average {load(load_start)} at the start, "
          f"{load(os.getloadavg())} at the end; SPU {spu_version}")
    print(export.stdout.strip().splitlines()[0] if export.stdout.strip() else "")
    print()
    print("| system | batch | first call s | s/batch | s/image | MB/image | rounds | peak RSS GiB "
          "| argmax agrees with plaintext | max abs diff | other load |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|")
    for name, b, r in results:
        print(row(name, b, r))
    print()
    for b in args.batches:
        by = {r.get("system"): r for _, bb, r in results if bb == b and "error" not in r}
        if "jaxmpc" in by and "spu" in by:
            j, s = by["jaxmpc"], by["spu"]
            print(f"- batch {b}: jaxmpc/SPU time {j['run_s'] / s['run_s']:.2f} (first call "
                  f"{j['first_s'] / s['first_s']:.2f}); bytes per image {j['bytes_per_image'] / s['bytes_per_image']:.2f}")
        if "jaxmpc" in by:
            print(f"- batch {b}: jaxmpc's report also counts {by['jaxmpc']['session_bytes'] / 1e6:.1f} MB of masked "
                  f"weights sent once per session (not in MB/image); {by['jaxmpc']['rounds']} online rounds")
        if "spu" in by:
            s = by["spu"]
            print(f"- batch {b}: SPU compile {s['compile_s']:.2f} s, weight sharing {s['share_weights_s']:.2f} s "
                  f"(once, not timed); link counters from {s.get('link_parties_reporting')} parties")
    tmpdir.cleanup()


if __name__ == "__main__":
    main()
