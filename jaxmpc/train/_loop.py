"""The training loop: train, finetune with a Block-ReLU spec, distil, evaluate, checkpoint, resume.

:func:`train_and_evaluate` follows the Flax examples: it builds the model, the data, the
optimiser and the train state from a :class:`~jaxmpc.train.TrainConfig`, jits the pure
:func:`~jaxmpc.train.train_step` once, and loops over epochs. Everything random is a function of
``config.seed`` and the step (initialisation, the order of each epoch, the augmentation of each
step), and checkpoints hold the full state plus the metric accumulators, so a run that is
interrupted and restarted in the same ``workdir`` ends with the same parameters and history as
an uninterrupted run.

Finetuning (Gorski & Avidan, arXiv 2304.10442, §4.4) is the same loop started from trained
variables with a spec applied (``variables=..., spec=...``); distillation adds a teacher.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc import nn as jnn
from jaxmpc._io import read_json, write_json
from jaxmpc.data import Dataset, DatasetInfo, Source, batches, load_dataset, num_batches
from jaxmpc.nn import BLOCK_SIZES_COLLECTION, apply_spec, load_spec, save_spec, spec_from_variables
from jaxmpc.train._checkpoint import Checkpointer
from jaxmpc.train._config import TrainConfig
from jaxmpc.train._metrics import mean_iou, pixel_accuracy
from jaxmpc.train._steps import (
    LossConfig,
    ModelApply,
    TrainState,
    create_train_state,
    init_variables,
    jit_eval_step,
    jit_train_step,
    jit_train_step_donated,
    make_optimizer,
    make_schedule,
)

__all__ = [
    "StepCallback",
    "TrainResult",
    "build_model",
    "evaluate",
    "finetune",
    "train_and_evaluate",
]

#: ``callback(step, state, metrics)`` after each optimiser step (and after any checkpoint of that
#: step). ``metrics`` are the step's device values. Raising stops the run (the last checkpoint stays).
StepCallback = Callable[[int, TrainState, Mapping[str, jax.Array]], None]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train_and_evaluate` returns.

    Attributes:
      state: the final train state.
      variables: the final model variables (``state.variables``).
      model: the model that was trained.
      history: one dict per epoch (``epoch``, ``step``, ``lr``, ``train_loss``, ``train_accuracy``,
        and ``eval_*`` when evaluated; ``time_s`` is the epoch's wall time).
      final: final evaluation, ``{split name: metrics}`` (the eval split and the test split).
      workdir: the run's folder, or ``None``.
    """

    state: TrainState
    variables: dict[str, Any]
    model: nn.Module
    history: list[dict[str, Any]]
    final: dict[str, dict[str, float]]
    workdir: str | None


def build_model(config: TrainConfig, info: DatasetInfo) -> nn.Module:
    """The :mod:`jaxmpc.nn` model named by ``config.model``, with the dataset's class count.

    Raises:
      ValueError: for an unknown name or a class count that contradicts the dataset.
    """
    ctor = getattr(jnn, config.model, None) or getattr(jnn.models, config.model, None)
    if ctor is None or not callable(ctor):
        raise ValueError(f"unknown model {config.model!r}; use a preset of jaxmpc.nn such as 'ResNetSmall'")
    kwargs = {"num_classes": info.num_classes, **config.model_kwargs}
    if kwargs["num_classes"] != info.num_classes:
        raise ValueError(
            f"model_kwargs num_classes={kwargs['num_classes']} but dataset {info.name!r} has {info.num_classes}"
        )
    # JSON configs give lists (``stage_sizes=[1, 1, 1, 1]``); modules must be hashable (jit statics)
    kwargs = {k: _as_tuple(v) for k, v in kwargs.items()}
    return ctor(**kwargs)


def _as_tuple(v):
    return tuple(_as_tuple(a) for a in v) if isinstance(v, list) else v


