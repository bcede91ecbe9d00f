"""The ``jaxmpc`` command line (also ``python -m jaxmpc``): one subcommand per pipeline step.

    jaxmpc demo      [--workdir runs/demo] [--budget 0.1 ...] [--quick]   all steps on digits
                     [--config fashion_mnist] [--model ResNetSmall16] [--epochs 15] [--finetune-epochs 10]
                     [--profile-samples 512] [--no-distill] [--infer-baselines] [--set field=value ...]
    jaxmpc train     --workdir W [--config digits]
    jaxmpc profile   --workdir W
    jaxmpc plan      --workdir W --budget 0.1 [--method knapsack|uniform|random]
    jaxmpc finetune  --workdir W --tag knapsack_10pct
    jaxmpc infer     --workdir W [--tag knapsack_10pct] [--images 128]
    jaxmpc report    --workdir W
    jaxmpc cost      --model ResNet18 --input 32,32,3 [--spec spec.json] [--reference]
    jaxmpc launch    --weights W/train --input images.npy [--batch-size 8] [--output report.json]
    jaxmpc pki       --out certs/                      (test CA and one certificate per party)
    jaxmpc party     --role client|server|cp --config parties.toml ...   (docs/networking.md)

Every step reads and writes documented files in the work folder (see :mod:`jaxmpc.pipeline`),
so steps can be rerun or swapped; an interrupted ``train``/``profile`` resumes.
"""

from __future__ import annotations

import argparse
import os
import sys


def _enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)
    cache = os.environ.get("JAXMPC_COMPILATION_CACHE", os.path.expanduser("~/.cache/jaxmpc/xla"))
    if cache and cache != "0":
        try:
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        except Exception:  # noqa: BLE001 - the cache is an optimisation only
            pass


