"""Exports jaxmpc's ResNet18-CIFAR with BatchNorm folded, for the SPU peer benchmark (jaxmpc venv).

Usage:
    python benchmarks/peers/export_resnet18.py --out /tmp/resnet18_folded.npz --batch 8

Builds ``jaxmpc.nn.ResNet18`` with random weights and non-trivial BatchNorm (running statistics
set to the statistics of a calibration batch, then perturbed, and random scales and offsets),
folds every BatchNorm into the conv before it in numpy, and checks that the folded network
(:func:`spu_resnet18.folded_forward`, the very function SPU runs) equals the Flax model's
``apply(..., train=False)``. Writes atomically one ``.npz`` with:

* ``p:<layer>/w``, ``p:<layer>/b`` -- folded HWIO kernels and biases (float32), ``arch`` (JSON);
* ``var:<collection>/<path>`` -- the unfolded Flax variables (what jaxmpc is given);
* ``x`` -- the input batch; ``y_plain`` -- the plaintext float output of the Flax model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spu_resnet18 import folded_forward  # noqa: E402  (jax only)

EPS = 1e-5  # jaxmpc's BatchNorm epsilon (jaxmpc.nn.models._Layers)


def build(seed: int, batch: int):
    """``(model, variables, x)``: ResNet18 with random weights, non-trivial BatchNorm, an input batch."""
    import jax
    import jax.numpy as jnp

    from jaxmpc import nn as jnn

    model = jnn.ResNet18()
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 32, 32, 3), jnp.float32))
    # Separate streams: the weights do not depend on the batch size, and x[:b] is the same for every batch.
    x = np.random.default_rng([seed, 1]).normal(size=(batch, 32, 32, 3)).astype(np.float32)
    rng = np.random.default_rng([seed, 2])
    # Running statistics: those of a calibration batch (momentum 0.9, so new = 0.9 old + 0.1 batch),
    # perturbed, with random BatchNorm scales and offsets: activations stay in a sane range.
    calib = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
    _, upd = jax.jit(lambda v, a: model.apply(v, a, train=True, mutable=["batch_stats"]))(variables, calib)
    stats = jax.tree_util.tree_map(lambda n, o: (np.asarray(n) - 0.9 * np.asarray(o)) / 0.1,
                                   upd["batch_stats"], variables["batch_stats"])
    stats = {k: v for k, v in _flatten(stats).items()}
    for k, v in stats.items():
        if k.endswith("/mean"):
            stats[k] = (v + rng.normal(0, 0.1, v.shape) * np.sqrt(stats[k[:-5] + "/var"])).astype(np.float32)
        else:
            stats[k] = (v * rng.uniform(0.7, 1.4, v.shape)).astype(np.float32)
    params = _flatten(variables["params"])
    for k, v in params.items():
        if k.endswith("/scale"):
            params[k] = rng.uniform(0.6, 1.4, v.shape).astype(np.float32)
        elif k.endswith("/bias") and "bn" in k.rsplit("/", 2)[-2]:
            params[k] = rng.normal(0, 0.1, v.shape).astype(np.float32)
    variables = {**variables, "params": _unflatten(params), "batch_stats": _unflatten(stats)}
    # A random network tends to give every image the same class; centring the logits on the
    # calibration batch (through the classifier's bias) makes the argmax depend on the image.
    y_calib = np.asarray(jax.jit(lambda v, a: model.apply(v, a, train=False))(variables, calib))
    params["fc/bias"] = (params["fc/bias"] - y_calib.mean(0)).astype(np.float32)
    variables = {**variables, "params": _unflatten(params)}
    return model, variables, x


def _flatten(tree, prefix="") -> dict:
    out = {}
    for k, v in tree.items():
        if hasattr(v, "items"):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for k, v in flat.items():
        *path, leaf = k.split("/")
        node = out
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def variables_from_npz(data) -> dict:
    """The Flax variables stored under ``var:`` (inverse of what :func:`main` writes)."""
    return _unflatten({k[len("var:"):]: np.asarray(data[k]) for k in data.files if k.startswith("var:")})


def fold(variables) -> tuple[dict, dict]:
    """``(arch, params)`` of :func:`folded_forward`: each conv's BatchNorm folded into it."""
    p = variables["params"]
    s = variables["batch_stats"]
    if any(np.any(np.asarray(v) != 1) for v in _flatten(variables.get("block_sizes", {})).values()):
        raise ValueError("fold: only plain ReLUs (block sizes 1x1) are supported")

    def fold_one(conv, bn, stats):
        k = np.asarray(conv["kernel"], np.float64)
        g = np.asarray(bn["scale"], np.float64) / np.sqrt(np.asarray(stats["var"], np.float64) + EPS)
        b = np.asarray(bn["bias"], np.float64) - np.asarray(stats["mean"], np.float64) * g
        return {"w": (k * g).astype(np.float32), "b": b.astype(np.float32)}

    out = {"stem": fold_one(p["stem"]["conv"], p["stem"]["bn"], s["stem"]["bn"])}
    blocks = []
    for name in sorted(k for k in p if k.startswith("layer")):
        bp, bs = p[name], s[name]
        out[f"{name}/conv1"] = fold_one(bp["conv1"], bp["bn1"], bs["bn1"])
        out[f"{name}/conv2"] = fold_one(bp["conv2"], bp["bn2"], bs["bn2"])
        down = "downsample_conv" in bp
        if down:
            out[f"{name}/downsample"] = fold_one(bp["downsample_conv"], bp["downsample_bn"], bs["downsample_bn"])
        # ResNet18-CIFAR: stage 1 stride 1, stages 2..4 stride 2 on their first block (jaxmpc.nn.ResNet).
        stage, idx = (int(t) for t in name[len("layer"):].split("_"))
        blocks.append({"name": name, "stride": 2 if (stage > 1 and idx == 0) else 1, "downsample": down})
    out["fc"] = {"w": np.asarray(p["fc"]["kernel"], np.float32), "b": np.asarray(p["fc"]["bias"], np.float32)}
    params = {f"{layer}/{k}": v for layer, d in out.items() for k, v in d.items()}
    return {"blocks": blocks}, params


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the .npz to write")
    ap.add_argument("--batch", type=int, default=8, help="images in the input batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs difference folded vs Flax (default 1e-4)")
    args = ap.parse_args()
    if args.batch < 1:
        ap.error("--batch must be >= 1")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        ap.error(f"--out: folder {out_dir} does not exist")

    import jax

    model, variables, x = build(args.seed, args.batch)
    y_flax = np.asarray(jax.jit(lambda v, a: model.apply(v, a, train=False))(variables, x))
    arch, params = fold(variables)
    y_fold = np.asarray(jax.jit(lambda p, a: folded_forward(arch, p, a))(params, x))
    diff = float(np.max(np.abs(y_fold - y_flax)))
    top2 = np.sort(y_flax, -1)[:, -2:]
    print(f"folded vs Flax: max abs diff {diff:.2e} (|y| max {np.max(np.abs(y_flax)):.2f}, smallest top-2 logit "
          f"margin {np.min(top2[:, 1] - top2[:, 0]):.3f}), argmax equal {bool(np.all(y_fold.argmax(-1) == y_flax.argmax(-1)))}")
    if not diff <= args.tol:
        sys.exit(f"error: folded network differs from the Flax model by {diff:.2e} > --tol {args.tol}")

    arrays = {f"p:{k}": v for k, v in params.items()}
    arrays.update({f"var:{k}": v for k, v in _flatten(variables).items()})
    arrays.update(arch=np.asarray(json.dumps(arch)), x=x, y_plain=y_flax.astype(np.float32),
                  fold_max_abs_diff=np.asarray(diff))
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".export_resnet18.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, args.out)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {args.out} ({len(params)} folded arrays, batch {args.batch})")


if __name__ == "__main__":
    main()
