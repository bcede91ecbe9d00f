"""The ``train`` step: the all-ReLU model (from scratch, or from imported weights)."""

from __future__ import annotations

import os

import numpy as np

from jaxmpc.pipeline._config import PipelineConfig, PipelineError
from jaxmpc.pipeline._workdir import Workdir, dataset_of, load_run, model_of, train_config, write_json


def _initial_variables(cfg: PipelineConfig, model, ds) -> dict:
    """The variables named by ``cfg.init_weights`` (a jaxmpc run folder or a torch-layout file)."""
    from jaxmpc import train

    path = os.path.expanduser(cfg.init_weights)
    if os.path.isdir(path):
        variables, _ = load_run(path, f"init_weights run folder {path}")
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
        raise PipelineError(f"init_weights {path} do not fit {train_config(cfg).model}: {e}") from e


def train_step(wd: Workdir, cfg: PipelineConfig, *, progress: bool = True, dataset=None) -> dict:
    """Trains the all-ReLU model (resumes from ``train/``). Returns its test metrics.

    With ``cfg.init_weights`` the schedule starts from those weights (e.g. the paper's AvgPool
    finetune of a published checkpoint), or, with ``cfg.pretrain=False``, the weights are saved
    as the trained model unchanged.
    """
    from jaxmpc import train

    ds = dataset_of(cfg, dataset)
    model = model_of(cfg, ds)
    tc = train_config(cfg, progress=progress)
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
