"""The ``jaxmpc`` command line (also ``python -m jaxmpc``): one subcommand per pipeline step.

    jaxmpc demo      [--workdir runs/demo] [--budget 10% ...] [--quick]   all steps on digits
                     [--config fashion_mnist] [--model ResNetSmall16] [--epochs 15] [--finetune-epochs 10]
                     [--profile-samples 512] [--no-distill] [--infer-baselines] [--set field=value ...]
    jaxmpc train     --workdir W [--config digits]
    jaxmpc profile   --workdir W
    jaxmpc plan      --workdir W --budget 6% [--method knapsack|uniform|random]
                     (--budget 0.06: a fraction in (0, 1]; --budget 5000 --budget-unit drelus: a count)
    jaxmpc finetune  --workdir W --tag knapsack_10pct
    jaxmpc infer     --workdir W [--tag knapsack_10pct] [--images 128]
    jaxmpc report    --workdir W
    jaxmpc cost      --model ResNet18 --input 32,32,3 [--spec spec.json] [--reference]
    jaxmpc launch    --weights W/train --input images.npy [--batch-size 8] [--output report.json]
    jaxmpc pki       --out certs/                      (test CA and one certificate per party)
    jaxmpc party     --role client|server|cp --config parties.toml ...   (docs/networking.md)

Every step reads and writes documented files in the work folder (see :mod:`jaxmpc.pipeline`),
so steps can be rerun or swapped; an interrupted ``train``/``profile`` resumes.

Budgets (``--budget``, see :func:`jaxmpc.pipeline.parse_budget`): ``6%`` (a percentage), ``0.06``
(a fraction of the all-ReLU DReLU count in ``(0, 1]``; ``1`` is 100%), or a whole number of DReLUs
with ``--budget-unit drelus`` (``--budget 5000 --budget-unit drelus``). A plain number above 1
without that unit (``--budget 2.7``), a fractional count (``2.7`` with ``drelus``), ``inf``,
``nan``, zero and negative values are refused.

Errors: every error is one line on stderr, ``jaxmpc <command>: error: <what>``, and exit status
2: a bad command line, value, file, configuration or input (refused before any work starts
where it can be checked), and also an unexpected internal error, whose line ends with a hint:
rerun with ``--debug`` (``jaxmpc --debug <command> ...`` or ``jaxmpc <command> ... --debug``) or
``JAXMPC_DEBUG=1`` to see the traceback instead. Exit status 0 on success, 130 when interrupted;
the networked commands also use 1 for a networked run that started and then failed (a peer
died, refused or timed out, see :mod:`jaxmpc.net.cli`), so that a launcher can tell it from a
refused command line.
"""

from __future__ import annotations

import argparse
import os
import sys


def _enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)
    from jaxmpc.core.config import enable_compilation_cache

    try:
        enable_compilation_cache()
    except OSError:  # the cache is an optimisation only (e.g. a read-only home)
        pass


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2), naming the command."""

    def error(self, message):  # noqa: D401 - argparse's hook
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(msg) -> str:
    return " ".join(str(msg).split())


#: Exit status of every error the command line reports (bad input and unexpected errors alike).
EXIT_ERROR = 2
DEBUG_HELP = "on an unexpected error, show the traceback (also JAXMPC_DEBUG=1)"
DEBUG_HINT = "rerun with --debug or JAXMPC_DEBUG=1 for the traceback"


def debug_requested(args=None) -> bool:
    """``--debug`` was given, or ``JAXMPC_DEBUG`` is set (to anything but ``""`` or ``0``)."""
    return bool(getattr(args, "debug", False)) or os.environ.get("JAXMPC_DEBUG", "") not in ("", "0")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return v


def _finite_float(text: str, *, zero: bool) -> float:
    import math

    what = "a finite number >= 0" if zero else "a positive, finite number"
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    return _finite_float(text, zero=False)


def _nonnegative_float(text: str) -> float:
    return _finite_float(text, zero=True)


def _tag(text: str) -> str:
    """A plan tag names a folder of the work folder: letters, digits, ``_``, ``-``, ``.``; no path."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", text or ""):
        raise argparse.ArgumentTypeError(f"a plan tag is a name like knapsack_10pct (letters, digits, _ . -), "
                                         f"got {text!r}")
    return text


def _budgets(ap: argparse.ArgumentParser, texts, unit: str):
    """``--budget`` values with ``--budget-unit``, or a one-line usage error (exit 2)."""
    from jaxmpc.pipeline import PipelineError, parse_budget

    try:
        return [parse_budget(t, unit) for t in texts]
    except PipelineError as e:
        ap.error(f"argument --budget: {e}")


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


BUDGET_HELP = ("DReLU budget: a percentage (6%%), a fraction of the all-ReLU count in (0, 1] (0.06), or a "
               "whole number of DReLUs with --budget-unit drelus")
UNIT_HELP = "unit of plain --budget numbers: fraction (default) or drelus (a count)"