def _budget(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget must be a ratio like 0.1 or a DReLU count, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError("budget must be positive")
    return v if v < 1 else int(v)


def _assignment(text: str) -> tuple[str, object]:
    """``field=value`` with a JSON value (``num_epochs=3``, ``model_kwargs={"num_filters": 16}``) or a
    plain string (``model=ResNetSmall16``)."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected field=value, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _config_from_args(args, wd):
    from jaxmpc.pipeline import PipelineConfig

    path = os.path.join(args.workdir, "pipeline.json")
    if os.path.exists(path):
        return wd.config()
    return PipelineConfig(train_config=getattr(args, "config", "digits") or "digits",
                          finetune_config=(getattr(args, "config", "digits") or "digits") + "_finetune")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="jaxmpc", description="Secure 3-party inference with knapsack Block ReLUs")
    sub = ap.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="train, profile, plan, finetune, secure inference, report (embedded digits)")
    d.add_argument("--workdir", default="runs/demo")
    d.add_argument("--config", default="digits", help="training preset (digits or fashion_mnist)")
    d.add_argument("--budget", type=_budget, nargs="+", default=None, help="DReLU budgets (ratio or count)")
    d.add_argument("--images", type=int, default=None, help="test images for secure inference")
    d.add_argument("--quick", action="store_true", help="reduced setting (a few epochs, few images)")
    d.add_argument("--no-baselines", action="store_true")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--model", default=None, help="jaxmpc.nn model preset (e.g. ResNetSmall16)")
    d.add_argument("--epochs", type=float, default=None, help="training epochs")
    d.add_argument("--finetune-epochs", type=float, default=None, help="finetuning epochs per spec")
    d.add_argument("--profile-samples", type=int, default=None, help="training images to measure distortions on")
    d.add_argument("--no-distill", action="store_true", help="finetune without distillation from the all-ReLU model")
    d.add_argument("--infer-baselines", action="store_true", help="also run secure inference on the baselines")
    d.add_argument("--candidates", choices=["default", "paper"], default=None, help="candidate patch sizes")
    d.add_argument("--set", type=_assignment, action="append", default=[], metavar="FIELD=VALUE",
                   help="TrainConfig override for training and finetuning (repeatable)")
    d.add_argument("--finetune-set", type=_assignment, action="append", default=[], metavar="FIELD=VALUE",
                   help="TrainConfig override for finetuning only (repeatable)")

    for name, helptext in [("train", "train the all-ReLU model"), ("profile", "measure distortions"),
                           ("report", "summary table and plots")]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--workdir", required=True)
        if name == "train":
            p.add_argument("--config", default="digits")
        p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("plan", help="choose patch sizes under a DReLU budget")
    p.add_argument("--workdir", required=True)
    p.add_argument("--budget", type=_budget, required=True, help="ratio of the all-ReLU count (e.g. 0.06) or count")
    p.add_argument("--method", choices=["knapsack", "uniform", "random"], default="knapsack")
    p = sub.add_parser("finetune", help="finetune with the Block ReLUs of a plan")
    p.add_argument("--workdir", required=True)
    p.add_argument("--tag", required=True, help="plan tag, e.g. knapsack_10pct")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("infer", help="secure inference on held-out images, with a communication report")
    p.add_argument("--workdir", required=True)
    p.add_argument("--tag", default=None, help="finetuned plan tag (default: the all-ReLU model)")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="images per secure-inference call")
    p.add_argument("--table", action="store_true", help="print the per-layer communication table")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("cost", help="communication of a paper model without running it")
    p.add_argument("--model", required=True, help="a jaxmpc.nn preset, e.g. ResNet18, ResNet50, DeepLabV3ResNet50")
    p.add_argument("--input", required=True, help="H,W,C")
    p.add_argument("--spec", default=None, help="block spec file")
    p.add_argument("--reference", action="store_true", help="the reference implementation's protocols")
    p.add_argument("--json", default=None, help="write the report as JSON")

    try:
        from jaxmpc.net.cli import add_commands as _net_commands  # networked parties (optional module)

        _net_commands(sub)
    except ImportError:
        pass

    args = ap.parse_args(argv)
    _enable_x64()
    from jaxmpc import pipeline as pl

    try:
        if args.cmd == "demo":
            cfg_kw = dict(train_config=args.config, finetune_config=args.config + "_finetune",
                          baselines=not args.no_baselines)
            if args.budget:
                cfg_kw["budgets"] = tuple(args.budget)
            if args.quick:
                cfg_kw.update(overrides={"num_epochs": 4}, finetune_overrides={"num_epochs": 2},
                              profile_samples=32, infer_images=16)
            if args.images:
                cfg_kw["infer_images"] = args.images
            over = dict(cfg_kw.get("overrides", {}))
            ft_over = dict(cfg_kw.get("finetune_overrides", {}))
            over.update(dict(args.set))
            if args.model:
                over["model"] = args.model
            if args.epochs is not None:
                over["num_epochs"] = args.epochs
            ft_over.update(dict(args.finetune_set))
            if args.finetune_epochs is not None:
                ft_over["num_epochs"] = args.finetune_epochs
            if over:
                cfg_kw["overrides"] = over
            if ft_over:
                cfg_kw["finetune_overrides"] = ft_over
            if args.profile_samples:
                cfg_kw["profile_samples"] = args.profile_samples
            if args.no_distill:
                cfg_kw["distill"] = False
            if args.infer_baselines:
                cfg_kw["infer_baselines"] = True
            if args.candidates:
                cfg_kw["candidates"] = args.candidates
            pl.run_demo(args.workdir, pl.PipelineConfig(**cfg_kw), progress=not args.no_progress)
            return 0
        if args.cmd == "cost":
            return _cost(args)
        if hasattr(args, "handler"):
            return args.handler(args)
        wd = pl.Workdir(args.workdir)
        progress = not getattr(args, "no_progress", False)
        if args.cmd == "train":
            os.makedirs(args.workdir, exist_ok=True)
            cfg = _config_from_args(args, wd)
            wd.save_config(cfg)
            print(pl.train_step(wd, cfg, progress=progress))
        elif args.cmd == "profile":
            t = pl.profile_step(wd, wd.config(), progress=progress)
            print(f"wrote {wd.path('profile', 'distortion.npz')} ({len(t.layers)} layers)")
        elif args.cmd == "plan":
            print(pl.plan_step(wd, wd.config(), args.budget, args.method))
        elif args.cmd == "finetune":
            print(pl.finetune_step(wd, wd.config(), args.tag, progress=progress))
        elif args.cmd == "infer":
            res = pl.infer_step(wd, wd.config(), args.tag, images=args.images, progress=progress,
                                batch_size=args.batch_size)
            print({k: v for k, v in res.items() if k != "per_image"})
            print(f"per image: {res['per_image']}")
            if args.table:
                import json

                with open(os.path.join(wd.infer(args.tag or "all_relu"), "report.json")) as f:
                    print(json.dumps(json.load(f)["totals"], indent=1))
        elif args.cmd == "report":
            s = pl.report_step(wd)
            print(pl.summary_table(s))
        return 0
    except pl.PipelineError as e:
        print(f"jaxmpc {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except (LookupError, OSError, ValueError, TypeError) as e:
        # a missing dataset (DatasetNotFoundError), unreadable file, bad value: one clear line;
        # JAXMPC_DEBUG=1 re-raises with the traceback
        if os.environ.get("JAXMPC_DEBUG"):
            raise
        print(f"jaxmpc {args.cmd}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


def _cost(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxmpc
    from jaxmpc import nn as jnn

    model_ctor = getattr(jnn, args.model, None)
    if model_ctor is None or args.model.startswith("_"):
        print(f"jaxmpc cost: error: unknown model {args.model!r}", file=sys.stderr)
        return 2
    try:
        shape = tuple(int(v) for v in args.input.split(","))
        assert len(shape) == 3
    except (ValueError, AssertionError):
        print(f"jaxmpc cost: error: --input must be H,W,C, got {args.input!r}", file=sys.stderr)
        return 2
    model = model_ctor()
    v = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1,) + shape, jnp.float32))
    v = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), v)
    v["block_sizes"] = jax.tree_util.tree_map(lambda a: np.ones(a.shape, np.int32), v["block_sizes"])
    cfg = jaxmpc.ProtocolConfig.reference() if args.reference else jaxmpc.ProtocolConfig()
    rep = jaxmpc.secure_cost(model, v, (1,) + shape, spec=args.spec, config=cfg)
    print(rep.table())
    if args.json:
        rep.to_json(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
