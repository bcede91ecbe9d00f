"""Training, Block-ReLU finetuning, distillation, evaluation, checkpoints and weight import.

The pieces follow the Flax examples (``train.py`` with pure ``train_step``/``eval_step``, a
config, a ``TrainState``):

* :class:`TrainConfig`, :func:`get_config` -- hyperparameters and named presets (digits,
  Fashion-MNIST, and the paper's finetuning schedules).
* :func:`train_and_evaluate` -- the loop: optax SGD/AdamW with cosine/step/poly schedules,
  augmentation in the jitted step, BatchNorm statistics, tqdm progress, orbax checkpoints that
  resume to the same result.
* :func:`finetune` -- finetune trained variables with the Block ReLUs of a spec (Gorski &
  Avidan, arXiv 2304.10442, §4.4), optionally distilling from the all-ReLU model
  (CE + ``T^2`` KL, ``T = 4``).
* :func:`evaluate`, :func:`accuracy`, :func:`confusion_matrix`, :func:`mean_iou` -- metrics.
* :func:`wilson_interval`, :func:`paired_difference`, :func:`seed_spread`, :func:`z_value` --
  the uncertainty of a measured accuracy: its interval over the test images, the difference of
  two models on the same images, the spread over training seeds.
* :func:`import_torch_state_dict`, :func:`export_torch_state_dict` -- torchvision-layout
  weights for the ResNets and MobileNetV2.

Example::

  >>> from jaxmpc import train
  >>> result = train.train_and_evaluate(train.get_config("digits", progress=False))  # doctest: +SKIP
  >>> result.final["test"]["accuracy"]                                              # doctest: +SKIP
"""

from jaxmpc.train._checkpoint import Checkpointer as Checkpointer
from jaxmpc.train._checkpoint import load_variables as load_variables
from jaxmpc.train._config import CONFIGS as CONFIGS
from jaxmpc.train._config import TrainConfig as TrainConfig
from jaxmpc.train._config import get_config as get_config
from jaxmpc.train._convert import MMCLS_PREFIXES as MMCLS_PREFIXES
from jaxmpc.train._convert import WeightImportError as WeightImportError
from jaxmpc.train._convert import export_torch_state_dict as export_torch_state_dict
from jaxmpc.train._convert import import_torch_state_dict as import_torch_state_dict
from jaxmpc.train._convert import load_torch_state_dict as load_torch_state_dict
from jaxmpc.train._convert import torch_key_map as torch_key_map
from jaxmpc.train._loop import StepCallback as StepCallback
from jaxmpc.train._loop import TrainResult as TrainResult
from jaxmpc.train._loop import build_model as build_model
from jaxmpc.train._loop import evaluate as evaluate
from jaxmpc.train._loop import finetune as finetune
from jaxmpc.train._loop import train_and_evaluate as train_and_evaluate
from jaxmpc.train._metrics import accuracy as accuracy
from jaxmpc.train._metrics import confusion_matrix as confusion_matrix
from jaxmpc.train._metrics import mean_iou as mean_iou
from jaxmpc.train._metrics import pixel_accuracy as pixel_accuracy
from jaxmpc.train._stats import paired_difference as paired_difference
from jaxmpc.train._stats import seed_spread as seed_spread
from jaxmpc.train._stats import wilson_interval as wilson_interval
from jaxmpc.train._stats import z_value as z_value
from jaxmpc.train._steps import LossConfig as LossConfig
from jaxmpc.train._steps import Optimizer as Optimizer
from jaxmpc.train._steps import Schedule as Schedule
from jaxmpc.train._steps import TrainState as TrainState
from jaxmpc.train._steps import augment as augment
from jaxmpc.train._steps import create_train_state as create_train_state
from jaxmpc.train._steps import cross_entropy as cross_entropy
from jaxmpc.train._steps import distillation_loss as distillation_loss
from jaxmpc.train._steps import eval_step as eval_step
from jaxmpc.train._steps import init_variables as init_variables
from jaxmpc.train._steps import jit_eval_step as jit_eval_step
from jaxmpc.train._steps import jit_train_step as jit_train_step
from jaxmpc.train._steps import make_optimizer as make_optimizer
from jaxmpc.train._steps import make_schedule as make_schedule
from jaxmpc.train._steps import train_step as train_step

__all__ = [
    "CONFIGS",
    "MMCLS_PREFIXES",
    "Checkpointer",
    "LossConfig",
    "Optimizer",
    "Schedule",
    "StepCallback",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "WeightImportError",
    "accuracy",
    "augment",
    "build_model",
    "confusion_matrix",
    "create_train_state",
    "cross_entropy",
    "distillation_loss",
    "eval_step",
    "evaluate",
    "export_torch_state_dict",
    "finetune",
    "get_config",
    "import_torch_state_dict",
    "init_variables",
    "jit_eval_step",
    "jit_train_step",
    "load_torch_state_dict",
    "load_variables",
    "make_optimizer",
    "make_schedule",
    "mean_iou",
    "paired_difference",
    "pixel_accuracy",
    "seed_spread",
    "torch_key_map",
    "train_and_evaluate",
    "train_step",
    "wilson_interval",
    "z_value",
]
