"""The paper's pipeline as resumable steps over one work folder (used by the ``jaxmpc`` CLI).

Steps (Gorski & Avidan, arXiv 2304.10442, §3-4), each reading and writing documented files:

=============  =====================================================  =====================================
step           reads                                                  writes
=============  =====================================================  =====================================
``train``      ``pipeline.json``                                      ``train/`` (orbax checkpoints)
``profile``    ``train/``                                             ``profile/run/``, ``profile/distortion.npz``,
                                                                      ``profile/distortion.png``
``plan``       ``profile/distortion.npz``                             ``plans/<tag>.json`` (block specs) and
                                                                      ``plans/<tag>.summary.json``
``finetune``   ``train/``, ``plans/<tag>.json``                       ``finetune/<tag>/`` (checkpoints); with
                                                                      ``seed=k``: ``finetune_seeds/<tag>/seed<k>/``
(demo)         ``finetune/<tag>/``, ``finetune_seeds/<tag>/``         ``finetune/<tag>/test_correct.json``,
                                                                      ``train/test_correct.json`` (per image)
``infer``      ``finetune/<tag>/`` (or ``train/``)                    ``infer/<tag>/report.json``,
                                                                      ``infer/<tag>/result.json``
``report``     everything above                                       ``report/summary.json``, ``summary.md``,
                                                                      ``accuracy_vs_budget.png``,
                                                                      ``communication.png``
=============  =====================================================  =====================================

The report gives every accuracy with its 95% Wilson interval over the test images, the mean and
standard deviation over finetuning seeds, and (with the demo's per-image predictions) the paired
difference between the knapsack spec and each baseline at the same budget (:mod:`jaxmpc.stats`).

A plan tag is ``<method>_<budget>`` (``knapsack_10pct``, ``uniform_10pct``, ``random_10pct``, or
``..._<N>drelus``). Every step is idempotent: rerunning it resumes (training and profiling
continue from their last checkpoint) or reuses finished results. All JSON files are written
atomically.

Every step also takes ``dataset=``: a :class:`jaxmpc.data.Dataset` to use instead of loading
the training preset's dataset (e.g. a few synthetic images for a smoke test). Classification and
segmentation datasets are both supported; for segmentation, ``infer`` reports the mIoU and the
per-pixel agreement of the secure predictions (logits resized bilinearly to the label map, as in
training).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import numpy as np

from jaxmpc import _io

__all__ = ["PipelineConfig", "Workdir", "train_step", "profile_step", "plan_step", "finetune_step", "infer_step",
           "report_step", "run_demo", "PipelineError", "check_budget", "parse_budget",
           "budget_drelus", "budget_tag"]


class PipelineError(RuntimeError):
    """A pipeline step cannot run (missing or malformed input file, inconsistent configuration)."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline runs. Saved as ``pipeline.json`` in the work folder.

    Attributes:
      train_config: preset of :func:`jaxmpc.train.get_config` for the all-ReLU model.
      finetune_config: preset for finetuning with a spec.
      budgets: DReLU budgets, each a *float* fraction of the all-ReLU count in ``(0, 1]``
        (``0.06`` is 6%, ``1.0`` every DReLU) or an *int* count of DReLUs (``5000``); see
        :func:`check_budget` (a float above 1, a bool, NaN or infinity is refused).
      profile_samples: training images used to measure distortions (paper: training split).
      infer_images: held-out test images run through secure inference.
      baselines: also plan, finetune and evaluate the uniform and random baselines.
      distill: finetune with knowledge distillation from the all-ReLU model.
      overrides: ``{field: value}`` applied to both training configs (e.g. ``num_epochs``).
      finetune_overrides: applied to the finetuning config only.
      compare_bits, lsb_drop_bits, frac_bits: protocol parameters of secure inference.
      seed: seed of the random baseline and of the secure-inference key derivation for demos
        (deployment draws keys from OS entropy).
      train_overrides: applied to the training (``train`` step) config only, after
        ``overrides`` (e.g. the schedule of an AvgPool pre-finetune); it may not change the
        model or the dataset, which both steps share.
      init_weights: start the ``train`` step from these weights instead of a random
        initialisation: a jaxmpc run folder (orbax checkpoints), a PyTorch ``.pt``/``.pth`` state
        dict (needs torch) or an ``.npz`` of torch-layout arrays (see
        :func:`jaxmpc.train.import_torch_state_dict`; ResNets and MobileNetV2 only).
      init_prefix_map: key-prefix renames for importing ``init_weights`` (e.g.
        :data:`jaxmpc.train.MMCLS_PREFIXES` for mmcls checkpoints).
      pretrain: run the training schedule (from ``init_weights`` when given); ``False`` uses
        ``init_weights`` as the trained model unchanged (it is only evaluated).
      candidates: candidate patch sizes for profiling: ``"default"``
        (:func:`jaxmpc.core.blocks.default_candidates`), ``"paper"`` (:func:`jaxmpc.core.blocks.paper_candidates`,
        the shape of the paper's lists), or one list of ``[bh, bw]`` for every layer (sizes larger
        than a layer's map are dropped for it, see :func:`jaxmpc.core.blocks.fit_candidates`).
      infer_baselines: ``run_demo`` also runs secure inference on the baseline specs (by
        default only the all-ReLU model and the knapsack specs).
      infer_batch_size: images per secure-inference call.
      profile_shuffle: profile on a random subset of the training split (drawn with ``seed``, as
        the paper's fixed shuffle) instead of its first ``profile_samples`` images (use it for
        class-sorted folders such as ImageNet's).
      finetune_seeds: ``run_demo`` finetunes every spec with this many training seeds (the
        preset's seed, then ``+1``, ``+2``...; extra seeds in ``finetune_seeds/<tag>/seed<k>/``)
        and the report gives the mean and spread over them; the ``finetune`` step runs one.
    """

    train_config: str = "digits"
    finetune_config: str = "digits_finetune"
    budgets: tuple = (0.05, 0.1, 0.2)
    profile_samples: int = 128
    infer_images: int = 128
    baselines: bool = True
    distill: bool = True
    overrides: dict = dataclasses.field(default_factory=dict)
    finetune_overrides: dict = dataclasses.field(default_factory=dict)
    compare_bits: int = 64
    lsb_drop_bits: int = 0
    frac_bits: int = 12
    seed: int = 0
    train_overrides: dict = dataclasses.field(default_factory=dict)
    init_weights: str | None = None
    init_prefix_map: dict = dataclasses.field(default_factory=dict)
    pretrain: bool = True
    candidates: Any = "default"
    infer_baselines: bool = False
    infer_batch_size: int = 64
    profile_shuffle: bool = False
    finetune_seeds: int = 3

    def __post_init__(self):
        from jaxmpc import train

        for name in (self.train_config, self.finetune_config):
            if name not in train.CONFIGS:
                raise PipelineError(f"unknown training preset {name!r}; expected one of {sorted(train.CONFIGS)}")
        if not self.budgets:
            raise PipelineError("budgets must not be empty")
        object.__setattr__(self, "budgets", tuple(check_budget(b) for b in self.budgets))
        for name in ("profile_samples", "infer_images", "infer_batch_size", "finetune_seeds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PipelineError(f"{name} must be a positive int, got {v!r}")
        shared = sorted(set(self.train_overrides) & {"model", "model_kwargs", "dataset", "dataset_kwargs"})
        if shared:
            raise PipelineError(f"train_overrides may not change {shared} (the finetune step uses the same model "
                                "and data); put them in overrides")
        if self.init_weights is None and not self.pretrain:
            raise PipelineError("pretrain=False needs init_weights (the trained model to start from)")
        _check_candidates(self.candidates)
        self.protocol()  # validates the protocol fields

    def protocol(self):
        from jaxmpc.core.config import ProtocolConfig

        try:
            return ProtocolConfig(frac_bits=self.frac_bits, compare_bits=self.compare_bits,
                                  lsb_drop_bits=self.lsb_drop_bits)
        except (TypeError, ValueError) as e:
            raise PipelineError(f"bad protocol settings: {e}") from e

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["budgets"] = list(self.budgets)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "PipelineConfig":
        if not isinstance(d, dict):
            raise PipelineError("pipeline.json must hold a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise PipelineError(f"pipeline.json: unknown fields {sorted(unknown)}")
        d = dict(d)
        if "budgets" in d:
            d["budgets"] = tuple(d["budgets"])
        return cls(**d)


def _check_candidates(c) -> None:
    from jaxmpc.core import blocks

    if isinstance(c, str):
        if c not in blocks.CANDIDATE_LISTS:
            raise PipelineError(f"candidates must be one of {sorted(blocks.CANDIDATE_LISTS)} or a list of [bh, bw], "
                                f"got {c!r}")
        return
    try:
        ok = len(blocks.validate_block_sizes(c, name="candidates")) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise PipelineError(f"candidates must be 'default', 'paper' or a list of valid [bh, bw] pairs, got {c!r}")


def _candidates_for(cfg: "PipelineConfig", model, input_shape) -> dict | None:
    """``{layer: [n, 2]}`` for :func:`jaxmpc.distortion.profile_distortion` (``None``: its defaults)."""
    from jaxmpc.core import blocks
    from jaxmpc import nn as jnn

    if isinstance(cfg.candidates, str) and cfg.candidates == "default":
        return None
    out = {}
    for name, (h, w, _) in jnn.relu_layers(model, tuple(input_shape)):
        if isinstance(cfg.candidates, str):
            out[name] = blocks.candidate_list(cfg.candidates, h, w)
        else:
            out[name] = blocks.fit_candidates(cfg.candidates, h, w)
    return out


BUDGET_UNITS = ("fraction", "drelus")


def check_budget(budget) -> int | float:
    """A budget in its one internal form: a float fraction in ``(0, 1]`` or an int DReLU count >= 1.

    The type carries the unit: floats (Python or numpy) are fractions of the all-ReLU count,
    ints are counts. So ``1.0`` is 100% and ``1`` is one DReLU; a float above 1 (``2.7``, or
    ``5000.0`` meant as a count) is refused rather than guessed.

    Raises:
      PipelineError: for a bool, a non-number, NaN, infinity, zero or a negative value, a float
        above 1, or an int below 1.
    """
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise PipelineError(f"a budget must be a fraction in (0, 1] (float) or a DReLU count (int), got {budget!r}")
    if isinstance(budget, (int, np.integer)):
        if budget < 1:
            raise PipelineError(f"a DReLU-count budget must be at least 1, got {budget!r}")
        return int(budget)
    b = float(budget)
    if not np.isfinite(b) or b <= 0:
        raise PipelineError(f"a budget must be a positive, finite fraction in (0, 1], got {budget!r}")
    if b > 1:
        raise PipelineError(f"a float budget is a fraction of the all-ReLU count in (0, 1], got {budget!r}; "
                            f"give a DReLU count as an int (e.g. {int(b)}) or a fraction (e.g. 0.06 for 6%)")
    return b


def parse_budget(text: str, unit: str = "fraction") -> int | float:
    """Parses a budget as written on the command line (``--budget`` / ``--budget-unit``).

    With ``unit="fraction"`` (the default): ``"6%"`` (a percentage in ``(0, 100]``) or a plain
    number in ``(0, 1]`` (``"0.06"``; ``"1"`` and ``"1.0"`` mean 100%). With ``unit="drelus"``: a
    whole number of DReLUs (``"5000"``). Anything else -- a plain number above 1 without the
    ``drelus`` unit, a fractional count such as ``"2.7"``, a percentage with the ``drelus`` unit,
    ``inf``, ``nan``, zero or a negative value -- is refused.

    Returns:
      a float fraction or an int count (see :func:`check_budget`).

    Raises:
      PipelineError: one line saying what was wrong and what is accepted.
    """
    if unit not in BUDGET_UNITS:
        raise PipelineError(f"budget unit must be one of {', '.join(BUDGET_UNITS)}, got {unit!r}")
    t = str(text).strip()
    if unit == "drelus":
        if t.endswith("%"):
            raise PipelineError(f"budget {text!r} is a percentage but --budget-unit is drelus; drop one of them")
        if not t.isdigit():
            raise PipelineError(f"with --budget-unit drelus the budget is a whole number of DReLUs >= 1, got {text!r}")
        return check_budget(int(t))
    percent = t.endswith("%")
    num = t[:-1].strip() if percent else t
    try:
        v = float(num)
    except ValueError:
        raise PipelineError(f"budget must be a percentage like 6%, a fraction like 0.06, or a DReLU count with "
                            f"--budget-unit drelus, got {text!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise PipelineError(f"budget must be positive and finite, got {text!r}")
    if percent:
        if v > 100:
            raise PipelineError(f"a percentage budget must lie in (0%, 100%], got {text!r}")
        return check_budget(v / 100)
    if v > 1:
        raise PipelineError(f"budget {text!r} is ambiguous: a plain number is a fraction in (0, 1]; write "
                            f"{t}% for a percentage or add --budget-unit drelus for a DReLU count")
    return check_budget(v)


def budget_drelus(budget, total: int) -> int:
    """The DReLU count of ``budget`` (see :func:`check_budget`) for a model with ``total`` DReLUs:
    ``floor(fraction * total)``, or the count itself."""
    b = check_budget(budget)
    return b if isinstance(b, int) else int(b * total)


def budget_tag(budget) -> str:
    """The plan-tag part of a budget: ``10pct`` for 0.1, ``5000drelus`` for 5000."""
    b = check_budget(budget)
    return f"{b}drelus" if isinstance(b, int) else f"{b * 100:g}pct"


def write_json(path, obj) -> None:
    """Writes ``obj`` to ``path`` as JSON, atomically (creates the folder)."""
    _io.write_json(path, obj)


def read_json(path, what: str):
    """Reads a JSON file; a missing or malformed file is a :class:`PipelineError` naming ``what``."""
    try:
        return _io.read_json(path, what)
    except (FileNotFoundError, _io.JSONFileError) as e:
        raise PipelineError(str(e)) from e


@dataclasses.dataclass(frozen=True)
class Workdir:
    """Paths of a pipeline work folder."""

    root: str

    def path(self, *parts) -> str:
        return os.path.join(self.root, *parts)

    @property
    def train(self):
        return self.path("train")

    def plan(self, tag):
        return self.path("plans", f"{tag}.json")

    def finetune(self, tag):
        return self.path("finetune", tag)

    def finetune_seed(self, tag, seed: int):
        """Run folder of finetuning seed ``seed`` (0: :meth:`finetune`)."""
        return self.finetune(tag) if seed == 0 else self.path("finetune_seeds", tag, f"seed{seed}")

    def infer(self, tag):
        return self.path("infer", tag)

    def config(self) -> PipelineConfig:
        return PipelineConfig.from_json(read_json(self.path("pipeline.json"), "pipeline config"))

    def save_config(self, cfg: PipelineConfig) -> None:
        p = self.path("pipeline.json")
        if os.path.exists(p):
            old = PipelineConfig.from_json(read_json(p, "pipeline config")).to_json()  # fills new fields' defaults
            norm = json.loads(_io.dumps_json(cfg.to_json()))
            if json.loads(_io.dumps_json(old)) != norm:
                raise PipelineError(f"{p} holds a different configuration; use another work folder or delete it")
        write_json(p, cfg.to_json())


# ---------------------------------------------------------------------------------------------
# steps


def _train_cfg(cfg: PipelineConfig, finetune: bool = False, progress: bool = True):
    from jaxmpc import train

    base = train.get_config(cfg.finetune_config if finetune else cfg.train_config)
    over = dict(cfg.overrides)
    over.update(cfg.finetune_overrides if finetune else cfg.train_overrides)
    try:
        return base.replace(progress=progress, **over)
    except (TypeError, ValueError) as e:
        raise PipelineError(f"bad training override: {e}") from e


def _dataset(cfg: PipelineConfig, dataset=None):
    from jaxmpc import data

    if dataset is not None:
        return dataset
    tc = _train_cfg(cfg)
    return data.load_dataset(tc.dataset, **tc.dataset_kwargs)


def _load(path: str, what: str):
    from jaxmpc import train

    try:
        return train.load_variables(path)
    except FileNotFoundError as e:
        raise PipelineError(f"missing {what}: {e} (run the previous step first)") from e


def _model(cfg: PipelineConfig, dataset):
    from jaxmpc import train

    try:
        return train.build_model(_train_cfg(cfg), dataset.info)
    except ValueError as e:
        raise PipelineError(str(e)) from e


def _initial_variables(cfg: PipelineConfig, model, ds) -> dict:
    """The variables named by ``cfg.init_weights`` (a jaxmpc run folder or a torch-layout file)."""
    from jaxmpc import train

    path = os.path.expanduser(cfg.init_weights)
    if os.path.isdir(path):
        variables, _ = _load(path, f"init_weights run folder {path}")
        return variables
    if not os.path.exists(path):
        raise PipelineError(f"init_weights {path} does not exist (a jaxmpc run folder, a .pt/.pth state dict or "
                            ".npz of torch-layout arrays)")
    if path.endswith(".npz"):
        with np.load(path) as f:
            state = {k: f[k] for k in f.files}
    else:
        try:
            state = train.load_torch_state_dict(path)
        except (ImportError, ValueError) as e:
            raise PipelineError(f"cannot read init_weights {path}: {e}") from e
    try:
        return train.import_torch_state_dict(model, state, input_shape=ds.info.input_shape,
                                             prefix_map=cfg.init_prefix_map or None)
    except NotImplementedError as e:
        raise PipelineError(f"init_weights: {e} (pass a jaxmpc run folder instead)") from e
    except ValueError as e:  # WeightImportError lists missing/unexpected keys
        raise PipelineError(f"init_weights {path} do not fit {_train_cfg(cfg).model}: {e}") from e


def train_step(wd: Workdir, cfg: PipelineConfig, *, progress: bool = True, dataset=None) -> dict:
    """Trains the all-ReLU model (resumes from ``train/``). Returns its test metrics.

    With ``cfg.init_weights`` the schedule starts from those weights (e.g. the paper's AvgPool
    finetune of a published checkpoint), or, with ``cfg.pretrain=False``, the weights are saved
    as the trained model unchanged.
    """
    from jaxmpc import train

    ds = _dataset(cfg, dataset)
    model = _model(cfg, ds)
    tc = _train_cfg(cfg, progress=progress)
    if cfg.init_weights is not None and not cfg.pretrain:
        try:
            variables, _ = train.load_variables(wd.train)
        except FileNotFoundError:
            variables = _initial_variables(cfg, model, ds)
            with train.Checkpointer(wd.train) as ckpt:
                ckpt.save(0, {k: variables[k] for k in ("params", "batch_stats", "block_sizes") if k in variables},
                          {"config": tc.to_json(), "init_weights": cfg.init_weights, "history": []})
        test = train.evaluate(model, variables, ds.test, ds.info, batch_size=tc.eval_batch_size)
        out = {"test": test, "epochs": 0, "init_weights": cfg.init_weights}
    else:
        init = None
        if cfg.init_weights is not None and not os.path.isdir(os.path.join(wd.train, "checkpoints")):
            init = _initial_variables(cfg, model, ds)
        res = train.train_and_evaluate(tc, wd.train, dataset=ds, variables=init)
        out = {"test": res.final.get("test", {}), "epochs": len(res.history)}
        if cfg.init_weights is not None:
            out["init_weights"] = cfg.init_weights
    write_json(wd.path("train", "result.json"), out)
    return out


def profile_step(wd: Workdir, cfg: PipelineConfig, *, progress: bool = True, dataset=None):
    """Measures the distortion table on ``profile_samples`` training images (resumable)."""
    from jaxmpc import distortion

    out = wd.path("profile", "distortion.npz")
    if os.path.exists(out):
        return distortion.DistortionTable.load(out)
    ds = _dataset(cfg, dataset)
    variables, _ = _load(wd.train, "trained model (train/)")
    model = _model(cfg, ds)
    n = min(cfg.profile_samples, len(ds.train))
    idx = np.arange(n)
    if cfg.profile_shuffle:
        idx = np.sort(np.random.default_rng(cfg.seed).choice(len(ds.train), n, replace=False))
    images = ds.train.get(idx)["image"]
    table = distortion.profile_distortion(model, variables, images, out_dir=wd.path("profile", "run"),
                                          candidates=_candidates_for(cfg, model, ds.info.input_shape),
                                          progress=progress)
    table.save(out)
    try:
        distortion.plot_distortion(table, wd.path("profile", "distortion.png"))
    except Exception as e:  # noqa: BLE001 - a plot must never lose the table
        print(f"note: distortion plot failed: {e}")
    return table


def _all_relu_count(model, variables, shape) -> int:
    from jaxmpc import nn as jnn

    return jnn.count_drelus(model, jnn.apply_spec(variables, {}), shape).total


def plan_step(wd: Workdir, cfg: PipelineConfig, budget, method: str = "knapsack") -> dict:
    """Plans a block spec at ``budget`` with ``method`` in {knapsack, uniform, random}.

    ``budget``: a float fraction of the all-ReLU count in ``(0, 1]`` or an int DReLU count
    (:func:`check_budget`); both are checked before any file is read.
    """
    from jaxmpc.core import blocks
    from jaxmpc import distortion, knapsack
    from jaxmpc import nn as jnn

    budget = check_budget(budget)
    if method not in ("knapsack", "uniform", "random"):
        raise PipelineError(f"unknown planning method {method!r}; expected knapsack, uniform or random")
    tag = f"{method}_{budget_tag(budget)}"
    spec_path = wd.plan(tag)
    summary_path = wd.path("plans", f"{tag}.summary.json")
    if os.path.exists(spec_path) and os.path.exists(summary_path):
        return read_json(summary_path, "plan summary")
    table_path = wd.path("profile", "distortion.npz")
    if not os.path.exists(table_path):
        raise PipelineError(f"missing distortion table {table_path} (run `jaxmpc profile` first)")
    table = distortion.DistortionTable.load(table_path)
    layers = table.planner_layers()
    total = sum(lay.channels * lay.height * lay.width for lay in layers)
    drelus = budget_drelus(budget, total)
    if method == "knapsack":
        plan = knapsack.plan_block_sizes(layers, budget=drelus)
        spec = plan.spec
    elif method == "random":
        rng = np.random.default_rng(cfg.seed)
        rand = [dataclasses.replace(lay, distortion=rng.uniform(0, 1, lay.distortion.shape)) for lay in layers]
        spec = knapsack.plan_block_sizes(rand, budget=drelus).spec
    elif method == "uniform":
        spec = uniform_spec(layers, drelus)
    else:
        raise PipelineError(f"unknown planning method {method!r}; expected knapsack, uniform or random")
    used = sum(blocks.drelu_count(lay.height, lay.width, spec[lay.name]) for lay in layers)
    dist = 0.0
    for lay in layers:
        idx = [int(np.flatnonzero((lay.candidates == s).all(axis=1))[0]) if ((lay.candidates == s).all(axis=1)).any()
               else -1 for s in spec[lay.name]]
        dist += float(sum(lay.distortion[c, i] for c, i in enumerate(idx) if i >= 0))
    os.makedirs(os.path.dirname(spec_path), exist_ok=True)
    unit = "drelus" if isinstance(budget, int) else "fraction"
    jnn.save_spec(spec_path, spec, method=method, budget=budget, budget_unit=unit, drelus=used, all_relu=total)
    summary = {"tag": tag, "method": method, "budget": budget, "budget_unit": unit, "budget_drelus": drelus,
               "drelus": used,
               "all_relu_drelus": total, "ratio": used / total, "total_distortion": dist}
    write_json(summary_path, summary)
    return summary


def uniform_spec(layers, budget: int) -> dict:
    """The same patch size for every channel (the paper's simple baseline): the ``bh x bw``
    (clipped to each map) whose total DReLU count is the largest that fits the budget, the most
    square one among equals."""
    from jaxmpc.core import blocks

    side = max(max(lay.height, lay.width) for lay in layers)
    best = None
    for bh in range(1, side + 1):
        for bw in range(1, side + 1):
            used = sum(lay.channels * len(range(0, lay.height, min(bh, lay.height)))
                       * len(range(0, lay.width, min(bw, lay.width))) for lay in layers)
            if used <= budget:
                key = (used, -abs(bh - bw))
                if best is None or key > best[0]:
                    best = (key, bh, bw)
    if best is None:
        raise PipelineError(f"no uniform patch size fits {budget} DReLUs (one DReLU per channel needs "
                            f"{sum(lay.channels for lay in layers)})")
    _, bh, bw = best
    spec = {lay.name: np.tile(np.array([[min(bh, lay.height), min(bw, lay.width)]], np.int32), (lay.channels, 1))
            for lay in layers}
    assert sum(blocks.drelu_count(lay.height, lay.width, spec[lay.name]) for lay in layers) <= budget
    return spec


def finetune_step(wd: Workdir, cfg: PipelineConfig, tag: str, *, progress: bool = True, dataset=None,
                  seed: int = 0) -> dict:
    """Finetunes the trained model with the Block ReLUs of ``plans/<tag>.json``.

    ``seed`` > 0 repeats the finetuning with the preset's training seed plus ``seed`` (data order
    and augmentation) into ``finetune_seeds/<tag>/seed<seed>/`` (:meth:`Workdir.finetune_seed`).
    """
    from jaxmpc import nn as jnn
    from jaxmpc import train

    ds = _dataset(cfg, dataset)
    base, _ = _load(wd.train, "trained model (train/)")
    spec_file = wd.plan(tag)
    if not os.path.exists(spec_file):
        raise PipelineError(f"missing block spec {spec_file} (run `jaxmpc plan` first)")
    model = _model(cfg, ds)
    spec = jnn.load_spec(spec_file, model=model, variables=base, input_shape=ds.info.input_shape)
    spec = getattr(spec, "layers", spec)
    before = train.evaluate(model, jnn.apply_spec(base, spec), ds.test, ds.info,
                            batch_size=_train_cfg(cfg, finetune=True).eval_batch_size)
    tc = _train_cfg(cfg, finetune=True, progress=progress)
    if seed:
        tc = tc.replace(seed=tc.seed + seed)
    folder = wd.finetune_seed(tag, seed)
    res = train.finetune(tc, base, spec, folder, dataset=ds, distill=cfg.distill)
    out = {"tag": tag, "seed": tc.seed, "test": res.final.get("test", {}), "before_finetune": before}
    write_json(os.path.join(folder, "result.json"), out)
    return out


def _predict(logits, labels, seg: bool):
    """Class predictions: argmax over classes; segmentation logits are first resized bilinearly
    to the label map (as :func:`jaxmpc.train.evaluate`)."""
    import jax

    logits = np.asarray(logits, np.float32)
    if seg:
        b, h, w = labels.shape
        logits = np.asarray(jax.image.resize(logits, (b, h, w, logits.shape[-1]), "bilinear"))
    return np.argmax(logits, -1)


def infer_step(wd: Workdir, cfg: PipelineConfig, tag: str | None, *, images: int | None = None,
               progress: bool = True, batch_size: int | None = None, dataset=None) -> dict:
    """Secure inference on held-out test images: accuracy, agreement with plaintext, costs.

    Classification: top-1 accuracy of the secure and plaintext logits, and the number of images
    whose secure prediction equals the plaintext one. Segmentation: pixel accuracy and mIoU of
    both, the fraction of pixels predicted alike, and the number of images predicted alike at
    every pixel.
    """
    import jax

    from jaxmpc import nn as jnn
    from jaxmpc import train
    from jaxmpc.inference import secure_apply, secure_cost

    batch_size = batch_size or cfg.infer_batch_size
    ds = _dataset(cfg, dataset)
    seg = ds.info.task == "segmentation"
    src = wd.train if tag is None else wd.finetune(tag)
    variables, _ = _load(src, f"model ({os.path.relpath(src, wd.root)})")
    model = _model(cfg, ds)
    n = min(images or cfg.infer_images, len(ds.test))
    batch = ds.test.get(np.arange(n))
    x, y = batch["image"], np.asarray(batch["label"])
    config = cfg.protocol()
    apply = jax.jit(lambda v, a: model.apply(v, a))
    plain = np.concatenate([np.asarray(apply(variables, x[i: i + batch_size])) for i in range(0, n, batch_size)])
    from tqdm.auto import tqdm

    key = jax.random.key(cfg.seed)

    def run(i, start):
        xb = x[start: start + batch_size]
        if len(xb) < batch_size and n > batch_size:  # keep one compiled shape: pad the last batch
            xb = np.concatenate([xb, np.zeros((batch_size - len(xb),) + xb.shape[1:], xb.dtype)])
        out, rep = secure_apply(model, variables, xb, config=config, key=jax.random.fold_in(key, i))
        return np.asarray(out)[: min(batch_size, n - start)], rep

    starts = list(range(0, n, batch_size))
    t0 = time.perf_counter()
    first_out, first_rep = run(0, 0)  # includes compiling the secure program
    first = time.perf_counter() - t0
    preds, reports = [first_out], [first_rep]
    t1 = time.perf_counter()
    for i, start in enumerate(tqdm(starts[1:], desc=f"secure inference ({tag or 'all-ReLU'})",
                                   disable=not progress, unit="batch"), start=1):
        out, rep = run(i, start)
        preds.append(out)
        reports.append(rep)
    if len(starts) > 1:
        steady = (time.perf_counter() - t1) / (n - len(first_out))
    else:  # one batch: time it again, compiled
        t1 = time.perf_counter()
        run(len(starts), 0)
        steady = (time.perf_counter() - t1) / len(first_out)
    seconds = time.perf_counter() - t0
    secure = np.concatenate(preds)
    rep0 = reports[0]
    per_image = secure_cost(model, variables, (1,) + x.shape[1:], config=config)
    rep0.to_json(os.path.join(wd.infer(tag or "all_relu"), "report.json"))
    sp, pp = _predict(secure, y, seg), _predict(plain, y, seg)
    if seg:
        valid = y != ds.info.ignore_index
        conf_s = np.asarray(train.confusion_matrix(sp, y, ds.info.num_classes, ignore_index=ds.info.ignore_index))
        conf_p = np.asarray(train.confusion_matrix(pp, y, ds.info.num_classes, ignore_index=ds.info.ignore_index))
        metrics = {
            "secure_accuracy": train.pixel_accuracy(conf_s),
            "plaintext_accuracy": train.pixel_accuracy(conf_p),
            "secure_miou": float(train.mean_iou(conf_s)[0]),
            "plaintext_miou": float(train.mean_iou(conf_p)[0]),
            "same_predictions": int(np.sum(np.all((sp == pp).reshape(n, -1), axis=1))),
            "pixel_agreement": float(np.mean(sp == pp)),
            "pixel_agreement_labelled": float(np.mean((sp == pp)[valid])) if valid.any() else float("nan"),
        }
    else:
        metrics = {
            "secure_accuracy": float(np.mean(sp == y)),
            "plaintext_accuracy": float(np.mean(pp == y)),
            "same_predictions": int(np.sum(sp == pp)),
        }
    result = {
        "tag": tag or "all_relu",
        "images": n,
        "task": ds.info.task,
        **metrics,
        "max_abs_logit_error": float(np.max(np.abs(secure - plain))),
        "seconds": seconds,
        "seconds_per_image": steady,
        "compile_seconds": max(first - steady * len(first_out), 0.0),
        "per_image": {"drelus": per_image.drelus, "bytes": per_image.total_bytes,
                      "online_bytes": per_image.online_bytes, "rounds": per_image.rounds,
                      "by_kind": per_image.by_kind()},
        "drelus_all_relu": _all_relu_count(model, variables, x.shape[1:]),
        "protocol": {"compare_bits": cfg.compare_bits, "lsb_drop_bits": cfg.lsb_drop_bits,
                     "frac_bits": cfg.frac_bits},
    }
    write_json(os.path.join(wd.infer(tag or "all_relu"), "result.json"), result)
    return result


# ---------------------------------------------------------------------------------------------
# report


def report_step(wd: Workdir, *, plots: bool = True, confidence: float = 0.95) -> dict:
    """Collects every step's results into ``report/summary.{json,md}`` and plots.

    Every accuracy comes with its uncertainty (:mod:`jaxmpc.stats`): a Wilson interval from the
    number of test images (for the seed-mean accuracy), the mean and standard deviation over the
    finetuning seeds found in ``finetune_seeds/`` (``run_demo``), and -- where per-image
    predictions were saved (``finetune/<tag>/test_correct.json``, written by ``run_demo``) -- the
    paired difference between the knapsack spec and each baseline at the same budget, with its
    interval and a verdict.
    """
    cfg = wd.config()
    summary: dict[str, Any] = {"config": cfg.to_json(), "rows": [], "confidence": confidence}
    train_res = read_json(wd.path("train", "result.json"), "training result (run `jaxmpc train`)")
    seg = "miou" in train_res["test"]
    metric = summary["metric"] = "miou" if seg else "accuracy"
    base_acc = train_res["test"].get(metric)
    all_relu = _maybe(wd.path("infer", "all_relu", "result.json"))
    summary["all_relu"] = {"plaintext_accuracy": base_acc, "secure": all_relu,
                           "accuracy": _accuracy_stats([train_res["test"]], metric, confidence),
                           "secure_interval": _secure_interval(all_relu, metric, confidence)}
    for budget in cfg.budgets:
        for method in (["knapsack", "uniform", "random"] if cfg.baselines else ["knapsack"]):
            tag = f"{method}_{budget_tag(budget)}"
            plan = _maybe(wd.path("plans", f"{tag}.summary.json"))
            ft = _maybe(os.path.join(wd.finetune(tag), "result.json"))
            inf = _maybe(os.path.join(wd.infer(tag), "result.json"))
            if plan is None:
                continue
            seeds = [ft] if ft else []
            if ft:
                k = 1
                while (extra := _maybe(os.path.join(wd.finetune_seed(tag, k), "result.json"))) is not None:
                    seeds.append(extra)
                    k += 1
            summary["rows"].append({"tag": tag, "method": method, "budget": budget, "plan": plan,
                                    "finetune": ft, "infer": inf,
                                    "accuracy": _accuracy_stats([s["test"] for s in seeds], metric, confidence),
                                    "secure_interval": _secure_interval(inf, metric, confidence)})
    summary["comparisons"] = _comparisons(wd, summary["rows"], confidence)
    write_json(wd.path("report", "summary.json"), summary)
    _io.atomic_write_text(wd.path("report", "summary.md"), summary_table(summary) + "\n")
    if plots:
        _plots(wd, summary)
    return summary


def _accuracy_stats(tests: list, metric: str, confidence: float) -> dict | None:
    """Mean, spread over seeds and (classification) Wilson interval of finetuned test metrics."""
    from jaxmpc import stats

    vals = [t.get(metric) for t in tests if t and t.get(metric) is not None]
    if not vals:
        return None
    out = stats.seed_spread(vals)
    n = tests[0].get("count")
    out["n"] = int(n) if n else None
    out["lo"] = out["hi"] = None
    if metric == "accuracy" and n:
        out["lo"], out["hi"] = stats.wilson_interval(out["mean"] * int(n), int(n), confidence)
    return out


def _secure_interval(inf: dict | None, metric: str, confidence: float):
    from jaxmpc import stats

    if not inf or metric != "accuracy" or inf.get("secure_accuracy") is None:
        return None
    n = int(inf["images"])
    return list(stats.wilson_interval(inf["secure_accuracy"] * n, n, confidence))


def _comparisons(wd: Workdir, rows: list, confidence: float) -> list:
    """Knapsack minus each baseline at the same budget, paired on the same test images."""
    from jaxmpc import stats

    out = []
    by = {(r["budget"], r["method"]): r for r in rows}
    for (budget, method), row in by.items():
        k = by.get((budget, "knapsack"))
        if method == "knapsack" or k is None or not row["accuracy"] or not k["accuracy"]:
            continue
        c = {"budget": budget, "baseline": method, "knapsack_ratio": k["plan"]["ratio"],
             "baseline_ratio": row["plan"]["ratio"], "knapsack_drelus": k["plan"]["drelus"],
             "baseline_drelus": row["plan"]["drelus"],
             "mean_diff": k["accuracy"]["mean"] - row["accuracy"]["mean"]}
        ca = _maybe(os.path.join(wd.finetune(k["tag"]), "test_correct.json"))
        cb = _maybe(os.path.join(wd.finetune(row["tag"]), "test_correct.json"))
        if ca and cb and len(ca["correct"][0]) == len(cb["correct"][0]):
            p = stats.paired_difference(np.asarray(ca["correct"], bool), np.asarray(cb["correct"], bool),
                                        confidence)
            c.update(paired=p)
            per_seed = p.get("per_seed", [])
            if p["lo"] > 0 and all(v > 0 for v in per_seed):
                c["verdict"] = "knapsack better"
            elif p["hi"] < 0 and all(v < 0 for v in per_seed):
                c["verdict"] = f"{method} better"
            else:
                c["verdict"] = "within noise"
        else:
            c["paired"] = None
            c["verdict"] = "no per-image predictions"
        out.append(c)
    return out


def _maybe(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _fmt_acc(v):
    return "-" if v is None else f"{100 * v:.2f}"


def _fmt_ci(lo, hi):
    return "" if lo is None or hi is None else f" [{100 * lo:.1f}, {100 * hi:.1f}]"


def _fmt_spread(st):
    if not st or st.get("sd") is None:
        return "- (1)" if st else "-"
    return f"±{100 * st['sd']:.2f} ({st['seeds']})"


def summary_table(summary: dict) -> str:
    """The demo's tables: accuracies with intervals and seed spread (segmentation: mIoU), DReLUs,
    bytes and rounds per image, time; then the knapsack against each baseline at equal budget."""
    metric = summary.get("metric", "accuracy")
    sec_key = "secure_miou" if metric == "miou" else "secure_accuracy"
    name = "mIoU" if metric == "miou" else "acc"
    conf = int(round(100 * summary.get("confidence", 0.95)))
    ci = f" [{conf}% CI]" if metric == "accuracy" else ""
    hdr = (f"| model | DReLUs/image | plaintext {name} %{ci} | sd over seeds (n) | before finetune % | "
           f"secure {name} %{ci} | secure = plaintext | MB/image (online) | rounds | s/image |")
    lines = [hdr, "|" + "---|" * 10]
    ar = summary["all_relu"]
    st = ar.get("accuracy") or {}
    sec = ar.get("secure")
    sec_ci = ar.get("secure_interval") or (None, None)
    plain = f"{_fmt_acc(ar['plaintext_accuracy'])}{_fmt_ci(st.get('lo'), st.get('hi'))}"
    if sec:
        pi = sec["per_image"]
        lines.append(f"| all-ReLU | {pi['drelus']:,} | {plain} | - | - | "
                     f"{_fmt_acc(sec.get(sec_key))}{_fmt_ci(*sec_ci)} | {sec['same_predictions']}/{sec['images']} | "
                     f"{pi['bytes'] / 1e6:.2f} ({pi['online_bytes'] / 1e6:.2f}) | {pi['rounds']} | "
                     f"{sec['seconds_per_image']:.3f} |")
    else:
        lines.append(f"| all-ReLU | - | {plain} | - | - | - | - | - | - | - |")
    for row in summary["rows"]:
        ft, inf, plan = row["finetune"] or {}, row["infer"], row["plan"]
        st = row.get("accuracy") or {}
        acc = st.get("mean", ft.get("test", {}).get(metric))
        before = (ft.get("before_finetune") or {}).get(metric)
        if inf:
            pi = inf["per_image"]
            sec_ci = row.get("secure_interval") or (None, None)
            cells = (f"{_fmt_acc(inf.get(sec_key))}{_fmt_ci(*sec_ci)} | {inf['same_predictions']}/{inf['images']} | "
                     f"{pi['bytes'] / 1e6:.2f} ({pi['online_bytes'] / 1e6:.2f}) | {pi['rounds']} | "
                     f"{inf['seconds_per_image']:.3f}")
        else:
            cells = "- | - | - | - | -"
        lines.append(f"| {row['method']} @ {row['budget']:g} ({100 * plan['ratio']:.1f}%) | {plan['drelus']:,} | "
                     f"{_fmt_acc(acc)}{_fmt_ci(st.get('lo'), st.get('hi'))} | {_fmt_spread(st or None)} | "
                     f"{_fmt_acc(before)} | {cells} |")
    n = (ar.get("accuracy") or {}).get("n")
    if metric == "accuracy":
        lines.append("")
        lines.append(f"Plaintext accuracy on {n or '?'} test images: mean over the finetuning seeds, with its {conf}% "
                     "Wilson interval over the test images; sd: standard deviation over the seeds (their number "
                     "in brackets). Secure accuracy: one run, on the images of its `secure = plaintext` column.")
    comps = summary.get("comparisons") or []
    if comps:
        lines += ["", f"Knapsack against the baselines at the same budget (paired on the same test images, "
                  f"{conf}% CI):",
                  "", "| budget | baseline | DReLUs knapsack / baseline | knapsack - baseline, points [CI] | "
                  "per seed | discordant images | verdict |", "|" + "---|" * 7]
        for c in comps:
            p = c.get("paired")
            if p:
                diff = f"{100 * p['diff']:+.2f} [{100 * p['lo']:+.1f}, {100 * p['hi']:+.1f}]"
                seeds = ", ".join(f"{100 * v:+.1f}" for v in p.get("per_seed", [])) or "-"
                disc = f"{p['discordant']}/{p['n']}"
            else:
                diff, seeds, disc = f"{100 * c['mean_diff']:+.2f}", "-", "-"
            verdict = c["verdict"]
            if c["baseline_drelus"] < 0.95 * c["knapsack_drelus"]:
                verdict += (f" (unequal budget: {c['baseline']} uses only {100 * c['baseline_ratio']:.1f}% "
                            f"against {100 * c['knapsack_ratio']:.1f}%)")
            lines.append(f"| {c['budget']:g} | {c['baseline']} | {c['knapsack_drelus']:,} / {c['baseline_drelus']:,} | "
                         f"{diff} | {seeds} | {disc} | {verdict} |")
        lines += ["", "Verdict: 'knapsack better' when the interval lies above 0 and every seed's difference is "
                  "positive; 'within noise' otherwise (the interval covers 0 or the seeds disagree)."]
    return "\n".join(lines)


def _plots(wd: Workdir, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if r["finetune"] and r.get("accuracy")]
    metric = summary.get("metric", "accuracy")
    if rows:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        span = max(r["plan"]["ratio"] for r in rows) * 100
        for i, (method, marker) in enumerate((("knapsack", "o"), ("uniform", "s"), ("random", "^"))):
            rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["plan"]["ratio"])
            if not rs:
                continue
            dx = (i - 1) * 0.012 * span  # side by side, so the intervals do not hide each other
            x = np.array([100 * r["plan"]["ratio"] + dx for r in rs])
            y = np.array([100 * r["accuracy"]["mean"] for r in rs])
            line = ax.plot(x, y, marker=marker, label=method)[0]
            if all(r["accuracy"]["lo"] is not None for r in rs):
                lo = y - np.array([100 * r["accuracy"]["lo"] for r in rs])
                hi = np.array([100 * r["accuracy"]["hi"] for r in rs]) - y
                ax.errorbar(x, y, yerr=[lo, hi], fmt="none", ecolor=line.get_color(), capsize=3, lw=1)
            for xi, r in zip(x, rs):
                vals = r["accuracy"]["values"]
                if len(vals) > 1:
                    ax.scatter([xi] * len(vals), 100 * np.asarray(vals), s=9, color=line.get_color(), alpha=0.45,
                               zorder=3)
        base = summary["all_relu"].get("accuracy") or {}
        if base:
            ax.axhline(100 * base["mean"], color="k", ls="--", lw=1, label="all-ReLU")
            if base.get("lo") is not None:
                ax.axhspan(100 * base["lo"], 100 * base["hi"], color="k", alpha=0.07, lw=0)
        ax.set_xlabel("DReLU budget (% of all-ReLU)")
        unit = "mIoU" if metric == "miou" else "accuracy"
        ax.set_ylabel(f"test {unit} after finetuning (%)")
        n = base.get("n")
        conf = int(round(100 * summary.get("confidence", 0.95)))
        if metric == "accuracy" and n:
            ax.set_title(f"mean over seeds (dots: each seed); bars: {conf}% Wilson CI, {n} test images", fontsize=8)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with _io.atomic_open(wd.path("report", "accuracy_vs_budget.png"), "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        plt.close(fig)
    reports = []
    for tag in ["all_relu"] + [r["tag"] for r in summary["rows"] if r["method"] == "knapsack"]:
        p = os.path.join(wd.infer(tag), "report.json")
        if os.path.exists(p):
            with open(p) as f:
                reports.append((tag, json.load(f)))
    if reports:
        fig, axes = plt.subplots(len(reports), 1, figsize=(10, 3.2 * len(reports)), squeeze=False)
        kinds = ["linear", "weights", "drelu", "mult", "reveal"]
        for ax, (tag, rep) in zip(axes[:, 0], reports):
            layers = [lay for lay in rep["layers"] if lay["total_bytes"] > 0]
            names = [lay["layer"] for lay in layers]
            bottom = np.zeros(len(layers))
            for k in kinds:
                vals = np.array([lay["by_kind"].get(k, 0) for lay in layers], float) / 1e3
                if vals.any():
                    ax.bar(range(len(layers)), vals, bottom=bottom, label=k)
                    bottom += vals
            ax.set_xticks(range(len(layers)))
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("kB per batch")
            tot = rep["totals"]
            ax.set_title(f"{tag}: {tot['total_bytes'] / 1e6:.2f} MB per batch of {tot['batch']}, "
                         f"{tot['rounds']} rounds")
            ax.legend(fontsize=7)
        fig.tight_layout()
        with _io.atomic_open(wd.path("report", "communication.png"), "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        plt.close(fig)


# ---------------------------------------------------------------------------------------------
# everything


def test_correct_step(wd: Workdir, cfg: PipelineConfig, tag: str | None, *, dataset=None) -> dict | None:
    """Per-image correctness of a finetuned spec (every finetuning seed) or, for ``tag=None``, of
    the trained all-ReLU model, on the whole test split; written to
    ``finetune/<tag>/test_correct.json`` (``train/test_correct.json``) for the report's paired
    comparisons. Classification only (returns ``None`` for segmentation)."""
    import jax

    from jaxmpc import train

    ds = _dataset(cfg, dataset)
    if ds.info.task != "classification":
        return None
    folders = [wd.train] if tag is None else [wd.finetune(tag)]
    if tag is not None:
        k = 1
        while os.path.exists(os.path.join(wd.finetune_seed(tag, k), "result.json")):
            folders.append(wd.finetune_seed(tag, k))
            k += 1
    model = _model(cfg, ds)
    apply = jax.jit(lambda v, a: model.apply(v, a))
    bs = _train_cfg(cfg, finetune=True).eval_batch_size
    n = len(ds.test)
    labels = np.asarray(ds.test.get(np.arange(n))["label"])
    correct, seeds = [], []
    for folder in folders:
        try:
            variables, _ = train.load_variables(folder)
        except FileNotFoundError as e:
            raise PipelineError(f"missing model {folder}: {e}") from e
        preds = []
        for i in range(0, n, bs):
            xb = ds.test.get(np.arange(i, min(i + bs, n)))["image"]
            preds.append(np.argmax(np.asarray(apply(variables, xb)), -1))
        correct.append((np.concatenate(preds) == labels).astype(int).tolist())
        res = _maybe(os.path.join(folder, "result.json")) or {}
        seeds.append(res.get("seed"))
    out = {"tag": tag or "all_relu", "n": n, "seeds": seeds, "accuracy": [float(np.mean(c)) for c in correct],
           "correct": correct}
    write_json(os.path.join(folders[0], "test_correct.json"), out)
    return out


def run_demo(workdir: str, cfg: PipelineConfig | None = None, *, progress: bool = True, log=print,
             dataset=None) -> dict:
    """train -> profile -> plan -> finetune -> secure inference -> report, on ``cfg`` (resumable).

    A baseline that cannot be planned at a budget (the uniform baseline needs at least one DReLU
    per channel) is skipped with a note. Every spec is finetuned with ``cfg.finetune_seeds``
    seeds and its per-image test predictions are saved, so the report can give every accuracy
    with its interval and seed spread and compare the knapsack with the baselines on the same
    images. ``dataset`` replaces the preset's dataset (see the module docstring).
    """
    cfg = cfg or PipelineConfig()
    wd = Workdir(os.fspath(workdir))
    os.makedirs(wd.root, exist_ok=True)
    wd.save_config(cfg)
    t0 = time.perf_counter()
    if dataset is None:
        dataset = _dataset(cfg)  # load once for all steps
    log(f"[1/6] train ({cfg.train_config})")
    train_step(wd, cfg, progress=progress, dataset=dataset)
    log("[2/6] profile distortions")
    profile_step(wd, cfg, progress=progress, dataset=dataset)
    methods = ["knapsack", "uniform", "random"] if cfg.baselines else ["knapsack"]
    log(f"[3/6] plan ({', '.join(methods)}) at budgets {list(cfg.budgets)}")
    tags = []
    for b in cfg.budgets:
        for m in methods:
            try:
                s = plan_step(wd, cfg, b, m)
            except PipelineError as e:
                if m == "knapsack":
                    raise
                log(f"      skipped the {m} baseline at budget {b:g}: {e}")
                continue
            tags.append(s["tag"])
    seeds = cfg.finetune_seeds
    log(f"[4/6] finetune {len(tags)} specs" + (f", {seeds} seeds each" if seeds > 1 else ""))
    for tag in tags:
        fresh = False
        for k in range(seeds):
            if not os.path.exists(os.path.join(wd.finetune_seed(tag, k), "result.json")):
                finetune_step(wd, cfg, tag, progress=progress, dataset=dataset, seed=k)
                fresh = True
        done = _maybe(os.path.join(wd.finetune(tag), "test_correct.json"))
        if fresh or done is None or len(done["correct"]) != seeds:
            test_correct_step(wd, cfg, tag, dataset=dataset)
    if not os.path.exists(os.path.join(wd.train, "test_correct.json")):
        test_correct_step(wd, cfg, None, dataset=dataset)
    which = "all specs" if cfg.infer_baselines else "knapsack specs"
    log(f"[5/6] secure inference (all-ReLU and {which})")
    if not os.path.exists(os.path.join(wd.infer("all_relu"), "result.json")):
        infer_step(wd, cfg, None, progress=progress, dataset=dataset)
    for tag in tags:
        if ((cfg.infer_baselines or tag.startswith("knapsack"))
                and not os.path.exists(os.path.join(wd.infer(tag), "result.json"))):
            infer_step(wd, cfg, tag, progress=progress, dataset=dataset)
    log("[6/6] report")
    summary = report_step(wd)
    summary["seconds"] = time.perf_counter() - t0
    log(summary_table(summary))
    log(f"\nwrote {wd.path('report')}/summary.md, accuracy_vs_budget.png, communication.png "
        f"({summary['seconds']:.0f} s)")
    return summary
