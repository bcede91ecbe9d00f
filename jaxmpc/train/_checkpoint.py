"""Checkpoints of training runs: orbax, atomic, resumable, with the config beside them.

Layout of a work folder::

    workdir/
      config.json            the TrainConfig (written atomically, checked when a run resumes)
      spec.json              the Block-ReLU spec trained with, if any (jaxmpc spec format)
      history.json           per-epoch metrics so far (written atomically)
      checkpoints/<step>/    orbax checkpoints: "state" (arrays) and "meta" (JSON)

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed while saving leaves the previous checkpoint intact (the partial folder is removed on the
next start). Saving is synchronous, so a checkpoint is complete when ``save`` returns.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["Checkpointer", "load_variables"]

CHECKPOINT_DIR = "checkpoints"


def _ocp():
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:  # pragma: no cover - orbax is a dependency
        raise ImportError("checkpointing needs orbax-checkpoint: pip install orbax-checkpoint") from e
    return ocp


class Checkpointer:
    """Saves and restores ``(state pytree, JSON meta)`` pairs by step under ``workdir/checkpoints``.

    Args:
      workdir: the run's folder (created if needed).
      keep: number of most recent checkpoints kept.
    """

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 2):
        ocp = _ocp()
        self.directory = os.path.abspath(os.path.join(os.fspath(workdir), CHECKPOINT_DIR))
        os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or ``None``."""
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        """Writes a checkpoint (blocking); replaces an existing one at the same step."""
        ocp = _ocp()
        if step in self._mgr.all_steps():
            self._mgr.delete(step)
        self._mgr.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))),
            force=True,
        )
        self._mgr.wait_until_finished()

    def restore(self, step: int, target: Any | None) -> tuple[Any, dict[str, Any]]:
        """Reads checkpoint ``step``.

        Args:
          step: the step.
          target: a pytree with the structure, shapes and dtypes to restore into (arrays or
            ``jax.ShapeDtypeStruct``); ``None`` restores the saved structure as numpy arrays.

        Returns:
          ``(state, meta)``.
        """
        ocp = _ocp()
        if target is None:
            state_args = ocp.args.StandardRestore()
        else:
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
            state_args = ocp.args.StandardRestore(abstract)
        out = self._mgr.restore(step, args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])

    def close(self) -> None:
        self._mgr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_variables(workdir: str | os.PathLike, *, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model variables of a run's checkpoint, for evaluation or the next pipeline step.

    Args:
      workdir: the run's folder.
      step: which checkpoint (default: the latest).

    Returns:
      ``(variables, meta)``: ``{"params", "batch_stats", "block_sizes"}`` as numpy arrays (pass
      them to ``model.apply``), and the checkpoint's metadata (``config``, ``history``, ...).

    Raises:
      FileNotFoundError: if the folder has no checkpoint.
    """
    ckpt_dir = os.path.join(os.fspath(workdir), CHECKPOINT_DIR)
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{workdir}: no checkpoints (expected {ckpt_dir})")
    with Checkpointer(workdir) as ckpt:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{workdir}: no complete checkpoint in {ckpt_dir}")
        state, meta = ckpt.restore(step, None)
    variables = {k: state[k] for k in ("params", "batch_stats", "block_sizes") if state.get(k) is not None}
    variables = jax.tree.map(np.asarray, variables)
    return variables, meta