def main(argv=None) -> int:
    ap = _Parser(prog="jaxmpc", description="Secure 3-party inference with knapsack Block ReLUs")
    ap.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = ap.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="train, profile, plan, finetune, secure inference, report (embedded digits)")
    d.add_argument("--workdir", default="runs/demo")
    d.add_argument("--config", default="digits", help="training preset (digits or fashion_mnist)")
    d.add_argument("--budget", nargs="+", default=None, help=BUDGET_HELP + " (one or more)")
    d.add_argument("--budget-unit", choices=["fraction", "drelus"], default="fraction", help=UNIT_HELP)
    d.add_argument("--images", type=_positive_int, default=None, help="test images for secure inference")
    d.add_argument("--quick", action="store_true", help="reduced setting (a few epochs, few images)")
    d.add_argument("--no-baselines", action="store_true")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--model", default=None, help="jaxmpc.nn model preset (e.g. ResNetSmall16)")
    d.add_argument("--epochs", type=_positive_float, default=None, help="training epochs")
    d.add_argument("--finetune-epochs", type=_positive_float, default=None, help="finetuning epochs per spec")
    d.add_argument("--profile-samples", type=_positive_int, default=None,
                   help="training images to measure distortions on")
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
    p.add_argument("--budget", required=True, help=BUDGET_HELP)
    p.add_argument("--budget-unit", choices=["fraction", "drelus"], default="fraction", help=UNIT_HELP)
    p.add_argument("--method", choices=["knapsack", "uniform", "random"], default="knapsack")
    p = sub.add_parser("finetune", help="finetune with the Block ReLUs of a plan")
    p.add_argument("--workdir", required=True)
    p.add_argument("--tag", type=_tag, required=True, help="plan tag, e.g. knapsack_10pct")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("infer", help="secure inference on held-out images, with a communication report")
    p.add_argument("--workdir", required=True)
    p.add_argument("--tag", type=_tag, default=None, help="finetuned plan tag (default: the all-ReLU model)")
    p.add_argument("--images", type=_positive_int, default=None)
    p.add_argument("--batch-size", type=_positive_int, default=None, help="images per secure-inference call")
    p.add_argument("--table", action="store_true", help="print the per-layer communication table")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("cost", help="communication of a paper model without running it")
    p.add_argument("--model", required=True, help="a jaxmpc.nn preset, e.g. ResNet18, ResNet50, DeepLabV3ResNet50")
    p.add_argument("--input", required=True, help="H,W,C: positive whole numbers, e.g. 32,32,3")
    p.add_argument("--spec", default=None, help="block spec file")
    p.add_argument("--reference", action="store_true", help="the reference implementation's protocols")
    p.add_argument("--json", default=None, help="write the report as JSON")

    try:
        from jaxmpc.net.cli import add_commands as _net_commands  # networked parties (optional module)

        _net_commands(sub)
    except ImportError:
        pass
    for p in sub.choices.values():  # --debug after the command too; SUPPRESS keeps a leading one
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)

    args = ap.parse_args(argv)
    if getattr(args, "budget", None) is not None:
        sub_ap = sub.choices[args.cmd]
        texts = args.budget if isinstance(args.budget, list) else [args.budget]
        budgets = _budgets(sub_ap, texts, args.budget_unit)
        args.budget = budgets if isinstance(args.budget, list) else budgets[0]
    debug = debug_requested(args)
    try:
        _enable_x64()
        from jaxmpc import pipeline as pl
    except Exception as e:  # noqa: BLE001 - e.g. a broken JAX install: one line
        if debug:
            raise
        return _error(args.cmd, f"cannot load jaxmpc: {type(e).__name__}: {e} ({DEBUG_HINT})", EXIT_ERROR)
    try:
        return _run(args, pl)
    except pl.PipelineError as e:
        return _error(args.cmd, e, EXIT_ERROR)
    except KeyboardInterrupt:
        return _error(args.cmd, "interrupted", 130)
    except (LookupError, OSError, ValueError, TypeError) as e:
        # a missing dataset (DatasetNotFoundError), unreadable file, bad value: one clear line;
        # --debug / JAXMPC_DEBUG=1 re-raises with the traceback
        if debug:
            raise
        return _error(args.cmd, f"{type(e).__name__}: {e}", EXIT_ERROR)
    except Exception as e:  # noqa: BLE001 - anything else (a bug): one line and a hint, same status
        if debug:
            raise
        return _error(args.cmd, f"unexpected {type(e).__name__}: {e} ({DEBUG_HINT})", EXIT_ERROR)


def _error(cmd: str, msg, code: int) -> int:
    print(f"jaxmpc {cmd}: error: {_one_line(msg)}", file=sys.stderr, flush=True)
    return code


def _run(args, pl) -> int:
    """Runs the parsed command (errors are turned into one line by :func:`main`)."""
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

            rep = pl.read_json(os.path.join(wd.infer(args.tag or "all_relu"), "report.json"), "inference report")
            print(json.dumps(rep["totals"], indent=1))
    elif args.cmd == "report":
        s = pl.report_step(wd)
        print(pl.summary_table(s))
    return 0


def _input_shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    try:
        shape = tuple(int(v) for v in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--input must be H,W,C with three positive whole numbers (e.g. 32,32,3), got {text!r}")
    return shape


def _model_presets() -> dict:
    """``{name: constructor}`` of the :mod:`jaxmpc.nn` whole-network presets (built with no arguments)."""
    import flax.linen as fnn

    from jaxmpc import nn as jnn

    out = {}
    for k in dir(jnn):
        ctor = getattr(jnn, k)
        if not k[:1].isupper() or "ReLU" in k or not callable(ctor):  # BlockReLU, ConvBNReLU: layers
            continue
        try:
            if isinstance(ctor(), fnn.Module):
                out[k] = ctor
        except TypeError:  # needs arguments: a building block, not a preset
            pass
    return out


def _model_preset(name: str):
    presets = _model_presets()
    if name not in presets:
        raise ValueError(f"unknown model {name!r}; presets: {', '.join(sorted(presets))}")
    return presets[name]()


def _cost(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxmpc

    try:
        shape = _input_shape(args.input)
        model = _model_preset(args.model)
    except ValueError as e:
        return _error("cost", e, EXIT_ERROR)
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
