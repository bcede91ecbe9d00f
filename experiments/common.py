"""Run one experiment: the pipeline's steps over one work folder, with the paper's settings.

An :class:`Experiment` (returned by ``experiments/<problem>/config.py: get_config()``) holds the
:class:`jaxmpc.pipeline.PipelineConfig` settings of one of the paper's problems (Gorski & Avidan,
arXiv 2304.10442; ``paper_reference.md`` §3-5 and §7), a ``smoke`` variant (a tiny model, a few
synthetic images of the dataset's channel/class layout, two optimiser steps), and the paper's
published numbers. :func:`run` executes the steps

    train -> profile -> plan -> finetune -> infer -> cost -> report

over one work folder, each resumable (rerunning skips what is done). Only the public ``jaxmpc``
API is used.

Example::

    from experiments import common
    exp = common.get_experiment("cifar100_resnet18")
    summary = common.run(exp, "runs/cifar100", smoke=True)   # or: python experiments/run.py ...
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["PROBLEMS", "STEPS", "Experiment", "ExperimentError", "get_experiment", "run", "synthetic_dataset",
           "cost_step", "experiment_report"]

#: The problems with a ``config.py`` under ``experiments/``.
PROBLEMS = ("cifar100_resnet18", "imagenet_resnet50", "ade20k_mobilenetv2", "voc2012_resnet50", "fashion_mnist")
#: The steps of :func:`run`, in order.
STEPS = ("train", "profile", "plan", "finetune", "infer", "cost", "report")
#: Candidate patch sizes of the smoke runs (a handful, so profiling takes seconds).
SMOKE_CANDIDATES = [[1, 1], [1, 2], [2, 2], [4, 4], [0, 1]]


class ExperimentError(RuntimeError):
    """An experiment cannot run as asked (missing starting weights, unknown problem or step)."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One problem of the paper (or the Fashion-MNIST acceptance run).

    Attributes:
      name: the problem's name (its folder under ``experiments/``).
      title: model / dataset in words.
      pipeline: :class:`jaxmpc.pipeline.PipelineConfig` keyword arguments with the paper's
        settings (presets, budget, profile samples, candidates, protocol bits, ...).
      weights: what the ``train`` step starts from, in words ("" = trained from scratch).
      needs_weights: the real run needs ``init_weights`` (the paper starts from a published
        checkpoint; there is no from-scratch preset).
      smoke: ``PipelineConfig`` keyword arguments replacing ``pipeline``'s under ``smoke=True``.
      smoke_data: the synthetic data of the smoke run: ``input_shape``, ``num_classes``,
        ``task``, ``train`` and ``test`` image counts.
      smoke_init: under ``smoke=True``, export the tiny model's random initialisation as a
        torch-layout ``.npz`` and start from it through ``init_weights`` (exercises the import).
      paper: the paper's published numbers for this problem (``paper_reference.md`` §7).
      compute: rough compute of the real run, in words.
    """

    name: str
    title: str
    pipeline: Mapping[str, Any]
    weights: str = ""
    needs_weights: bool = False
    smoke: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    smoke_data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    smoke_init: bool = False
    paper: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    compute: str = ""

    def replace(self, **changes: Any) -> Experiment:
        return dataclasses.replace(self, **changes)

    def pipeline_config(self, *, smoke: bool = False, **changes: Any):
        """The :class:`jaxmpc.pipeline.PipelineConfig` of this experiment (smoke variant, changes)."""
        from jaxmpc import pipeline as pl

        kw = dict(self.pipeline)
        if smoke:
            kw.update(self.smoke)
        kw.update(changes)
        return pl.PipelineConfig(**kw)


def get_experiment(problem: str) -> Experiment:
    """``experiments/<problem>/config.py: get_config()``."""
    if problem not in PROBLEMS:
        raise ExperimentError(f"unknown problem {problem!r}; expected one of {', '.join(PROBLEMS)}")
    return importlib.import_module(f"experiments.{problem}.config").get_config()


def smoke_overrides(model: str, model_kwargs: Mapping[str, Any], **extra: Any) -> dict:
    """``PipelineConfig`` fields of a smoke run: a tiny model, two optimiser steps of batch 4, two
    profile and inference images, :data:`SMOKE_CANDIDATES`."""
    steps = {"model": model, "model_kwargs": dict(model_kwargs), "num_steps": 2, "batch_size": 4,
             "eval_batch_size": 4, "num_threads": 0, "prefetch": 0}
    out = {"overrides": steps, "finetune_overrides": {}, "train_overrides": {}, "profile_samples": 2,
           "infer_images": 2, "infer_batch_size": 2, "candidates": SMOKE_CANDIDATES}
    out.update(extra)
    return out


def synthetic_dataset(name: str, input_shape: Sequence[int], num_classes: int, task: str = "classification", *,
                      train: int = 8, test: int = 4, seed: int = 0):
    """A few standard-normal images with random labels, in a dataset's layout (for smoke runs).

    Segmentation labels are ``[N, H, W]`` with about 10% of the pixels at the ignore index 255.
    """
    from jaxmpc import data

    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in input_shape)
    seg = task == "segmentation"

    def split(n):
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        if seg:
            y = rng.integers(0, num_classes, (n, *shape[:2]))
            y[rng.random(y.shape) < 0.1] = 255
        else:
            y = rng.integers(0, num_classes, (n,))
        return data.ArraySource(x, y.astype(np.int32))

    info = data.DatasetInfo(name=f"synthetic_{name}", input_shape=shape, num_classes=int(num_classes), task=task,
                            ignore_index=255 if seg else None, notes=f"{train}/{test} random images for smoke runs")
    return data.Dataset(info, split(train), None, split(test))


def _load_dataset(pipeline: Mapping[str, Any], data_kwargs: Mapping[str, Any] | None):
    """The dataset of a pipeline's training preset, with extra loader arguments (``root=``...)."""
    from jaxmpc import data, train

    over = {k: v for k, v in dict(pipeline.get("overrides", {})).items() if k in ("dataset", "dataset_kwargs")}
    tc = train.get_config(pipeline.get("train_config", "digits")).replace(**over)
    extra = dict(data_kwargs or {})
    loader = data.DATASETS.get(tc.dataset)
    if loader is not None and extra:
        accepted = inspect.signature(loader).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
            unknown = sorted(set(extra) - set(accepted))
            if unknown:
                flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
                raise ExperimentError(f"{flags} does not apply to the {tc.dataset} dataset (its loader takes "
                                      f"{', '.join(accepted) or 'no arguments'})")
    return data.load_dataset(tc.dataset, **{**tc.dataset_kwargs, **extra})


