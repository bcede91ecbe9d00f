"""The ``profile`` step: the distortion table of every candidate patch size (paper §3.1)."""

from __future__ import annotations

import os

import numpy as np

from jaxmpc.pipeline._config import PipelineConfig, candidates_for
from jaxmpc.pipeline._workdir import Workdir, dataset_of, load_run, model_of


def profile_step(wd: Workdir, cfg: PipelineConfig, *, progress: bool = True, dataset=None):
    """Measures the distortion table on ``profile_samples`` training images (resumable)."""
    from jaxmpc import distortion

    out = wd.path("profile", "distortion.npz")
    if os.path.exists(out):
        return distortion.DistortionTable.load(out)
    ds = dataset_of(cfg, dataset)
    variables, _ = load_run(wd.train, "trained model (train/)")
    model = model_of(cfg, ds)
    n = min(cfg.profile_samples, len(ds.train))
    idx = np.arange(n)
    if cfg.profile_shuffle:
        idx = np.sort(np.random.default_rng(cfg.seed).choice(len(ds.train), n, replace=False))
    images = ds.train.get(idx)["image"]
    table = distortion.profile_distortion(model, variables, images, out_dir=wd.path("profile", "run"),
                                          candidates=candidates_for(cfg, model, ds.info.input_shape),
                                          progress=progress)
    table.save(out)
    try:
        distortion.plot_distortion(table, wd.path("profile", "distortion.png"))
    except Exception as e:  # noqa: BLE001 - a plot must never lose the table
        print(f"note: distortion plot failed: {e}")
    return table
