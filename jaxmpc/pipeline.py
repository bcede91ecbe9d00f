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
``finetune``   ``train/``, ``plans/<tag>.json``                       ``finetune/<tag>/`` (checkpoints)
``infer``      ``finetune/<tag>/`` (or ``train/``)                    ``infer/<tag>/report.json``,
                                                                      ``infer/<tag>/result.json``
``report``     everything above                                       ``report/summary.json``, ``summary.md``,
                                                                      ``accuracy_vs_budget.png``,
                                                                      ``communication.png``
=============  =====================================================  =====================================

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
import tempfile
import time
from typing import Any

import numpy as np

__all__ = ["PipelineConfig", "Workdir", "train_step", "profile_step", "plan_step", "finetune_step", "infer_step",
           "report_step", "run_demo", "PipelineError", "paper_candidates"]


class PipelineError(RuntimeError):
    """A pipeline step cannot run (missing or malformed input file, inconsistent configuration)."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline runs. Saved as ``pipeline.json`` in the work folder.

    Attributes:
      train_config: preset of :func:`jaxmpc.train.get_config` for the all-ReLU model.
      finetune_config: preset for finetuning with a spec.
      budgets: DReLU budgets, each a ratio of the all-ReLU count (< 1) or an absolute count.
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
        (:func:`jaxmpc.blocks.default_candidates`), ``"paper"`` (:func:`paper_candidates`, the
        shape of the paper's lists), or one list of ``[bh, bw]`` for every layer (sizes larger
        than a layer's map are dropped for it).
      infer_baselines: ``run_demo`` also runs secure inference on the baseline specs (by
        default only the all-ReLU model and the knapsack specs).
      infer_batch_size: images per secure-inference call.
      profile_shuffle: profile on a random subset of the training split (drawn with ``seed``, as
        the paper's fixed shuffle) instead of its first ``profile_samples`` images (use it for
        class-sorted folders such as ImageNet's).
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

    def __post_init__(self):
        from jaxmpc import train

        for name in (self.train_config, self.finetune_config):
            if name not in train.CONFIGS:
                raise PipelineError(f"unknown training preset {name!r}; expected one of {sorted(train.CONFIGS)}")
        if not self.budgets:
            raise PipelineError("budgets must not be empty")
        for b in self.budgets:
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not np.isfinite(b) or b <= 0:
                raise PipelineError(f"a budget must be a positive ratio (< 1) or DReLU count, got {b!r}")
        for name in ("profile_samples", "infer_images", "infer_batch_size"):
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
        from jaxmpc.config import ProtocolConfig

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
    if isinstance(c, str):
        if c not in ("default", "paper"):
            raise PipelineError(f"candidates must be 'default', 'paper' or a list of [bh, bw], got {c!r}")
        return
    try:
        arr = np.asarray(c)
        ok = arr.ndim == 2 and arr.shape[1] == 2 and len(arr) > 0 and np.issubdtype(arr.dtype, np.integer)
    except (TypeError, ValueError):
        ok = False
    if not ok or (arr < 0).any():
        raise PipelineError(f"candidates must be 'default', 'paper' or a list of [bh, bw] pairs, got {c!r}")


def paper_candidates(height: int, width: int) -> np.ndarray:
    """Candidate patch sizes shaped like the paper's lists (``paper_reference.md`` §3.3).

    ``(1, 1)`` first; then ``bh x bw`` rectangles with sides from {1..6, 8, 10, 12, 16} (area at
    most 256) or, for maps whose size is a multiple of 7 but not a power of two, from
    {1..7, 10, 12, 14} (area at most 196), with aspect ratio at most 4 (8 for strips one or two
    pixels thin); then the squares ``d, d/2, d/4, ...`` larger than those sides, up to the whole
    map (``d = min(H, W)``); then identity ``(0, 1)`` and zero ``(1, 0)``. Maps of at most 8
    pixels use the sides that divide ``d`` (and 3 from 6 up). This reproduces the paper's list
    sizes approximately (e.g. 9 sizes for 4x4, 95 for 32x32, against the reference's 9 and 80);
    the reference's hand-written lists themselves are not copied.

    Returns:
      int32 array ``[n, 2]``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"map size must be positive, got {height}x{width}")
    d = min(height, width)
    if d == 1:
        return np.array([[1, 1], [0, 1], [1, 0]], np.int32)
    if d <= 8:
        sides = sorted({v for v in range(1, d + 1) if d % v == 0} | ({3} if d >= 6 else set()))
        area, aspect, thin_aspect = d * d, (2 if d <= 4 else 8), (2 if d <= 4 else 8)
    elif d % 7 == 0 and d & (d - 1):
        sides, area, aspect, thin_aspect = [1, 2, 3, 4, 5, 6, 7, 10, 12, 14], 196, 4, 8
    else:
        sides, area, aspect, thin_aspect = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16], 256, 4, 8
    sides = [v for v in sides if v <= d]
    out = [(1, 1)]
    for a in sides:
        for b in sides:
            lo, hi = min(a, b), max(a, b)
            if (a, b) != (1, 1) and a * b <= area and (hi <= aspect * lo or (lo <= 2 and hi <= thin_aspect * lo)):
                out.append((a, b))
    big, q = [], d
    while q > max(sides):
        big.append(q)
        q //= 2
    out += [(q, q) for q in sorted(big)]
    out += [(0, 1), (1, 0)]
    return np.asarray(out, np.int32)


