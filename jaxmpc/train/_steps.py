"""Train state, optimiser, losses, augmentation, and the pure train and eval steps.

Finetuning with Block ReLUs (Gorski & Avidan, arXiv 2304.10442, §4.4; ``paper_reference.md``
§4.4) needs nothing special here: the spec lives in the ``"block_sizes"`` variable collection,
which the :class:`TrainState` carries as constant data next to the parameters and passes to
``model.apply`` unchanged; :class:`~jaxmpc.nn.BlockReLU` computes its mask without gradient and
lets the gradient flow through the activation. BatchNorm statistics are the mutable
``"batch_stats"`` collection. Only ``params`` are trained.

All functions are pure. The static parts (model, loss settings, schedule, optimiser) are
hashable values, so the module-level jitted steps compile once per distinct configuration and
are reused by later runs in the same process (finetuning several specs, resuming).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax import lax

from jaxmpc.nn import BLOCK_SIZES_COLLECTION
from jaxmpc.train._config import TrainConfig
from jaxmpc.train._metrics import confusion_matrix

__all__ = [
    "LossConfig",
    "ModelApply",
    "Optimizer",
    "Schedule",
    "TrainState",
    "augment",
    "create_train_state",
    "cross_entropy",
    "distillation_loss",
    "eval_step",
    "init_variables",
    "jit_eval_step",
    "jit_train_step",
    "make_optimizer",
    "make_schedule",
    "train_step",
]


class TrainState(train_state.TrainState):
    """Flax ``TrainState`` with BatchNorm statistics and the (constant) Block-ReLU spec.

    Attributes:
      step: int32 number of optimiser steps taken.
      params: trained parameters.
      batch_stats: BatchNorm running statistics (updated by every training step).
      block_sizes: the ``"block_sizes"`` collection (the spec); never changed by training.
      opt_state: optimiser state.
    """

    batch_stats: Any = None
    block_sizes: Any = None

    @property
    def variables(self) -> dict[str, Any]:
        """The model variables ``{"params", "batch_stats", "block_sizes"}`` for ``model.apply``."""
        return _variables(self.params, self.batch_stats, self.block_sizes)


@dataclasses.dataclass(frozen=True)
class ModelApply:
    """``model.apply`` as a value: equal for equal models (a bound method compares by identity).

    Used as the train state's ``apply_fn`` and as the teacher's ``apply``, so that jitted steps
    are reused by runs that build an equal model.
    """

    model: nn.Module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.apply(*args, **kwargs)


def _variables(params, batch_stats, block_sizes) -> dict[str, Any]:
    out = {"params": params}
    if batch_stats is not None:
        out["batch_stats"] = batch_stats
    if block_sizes is not None:
        out[BLOCK_SIZES_COLLECTION] = block_sizes
    return out


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule as hashable data (so jitted steps are reused across runs).

    Calling it with the step count gives the float32 learning rate: a linear warm-up from 0 over
    ``warmup_steps``, then ``kind`` over the remaining steps: ``"constant"``, ``"cosine"`` (to
    ``end``), ``"poly"`` (``(peak - end) (1 - t)^power + end``) or ``"step"`` (times ``factor``
    at each absolute step in ``boundaries``).
    """

    kind: str
    peak: float
    total_steps: int
    warmup_steps: int = 0
    end: float = 0.0
    boundaries: tuple[int, ...] = ()
    factor: float = 0.1
    power: float = 0.9

    def _optax(self) -> optax.Schedule:
        lr, end, warmup = self.peak, self.end, self.warmup_steps
        main_steps = max(self.total_steps - warmup, 1)
        if self.kind == "constant":
            main = optax.constant_schedule(lr)
        elif self.kind == "cosine":
            main = optax.cosine_decay_schedule(lr, main_steps, alpha=end / lr)
        elif self.kind == "poly":
            main = optax.polynomial_schedule(lr, end, self.power, main_steps)
        elif self.kind == "step":  # boundaries are absolute steps, counted from the start of training
            scales: dict[int, float] = {}
            for b in self.boundaries:
                if b - warmup > 0:
                    scales[b - warmup] = scales.get(b - warmup, 1.0) * self.factor
            main = optax.piecewise_constant_schedule(lr, scales)
        else:
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        if warmup > 0:
            return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
        return main

    def __call__(self, count: jax.typing.ArrayLike) -> jax.Array:
        return jnp.asarray(self._optax()(count), jnp.float32)


