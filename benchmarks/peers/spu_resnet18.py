"""Folded ResNet18-CIFAR under SecretFlow SPU's 3-party ABY3 simulator (runs in the SPU venv).

Usage (see README.md for the SPU venv):
    /tmp/spu-venv/bin/python benchmarks/peers/spu_resnet18.py --npz /tmp/resnet18_folded.npz --batch 1

Loads the folded weights, input batch and plaintext output written by ``export_resnet18.py``,
compiles the forward pass below once with SPU's JAX frontend, and runs it on 3 simulated parties
(in-memory links, one thread per party). The weights are secret-shared once, before any timed
call (the server's session set-up); the image batch is shared anew in every call (the client's
input), and the output is reconstructed. Prints one JSON line with the figures at the end.

Communication comes from SPU's own link counters: with ``enable_pphlo_profile`` each party logs
``Link details: total send bytes ..., send actions ...`` after a run; the profiled run is the
first one, the timed runs are not profiled. SPU does not report rounds; the number of send
actions of one party is given instead (an upper bound on the rounds of the ring protocol).

Imports only numpy, jax and spu; :func:`folded_forward` needs only jax, so the exporter imports
it to check the folding against the Flax model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import threading
import time

import numpy as np

# --------------------------------------------------------------------------------------------
# The folded network (plain jax; shared with export_resnet18.py)


def load_npz(path: str) -> tuple[dict, dict, np.ndarray, dict]:
    """Reads an export: ``(arch, params, x, extras)`` with params keyed ``"<layer>/w"``, ``"<layer>/b"``."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    arch = json.loads(str(data.pop("arch")))
    params = {k[len("p:"):]: v for k, v in data.items() if k.startswith("p:")}
    extras = {k: v for k, v in data.items() if not k.startswith(("p:", "var:")) and k != "x"}
    return arch, params, data["x"], extras


