"""``run_demo``: every step in order on one work folder (``jaxmpc demo``)."""

from __future__ import annotations

import os
import time

from jaxmpc.pipeline._config import PipelineConfig, PipelineError
from jaxmpc.pipeline._finetune import finetune_step, test_correct_step
from jaxmpc.pipeline._infer import infer_step
from jaxmpc.pipeline._plan import plan_step
from jaxmpc.pipeline._profile import profile_step
from jaxmpc.pipeline._report import report_step
from jaxmpc.pipeline._table import summary_table
from jaxmpc.pipeline._train import train_step
from jaxmpc.pipeline._workdir import Workdir, dataset_of, read_optional


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
        dataset = dataset_of(cfg)  # load once for all steps
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
        done = read_optional(os.path.join(wd.finetune(tag), "test_correct.json"))
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