def make_schedule(config: TrainConfig, steps_per_epoch: int, total_steps: int) -> Schedule:
    """The learning-rate schedule of ``config`` (a :class:`Schedule`).

    Times in the config are epochs (converted with ``steps_per_epoch``) unless
    ``config.num_steps`` is set, in which case they are steps.
    """
    unit = 1 if config.num_steps is not None else steps_per_epoch
    return Schedule(
        kind=config.schedule,
        peak=float(config.learning_rate),
        total_steps=int(total_steps),
        warmup_steps=round(config.warmup * unit),
        end=float(config.end_learning_rate),
        boundaries=tuple(round(b * unit) for b in config.step_boundaries),
        factor=float(config.step_factor),
        power=float(config.poly_power),
    )


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optax optimiser described by hashable data; it has optax's ``init``/``update`` interface.

    ``"sgd"``: momentum SGD with L2 weight decay added to the gradient (PyTorch's ``SGD``);
    ``"adamw"``: AdamW with decoupled weight decay (``b1 = momentum``). Weight decay applies
    to every parameter, as in the reference's mmcv optimisers.
    """

    name: str
    learning_rate: Schedule
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0

    def transformation(self) -> optax.GradientTransformation:
        """The optax transformation."""
        if self.name == "sgd":
            sgd = optax.sgd(self.learning_rate, momentum=self.momentum or None, nesterov=self.nesterov)
            return optax.chain(optax.add_decayed_weights(self.weight_decay), sgd) if self.weight_decay else sgd
        if self.name == "adamw":
            return optax.adamw(self.learning_rate, b1=self.momentum, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimizer {self.name!r}")

    def init(self, params):
        return self.transformation().init(params)

    def update(self, updates, state, params=None):
        return self.transformation().update(updates, state, params)


def make_optimizer(config: TrainConfig, schedule: Schedule) -> Optimizer:
    """The optimiser of ``config`` with learning-rate ``schedule``."""
    return Optimizer(
        name=config.optimizer,
        learning_rate=schedule,
        momentum=float(config.momentum),
        nesterov=bool(config.nesterov),
        weight_decay=float(config.weight_decay),
    )


#: XLA options for programs that run once (initialisation): compile fast rather than run fast.
_RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _init(model: nn.Module, key: jax.Array, x: jax.Array) -> dict[str, Any]:
    return model.init(key, x, train=False)


_jit_init = jax.jit(_init, static_argnums=0, compiler_options=_RUN_ONCE_OPTIONS)
_jit_init_plain = jax.jit(_init, static_argnums=0)


def init_variables(model: nn.Module, input_shape: Sequence[int], seed: int = 0) -> dict[str, Any]:
    """``model.init(key(seed), zeros((1, *input_shape)), train=False)``, compiled once per model and shape.

    Eager ``model.init`` compiles every random initialiser separately (about 17 s for
    ``ResNetSmall`` on a 2-core CPU); one jitted program compiled without XLA's expensive
    optimisation passes takes about 1-3 s, and later calls with an equal model reuse it. The
    values are deterministic for a given seed, jax version and backend.
    """
    x = jnp.zeros((1, *input_shape), jnp.float32)
    key = jax.random.key(seed)
    try:
        return _jit_init(model, key, x)
    except Exception as e:  # an XLA build without these options: compile normally
        if "xla_" not in str(e):
            raise
        return _jit_init_plain(model, key, x)


def create_train_state(model: nn.Module, variables: Mapping[str, Any], tx: Optimizer) -> TrainState:
    """A train state at step 0 from full model variables (``model.init`` output, possibly with a spec).

    ``tx`` may be any optax transformation; an :class:`Optimizer` (hashable) lets the jitted
    train step be reused by later runs with the same model and hyperparameters.
    """
    if "params" not in variables:
        raise ValueError("create_train_state: variables have no 'params' collection")
    if BLOCK_SIZES_COLLECTION not in variables:
        raise ValueError(
            f"create_train_state: variables have no {BLOCK_SIZES_COLLECTION!r} collection; pass the full variables "
            "of model.init (or jaxmpc.nn.apply_spec)"
        )
    extra = set(variables) - {"params", "batch_stats", BLOCK_SIZES_COLLECTION}
    if extra:
        raise ValueError(f"create_train_state: unexpected variable collections {sorted(extra)}")
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(variables["params"]))
    stats = variables.get("batch_stats")
    stats = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(stats)) if stats is not None else None
    sizes = jax.tree.map(lambda a: jnp.asarray(a, jnp.int32), dict(variables[BLOCK_SIZES_COLLECTION]))
    return TrainState(
        step=jnp.asarray(0, jnp.int32),
        apply_fn=ModelApply(model),
        params=params,
        tx=tx,
        opt_state=tx.init(params),
        batch_stats=stats,
        block_sizes=sizes,
    )


# --------------------------------------------------------------------------------------------
# Losses


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static settings of the loss, the metrics and the augmentation (hashable, for jit).

    Attributes:
      task: ``"classification"`` or ``"segmentation"``.
      num_classes: number of classes.
      ignore_index: segmentation label excluded from loss and metrics.
      label_smoothing: label smoothing of the cross-entropy.
      distill_weight: weight of the distillation term (0: off).
      distill_temperature: distillation temperature ``T``.
      augment_shift: maximal random translation in pixels.
      augment_flip: random horizontal flips.
    """

    task: str = "classification"
    num_classes: int = 10
    ignore_index: int | None = None
    label_smoothing: float = 0.0
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    augment_shift: int = 0
    augment_flip: bool = False

    @classmethod
    def from_config(cls, config: TrainConfig, info) -> LossConfig:
        return cls(
            task=info.task,
            num_classes=info.num_classes,
            ignore_index=info.ignore_index,
            label_smoothing=config.label_smoothing,
            distill_weight=config.distill_weight,
            distill_temperature=config.distill_temperature,
            augment_shift=config.augment_shift,
            augment_flip=config.augment_flip,
        )


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    *,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Weighted sum of softmax cross-entropies and the sum of weights (float32 scalars).

    Args:
      logits: float ``[..., K]``.
      labels: int ``[...]`` in ``[0, K)`` where ``weights > 0`` (other entries are ignored).
      weights: float ``[...]``, 0 for ignored entries (padding, ignore index).
      label_smoothing: mass spread uniformly over the ``K`` classes.

    Returns:
      ``(sum of weighted losses, sum of weights)``.
    """
    labels = jnp.where(weights > 0, labels, 0).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    w = weights.astype(jnp.float32)
    return jnp.sum(nll * w), jnp.sum(w)


def distillation_loss(
    student_logits: jax.Array, teacher_logits: jax.Array, weights: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """Hinton et al.'s soft-target loss ``T^2 KL(softmax(t/T) || softmax(s/T))``: (weighted sum, sum of weights).

    The ``T^2`` factor keeps the gradient scale independent of the temperature. The teacher
    receives no gradient.
    """
    t = lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
    s = student_logits.astype(jnp.float32) / temperature
    p_t = jax.nn.softmax(t, axis=-1)
    kl = jnp.sum(p_t * (jax.nn.log_softmax(t, axis=-1) - jax.nn.log_softmax(s, axis=-1)), axis=-1)
    w = weights.astype(jnp.float32)
    return jnp.sum(kl * w) * (temperature**2), jnp.sum(w)


# --------------------------------------------------------------------------------------------
# Augmentation


def augment(
    key: jax.Array, images: jax.Array, labels: jax.Array, *, shift: int, flip: bool, ignore_index: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """Random translation (zero padding, then a random crop) and horizontal flips, per example.

    Segmentation label maps (``labels.ndim == 3``) move with their images; pixels shifted in
    get ``ignore_index``.

    Args:
      key: PRNG key.
      images: float ``[B, H, W, C]``.
      labels: int ``[B]`` or ``[B, H, W]``.
      shift: maximal translation in pixels (0: none).
      flip: flip each example left-right with probability 1/2.
      ignore_index: fill value for shifted-in label pixels.

    Returns:
      ``(images, labels)``, same shapes and dtypes.
    """
    b, h, w, c = images.shape
    dense = labels.ndim == 3
    k_shift, k_flip = jax.random.split(key)
    if shift > 0:
        p = shift
        offsets = jax.random.randint(k_shift, (b, 2), 0, 2 * p + 1, dtype=jnp.int32)
        padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))

        def crop(img, o):
            return lax.dynamic_slice(img, (o[0], o[1], jnp.int32(0)), (h, w, c))

        images = jax.vmap(crop)(padded, offsets)
        if dense:
            fill = 0 if ignore_index is None else ignore_index
            lp = jnp.pad(labels, ((0, 0), (p, p), (p, p)), constant_values=fill)
            labels = jax.vmap(lambda lb, o: lax.dynamic_slice(lb, (o[0], o[1]), (h, w)))(lp, offsets)
    if flip:
        f = jax.random.bernoulli(k_flip, 0.5, (b,))
        images = jnp.where(f[:, None, None, None], images[:, :, ::-1, :], images)
        if dense:
            labels = jnp.where(f[:, None, None], labels[:, :, ::-1], labels)
    return images, labels


# --------------------------------------------------------------------------------------------
# Steps


def _logits_for_labels(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Segmentation logits (at 1/8 resolution) resized bilinearly to the label map (mmseg)."""
    if labels.ndim == 3 and logits.shape[1:3] != labels.shape[1:3]:
        b, h, w = labels.shape
        return jax.image.resize(logits, (b, h, w, logits.shape[-1]), "bilinear")
    return logits


def _weights(batch: Mapping[str, jax.Array], labels: jax.Array, cfg: LossConfig) -> jax.Array:
    w = jnp.ones(labels.shape, jnp.float32)
    if "mask" in batch:
        m = batch["mask"].astype(jnp.float32)
        w = w * m.reshape(m.shape + (1,) * (labels.ndim - 1))
    if cfg.ignore_index is not None:
        w = w * (labels != cfg.ignore_index)
    return w


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    teacher_variables: Mapping[str, Any] | None = None,
    *,
    loss_config: LossConfig,
    teacher_apply: Callable | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step (pure; :data:`jit_train_step` is its jitted form).

    The augmentation key is ``fold_in(key, state.step)``, so a resumed run draws the same
    augmentations as an uninterrupted one. With ``loss_config.distill_weight > 0`` the loss is
    ``CE + distill_weight * T^2 KL(teacher || student)`` with the teacher in inference mode.

    Args:
      state: the train state.
      batch: ``{"image": float32 [B, H, W, C], "label": int32 [B] or [B, H, W]}`` (+ ``"mask"``).
      key: base PRNG key of the run.
      teacher_variables: variables of the teacher (distillation), else ``None``.
      loss_config: static loss/augmentation settings.
      teacher_apply: the teacher's ``apply`` (distillation).

    Returns:
      ``(new state, metrics)``; metrics are sums over the batch (``loss``, ``ce``, ``kd``,
      ``correct``, ``count``) and the learning rate ``lr`` of the step (``nan`` unless
      ``state.tx`` is an :class:`Optimizer`).
    """
    cfg = loss_config
    images = jnp.asarray(batch["image"], jnp.float32)
    labels = jnp.asarray(batch["label"], jnp.int32)
    images, labels = augment(
        jax.random.fold_in(key, state.step),
        images,
        labels,
        shift=cfg.augment_shift,
        flip=cfg.augment_flip,
        ignore_index=cfg.ignore_index,
    )
    weights = _weights(batch, labels, cfg)
    teacher_logits = None
    if cfg.distill_weight > 0:
        if teacher_apply is None or teacher_variables is None:
            raise ValueError("train_step: distill_weight > 0 needs teacher_apply and teacher_variables")
        teacher_logits = _logits_for_labels(teacher_apply(teacher_variables, images, train=False), labels)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            _variables(params, state.batch_stats, state.block_sizes), images, train=True, mutable=["batch_stats"]
        )
        logits = _logits_for_labels(logits, labels)
        ce_sum, n = cross_entropy(logits, labels, weights, label_smoothing=cfg.label_smoothing)
        denom = jnp.maximum(n, 1.0)
        loss = ce_sum / denom
        kd = jnp.zeros((), jnp.float32)
        if teacher_logits is not None:
            kd_sum, _ = distillation_loss(logits, teacher_logits, weights, cfg.distill_temperature)
            kd = kd_sum / denom
            loss = loss + cfg.distill_weight * kd
        return loss, (logits, updates, ce_sum / denom, kd, n)

    grads, (logits, updates, ce, kd, n) = jax.grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    correct = jnp.sum((jnp.argmax(logits, -1) == labels).astype(jnp.float32) * weights)
    loss = ce + cfg.distill_weight * kd
    metrics = {
        "loss": loss * n,
        "ce": ce * n,
        "kd": kd * n,
        "correct": correct,
        "count": n,
        "lr": state.tx.learning_rate(state.step) if isinstance(state.tx, Optimizer) else jnp.float32(jnp.nan),
    }
    return new_state, metrics


def eval_step(
    model: nn.Module, loss_config: LossConfig, variables: Mapping[str, Any], batch: Mapping[str, jax.Array]
) -> dict[str, jax.Array]:
    """Evaluation sums of one batch (pure; jit with ``model`` and ``loss_config`` static).

    Returns:
      ``loss`` (summed cross-entropy), ``count`` (evaluated examples or pixels), ``correct``,
      and for segmentation ``confusion`` (int32 ``[K, K]``, rows = true class).
    """
    cfg = loss_config
    images = jnp.asarray(batch["image"], jnp.float32)
    labels = jnp.asarray(batch["label"], jnp.int32)
    logits = _logits_for_labels(model.apply(variables, images, train=False), labels)
    weights = _weights(batch, labels, cfg)
    loss, n = cross_entropy(logits, labels, weights)
    pred = jnp.argmax(logits, -1)
    out = {"loss": loss, "count": n, "correct": jnp.sum((pred == labels).astype(jnp.float32) * weights)}
    if cfg.task == "segmentation":
        out["confusion"] = confusion_matrix(
            pred, labels, cfg.num_classes, ignore_index=cfg.ignore_index, weights=weights
        )
    return out


#: :func:`train_step` jitted, with ``loss_config`` and ``teacher_apply`` static. The state's
#: ``apply_fn`` (a model's ``apply``) and ``tx`` (an :class:`Optimizer`) compare by value, so a
#: later run with the same model and hyperparameters reuses the compiled step.
jit_train_step = jax.jit(train_step, static_argnames=("loss_config", "teacher_apply"))
#: As :data:`jit_train_step`, donating the input state's buffers (for accelerators).
jit_train_step_donated = jax.jit(train_step, static_argnames=("loss_config", "teacher_apply"), donate_argnums=(0,))
#: :func:`eval_step` jitted, with ``model`` and ``loss_config`` static.
jit_eval_step = jax.jit(eval_step, static_argnums=(0, 1))