def _check_variables(model: nn.Module, variables: Mapping[str, Any], input_shape: Sequence[int]) -> None:
    """Raises ValueError if ``variables`` do not have the model's structure and shapes."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    expected = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    for coll in ("params", "batch_stats", BLOCK_SIZES_COLLECTION):
        if coll not in expected:
            continue
        if coll not in variables:
            raise ValueError(f"variables lack the {coll!r} collection of the model")
        exp = dict(jax.tree_util.tree_flatten_with_path(expected[coll])[0])
        got = dict(jax.tree_util.tree_flatten_with_path(dict(variables[coll]))[0])

        def name(path):
            return "/".join(str(getattr(k, "key", k)) for k in path)

        exp_n = {name(p): v.shape for p, v in exp.items()}
        got_n = {name(p): np.shape(v) for p, v in got.items()}
        missing = sorted(set(exp_n) - set(got_n))
        extra = sorted(set(got_n) - set(exp_n))
        wrong = [f"{k}: {got_n[k]} != {exp_n[k]}" for k in exp_n if k in got_n and tuple(got_n[k]) != exp_n[k]]
        if missing or extra or wrong:
            raise ValueError(
                f"variables do not fit the model in {coll!r}: missing {missing[:5]}, unexpected {extra[:5]}, "
                f"wrong shapes {wrong[:5]} (totals: {len(missing)}/{len(extra)}/{len(wrong)})"
            )


def evaluate(
    model: nn.Module,
    variables: Mapping[str, Any],
    source: Source,
    info: DatasetInfo,
    *,
    batch_size: int = 256,
    num_threads: int = 0,
    prefetch: int = 0,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Evaluates a model on a split: accuracy (classification) or mIoU (segmentation).

    The last batch is padded to ``batch_size`` (and masked), so the jitted step compiles once.

    Args:
      model: the model.
      variables: its full variables (including ``"block_sizes"``, i.e. the spec).
      source: the split.
      info: the dataset descriptor (task, classes, ignore index).
      batch_size: evaluation batch size.
      num_threads: decoding threads for lazy sources.
      prefetch: batches prepared ahead.
      progress: show a tqdm bar.
      desc: the bar's label.

    Returns:
      ``{"loss", "accuracy", "count"}``, plus ``"miou"`` and ``"pixel_accuracy"`` for
      segmentation (``accuracy`` is then the pixel accuracy).

    Example::

      >>> ds = jaxmpc.data.load_dataset("digits")                      # doctest: +SKIP
      >>> evaluate(model, variables, ds.test, ds.info)["accuracy"]      # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    if len(source) == 0:
        raise ValueError("evaluate: empty split")
    cfg = LossConfig(task=info.task, num_classes=info.num_classes, ignore_index=info.ignore_index)
    ignore = info.ignore_index if info.ignore_index is not None else 0
    loss = correct = count = 0.0
    confusion = np.zeros((info.num_classes, info.num_classes), np.int64)
    n_batches = num_batches(len(source), batch_size, drop_remainder=False)
    it = batches(source, batch_size, pad=True, ignore_label=ignore, num_threads=num_threads, prefetch=prefetch)
    for batch in tqdm(it, total=n_batches, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        out = jax.device_get(jit_eval_step(model, cfg, variables, batch))
        loss += float(out["loss"])
        correct += float(out["correct"])
        count += float(out["count"])
        if "confusion" in out:
            confusion += np.asarray(out["confusion"], np.int64)
    result = {"loss": loss / max(count, 1.0), "accuracy": correct / max(count, 1.0), "count": count}
    if info.task == "segmentation":
        result["miou"], _ = mean_iou(confusion)
        result["pixel_accuracy"] = pixel_accuracy(confusion)
    return result


class _Sums:
    """Running sums of per-step train metrics, added in step order (so they are reproducible)."""

    KEYS = ("loss", "ce", "kd", "correct", "count")

    def __init__(self, values: Mapping[str, float] | None = None):
        self.values = {k: float((values or {}).get(k, 0.0)) for k in self.KEYS}
        self.lr = float((values or {}).get("lr", float("nan")))
        self.pending: list[Mapping[str, jax.Array]] = []

    def add(self, metrics: Mapping[str, jax.Array]) -> None:
        self.pending.append(metrics)

    def flush(self) -> dict[str, float]:
        for m in jax.device_get(self.pending):
            for k in self.KEYS:
                self.values[k] += float(m[k])
            self.lr = float(m["lr"])
        self.pending = []
        return self.to_json()

    def to_json(self) -> dict[str, float]:
        return {**self.values, "lr": self.lr}

    def summary(self) -> dict[str, float]:
        self.flush()
        n = max(self.values["count"], 1.0)
        return {
            "train_loss": self.values["loss"] / n,
            "train_ce": self.values["ce"] / n,
            "train_kd": self.values["kd"] / n,
            "train_accuracy": self.values["correct"] / n,
            "lr": self.lr,
        }


def _resolve_spec(spec, variables):
    if spec is None:
        return None
    if isinstance(spec, (str, os.PathLike)):
        return load_spec(spec, variables=variables)
    return spec


def _resolve_teacher(teacher, model) -> tuple[Callable | None, Any]:
    if teacher is None:
        return None, None
    if isinstance(teacher, tuple) and len(teacher) == 2 and isinstance(teacher[0], nn.Module):
        t_model, t_vars = teacher
    else:
        t_model, t_vars = model, teacher
    if not isinstance(t_vars, Mapping) or "params" not in t_vars or BLOCK_SIZES_COLLECTION not in t_vars:
        raise ValueError(
            "teacher must be full model variables (with 'params' and 'block_sizes'), or (model, variables)"
        )
    t_vars = jax.tree.map(jnp.asarray, dict(t_vars))
    return ModelApply(t_model), t_vars


def _payload(state: TrainState) -> dict[str, Any]:
    out = {"step": state.step, "params": state.params, "opt_state": state.opt_state, "block_sizes": state.block_sizes}
    if state.batch_stats is not None:
        out["batch_stats"] = state.batch_stats
    return out


def train_and_evaluate(
    config: TrainConfig,
    workdir: str | os.PathLike | None = None,
    *,
    dataset: Dataset | None = None,
    model: nn.Module | None = None,
    variables: Mapping[str, Any] | None = None,
    spec: Mapping[str, Any] | str | os.PathLike | None = None,
    teacher: Mapping[str, Any] | tuple[nn.Module, Mapping[str, Any]] | None = None,
    callbacks: Sequence[StepCallback] = (),
) -> TrainResult:
    """Trains (or finetunes) a model and evaluates it; resumable through ``workdir``.

    Args:
      config: the run's hyperparameters.
      workdir: folder for ``config.json``, checkpoints and history. If it already holds
        checkpoints of the same config, training resumes from the latest one. ``None``: no
        checkpoints.
      dataset: the data (default: ``load_dataset(config.dataset, **config.dataset_kwargs)``).
      model: the model (default: :func:`build_model`).
      variables: initial variables (e.g. a trained all-ReLU model, for finetuning); default:
        ``model.init`` with ``config.seed``.
      spec: Block-ReLU spec ``{layer: [C, 2]}`` or a spec file, applied to the variables with
        :func:`jaxmpc.nn.apply_spec` (the model is finetuned with those Block ReLUs).
      teacher: distillation teacher: its full variables (same model) or ``(model, variables)``;
        requires ``config.distill_weight > 0``.
      callbacks: called after every step; raising an exception interrupts the run.

    Returns:
      A :class:`TrainResult`.

    Raises:
      ValueError: for inconsistent inputs (a teacher without ``distill_weight`` or vice versa,
        variables that do not fit the model, a ``workdir`` that holds a different config, ...).
    """
    from tqdm.auto import tqdm

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if (teacher is None) != (config.distill_weight == 0):
        raise ValueError(
            "distillation needs both a teacher and config.distill_weight > 0 "
            f"(got teacher={'set' if teacher is not None else None}, distill_weight={config.distill_weight})"
        )
    dataset = dataset if dataset is not None else load_dataset(config.dataset, **config.dataset_kwargs)
    info = dataset.info
    model = model if model is not None else build_model(config, info)
    train_src = dataset.train
    eval_name = config.eval_split if (config.eval_split != "validation" or dataset.validation is not None) else "test"
    eval_src = dataset.split(eval_name)

    steps_per_epoch = num_batches(len(train_src), config.batch_size, drop_remainder=True)
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(train_src)} training examples")
    total_steps = config.num_steps or round(config.num_epochs * steps_per_epoch)
    total_steps = max(total_steps, 1)
    num_epochs = -(-total_steps // steps_per_epoch)
    lr_fn = make_schedule(config, steps_per_epoch, total_steps)
    tx = make_optimizer(config, lr_fn)

    # Initial variables, with the spec.
    if variables is None:
        variables = init_variables(model, info.input_shape, config.seed)
    else:
        _check_variables(model, variables, info.input_shape)
    spec = _resolve_spec(spec, variables)
    if spec is not None:
        variables = apply_spec(variables, spec)
    state = create_train_state(model, variables, tx)
    teacher_apply, teacher_vars = _resolve_teacher(teacher, model)
    loss_cfg = LossConfig.from_config(config, info)

    # Work folder: resume or start.
    history: list[dict[str, Any]] = []
    sums = _Sums()
    ckpt = None
    if workdir is not None:
        workdir = os.fspath(workdir)
        os.makedirs(workdir, exist_ok=True)
        cfg_path = os.path.join(workdir, "config.json")
        if os.path.exists(cfg_path):
            saved = TrainConfig.from_json(read_json(cfg_path, "training config"))
            diff = saved.differences(config)
            if diff:
                raise ValueError(
                    f"{workdir} holds a run with a different config: {diff} (saved, given). Use a new workdir, or the "
                    "saved config to resume."
                )
        write_json(cfg_path, config.to_json(), indent=2)
        if spec is not None:
            save_spec(
                os.path.join(workdir, "spec.json"),
                spec_from_variables(variables),
                model=config.model,
                input_shape=list(info.input_shape),
            )
        ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
        last = ckpt.latest_step()
        if last is not None:
            restored, meta = ckpt.restore(last, _payload(state))
            # Orbax returns arrays committed to a device; fresh ones are not, and jit would compile
            # the step again for them. Same values, uncommitted:
            restored = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), restored)
            if not all(
                np.array_equal(a, b)
                for a, b in zip(jax.tree.leaves(restored["block_sizes"]), jax.tree.leaves(state.block_sizes))
            ):
                raise ValueError(f"{workdir}: the checkpoint was trained with another Block-ReLU spec")
            state = state.replace(
                step=jnp.asarray(restored["step"], jnp.int32),
                params=restored["params"],
                opt_state=restored["opt_state"],
                batch_stats=restored.get("batch_stats", state.batch_stats),
            )
            history = list(meta.get("history", []))
            sums = _Sums(meta.get("train_sums"))

    def meta_now(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "epoch": step // steps_per_epoch,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "history": history,
            "train_sums": sums.flush(),
            "config": config.to_json(),
            "dataset": info.to_json(),
        }

    def save(step: int) -> None:
        if ckpt is not None:
            ckpt.save(step, _payload(state), meta_now(step))
            write_json(os.path.join(workdir, "history.json"), history, indent=2)

    jitted = jit_train_step if jax.default_backend() == "cpu" else jit_train_step_donated
    step_fn = functools.partial(jitted, loss_config=loss_cfg, teacher_apply=teacher_apply)
    base_key = jax.random.fold_in(jax.random.key(config.seed), 1)
    step = int(state.step)

    def do_eval(split_name: str, src: Source, leave_desc: str) -> dict[str, float]:
        return evaluate(
            model,
            state.variables,
            src,
            info,
            batch_size=config.eval_batch_size,
            num_threads=config.num_threads,
            prefetch=config.prefetch,
            progress=config.progress,
            desc=leave_desc,
        )

    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            first = step % steps_per_epoch
            last_step = min((epoch + 1) * steps_per_epoch, total_steps)
            t0 = time.perf_counter()
            bar = tqdm(
                total=last_step - epoch * steps_per_epoch,
                initial=first,
                desc=f"epoch {epoch + 1}/{num_epochs}",
                disable=not config.progress,
                dynamic_ncols=True,
            )
            it = batches(
                train_src,
                config.batch_size,
                shuffle=True,
                seed=config.seed,
                epoch=epoch,
                drop_remainder=True,
                start=first,
                num_threads=config.num_threads,
                prefetch=config.prefetch,
            )
            try:
                for batch in it:
                    state, metrics = step_fn(state, batch, base_key, teacher_vars)
                    step += 1
                    sums.add(metrics)
                    bar.update(1)
                    if step % config.log_every == 0 or step == last_step:
                        s = sums.summary()
                        bar.set_postfix(
                            loss=f"{s['train_loss']:.4f}", acc=f"{s['train_accuracy']:.4f}", lr=f"{s['lr']:.2e}"
                        )
                    if config.checkpoint_every and step % config.checkpoint_every == 0 and step != last_step:
                        save(step)
                    for cb in callbacks:
                        cb(step, state, metrics)
                    if step >= last_step:
                        break
            finally:
                bar.close()
                it.close()
            record = {"epoch": epoch + 1, "step": step, **sums.summary()}
            sums = _Sums()
            if (epoch + 1) % config.eval_every == 0 or step >= total_steps:
                ev = do_eval(eval_name, eval_src, f"eval {eval_name}")
                record.update({f"eval_{k}": v for k, v in ev.items()})
                record["eval_split"] = eval_name
            record["time_s"] = time.perf_counter() - t0
            history.append(record)
            save(step)
        final = {}
        if history and history[-1].get("eval_split") == eval_name and history[-1]["step"] == step:
            final[eval_name] = {k[5:]: v for k, v in history[-1].items() if k.startswith("eval_") and k != "eval_split"}
        else:
            final[eval_name] = do_eval(eval_name, eval_src, f"eval {eval_name}")
        if eval_name != "test":
            final["test"] = do_eval("test", dataset.test, "eval test")
    finally:
        if ckpt is not None:
            ckpt.close()
    return TrainResult(state, state.variables, model, history, final, workdir)


def finetune(
    config: TrainConfig,
    variables: Mapping[str, Any],
    spec: Mapping[str, Any] | str | os.PathLike,
    workdir: str | os.PathLike | None = None,
    *,
    distill: bool = False,
    **kwargs: Any,
) -> TrainResult:
    """Finetunes trained variables with the Block ReLUs of ``spec`` (paper §4.4).

    A thin wrapper over :func:`train_and_evaluate`: ``variables`` (a trained all-ReLU model) are
    the starting point and, with ``distill=True``, also the distillation teacher (set
    ``config.distill_weight``, e.g. 1.0, and ``config.distill_temperature``, 4 by default).

    Args:
      config: finetuning hyperparameters (e.g. ``get_config("digits_finetune")``).
      variables: trained variables (all-ReLU or with an earlier spec).
      spec: the spec to finetune with (mapping or spec file).
      workdir: run folder (resumable), or ``None``.
      distill: distil from ``variables`` as they are now (the all-ReLU teacher); if
        ``config.distill_weight`` is 0 it is set to 1.
      **kwargs: passed to :func:`train_and_evaluate` (``dataset``, ``model``, ``callbacks``).
    """
    if distill and config.distill_weight == 0:
        config = config.replace(distill_weight=1.0)
    teacher = variables if distill else None
    return train_and_evaluate(config, workdir, variables=variables, spec=spec, teacher=teacher, **kwargs)