def folded_forward(arch: dict, params: dict, x):
    """ResNet18 with BatchNorm folded: conv + bias (+ ReLU), residual adds, global mean, dense.

    ``arch`` lists the stem width and, per basic block, its name, stride and whether it has a
    1x1 projection shortcut; ``params[name + "/w"]`` are HWIO kernels, ``params[name + "/b"]``
    per-channel biases. Padding is symmetric ``(k - 1) // 2`` (PyTorch style), as in jaxmpc.
    """
    import jax.numpy as jnp
    from jax import lax

    def conv(h, name, stride):
        w, b = params[name + "/w"], params[name + "/b"]
        p = (w.shape[0] - 1) // 2
        y = lax.conv_general_dilated(h, w, (stride, stride), [(p, p), (p, p)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + b

    relu = lambda h: jnp.maximum(h, 0)  # noqa: E731
    h = relu(conv(x, "stem", 1))
    for blk in arch["blocks"]:
        name, s = blk["name"], blk["stride"]
        y = relu(conv(h, f"{name}/conv1", s))
        y = conv(y, f"{name}/conv2", 1)
        shortcut = conv(h, f"{name}/downsample", s) if blk["downsample"] else h
        h = relu(shortcut + y)
    h = jnp.mean(h, axis=(1, 2))
    return h @ params["fc/w"] + params["fc/b"]


# --------------------------------------------------------------------------------------------
# SPU


_LINK_RE = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+)")


class _CaptureFds:
    """Redirects the process's stdout and stderr file descriptors (where SPU's C++ logger writes)
    to a temporary file; ``.text`` holds what was written."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self._tmp = tempfile.TemporaryFile(mode="w+b")
        self._saved = [os.dup(1), os.dup(2)]
        os.dup2(self._tmp.fileno(), 1)
        os.dup2(self._tmp.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved):
            os.dup2(saved, fd)
            os.close(saved)
        self._tmp.seek(0)
        self.text = self._tmp.read().decode("utf-8", "replace")
        self._tmp.close()
        return False


class Session:
    """A 3-party ABY3 session: secret weights shared once, one compiled program, many calls."""

    def __init__(self, arch, params, x_shape, fraction_bits: int):
        import spu.libspu as libspu
        import spu.utils.frontend as spu_fe
        from spu import api as spu_api

        self.libspu, self.spu_api = libspu, spu_api
        self.config = libspu.RuntimeConfig(protocol=libspu.ProtocolKind.ABY3, field=libspu.FieldType.FM64)
        if fraction_bits:
            self.config.fxp_fraction_bits = fraction_bits
        self.io = spu_api.Io(3, self.config)
        names = sorted(params)
        self._n_weights = len(names)

        def fn(weights, x):
            return folded_forward(arch, dict(zip(names, weights)), x)

        w_flat = [np.asarray(params[k], np.float32) for k in names]
        x_spec = np.zeros(x_shape, np.float32)
        in_names = [f"in{i}" for i in range(len(w_flat) + 1)]
        t = time.perf_counter()
        self.executable, _ = spu_fe.compile(
            spu_fe.Kind.JAX, fn, (w_flat, x_spec), {}, in_names,
            [libspu.Visibility.VIS_SECRET] * len(in_names), lambda outs: [f"out{i}" for i in range(len(outs))],
        )
        self.compile_s = time.perf_counter() - t
        # The server's weights, secret-shared once for the whole session.
        t = time.perf_counter()
        self._weight_shares = [self.io.make_shares(w, libspu.Visibility.VIS_SECRET) for w in w_flat]
        self.share_weights_s = time.perf_counter() - t

    def __call__(self, x: np.ndarray, profile: bool = False) -> tuple[np.ndarray, str]:
        """One secure inference of the batch ``x``; returns the output and, with ``profile``, SPU's log."""
        libspu = self.libspu
        x_shares = self.io.make_shares(np.asarray(x, np.float32), libspu.Visibility.VIS_SECRET)
        shares = self._weight_shares + [x_shares]
        desc = libspu.link.Desc()
        for rank in range(3):
            desc.add_party(f"id_{rank}", f"thread_{rank}")
        outs, errors = [None] * 3, []

        def party(rank):
            try:
                cfg = libspu.RuntimeConfig(self.config)
                cfg.enable_pphlo_profile = profile
                rt = self.spu_api.Runtime(libspu.link.create_mem(desc, rank), cfg)
                for name, sh in zip(self.executable.input_names, shares):
                    rt.set_var(name, sh[rank])
                rt.run(self.executable)
                outs[rank] = [rt.get_var(n) for n in self.executable.output_names]
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                errors.append(e)

        def run_parties():
            threads = [threading.Thread(target=party, args=(r,)) for r in range(3)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()

        log = ""
        if profile:
            with _CaptureFds() as cap:
                run_parties()
            log = cap.text
        else:
            run_parties()
        if errors:
            raise errors[0]
        (y,) = [self.io.reconstruct(list(o)) for o in zip(*outs)]
        return np.asarray(y), log


def link_stats(log: str) -> dict:
    """Sums SPU's per-party ``Link details`` lines (one per party when every party profiles)."""
    rows = [tuple(map(int, m.groups())) for m in _LINK_RE.finditer(log)]
    if not rows:
        return {}
    return {"parties_reporting": len(rows), "sent_bytes": sum(r[0] for r in rows),
            "send_actions_per_party": max(r[2] for r in rows)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npz", required=True, help="export of export_resnet18.py")
    ap.add_argument("--batch", type=int, default=1, help="images per call (the first BATCH of the export)")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls after the first one (best is reported)")
    ap.add_argument("--fraction-bits", type=int, default=18, help="fxp_fraction_bits (default 18; 0: SPU's default)")
    args = ap.parse_args()
    if not os.path.isfile(args.npz):
        ap.error(f"--npz {args.npz}: no such file (run export_resnet18.py first)")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    arch, params, x_all, extras = load_npz(args.npz)
    if not 1 <= args.batch <= x_all.shape[0]:
        ap.error(f"--batch must be in 1..{x_all.shape[0]} (images in the export)")
    x = x_all[: args.batch]
    ref = extras["y_plain"][: args.batch]

    try:
        import spu
    except ImportError as e:
        sys.exit(f"error: cannot import spu in {sys.executable} ({e}); set up the SPU venv (README.md)")

    sess = Session(arch, params, x.shape, args.fraction_bits)
    t = time.perf_counter()
    y, log = sess(x, profile=True)
    first_run = time.perf_counter() - t
    sys.stderr.write("\n".join(line for line in log.splitlines() if "Link details" in line or "[Profiling]" in line)
                     + "\n")
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        y2, _ = sess(x)
        times.append(time.perf_counter() - t)
    stats = link_stats(log)
    out = {
        "system": "spu", "spu_version": spu.__version__, "protocol": "ABY3", "field": "FM64",
        "fxp_fraction_bits": args.fraction_bits or "spu default", "batch": args.batch,
        "compile_s": sess.compile_s, "share_weights_s": sess.share_weights_s, "first_run_s": first_run,
        "first_s": sess.compile_s + first_run, "run_s": min(times),
        "bytes_per_image": stats["sent_bytes"] / args.batch if stats else None,
        "sends_per_party": stats.get("send_actions_per_party"), "link_parties_reporting": stats.get("parties_reporting"),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "max_abs_diff": float(np.max(np.abs(y2 - ref))),
        "argmax_equal": bool(np.all(y2.argmax(-1) == ref.argmax(-1))),
        "first_call_argmax_equal": bool(np.all(y.argmax(-1) == ref.argmax(-1))),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
