"""Runs one of the paper's problems (or the Fashion-MNIST acceptance run) through the pipeline.

    python experiments/run.py --problem cifar100_resnet18 --workdir runs/cifar100 \
        [--budget 6% | --budget 5000 --budget-unit drelus] [--steps train,profile,plan,finetune,infer,cost,report] \
        [--data-dir ~/tensorflow_datasets | --root /data/cifar-100-binary] \
        [--init-weights resnet50.pth [--mmcls]] [--images 500] [--baselines] [--smoke]

Problems: cifar100_resnet18, imagenet_resnet50, ade20k_mobilenetv2, voc2012_resnet50,
fashion_mnist (``experiments/<problem>/config.py``). ``--smoke`` runs a tiny model on a few
synthetic images in the dataset's layout (seconds; no data needed). Every step resumes: rerun
the same command after an interruption. A missing dataset ends with exit status 2 and the
dataset's instructions on how to get it. See ``experiments/README.md``.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # python experiments/run.py: make `experiments` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
    from experiments import common

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problem", required=True, choices=common.PROBLEMS)
    ap.add_argument("--workdir", default=None, help="work folder (default: runs/<problem>[_smoke])")
    ap.add_argument("--budget", default=None,
                    help="DReLU budget as for `jaxmpc plan`: 6%%, a fraction in (0, 1] (0.06), or a count with "
                         "--budget-unit drelus")
    ap.add_argument("--budget-unit", choices=["fraction", "drelus"], default="fraction")
    ap.add_argument("--steps", default=",".join(common.STEPS), help="comma-separated subset of the steps")
    ap.add_argument("--smoke", action="store_true", help="tiny model on synthetic images (for tests)")
    ap.add_argument("--data-dir", default=None, help="tensorflow-datasets data folder (cifar100, imagenet2012)")
    ap.add_argument("--root", default=None, help="dataset folder (CIFAR binary, ImageNet, ADE20K, VOC2012)")
    ap.add_argument("--init-weights", default=None, help="starting weights: jaxmpc run folder, .pth/.pt or .npz")
    ap.add_argument("--mmcls", action="store_true", help="the starting weights are an mmcls checkpoint")
    ap.add_argument("--images", type=int, default=None, help="test images for secure inference")
    ap.add_argument("--baselines", action="store_true", default=None,
                    help="also plan and finetune the uniform and random baselines")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.budget is not None:
        from jaxmpc.pipeline import PipelineError, parse_budget

        try:
            args.budget = parse_budget(args.budget, args.budget_unit)
        except PipelineError as e:
            ap.error(f"argument --budget: {e}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    cache = os.environ.get("JAXMPC_COMPILATION_CACHE", os.path.expanduser("~/.cache/jaxmpc/xla"))
    if cache and cache != "0":
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    from experiments import common
    from jaxmpc import data, train
    from jaxmpc import pipeline as pl

    exp = common.get_experiment(args.problem)
    workdir = args.workdir or os.path.join("runs", args.problem + ("_smoke" if args.smoke else ""))
    data_kwargs = {k: v for k, v in (("data_dir", args.data_dir), ("root", args.root)) if v is not None}
    try:
        common.run(exp, workdir, budget=args.budget, steps=args.steps, smoke=args.smoke, data_kwargs=data_kwargs,
                   init_weights=args.init_weights, init_prefix_map=train.MMCLS_PREFIXES if args.mmcls else None,
                   images=args.images, baselines=args.baselines, progress=not args.no_progress)
    except data.DatasetNotFoundError as e:
        print(f"run.py {args.problem}: the dataset is not available here.\n{e}", file=sys.stderr)
        return 2
    except (common.ExperimentError, pl.PipelineError) as e:
        print(f"run.py {args.problem}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
