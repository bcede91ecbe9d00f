"""Networked secure inference (three processes, TLS on loopback) against the simulator.

Usage:
    python benchmarks/networked.py                       # ResNetSmall on digits, batch 1 and 8
    python benchmarks/networked.py --batches 8 --images 64 --what-if 100:20
        (what-if: a simulated link of 100 Mbit/s and 20 ms one-way latency per direction)

For each batch size it starts client, server and CP as separate ``jaxmpc party`` processes
(``jaxmpc.net.launch_local``: fresh test PKI, TLS 1.3 with mutual authentication, loopback),
runs ``--images`` digits images through them, and prints, side by side:

* compile time of the party programs (the slowest party; excluded from the steady state) and of
  the simulator's program;
* steady-state seconds per image: networked (the client's median batch time / batch) and
  simulated (``jaxmpc.secure_apply``, all three parties in one XLA program, median of repeats);
* payload bytes counted on the wire per ordered link, next to the simulator's report for the
  same batches (they must be equal), and the framing overhead (frame headers and control
  frames; TLS records and TCP/IP headers are not counted).

Weights are a briefly trained model (timings do not depend on them). The three parties and the
simulator share this machine's cores, so the networked time includes three processes competing
for them; on three machines each party has its own.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxmpc import nn as jnn  # noqa: E402
from jaxmpc.inference import secure_apply  # noqa: E402
from jaxmpc.net import launch_local, save_variables_npz  # noqa: E402

LINK_NAMES = ("client->server", "client->cp", "server->client", "server->cp", "cp->client", "cp->server")


def trained(model, x, y, steps=300):
    v = jax.jit(model.init)(jax.random.key(0), x[:1])
    params, stats = v["params"], v["batch_stats"]
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt, xb, yb):
        def loss(p):
            logits, upd = model.apply({**v, "params": p, "batch_stats": stats}, xb, train=True,
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), upd

        (_, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), upd["batch_stats"], opt

    rng = np.random.default_rng(0)
    for _ in range(steps):
        i = rng.integers(0, len(x), 64)
        params, stats, opt = step(params, stats, opt, x[i], y[i])
    return jax.tree_util.tree_map(np.asarray, {**v, "params": params, "batch_stats": stats})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    ap.add_argument("--images", type=int, default=32, help="images per networked run")
    ap.add_argument("--num-filters", type=int, default=8, help="ResNetSmall width (8: the preset)")
    ap.add_argument("--repeat", type=int, default=5, help="simulator timing repeats")
    ap.add_argument("--what-if", nargs="*", default=[], metavar="MBPS:MS",
                    help="extra runs over a simulated link, e.g. 1000:0.5 100:20")
    args = ap.parse_args()
    from sklearn.datasets import load_digits

    d = load_digits()
    x_all = (d.images / 16.0).astype(np.float32)[..., None]
    y_all = d.target.astype(np.int32)
    model = jnn.ResNetSmall(num_filters=args.num_filters)
    print(f"# Networked secure inference vs simulator: ResNetSmall(num_filters={args.num_filters}) on digits 8x8 "
          f"({time.strftime('%Y-%m-%d %H:%M %Z')})")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}; three party processes + this one on the same cores\n")
    variables = trained(model, x_all[:1200], y_all[:1200])
    x = x_all[1200: 1200 + args.images]
    networks = [("loopback", 0.0, 0.0)]
    for spec in args.what_if:
        mbps, ms = (float(v) for v in spec.split(":"))
        networks.append((f"{mbps:g} Mbit/s, {ms:g} ms", mbps, ms))
    rows, link_rows = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        save_variables_npz(os.path.join(tmp, "w.npz"), variables)
        np.save(os.path.join(tmp, "x.npy"), x)
        for batch in args.batches:
            # simulator: compile, then steady state
            xb = x[:batch]
            t0 = time.perf_counter()
            y, rep = secure_apply(model, variables, xb, key=jax.random.key(0))
            jax.block_until_ready(y)
            sim_first = time.perf_counter() - t0
            ts = []
            for i in range(args.repeat):
                t0 = time.perf_counter()
                jax.block_until_ready(secure_apply(model, variables, xb, key=jax.random.key(i + 1))[0])
                ts.append(time.perf_counter() - t0)
            sim = statistics.median(ts)
            n = (len(x) // batch) * batch
            np.save(os.path.join(tmp, "x.npy"), x[:n])
            for net_name, mbps, ms in networks:
                r = launch_local(model={"preset": "ResNetSmall", "kwargs": {"num_filters": args.num_filters},
                                        "input_shape": [8, 8, 1], "batch_size": batch},
                                 weights=os.path.join(tmp, "w.npz"), inputs=os.path.join(tmp, "x.npy"),
                                 network={"bandwidth_mbps": mbps, "latency_ms": ms, "timeout": 600.0},
                                 timeout=3600)
                batches = r["batches"]
                wire = sum(v["sent_payload_bytes"] for v in r["links"].values())
                assert wire == batches * rep.total_bytes and r["wire_matches_simulator"]
                compile_s = max(t["compile_s"] for t in r["timing"].values())
                sims = [secure_apply(model, variables, x[i: i + batch], key=jax.random.key(7))[0]
                        for i in range(0, min(n, 4 * batch), batch)]
                same = np.array_equal(np.argmax(np.concatenate([np.asarray(s) for s in sims]), -1),
                                      np.asarray(r["predictions"][: len(sims) * batch]))
                rows.append((batch, net_name, compile_s, sim_first - sim, r["s_per_image"], sim / batch,
                             wire / n, rep.total_bytes / batch, r["framing_overhead_bytes"] / wire, rep.rounds,
                             same, batches))
                if net_name == "loopback":
                    link_rows[batch] = (r["links"], batches)
                print(f"  done: batch {batch}, {net_name}", flush=True)
    print("\n| batch | network | party compile s | simulator compile s | networked s/image | simulator s/image | "
          "net/sim | wire kB/image | report kB/image | framing overhead | rounds | same predictions |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for (b, net, cs, ss, tn, tsim, wb, rb, ov, rounds, same, nb) in rows:
        print(f"| {b} | {net} | {cs:.1f} | {ss:.1f} | {tn:.4f} | {tsim:.4f} | {tn / tsim:.1f}x | {wb / 1e3:.1f} | "
              f"{rb / 1e3:.1f} | {100 * ov:.2f}% | {rounds} | {'yes' if same else 'NO'} ({nb} batches) |")
    for batch, (links, nb) in link_rows.items():
        print(f"\nPer-link payload bytes, batch {batch}, {nb} batches (loopback):\n")
        print("| link | sent (counted by sender) | received (counted by receiver) | simulator report | equal |")
        print("|---|---:|---:|---:|---|")
        for name in LINK_NAMES:
            v = links[name]
            print(f"| {name} | {v['sent_payload_bytes']:,} | {v['received_payload_bytes']:,} | "
                  f"{v['simulator_payload_bytes']:,} | {'yes' if v['match'] else 'NO'} |")


if __name__ == "__main__":
    main()