def _export_smoke_init(exp: Experiment, cfg, ds, path: str) -> None:
    from jaxmpc import train

    tc = train.get_config(cfg.train_config).replace(**cfg.overrides)
    model = train.build_model(tc, ds.info)
    variables = train.init_variables(model, ds.info.input_shape, seed=1)
    state = train.export_torch_state_dict(model, variables, input_shape=ds.info.input_shape)
    np.savez(path, **state)


def _check_steps(steps) -> list[str]:
    if steps is None:
        return list(STEPS)
    if isinstance(steps, str):
        steps = [s for s in steps.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise ExperimentError(f"unknown steps {unknown or steps}; expected a subset of {','.join(STEPS)}")
    return [s for s in STEPS if s in steps]


def run(exp: Experiment, workdir: str | os.PathLike, *, budget: float | int | None = None,
        steps: str | Sequence[str] | None = None, smoke: bool = False,
        data_kwargs: Mapping[str, Any] | None = None, init_weights: str | None = None,
        init_prefix_map: Mapping[str, str] | None = None, images: int | None = None, baselines: bool | None = None, progress: bool = True, log=print) -> dict:
    """Runs ``steps`` of experiment ``exp`` over ``workdir`` (every step resumes or reuses results).

    Args:
      exp: the experiment (:func:`get_experiment`).
      workdir: the work folder (see :mod:`jaxmpc.pipeline` for its layout; ``cost/`` and
        ``report/experiment.md`` are added here).
      budget: DReLU budget (a float fraction of the all-ReLU count in (0, 1], or an int count; see
        :func:`jaxmpc.pipeline.check_budget`); default: the paper's.
      steps: subset of :data:`STEPS` (list or comma-separated); default: all.
      smoke: the tiny variant on synthetic data (seconds; for tests).
      data_kwargs: dataset loader arguments (``root=``, ``data_dir=``), not saved in the config.
      init_weights: starting weights (a jaxmpc run folder, ``.pt``/``.pth`` or ``.npz``).
      init_prefix_map: key-prefix renames for importing them (e.g.
        :data:`jaxmpc.train.MMCLS_PREFIXES` for mmcls checkpoints).
      images: test images for secure inference (default: the config's ``infer_images``).
      baselines: also plan/finetune the uniform and random baselines (default: the config's).
      progress: progress bars.
      log: where progress lines go.

    Returns:
      The report (``report/summary.json`` plus ``cost`` and ``paper``), or, without the
      ``report`` step, ``{"steps": [...], "seconds": ...}``.

    Raises:
      jaxmpc.data.DatasetNotFoundError: the dataset is missing (the message says how to get it).
      ExperimentError: the real run of a problem that starts from published weights has none.
      jaxmpc.pipeline.PipelineError: a step's input is missing or malformed.
    """
    from jaxmpc import pipeline as pl

    steps = _check_steps(steps)
    workdir = os.fspath(workdir)
    changes: dict[str, Any] = {}
    if budget is not None:
        changes["budgets"] = (budget,)
    if baselines is not None:
        changes["baselines"] = bool(baselines)
    if init_weights is not None:
        changes["init_weights"] = os.path.abspath(os.path.expanduser(os.fspath(init_weights)))
    if init_prefix_map is not None:
        changes["init_prefix_map"] = dict(init_prefix_map)
    wd = pl.Workdir(workdir)
    saved = pl.PipelineConfig.from_json(pl.read_json(wd.path("pipeline.json"), "pipeline config")) \
        if os.path.exists(wd.path("pipeline.json")) else None
    if saved is not None:  # resuming: keep the starting weights recorded in the work folder
        changes.setdefault("init_weights", saved.init_weights)
        changes.setdefault("init_prefix_map", saved.init_prefix_map)
    trained = os.path.isdir(os.path.join(wd.train, "checkpoints"))
    if smoke:
        d = exp.smoke_data
        ds = synthetic_dataset(exp.name, d["input_shape"], d["num_classes"], d.get("task", "classification"),
                               train=d.get("train", 8), test=d.get("test", 4))
    else:
        ds = _load_dataset(exp.pipeline, data_kwargs)  # raises DatasetNotFoundError with how to get it
    if (not smoke and exp.needs_weights and not trained
            and (changes.get("init_weights") or exp.pipeline.get("init_weights")) is None):
        raise ExperimentError(f"{exp.name} starts from published weights, as the paper: {exp.weights}. "
                              "Pass init_weights (--init-weights PATH).")
    if smoke and exp.smoke_init and changes.get("init_weights") is None:
        changes["init_weights"] = os.path.join(os.path.abspath(workdir), "smoke_init.npz")
    cfg = exp.pipeline_config(smoke=smoke, **changes)
    budgets = tuple(cfg.budgets)  # this run's; the work folder keeps every budget run in it
    if saved is not None and budget is not None:
        cfg = dataclasses.replace(cfg, budgets=tuple(saved.budgets) + tuple(b for b in budgets
                                                                             if b not in saved.budgets))
    os.makedirs(workdir, exist_ok=True)
    if smoke and exp.smoke_init and not os.path.exists(cfg.init_weights):
        _export_smoke_init(exp, cfg, ds, cfg.init_weights)
    wd.save_config(cfg)
    t0 = time.perf_counter()
    methods = ["knapsack", "uniform", "random"] if cfg.baselines else ["knapsack"]
    tags = []
    for step in steps:
        log(f"[{exp.name}] {step} ({time.perf_counter() - t0:.0f} s)")
        if step == "train":
            res = pl.train_step(wd, cfg, progress=progress, dataset=ds)
            log(f"  test: {_metrics_line(res['test'])}")
        elif step == "profile":
            pl.profile_step(wd, cfg, progress=progress, dataset=ds)
        elif step == "plan":
            for b in budgets:
                for m in methods:
                    try:
                        s = pl.plan_step(wd, cfg, b, m)
                    except pl.PipelineError as e:
                        if m == "knapsack":
                            raise
                        log(f"  skipped the {m} baseline at budget {b:g}: {e}")
                        continue
                    log(f"  {s['tag']}: {s['drelus']:,} DReLUs of {s['all_relu_drelus']:,} ({100 * s['ratio']:.2f}%)")
        if step in ("finetune", "infer", "cost"):
            tags = _planned_tags(wd, budgets, methods)
        if step == "finetune":
            for tag in tags:
                if not os.path.exists(os.path.join(wd.finetune(tag), "result.json")):
                    res = pl.finetune_step(wd, cfg, tag, progress=progress, dataset=ds)
                    log(f"  {tag}: before {_metrics_line(res['before_finetune'])}; after {_metrics_line(res['test'])}")
        elif step == "infer":
            for tag in [None] + [t for t in tags if cfg.infer_baselines or t.startswith("knapsack")]:
                path = os.path.join(wd.infer(tag or "all_relu"), "result.json")
                if tag is not None and not os.path.exists(os.path.join(wd.finetune(tag), "result.json")):
                    continue
                if images is not None or not os.path.exists(path):
                    res = pl.infer_step(wd, cfg, tag, images=images, progress=progress, dataset=ds)
                    log(f"  {res['tag']}: secure {100 * res['secure_accuracy']:.2f}%, "
                        f"{res['same_predictions']}/{res['images']} as plaintext, "
                        f"{res['per_image']['bytes'] / 1e6:.2f} MB/image")
        elif step == "cost":
            cost_step(wd, cfg, ds, tags)
    seconds = time.perf_counter() - t0
    if "report" in steps:
        summary = experiment_report(wd, exp)
        summary["seconds"] = seconds
        log(summary["markdown"])
        return summary
    return {"steps": steps, "seconds": seconds}


def _metrics_line(m: Mapping[str, Any]) -> str:
    keys = [k for k in ("accuracy", "miou") if k in m]
    return ", ".join(f"{k} {100 * m[k]:.2f}%" for k in keys) or "-"


def _planned_tags(wd, budgets, methods) -> list[str]:
    from jaxmpc import pipeline as pl

    return [f"{m}_{pl.budget_tag(b)}" for b in budgets for m in methods
            if os.path.exists(wd.plan(f"{m}_{pl.budget_tag(b)}"))]


def cost_step(wd, cfg, ds, tags: Sequence[str]) -> dict:
    """Communication per image (no execution) of the all-ReLU model and of each planned spec.

    Protocols: ``reference`` (the paper's implementation: re-shared weights, textbook SecureNN,
    8-byte elements; exact 64-bit DReLU, and the configured reduced-bit DReLU when it is one) —
    the numbers to compare with the paper's §7 table — and ``jaxmpc`` (this library's protocols,
    exact and configured). Writes ``cost/summary.json``.
    """
    import jaxmpc
    from jaxmpc import pipeline as pl
    from jaxmpc import train

    variables, _ = train.load_variables(wd.train)
    tc = train.get_config(cfg.train_config).replace(**cfg.overrides)
    model = train.build_model(tc, ds.info)
    shape = (1, *ds.info.input_shape)
    bits = {"frac_bits": cfg.frac_bits, "compare_bits": cfg.compare_bits, "lsb_drop_bits": cfg.lsb_drop_bits}
    exact = {"frac_bits": cfg.frac_bits}
    protocols = {"reference, exact DReLU": jaxmpc.ProtocolConfig.reference(**exact),
                 "jaxmpc, exact DReLU": jaxmpc.ProtocolConfig(**exact)}
    if cfg.compare_bits != 64 or cfg.lsb_drop_bits:
        protocols[f"reference, {cfg.compare_bits}-bit DReLU"] = jaxmpc.ProtocolConfig.reference(**bits)
        protocols[f"jaxmpc, {cfg.compare_bits}-bit DReLU"] = jaxmpc.ProtocolConfig(**bits)
    rows = []
    for tag in [None, *tags]:
        spec = None if tag is None else wd.plan(tag)
        for name, pc in protocols.items():
            if tag is None and "-bit" in name:
                continue  # the paper's reduced-bit comparison is only valid with Block ReLUs everywhere
            rep = jaxmpc.secure_cost(model, variables, shape, spec=spec, config=pc)
            rows.append({"model": tag or "all_relu", "protocol": name, "drelus": rep.drelus,
                         "bytes": rep.total_bytes, "online_bytes": rep.online_bytes, "rounds": rep.rounds})
    out = {"input_shape": list(shape), "rows": rows}
    pl.write_json(wd.path("cost", "summary.json"), out)
    return out


def _fmt(v, scale=100.0, digits=2):
    return "-" if v is None else f"{scale * v:.{digits}f}"


def experiment_report(wd, exp: Experiment) -> dict:
    """The pipeline's report plus the communication table and the paper's numbers, as
    ``report/experiment.md`` (and returned, with the text under ``"markdown"``)."""
    from jaxmpc import pipeline as pl

    summary = pl.report_step(wd)
    cost = None
    p = wd.path("cost", "summary.json")
    if os.path.exists(p):
        with open(p) as f:
            cost = json.load(f)
    lines = [f"# {exp.name}: {exp.title}", "", pl.summary_table(summary), ""]
    if cost:
        lines += ["Communication per image (all parties, from shapes; `cost/summary.json`):", "",
                  "| model | protocol | DReLUs | GB | online GB | rounds |", "|---|---|---|---|---|---|"]
        for r in cost["rows"]:
            lines.append(f"| {r['model']} | {r['protocol']} | {r['drelus']:,} | {r['bytes'] / 1e9:.4f} | "
                         f"{r['online_bytes'] / 1e9:.4f} | {r['rounds']} |")
        lines.append("")
    if exp.paper:
        lines += ["The paper's numbers (`paper_reference.md` §7):", ""]
        lines += [f"- {k}: {v}" for k, v in exp.paper.items()]
    text = "\n".join(lines) + "\n"
    with open(wd.path("report", "experiment.md"), "w") as f:
        f.write(text)
    summary.update({"cost": cost, "paper": dict(exp.paper), "markdown": text})
    return summary
