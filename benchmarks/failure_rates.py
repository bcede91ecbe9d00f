"""Rare failures of secure inference, measured: truncation wraps and reduced-bit DReLU windows.

Three measurements (all printed as measured figures; nothing is hard-coded):

A. **Truncation failure rate per element** against the documented ``|v| / 2^64``. The local
   truncation (``jaxmpc.protocols.linear.trunc_a``: client floors its share, server ceils its
   own) is wrong exactly when the two shares, read as signed 64-bit integers, overflow when
   added. The benchmark shares values ``v`` of chosen magnitudes (``|v|`` in ``[2^(k-1), 2^k)``)
   with the library's own ``share`` (the client's share is ``v - r`` for the runtime's uniform
   mask ``r``), truncates them with the library's ``trunc_a``, opens the result and counts the
   elements whose error is not in ``{0, 1}``; it also counts the share overflows directly and
   checks that both sets are the same. Predicted count: ``sum |v| / 2^64`` over the elements.
   Magnitudes are scaled up (2^40 .. 2^62) so that failures are frequent enough to count.

B. **ResNet50-224 scale** (extrapolation from A's formula, with the counts and magnitudes
   measured): the plaintext fixed-point reference of the secure program
   (``jaxmpc.fixed_point_apply``) is run with ``jaxmpc.protocols.reference.trunc``/``div`` instrumented
   (recording every truncated element's ``|v|``), on a ResNet50 with *random* weights whose
   BatchNorm statistics are calibrated on the batch (so every pre-activation is normalised, the
   scale a trained network's BatchNorm also targets), on standard-normal images -- no trained
   ResNet50 or ImageNet is available here. It runs op by op at 64x64 by default (224x224 takes
   about 10 minutes per protocol here) and scales the counts to 224x224 by area: every map of
   ResNet50 is then exactly (224/64)^2 = 12.25 times larger (the classifier's 1,000 outputs
   are not, a negligible part). It prints the number of truncated elements per image and the
   expected number of truncation failures per image, ``sum |v| / 2^64``, under the paper's
   ImageNet protocol (16 fractional bits, 16-bit DReLU, 5 LSBs dropped) and jaxmpc's default
   (12 fractional bits).

C. **Real images** (the digits demo's models, from a ``jaxmpc demo`` work folder): on every test
   image, the secure prediction against the plaintext (float) one, for the all-ReLU model, every
   knapsack spec and the uniform baseline at 10% (or its first budget), under the demo's exact protocol,
   the paper's reduced-bit protocol and two narrower DReLU windows; each difference is
   attributed to one cause, in this order:

   * ``truncation wrap``: the secure logits differ from the fixed-point reference's by more
     than 1000 (a wrap corrupts a value by about ``2^(64 - 2f)``);
   * ``DReLU outside window``: the fixed-point reference under the reduced-bit protocol already
     predicts differently from the same reference with exact DReLUs, and the image has at
     least one DReLU input outside :func:`jaxmpc.protocols.reference.drelu_window` (counted by
     instrumenting ``jaxmpc.protocols.reference.drelu``); ``reduced-bit rounding`` if it has none;
   * ``Block-ReLU near-tie`` (models with Block ReLUs): the secure logits differ from the float
     ones by more than 10 times the model's median error -- a patch statistic within rounding
     (fixed-point encoding, or the secure truncation's random ``+0/+1`` ulp) of zero took the
     other sign and switched a whole patch;
   * ``logit near-tie``: otherwise -- the float model's two top logits are closer than the
     ordinary fixed-point error.

   Each count of differing images comes with its 95% Wilson interval over the test images.

Usage::

    python benchmarks/failure_rates.py --workdir runs/demo          # A, B and C (20 min on 2 busy cores)
    python benchmarks/failure_rates.py --skip-images                # A and B only
    python benchmarks/failure_rates.py --workdir runs/demo --quick  # smaller A, C on 2 models

Run ``jaxmpc demo`` first for C (it reads ``train/``, ``finetune/knapsack_*`` and the dataset).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

WRAP_LOGIT = 1000.0  # logit error (real units) above which a difference is a truncation wrap
SECURE_BATCH = 120  # images per secure call in part C (bounds memory)


# ------------------------------------------------------------------------------------------
# instrumentation of the fixed-point reference (jaxmpc.protocols.reference), usable inside jit


class _Recorder:
    """Collects per-call statistics from the instrumented reference functions (host callbacks)."""

    def __init__(self):
        self.enabled = False  # checked when a callback runs (compiled programs always call back)
        self.batch = 1  # batch size of the programs traced next (to find the batch axis)
        self.trunc = []  # (kind, elements per image, per-image sum |v| [B], max |v|)
        self.drelu = []  # (elements per image, per-image out-of-window counts [B])

    def start(self, batch):
        self.enabled, self.batch, self.trunc, self.drelu = True, batch, [], []

    def add_trunc(self, row):
        if self.enabled:
            self.trunc.append(row)

    def add_drelu(self, row):
        if self.enabled:
            self.drelu.append(row)


REC = _Recorder()


def _install():
    import jax
    import jax.numpy as jnp

    from jaxmpc.protocols import reference as ref
    from jaxmpc.core.config import ProtocolConfig
    from jaxmpc.core.ring import to_signed

    if getattr(ref, "_failure_bench_installed", False):
        return
    orig_trunc, orig_div, orig_drelu = ref.trunc, ref.div, ref.drelu

    def per_image(x, values):
        b = REC.batch
        axes = [i for i, d in enumerate(x.shape) if d == b]
        if len(axes) != 1:  # batch axis not identifiable: spread evenly (only totals are then exact)
            return jnp.full((b,), jnp.sum(values) / b)
        return jnp.sum(values, axis=tuple(i for i in range(x.ndim) if i != axes[0]))

    def record_abs(kind, x):
        a = jnp.abs(to_signed(jnp.asarray(x, jnp.uint64)).astype(jnp.float64))
        per = per_image(x, a)
        n = int(np.prod(x.shape)) / REC.batch
        jax.debug.callback(lambda p, m: REC.add_trunc((kind, n, np.asarray(p), float(m))), per, jnp.max(a))

    def trunc(x, bits):
        record_abs("trunc", x)
        return orig_trunc(x, bits)

    def div(x, d):
        record_abs("div", x)
        return orig_div(x, d)

    def drelu(x, config=ProtocolConfig(), divisor=None, **kw):  # kw: e.g. check_range, passed on
        m, s = config.compare_bits, config.lsb_drop_bits
        xs = to_signed(jnp.asarray(x, jnp.uint64))
        if m < 64:  # outside drelu_window: the compared m-bit value wraps
            q = jnp.asarray(1 if divisor is None else np.asarray(divisor, np.int64), jnp.int64) * (2**s)
            lo = -(2 ** (m - 1)) * q
            hi = jnp.where(q == 1, 2 ** (m - 1) - 2, (2 ** (m - 1) - 2) * q - 1)
            out = (xs < lo) | (xs > hi)
        elif s == 0 and divisor is None:  # exact: every ring element but 2^63 - 1
            out = xs == 2**63 - 1
        else:  # 64 compared bits of floor(x / q): nothing wraps
            out = jnp.zeros(xs.shape, bool)
        per = per_image(x, jnp.broadcast_to(out, xs.shape).astype(jnp.float64))
        n = int(np.prod(x.shape)) / REC.batch
        jax.debug.callback(lambda p: REC.add_drelu((n, np.asarray(p))), per)
        return orig_drelu(x, config, divisor, **kw) if divisor is not None else orig_drelu(x, config, **kw)

    ref.trunc, ref.div, ref.drelu = trunc, div, drelu
    ref._failure_bench_installed = True


# ------------------------------------------------------------------------------------------
# A. truncation failure per element


def _poisson_ci(k: int, conf: float = 0.95):
    from scipy.stats import chi2

    a = 1 - conf
    lo = 0.0 if k == 0 else chi2.ppf(a / 2, 2 * k) / 2
    hi = chi2.ppf(1 - a / 2, 2 * k + 2) / 2
    return lo, hi


def truncation_rates(mags, max_log2: int, bits: int, chunk_log2: int, target: float, seed: int = 0, log=print):
    import jax
    import jax.numpy as jnp

    from jaxmpc.core.config import ProtocolConfig
    from jaxmpc.core.parties import CLIENT
    from jaxmpc.protocols import linear
    from jaxmpc.core.randomness import simulation_keys
    from jaxmpc.core.sharing import share
    from jaxmpc.simulate import run_planned

    cfg = ProtocolConfig()
    chunk = 1 << chunk_log2

    def body(rt, v):
        x = share(rt, rt.input(CLIENT, v), CLIENT, scale=bits, name="x")
        y = linear.trunc_a(x, bits)
        return x.c.value, x.s.value, y.c.value + y.s.value

    @jax.jit
    def one(key, k):
        kv, ks, kp = jax.random.split(key, 3)
        half = jnp.left_shift(jnp.int64(1), k - 1)
        mag = half + (jax.random.bits(kv, (chunk,), jnp.uint64) >> (jnp.uint64(65) - k.astype(jnp.uint64))
                      ).astype(jnp.int64)
        sign = jnp.where(jax.random.bernoulli(ks, 0.5, (chunk,)), 1, -1)
        v = (mag * sign).view(jnp.uint64)
        (c, s, y), _ = run_planned(cfg, simulation_keys(kp), body, v)
        vs, cs, ss = v.view(jnp.int64), c.view(jnp.int64), s.view(jnp.int64)
        wrap = ((cs < 0) == (ss < 0)) & (((cs + ss) < 0) != (cs < 0))  # signed overflow of c + s
        err = y.view(jnp.int64) - (vs >> bits)
        fail = (err != 0) & (err != 1)
        pred = jnp.sum(jnp.abs(vs).astype(jnp.float64)) / 2.0**64
        return jnp.sum(fail), jnp.sum(wrap), jnp.sum(fail != wrap), pred

    rows = []
    for i, k in enumerate(mags):
        rate = 0.75 * 2.0 ** (k - 64)  # mean |v| / 2^64 for |v| uniform in [2^(k-1), 2^k)
        n_chunks = int(min(max(1, np.ceil(target / rate / chunk)), 2 ** (max_log2 - chunk_log2)))
        fails = wraps = mism = 0
        pred = 0.0
        t0 = time.perf_counter()
        for j in range(n_chunks):
            f, w, mm, p = one(jax.random.fold_in(jax.random.key(1000 * (seed + 1) + k), j), jnp.int64(k))
            fails, wraps, mism, pred = fails + int(f), wraps + int(w), mism + int(mm), pred + float(p)
        n = n_chunks * chunk
        lo, hi = _poisson_ci(fails)
        rows.append({"log2_abs_v": [k - 1, k], "elements": n, "predicted": pred, "failures": fails, "wraps": wraps,
                     "fail_ne_wrap": mism, "rate": fails / n, "predicted_rate": pred / n,
                     "ratio": fails / pred if pred else float("nan"), "ratio_ci": [lo / pred, hi / pred],
                     "seconds": time.perf_counter() - t0})
        r = rows[-1]
        log(f"  |v| in [2^{k - 1}, 2^{k}): {n:>12,} elements  predicted {pred:10.1f}  measured {fails:>8,}  "
            f"ratio {r['ratio']:.3f} [{r['ratio_ci'][0]:.3f}, {r['ratio_ci'][1]:.3f}]  "
            f"(failures != wraps: {mism})  {r['seconds']:.1f} s")
    return rows


# ------------------------------------------------------------------------------------------
# B. ResNet50 scale


def resnet50_scale(size: int, log=print):
    import jax

    from jaxmpc import ProtocolConfig, fixed_point_apply
    from jaxmpc import nn as jnn

    _install()
    model = jnn.ResNet50()
    x = np.random.default_rng(0).standard_normal((4, size, size, 3)).astype(np.float32)
    v = jax.jit(lambda k: model.init(k, x[:1]))(jax.random.key(0))
    # BatchNorm calibration: flax's update is new = 0.9 old + 0.1 batch, so the batch statistics
    # are (new - 0.9 old) / 0.1; with them every BN output is normalised over the batch
    _, upd = jax.jit(lambda v, a: model.apply(v, a, train=True, mutable=["batch_stats"]))(v, x)
    v = {**v, "batch_stats": jax.tree_util.tree_map(lambda n, o: (n - 0.9 * o) / 0.1, upd["batch_stats"],
                                                    v["batch_stats"])}
    out = []
    for name, cfg in [("paper ImageNet (f=16, 16-bit DReLU, 5 LSBs dropped)",
                       ProtocolConfig(frac_bits=16, compare_bits=16, lsb_drop_bits=5)),
                      ("jaxmpc default (f=12, exact DReLU)", ProtocolConfig(frac_bits=12))]:
        t0 = time.perf_counter()
        REC.batch = 1
        REC.start(1)
        logits = np.asarray(fixed_point_apply(model, v, x[:1], config=cfg, jit=False))  # op by op: no compile
        REC.enabled = False
        err = float(np.max(np.abs(logits - np.asarray(model.apply(v, x[:1])))))
        conv = [r for r in REC.trunc if r[0] == "trunc"]
        divs = [r for r in REC.trunc if r[0] == "div"]
        n_conv = sum(r[1] for r in conv)
        s_conv = float(sum(r[2].sum() for r in conv))
        n_div = sum(r[1] for r in divs)
        s_div = float(sum(r[2].sum() for r in divs))
        scale = (224 / size) ** 2
        row = {"protocol": name, "size": size, "truncated_elements": n_conv,
               "mean_abs_v_log2": float(np.log2(s_conv / n_conv)),
               "max_abs_v_log2": float(np.log2(max(r[3] for r in conv))),
               "expected_failures_per_image": s_conv / 2**64, "div_elements": n_div,
               "div_expected_failures": s_div / 2**64, "scale_to_224": scale,
               "expected_failures_224": s_conv / 2**64 * scale, "truncated_elements_224": n_conv * scale,
               "max_logit_error_vs_float": err, "seconds": time.perf_counter() - t0}
        out.append(row)
        log(f"  {name}: {n_conv:,.0f} truncated elements/image at {size}x{size} "
            f"(x{scale:.2f} at 224: {row['truncated_elements_224']:,.0f}), mean |v| = 2^{row['mean_abs_v_log2']:.2f}, "
            f"max 2^{row['max_abs_v_log2']:.2f}; expected failures/image {row['expected_failures_per_image']:.3g} "
            f"(at 224: {row['expected_failures_224']:.3g}); DReLU/pool divisions: {n_div:,.0f} elements, "
            f"{row['div_expected_failures']:.3g}; fixed point vs float max logit error {err:.3f} "
            f"({row['seconds']:.0f} s)")
    return out


# ------------------------------------------------------------------------------------------
# C. real images


# the demo's exact protocol, the paper's reduced-bit one (DReLU exact for |x| < ~16), and two
# narrower windows (|x| < ~4 and ~1 in real units) where out-of-window inputs occur on these models
CONFIGS_C = {
    "exact f=12 (demo)": dict(frac_bits=12),
    "paper f=16 m=16 s=5": dict(frac_bits=16, compare_bits=16, lsb_drop_bits=5),
    "f=16 m=14 s=5": dict(frac_bits=16, compare_bits=14, lsb_drop_bits=5),
    "f=16 m=12 s=5": dict(frac_bits=16, compare_bits=12, lsb_drop_bits=5),
}
FLIP_FACTOR = 10.0  # a logit error this many times the model's median error means a discrete flip inside


def real_images(workdir: str, tags, configs, log=print):
    import jax

    from jaxmpc import ProtocolConfig, data, fixed_point_apply, secure_apply
    from jaxmpc import pipeline as pl
    from jaxmpc import train

    _install()
    wd = pl.Workdir(workdir)
    cfg = wd.config()
    tc = train.get_config(cfg.train_config).replace(**{**cfg.overrides, **cfg.train_overrides})
    ds = data.load_dataset(tc.dataset, **tc.dataset_kwargs)
    model = train.build_model(tc, ds.info)
    n = len(ds.test)
    batch = ds.test.get(np.arange(n))
    x, y = np.asarray(batch["image"]), np.asarray(batch["label"])
    results = []
    REC.batch = n  # every fixed-point program below is traced with the whole test split as one batch
    for tag in tags:
        folder = wd.train if tag == "all_relu" else wd.finetune(tag)
        variables, _ = train.load_variables(folder)
        has_block = tag != "all_relu"
        plain_logits = np.asarray(jax.jit(model.apply)(variables, x))
        plain = np.argmax(plain_logits, -1)
        fixed_exact = {}
        for cname, kw in configs.items():
            f = kw["frac_bits"]
            if f not in fixed_exact:
                fixed_exact[f] = np.argmax(np.asarray(fixed_point_apply(model, variables, x,
                                                                        config=ProtocolConfig(frac_bits=f))), -1)
            config = ProtocolConfig(**kw)
            REC.start(n)
            fx = np.asarray(fixed_point_apply(model, variables, x, config=config))
            REC.enabled = False
            outwin = np.sum([r[1] for r in REC.drelu] + [np.zeros(n)], axis=0)
            drelus = sum(r[0] for r in REC.drelu)
            wrap_pred = np.sum([r[2] for r in REC.trunc if r[0] == "trunc"] + [np.zeros(n)], axis=0) / 2.0**64
            t0 = time.perf_counter()
            sec = []
            for i in range(0, n, SECURE_BATCH):  # one compiled shape: the last batch is padded
                xb = x[i: i + SECURE_BATCH]
                pad = SECURE_BATCH - len(xb)
                xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)]) if pad else xb
                out, _ = secure_apply(model, variables, xb, config=config, key=jax.random.fold_in(jax.random.key(7), i))
                sec.append(np.asarray(out)[: SECURE_BATCH - pad])
            secs = time.perf_counter() - t0
            sec = np.concatenate(sec)
            ps, pf = np.argmax(sec, -1), np.argmax(fx, -1)
            err = np.max(np.abs(sec - fx), axis=1)  # secure vs its fixed-point reference
            err_plain = np.max(np.abs(sec - plain_logits), axis=1)  # secure vs float
            typical = float(np.median(err_plain))
            top2 = np.sort(plain_logits, axis=1)[:, -2:]
            causes = {"truncation wrap": 0, "DReLU outside window": 0, "reduced-bit rounding (inside window)": 0,
                      "Block-ReLU near-tie": 0, "logit near-tie": 0}
            details = []
            for i in np.flatnonzero(ps != plain):
                if err[i] > WRAP_LOGIT:
                    cause = "truncation wrap"
                elif pf[i] != fixed_exact[f][i]:
                    cause = "DReLU outside window" if outwin[i] > 0 else "reduced-bit rounding (inside window)"
                elif has_block and err_plain[i] > FLIP_FACTOR * typical:
                    cause = "Block-ReLU near-tie"  # a patch statistic within rounding of 0 took the other sign
                else:
                    cause = "logit near-tie"  # the float model's top two logits are within the rounding error
                causes[cause] += 1
                details.append({"image": int(i), "cause": cause, "logit_error": float(err_plain[i]),
                                "float_margin": float(top2[i, 1] - top2[i, 0]),
                                "out_of_window_inputs": float(outwin[i]),
                                "fixed_point_differs": bool(pf[i] != plain[i])})
            differs = int(np.sum(ps != plain))
            row = {"tag": tag, "protocol": cname, "images": n, "secure_differs": differs,
                   "secure_differs_interval": list(train.wilson_interval(differs, n)),
                   "causes": causes, "secure_accuracy": float(np.mean(ps == y)),
                   "plaintext_accuracy": float(np.mean(plain == y)),
                   "images_with_out_of_window_drelu": int(np.sum(outwin > 0)),
                   "out_of_window_fraction": float(outwin.sum() / (drelus * n)) if drelus else 0.0,
                   "drelu_inputs_per_image": drelus, "expected_wraps_total": float(wrap_pred.sum()),
                   "secure_fixed_prediction_differs": int(np.sum(ps != pf)),
                   "max_logit_error_secure_vs_fixed": float(err.max()), "median_logit_error_vs_float": typical,
                   "differences": details, "secure_seconds": secs}
            results.append(row)
            shown = ", ".join(f"{k} {v}" for k, v in causes.items() if v)
            lo, hi = row["secure_differs_interval"]
            log(f"  {tag:16s} {cname:20s} secure != plaintext {differs:>3}/{n} [{100 * lo:.1f}, {100 * hi:.1f}]% "
                f"({shown or 'none'}); "
                f"out-of-window DReLU inputs {100 * row['out_of_window_fraction']:.3g}% "
                f"({row['images_with_out_of_window_drelu']} images); expected wraps {row['expected_wraps_total']:.2g}; "
                f"acc secure {100 * row['secure_accuracy']:.2f} / plain {100 * row['plaintext_accuracy']:.2f} "
                f"({secs:.0f} s)")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="runs/demo", help="a finished `jaxmpc demo` work folder (part C)")
    ap.add_argument("--quick", action="store_true", help="fewer samples in A, two models and protocols in C")
    ap.add_argument("--skip-images", action="store_true", help="skip part C")
    ap.add_argument("--skip-resnet50", action="store_true", help="skip part B")
    ap.add_argument("--resnet50-size", type=int, default=None,
                    help="input size of part B (default 64, counts scaled to 224 by area; 224 takes ~10 min)")
    ap.add_argument("--json", default=None, help="write all results to this JSON file")
    ap.add_argument("--seed", type=int, default=0, help="seed of part A's keys (repeat A on fresh shares)")
    ap.add_argument("--magnitudes", default="40,44,48,52,56,60,62", help="part A: the k of |v| in [2^(k-1), 2^k)")
    ap.add_argument("--only-truncation", action="store_true", help="run part A only")
    args = ap.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    from jaxmpc import _io

    c_tags = None
    if not args.skip_images and not args.only_truncation:
        if not os.path.exists(os.path.join(args.workdir, "train", "result.json")):
            print(f"error: {args.workdir} is not a finished demo work folder (run `jaxmpc demo --workdir "
                  f"{args.workdir}` first, or pass --skip-images)", file=sys.stderr)
            return 2
        done = sorted(t for t in os.listdir(os.path.join(args.workdir, "finetune"))
                      if os.path.exists(os.path.join(args.workdir, "finetune", t, "result.json")))
        ks = [t for t in done if t.startswith("knapsack_")]
        base = sorted((t for t in done if t.startswith("uniform_")), key=lambda t: t != "uniform_10pct")
        c_tags = ["all_relu"] + (ks[:1] if args.quick else ks + base[:1])  # one baseline: other patch sizes
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"failure rates: {started}, {platform.machine()} {os.cpu_count()} CPUs, jax {jax.__version__}, "
          f"load {os.getloadavg()[0]:.1f}")
    out = {"date": started, "cpus": os.cpu_count(), "jax": jax.__version__}
    print("\nA. truncation failures per element (protocol's share + trunc_a, 12 bits), measured vs sum|v|/2^64")
    mags = [int(v) for v in args.magnitudes.split(",")]
    if not all(2 <= k <= 63 for k in mags):
        print(f"error: --magnitudes must lie in [2, 63], got {args.magnitudes}", file=sys.stderr)
        return 2
    out["truncation"] = truncation_rates(mags, max_log2=26 if args.quick else 29, bits=12, chunk_log2=22,
                                         target=500 if args.quick else 4000, seed=args.seed)
    if args.only_truncation:
        args.skip_resnet50, c_tags = True, None
    if not args.skip_resnet50:
        size = args.resnet50_size or 64
        print(f"\nB. ResNet50 ({size}x{size}, BN-calibrated random weights, standard-normal images): "
              "truncations and expected failures per image")
        out["resnet50"] = resnet50_scale(size)
    if c_tags:
        print(f"\nC. secure vs plaintext predictions on the {args.workdir} test images, by cause")
        configs = CONFIGS_C if not args.quick else {k: CONFIGS_C[k] for k in list(CONFIGS_C)[:2]}
        out["images"] = real_images(args.workdir, c_tags, configs)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        _io.write_json(args.json, out)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
