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
difference between the knapsack spec and each baseline at the same budget
(:func:`jaxmpc.train.wilson_interval`, :func:`~jaxmpc.train.paired_difference`), and a line,
computed from those intervals, saying at which budgets the knapsack beats both baselines at equal
budget beyond them (or that it does not).

A plan tag is ``<method>_<budget>`` (``knapsack_10pct``, ``uniform_10pct``, ``random_10pct``, or
``..._<N>drelus``). Every step is idempotent: rerunning it resumes (training and profiling
continue from their last checkpoint) or reuses finished results. All JSON files are written
atomically.

Every step also takes ``dataset=``: a :class:`jaxmpc.data.Dataset` to use instead of loading
the training preset's dataset (e.g. a few synthetic images for a smoke test). Classification and
segmentation datasets are both supported; for segmentation, ``infer`` reports the mIoU and the
per-pixel agreement of the secure predictions (logits resized bilinearly to the label map, as in
training).

Modules (private; everything public is re-exported here):

==================  ===========================================================================
``_config``         :class:`PipelineConfig`, :class:`PipelineError`, budgets (:func:`check_budget`,
                    :func:`parse_budget`, :func:`budget_drelus`, :func:`budget_tag`)
``_workdir``        :class:`Workdir`, :func:`read_json` / :func:`write_json`, what steps load
``_train``          ``train``
``_profile``        ``profile``
``_plan``           ``plan`` (the baselines themselves are in :mod:`jaxmpc.knapsack`)
``_finetune``       ``finetune`` and :func:`test_correct_step`
``_infer``          ``infer``
``_report``         ``report``; ``_table`` (:func:`summary_table`) and ``_plot`` (its plots)
``_demo``           :func:`run_demo`
==================  ===========================================================================
"""

from jaxmpc.pipeline._config import BUDGET_UNITS as BUDGET_UNITS
from jaxmpc.pipeline._config import PipelineConfig as PipelineConfig
from jaxmpc.pipeline._config import PipelineError as PipelineError
from jaxmpc.pipeline._config import budget_drelus as budget_drelus
from jaxmpc.pipeline._config import budget_tag as budget_tag
from jaxmpc.pipeline._config import check_budget as check_budget
from jaxmpc.pipeline._config import parse_budget as parse_budget
from jaxmpc.pipeline._demo import run_demo as run_demo
from jaxmpc.pipeline._finetune import finetune_step as finetune_step
from jaxmpc.pipeline._finetune import test_correct_step as test_correct_step
from jaxmpc.pipeline._infer import infer_step as infer_step
from jaxmpc.pipeline._plan import plan_step as plan_step
from jaxmpc.pipeline._plan import uniform_spec as uniform_spec
from jaxmpc.pipeline._profile import profile_step as profile_step
from jaxmpc.pipeline._report import report_step as report_step
from jaxmpc.pipeline._table import summary_table as summary_table
from jaxmpc.pipeline._train import train_step as train_step
from jaxmpc.pipeline._workdir import Workdir as Workdir
from jaxmpc.pipeline._workdir import read_json as read_json
from jaxmpc.pipeline._workdir import write_json as write_json

__all__ = ["BUDGET_UNITS", "PipelineConfig", "PipelineError", "Workdir", "budget_drelus", "budget_tag", "check_budget",
           "finetune_step", "infer_step", "parse_budget", "plan_step", "profile_step", "read_json", "report_step",
           "run_demo", "summary_table", "test_correct_step", "train_step", "uniform_spec", "write_json"]