def _candidates_for(cfg: "PipelineConfig", model, input_shape) -> dict | None:
    """``{layer: [n, 2]}`` for :func:`jaxmpc.distortion.profile_distortion` (``None``: its defaults)."""
    from jaxmpc import nn as jnn

    if isinstance(cfg.candidates, str) and cfg.candidates == "default":
        return None
    out = {}
    for name, (h, w, _) in jnn.relu_layers(model, tuple(input_shape)):
        if isinstance(cfg.candidates, str):
            out[name] = paper_candidates(h, w)
        else:
            arr = np.asarray(cfg.candidates, np.int32)
            keep = [s for s in arr if (s[0] == 0 or s[1] == 0) or (s[0] <= h and s[1] <= w)]
            if not any(tuple(s) == (1, 1) for s in keep):
                keep.insert(0, np.array([1, 1], np.int32))
            out[name] = np.asarray(keep, np.int32)
    return out


def budget_tag(budget) -> str:
    if budget < 1:
        return f"{budget * 100:g}pct"
    return f"{int(budget)}drelus"


def write_json(path, obj) -> None:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path, what: str):
    if not os.path.exists(path):
        raise PipelineError(f"missing {what}: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise PipelineError(f"malformed {what} {path}: {e}") from e


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

    def infer(self, tag):
        return self.path("infer", tag)

    def config(self) -> PipelineConfig:
        return PipelineConfig.from_json(read_json(self.path("pipeline.json"), "pipeline config"))

    def save_config(self, cfg: PipelineConfig) -> None:
        p = self.path("pipeline.json")
        if os.path.exists(p):
            old = PipelineConfig.from_json(read_json(p, "pipeline config")).to_json()  # fills new fields' defaults
            norm = json.loads(json.dumps(cfg.to_json(), default=_json_default))
            if json.loads(json.dumps(old, default=_json_default)) != norm:
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
    """Plans a block spec at ``budget`` with ``method`` in {knapsack, uniform, random}."""
    from jaxmpc import blocks, distortion, knapsack
    from jaxmpc import nn as jnn

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
    drelus = int(budget * total) if budget < 1 else int(budget)
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
    jnn.save_spec(spec_path, spec, method=method, budget=float(budget), drelus=used, all_relu=total)
    summary = {"tag": tag, "method": method, "budget": float(budget), "budget_drelus": drelus, "drelus": used,
               "all_relu_drelus": total, "ratio": used / total, "total_distortion": dist}
    write_json(summary_path, summary)
    return summary


def uniform_spec(layers, budget: int) -> dict:
    """The same patch size for every channel (the paper's simple baseline): the ``bh x bw``
    (clipped to each map) whose total DReLU count is the largest that fits the budget, the most
    square one among equals."""
    from jaxmpc import blocks

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


def finetune_step(wd: Workdir, cfg: PipelineConfig, tag: str, *, progress: bool = True, dataset=None) -> dict:
    """Finetunes the trained model with the Block ReLUs of ``plans/<tag>.json``."""
    from jaxmpc import nn as jnn
    from jaxmpc import train

    ds = _dataset(cfg, dataset)
    base, _ = _load(wd.train, "trained model (train/)")
    spec_file = wd.plan(tag)
    if not os.path.exists(spec_file):
        raise PipelineError(f"missing block spec {spec_file} (run `jaxmpc plan` first)")
    model = _model(cfg, ds)
    spec = jnn.load_spec(spec_file, model=model, variables=base)
    spec = getattr(spec, "layers", spec)
    before = train.evaluate(model, jnn.apply_spec(base, spec), ds.test, ds.info,
                            batch_size=_train_cfg(cfg, finetune=True).eval_batch_size)
    res = train.finetune(_train_cfg(cfg, finetune=True, progress=progress), base, spec, wd.finetune(tag),
                         dataset=ds, distill=cfg.distill)
    out = {"tag": tag, "test": res.final.get("test", {}), "before_finetune": before}
    write_json(os.path.join(wd.finetune(tag), "result.json"), out)
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


def report_step(wd: Workdir, *, plots: bool = True) -> dict:
    """Collects every step's results into ``report/summary.{json,md}`` and plots."""
    cfg = wd.config()
    summary: dict[str, Any] = {"config": cfg.to_json(), "rows": []}
    train_res = read_json(wd.path("train", "result.json"), "training result (run `jaxmpc train`)")
    seg = "miou" in train_res["test"]
    summary["metric"] = "miou" if seg else "accuracy"
    base_acc = train_res["test"].get(summary["metric"])
    all_relu = _maybe(wd.path("infer", "all_relu", "result.json"))
    summary["all_relu"] = {"plaintext_accuracy": base_acc, "secure": all_relu}
    for budget in cfg.budgets:
        for method in (["knapsack", "uniform", "random"] if cfg.baselines else ["knapsack"]):
            tag = f"{method}_{budget_tag(budget)}"
            plan = _maybe(wd.path("plans", f"{tag}.summary.json"))
            ft = _maybe(os.path.join(wd.finetune(tag), "result.json"))
            inf = _maybe(os.path.join(wd.infer(tag), "result.json"))
            if plan is None:
                continue
            summary["rows"].append({"tag": tag, "method": method, "budget": budget, "plan": plan,
                                    "finetune": ft, "infer": inf})
    write_json(wd.path("report", "summary.json"), summary)
    text = summary_table(summary)
    with open(wd.path("report", "summary.md"), "w") as f:
        f.write(text + "\n")
    if plots:
        _plots(wd, summary)
    return summary


def _maybe(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _fmt_acc(v):
    return "-" if v is None else f"{100 * v:.2f}"


def summary_table(summary: dict) -> str:
    """The demo's one table: accuracies (segmentation: mIoU), DReLUs, bytes and rounds per image, time."""
    metric = summary.get("metric", "accuracy")
    sec_key = "secure_miou" if metric == "miou" else "secure_accuracy"
    name = "mIoU" if metric == "miou" else "acc"
    hdr = (f"| model | DReLUs/image | plaintext {name} % | before finetune % | secure {name} % | secure = plaintext | "
           "MB/image (online) | rounds | s/image |")
    lines = [hdr, "|" + "---|" * 9]
    ar = summary["all_relu"]
    sec = ar.get("secure")
    if sec:
        pi = sec["per_image"]
        lines.append(f"| all-ReLU | {pi['drelus']:,} | {_fmt_acc(ar['plaintext_accuracy'])} | - | "
                     f"{_fmt_acc(sec.get(sec_key))} | {sec['same_predictions']}/{sec['images']} | "
                     f"{pi['bytes'] / 1e6:.2f} ({pi['online_bytes'] / 1e6:.2f}) | {pi['rounds']} | "
                     f"{sec['seconds_per_image']:.3f} |")
    else:
        lines.append(f"| all-ReLU | - | {_fmt_acc(ar['plaintext_accuracy'])} | - | - | - | - | - | - |")
    for row in summary["rows"]:
        ft, inf, plan = row["finetune"] or {}, row["infer"], row["plan"]
        acc = ft.get("test", {}).get(metric)
        before = (ft.get("before_finetune") or {}).get(metric)
        if inf:
            pi = inf["per_image"]
            cells = (f"{_fmt_acc(inf.get(sec_key))} | {inf['same_predictions']}/{inf['images']} | "
                     f"{pi['bytes'] / 1e6:.2f} ({pi['online_bytes'] / 1e6:.2f}) | {pi['rounds']} | "
                     f"{inf['seconds_per_image']:.3f}")
        else:
            cells = "- | - | - | - | -"
        lines.append(f"| {row['method']} @ {row['budget']:g} ({100 * plan['ratio']:.1f}%) | {plan['drelus']:,} | "
                     f"{_fmt_acc(acc)} | {_fmt_acc(before)} | {cells} |")
    return "\n".join(lines)


def _plots(wd: Workdir, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if r["finetune"]]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, marker in (("knapsack", "o"), ("uniform", "s"), ("random", "^")):
            pts = sorted((r["plan"]["ratio"] * 100, 100 * r["finetune"]["test"][summary.get("metric", "accuracy")])
                         for r in rows if r["method"] == method)
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=method)
        base = summary["all_relu"]["plaintext_accuracy"]
        if base is not None:
            ax.axhline(100 * base, color="k", ls="--", lw=1, label="all-ReLU")
        ax.set_xlabel("DReLU budget (% of all-ReLU)")
        ax.set_ylabel(f"test {'mIoU' if summary.get('metric') == 'miou' else 'accuracy'} after finetuning (%)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(wd.path("report", "accuracy_vs_budget.png"), dpi=120)
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
        fig.savefig(wd.path("report", "communication.png"), dpi=120)
        plt.close(fig)


# ---------------------------------------------------------------------------------------------
# everything


def run_demo(workdir: str, cfg: PipelineConfig | None = None, *, progress: bool = True, log=print,
             dataset=None) -> dict:
    """train -> profile -> plan -> finetune -> secure inference -> report, on ``cfg`` (resumable).

    A baseline that cannot be planned at a budget (the uniform baseline needs at least one DReLU
    per channel) is skipped with a note. ``dataset`` replaces the preset's dataset (see the
    module docstring).
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
    log(f"[4/6] finetune {len(tags)} specs")
    for tag in tags:
        if not os.path.exists(os.path.join(wd.finetune(tag), "result.json")):
            finetune_step(wd, cfg, tag, progress=progress, dataset=dataset)
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
