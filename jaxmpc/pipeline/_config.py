"""The pipeline's configuration (``pipeline.json``) and its budgets."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

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
        :func:`check_budget` (a float above 1, a bool, NaN or infinity is refused). The
        default: 6% (the paper's budget), 10% and 14%; on the digits model both baselines fill
        the last two (the uniform patch size reaches 9.7% and 13.9%, at 6% only 5.2%).
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
    budgets: tuple = (0.06, 0.1, 0.14)
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


def candidates_for(cfg: "PipelineConfig", model, input_shape) -> dict | None:
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
