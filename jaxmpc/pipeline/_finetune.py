"""The ``finetune`` step (paper §4.4) and the per-image test predictions of the finetuned models."""

from __future__ import annotations

import os

import numpy as np

from jaxmpc.pipeline._config import PipelineConfig, PipelineError
from jaxmpc.pipeline._workdir import Workdir, dataset_of, load_run, model_of, read_optional, train_config, write_json


def finetune_step(wd: Workdir, cfg: PipelineConfig, tag: str, *, progress: bool = True, dataset=None,
                  seed: int = 0) -> dict:
    """Finetunes the trained model with the Block ReLUs of ``plans/<tag>.json``.

    ``seed`` > 0 repeats the finetuning with the preset's training seed plus ``seed`` (data order
    and augmentation) into ``finetune_seeds/<tag>/seed<seed>/`` (:meth:`Workdir.finetune_seed`).
    """
    from jaxmpc import nn as jnn
    from jaxmpc import train

    ds = dataset_of(cfg, dataset)
    base, _ = load_run(wd.train, "trained model (train/)")
    spec_file = wd.plan(tag)
    if not os.path.exists(spec_file):
        raise PipelineError(f"missing block spec {spec_file} (run `jaxmpc plan` first)")
    model = model_of(cfg, ds)
    spec = jnn.load_spec(spec_file, model=model, variables=base, input_shape=ds.info.input_shape)
    spec = getattr(spec, "layers", spec)
    before = train.evaluate(model, jnn.apply_spec(base, spec), ds.test, ds.info,
                            batch_size=train_config(cfg, finetune=True).eval_batch_size)
    tc = train_config(cfg, finetune=True, progress=progress)
    if seed:
        tc = tc.replace(seed=tc.seed + seed)
    folder = wd.finetune_seed(tag, seed)
    res = train.finetune(tc, base, spec, folder, dataset=ds, distill=cfg.distill)
    out = {"tag": tag, "seed": tc.seed, "test": res.final.get("test", {}), "before_finetune": before}
    write_json(os.path.join(folder, "result.json"), out)
    return out



def test_correct_step(wd: Workdir, cfg: PipelineConfig, tag: str | None, *, dataset=None) -> dict | None:
    """Per-image correctness of a finetuned spec (every finetuning seed) or, for ``tag=None``, of
    the trained all-ReLU model, on the whole test split; written to
    ``finetune/<tag>/test_correct.json`` (``train/test_correct.json``) for the report's paired
    comparisons. Classification only (returns ``None`` for segmentation)."""
    import jax

    from jaxmpc import train

    ds = dataset_of(cfg, dataset)
    if ds.info.task != "classification":
        return None
    folders = [wd.train] if tag is None else [wd.finetune(tag)]
    if tag is not None:
        k = 1
        while os.path.exists(os.path.join(wd.finetune_seed(tag, k), "result.json")):
            folders.append(wd.finetune_seed(tag, k))
            k += 1
    model = model_of(cfg, ds)
    apply = jax.jit(lambda v, a: model.apply(v, a))
    bs = train_config(cfg, finetune=True).eval_batch_size
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
        res = read_optional(os.path.join(folder, "result.json")) or {}
        seeds.append(res.get("seed"))
    out = {"tag": tag or "all_relu", "n": n, "seeds": seeds, "accuracy": [float(np.mean(c)) for c in correct],
           "correct": correct}
    write_json(os.path.join(folders[0], "test_correct.json"), out)
    return out
