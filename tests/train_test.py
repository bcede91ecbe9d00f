"""Tests of jaxmpc.train: training, Block-ReLU finetuning, distillation, resumable checkpoints, metrics."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmpc import data, train
from jaxmpc.nn import apply_spec, count_drelus, load_spec, models, relu_layers
from jaxmpc.train import LossConfig, TrainConfig

# Trained once per module and shared (compiling the train step dominates on a 2-core CPU).


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("digits_run")
    cfg = train.get_config("digits", progress=False)
    t0 = time.perf_counter()
    result = train.train_and_evaluate(cfg, workdir, dataset=digits)
    result_time = time.perf_counter() - t0
    return result, result_time


def _spec_8x(model):
    """A harsh spec for 8x8 digits: 4x4 patches on 8x8 maps, 2x2 on 4x4 and 2x2 maps (1/8 of the DReLUs)."""
    return {
        name: np.tile(np.array([{8: 4, 4: 2, 2: 2}[h]] * 2, np.int32), (c, 1))
        for name, (h, _, c) in relu_layers(model, (8, 8, 1))
    }


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def _strip_times(history):
    return [{k: v for k, v in h.items() if k != "time_s"} for h in history]


# --------------------------------------------------------------------------------------------
# Training, finetuning, distillation


def test_training_resnet_small_on_digits(trained):
    result, seconds = trained
    print(f"\ndigits ResNetSmall: test accuracy {result.final['test']['accuracy']:.4f} in {seconds:.1f} s")
    assert result.final["test"]["accuracy"] >= 0.93
    assert result.final["validation"]["accuracy"] >= 0.93
    assert len(result.history) == 15 and result.history[-1]["step"] == 15 * (1259 // 64)
    assert result.history[-1]["lr"] < 1e-3  # cosine to 0
    assert result.history[0]["train_loss"] > result.history[-1]["train_loss"]
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(result.variables["params"]))
    assert result.state.step.dtype == jnp.int32
    workdir = result.workdir
    with open(os.path.join(workdir, "config.json")) as f:
        assert TrainConfig.from_json(json.load(f)).num_epochs == 15
    with open(os.path.join(workdir, "history.json")) as f:
        assert len(json.load(f)) == 15
    variables, meta = train.load_variables(workdir)
    assert meta["step"] == result.history[-1]["step"]
    assert _leaves_equal(variables["params"], result.variables["params"])
    ds = data.load_dataset("digits")
    acc = train.evaluate(result.model, variables, ds.test, ds.info)
    assert acc["accuracy"] == pytest.approx(result.final["test"]["accuracy"])


def test_finetuning_with_a_spec_improves_over_the_unfinetuned_spec_model(trained, digits, tmp_path):
    base = trained[0]
    spec = _spec_8x(base.model)
    assert count_drelus(base.model, spec, (8, 8, 1)).total * 8 == count_drelus(base.model, None, (8, 8, 1)).total
    before = train.evaluate(base.model, apply_spec(base.variables, spec), digits.test, digits.info)["accuracy"]
    cfg = train.get_config("digits_finetune", progress=False)
    ft = train.finetune(cfg, base.variables, spec, tmp_path / "ft", dataset=digits)
    after = ft.final["test"]["accuracy"]
    print(f"\nspec at 1/8 DReLUs: {before:.4f} before finetuning, {after:.4f} after")
    assert after >= before + 0.2
    # the spec is constant data: unchanged by training, saved beside the run
    assert _leaves_equal(ft.state.block_sizes, apply_spec(base.variables, spec)["block_sizes"])
    saved = load_spec(tmp_path / "ft" / "spec.json", variables=ft.variables)
    assert all(np.array_equal(saved[k], spec[k]) for k in spec)
    # BatchNorm statistics were re-estimated under the spec
    assert not _leaves_equal(ft.state.batch_stats, base.state.batch_stats)


def test_distillation_from_the_all_relu_model(trained, digits):
    base = trained[0]
    spec = _spec_8x(base.model)
    cfg = train.get_config("digits_finetune", progress=False, distill_weight=1.0)
    kd = train.finetune(cfg, base.variables, spec, dataset=digits, distill=True)
    before = train.evaluate(base.model, apply_spec(base.variables, spec), digits.test, digits.info)["accuracy"]
    print(f"\ndistilled finetune: {kd.final['test']['accuracy']:.4f} (before {before:.4f})")
    assert all(np.isfinite(h["train_loss"]) for h in kd.history)
    assert kd.history[0]["train_kd"] > 0 and kd.history[-1]["train_kd"] < kd.history[0]["train_kd"]
    assert kd.history[0]["train_loss"] == pytest.approx(kd.history[0]["train_ce"] + kd.history[0]["train_kd"])
    assert kd.final["test"]["accuracy"] >= before + 0.2
    with pytest.raises(ValueError, match="teacher"):
        train.train_and_evaluate(cfg, dataset=digits, variables=base.variables)  # distill_weight without teacher


# --------------------------------------------------------------------------------------------
# Resuming


class Interrupt(Exception):
    pass


def _stop_at(k):
    def callback(step, state, metrics):
        if step == k:
            raise Interrupt

    return callback


# 19 steps per epoch; checkpoints every 7 steps and at each epoch end. Stopping at step 23 resumes
# mid-epoch from step 21; stopping at step 20 resumes from the end-of-epoch checkpoint of step 19.
@pytest.mark.parametrize("stop", [23, 20], ids=["mid_epoch", "after_epoch_end"])
def test_interrupted_run_resumes_to_the_same_result(digits, trained, tmp_path, stop):
    full = trained[0]  # the uninterrupted run (same config; checkpoint_every changes no result)
    cfg = train.get_config("digits", progress=False, checkpoint_every=7)
    with pytest.raises(Interrupt):
        train.train_and_evaluate(cfg, tmp_path, dataset=digits, callbacks=[_stop_at(stop)])
    ckpt_steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert max(ckpt_steps) == {23: 21, 20: 19}[stop]
    resumed = train.train_and_evaluate(cfg.replace(checkpoint_every=None), tmp_path, dataset=digits)
    assert _leaves_equal(resumed.state.params, full.state.params)
    assert _leaves_equal(resumed.state.batch_stats, full.state.batch_stats)
    assert _leaves_equal(resumed.state.opt_state, full.state.opt_state)
    assert _strip_times(resumed.history) == _strip_times(full.history)
    assert resumed.final == full.final
    # a finished run restarts to its result without training
    again = train.train_and_evaluate(cfg, tmp_path, dataset=digits, callbacks=[_stop_at(1)])
    assert _leaves_equal(again.state.params, full.state.params)


def test_resuming_with_another_config_or_spec_is_refused(digits, trained, tmp_path):
    base = trained[0]
    shutil.copytree(base.workdir, tmp_path, dirs_exist_ok=True)
    cfg = train.get_config("digits", progress=False)
    with pytest.raises(ValueError, match="different config"):
        train.train_and_evaluate(cfg.replace(learning_rate=0.5), tmp_path, dataset=digits)
    with pytest.raises(ValueError, match="another Block-ReLU spec"):
        train.train_and_evaluate(cfg, tmp_path, dataset=digits, spec=_spec_8x(base.model))
    same = train.train_and_evaluate(cfg.replace(log_every=3, keep_checkpoints=3), tmp_path, dataset=digits)
    assert _leaves_equal(same.state.params, base.state.params)


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_result(tmp_path):
    script = textwrap.dedent(
        """
        import sys, jax
        jax.config.update("jax_enable_x64", True)
        from jaxmpc import train
        cfg = train.get_config("digits", num_epochs=6, checkpoint_every=5, progress=False)
        res = train.train_and_evaluate(cfg, sys.argv[1])
        print("DONE", res.final["test"]["accuracy"], flush=True)
        """
    )
    path = tmp_path / "run.py"
    path.write_text(script)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    full = subprocess.run(
        [sys.executable, str(path), str(tmp_path / "full")], env=env, capture_output=True, text=True, check=False
    )
    assert "DONE" in full.stdout, full.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, str(path), str(tmp_path / "cut")], env=env, stdout=subprocess.PIPE)
    ckpts = tmp_path / "cut" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill -9 once some checkpoints exist, mid-run
        steps = [int(d) for d in os.listdir(ckpts) if d.isdigit()] if ckpts.exists() else []
        if steps and max(steps) >= 40:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert b"DONE" not in proc.stdout.read()  # it really was killed before the end
    assert max(int(d) for d in os.listdir(ckpts) if d.isdigit()) < 6 * 19
    resumed = subprocess.run(
        [sys.executable, str(path), str(tmp_path / "cut")], env=env, capture_output=True, text=True, check=False
    )
    assert "DONE" in resumed.stdout, resumed.stderr[-2000:]
    a, meta_a = train.load_variables(tmp_path / "full")
    b, meta_b = train.load_variables(tmp_path / "cut")
    assert _leaves_equal(a, b)
    assert _strip_times(meta_a["history"]) == _strip_times(meta_b["history"])


# --------------------------------------------------------------------------------------------
# Steps, losses, augmentation, schedules


def test_segmentation_train_and_eval_steps():
    # A small DeepLabV3 gives 8x8 logits for 32x32 inputs; the loss upsamples them to the label map.
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        backbone = functools.partial(models.ResNetSmall, num_classes=None, num_filters=4)  # 32x32 -> 8x8
        model = models.DeepLabV3(backbone=backbone, num_classes=5, channels=8, dilations=(1, 2))
        variables = train.init_variables(model, (32, 32, 3))
        cfg = TrainConfig(learning_rate=0.01, augment_shift=2, augment_flip=True)
        tx = train.make_optimizer(cfg, train.make_schedule(cfg, 10, 10))
        state = train.create_train_state(model, variables, tx)
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 5, (2, 32, 32)).astype(np.int32)
        labels[:, :8] = 255
        batch = {"image": rng.standard_normal((2, 32, 32, 3)).astype(np.float32), "label": labels}
        lc = LossConfig(task="segmentation", num_classes=5, ignore_index=255, augment_shift=2, augment_flip=True)
        new, m = train.jit_train_step(state, batch, jax.random.key(0), None, loss_config=lc)
        assert np.isfinite(float(m["loss"])) and int(new.step) == 1
        assert float(m["count"]) <= 2 * 24 * 32 + 2 * 32 * 2  # ignored rows excluded (shifts move a few in)
        out = train.jit_eval_step(model, lc, new.variables, {**batch, "mask": np.array([1.0, 0.0], np.float32)})
        conf = np.asarray(out["confusion"])
        assert conf.shape == (5, 5) and conf.sum() == 24 * 32 == float(out["count"])
    finally:
        jax.config.update("jax_disable_most_optimizations", False)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizers_keep_float32_under_x64(name):
    # conftest enables jax_enable_x64: schedules and optimiser states must not promote to float64
    cfg = TrainConfig(optimizer=name, learning_rate=0.1, weight_decay=1e-2, warmup=1, nesterov=name == "sgd")
    tx = train.make_optimizer(cfg, train.make_schedule(cfg, 4, 20))
    params = {"w": jnp.ones((3, 2), jnp.float32), "b": jnp.zeros(2, jnp.float32)}
    state = tx.init(params)
    for i in range(3):
        grads = jax.tree.map(lambda p, i=i: jnp.full_like(p, 0.5 + i), params)
        updates, state = jax.jit(tx.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((params, state)) if a.dtype.kind == "f")
    assert not np.allclose(params["w"], 1.0)
    assert hash(tx) == hash(train.make_optimizer(cfg, train.make_schedule(cfg, 4, 20)))


def test_losses():
    logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], jnp.float32)
    labels = jnp.array([0, 2], jnp.int32)
    s, _ = train.cross_entropy(logits, labels, jnp.ones(2))
    np.testing.assert_allclose(s, optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum(), rtol=1e-6)
    s1, n1 = train.cross_entropy(logits, labels, jnp.array([1.0, 0.0]))
    assert float(n1) == 1 and float(s1) == pytest.approx(
        float(optax.softmax_cross_entropy_with_integer_labels(logits[:1], labels[:1])[0])
    )
    smooth, _ = train.cross_entropy(logits, labels, jnp.ones(2), label_smoothing=0.1)
    target = 0.9 * jax.nn.one_hot(labels, 3) + 0.1 / 3
    np.testing.assert_allclose(smooth, optax.softmax_cross_entropy(logits, target).sum(), rtol=1e-6)
    # distillation: zero for identical logits, T^2 KL otherwise, no gradient into the teacher
    kd0, _ = train.distillation_loss(logits, logits, jnp.ones(2), 4.0)
    assert abs(float(kd0)) < 1e-6
    t = logits[::-1]
    kd, _ = train.distillation_loss(logits, t, jnp.ones(2), 4.0)
    p = jax.nn.softmax(t / 4)
    expected = 16 * jnp.sum(p * (jnp.log(p) - jax.nn.log_softmax(logits / 4)))
    np.testing.assert_allclose(kd, expected, rtol=1e-5)
    g = jax.grad(lambda tt: train.distillation_loss(logits, tt, jnp.ones(2), 4.0)[0])(t)
    assert not np.any(np.asarray(g))


def test_augment():
    key = jax.random.key(0)
    x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
    y = jnp.arange(2 * 4 * 4, dtype=jnp.int32).reshape(2, 4, 4)
    same = train.augment(key, x, y, shift=0, flip=False)
    assert _leaves_equal(same, (x, y))
    xa, ya = train.augment(key, x, y, shift=1, flip=True, ignore_index=255)
    assert xa.shape == x.shape and ya.shape == y.shape and xa.dtype == x.dtype and ya.dtype == y.dtype
    # labels move with their pixels: where the label is not ignored, image value == label value
    keep = np.asarray(ya) != 255
    np.testing.assert_array_equal(np.asarray(xa)[..., 0][keep], np.asarray(ya)[keep])
    assert _leaves_equal((xa, ya), train.augment(key, x, y, shift=1, flip=True, ignore_index=255))
    flipped = train.augment(jax.random.key(3), x, jnp.zeros(2, jnp.int32), shift=0, flip=True)[0]
    for i in range(2):
        assert np.array_equal(flipped[i], x[i]) or np.array_equal(flipped[i], x[i, :, ::-1])


def test_schedules():
    cfg = TrainConfig(learning_rate=0.1, schedule="step", step_boundaries=(2, 4), step_factor=0.25, warmup=1)
    s = train.make_schedule(cfg, steps_per_epoch=10, total_steps=60)
    lrs = [float(s(i)) for i in (0, 5, 10, 19, 20, 39, 40, 59)]
    np.testing.assert_allclose(lrs, [0.0, 0.05, 0.1, 0.1, 0.025, 0.025, 0.00625, 0.00625], rtol=1e-6)
    assert s(3).dtype == jnp.float32
    cos = train.make_schedule(cfg.replace(schedule="cosine", warmup=0, end_learning_rate=0.01), 10, 100)
    assert float(cos(0)) == pytest.approx(0.1) and float(cos(100)) == pytest.approx(0.01)
    poly = train.make_schedule(TrainConfig(learning_rate=1.0, schedule="poly", poly_power=1.0, num_steps=10), 3, 10)
    assert float(poly(5)) == pytest.approx(0.5)
    assert train.make_schedule(cfg, 10, 60) == s  # hashable values: jitted steps are reused


def test_metrics():
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert float(train.accuracy(logits, jnp.array([1, 1, 1]))) == pytest.approx(2 / 3)
    pred = np.array([0, 0, 1, 1, 2, 2, 0])
    true = np.array([0, 1, 1, 1, 2, 255, 3])
    conf = np.asarray(train.confusion_matrix(pred, true, 4, ignore_index=255))
    expected = np.zeros((4, 4), int)
    for t, p in zip(true, pred):
        if t != 255:
            expected[t, p] += 1
    np.testing.assert_array_equal(conf, expected)
    miou, iou = train.mean_iou(conf)
    # class 0: tp 1, fp 2, fn 0 -> 1/3; class 1: tp 2, fn 1 -> 2/3; class 2: 1/1 (the 255 pixel skipped); class 3: 0/1
    np.testing.assert_allclose(iou, [1 / 3, 2 / 3, 1.0, 0.0])
    assert miou == pytest.approx(np.mean([1 / 3, 2 / 3, 1.0, 0.0]))
    absent = np.zeros((3, 3), int)
    absent[0, 0] = 4
    absent[1, 0] = 1
    m2, iou2 = train.mean_iou(absent)
    assert np.isnan(iou2[2]) and m2 == pytest.approx(np.mean([4 / 5, 0.0]))
    assert train.pixel_accuracy(conf) == pytest.approx(4 / 6)
    weighted = np.asarray(train.confusion_matrix(pred, true, 4, weights=np.array([1, 1, 1, 1, 1, 1, 0])))
    assert weighted.sum() == 5


def test_config_validation_and_json():
    cfg = train.get_config("cifar100_resnet18_finetune")
    assert cfg.learning_rate == 5e-3 and cfg.step_boundaries == (30.0, 60.0, 90.0) and cfg.step_factor == 0.25
    assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    for bad in (
        {"optimizer": "rmsprop"},
        {"batch_size": 0},
        {"schedule": "exp"},
        {"step_boundaries": (3, 1)},
        {"num_steps": 0},
        {"eval_split": "dev"},
    ):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="no field"):
        cfg.replace(lr=1)
    with pytest.raises(ValueError, match="unknown config"):
        train.get_config("mnist")
    assert cfg.differences(cfg.replace(progress=False, learning_rate=1.0)) == {"learning_rate": (5e-3, 1.0)}
    for name in train.CONFIGS:
        train.get_config(name)


def test_bad_inputs_are_reported(digits):
    cfg = train.get_config("digits", num_epochs=1, progress=False)
    with pytest.raises(ValueError, match="unknown model"):
        train.train_and_evaluate(cfg.replace(model="ResNet99"), dataset=digits)
    with pytest.raises(ValueError, match="num_classes"):
        train.train_and_evaluate(cfg.replace(model_kwargs={"num_classes": 7}), dataset=digits)
    wrong = train.init_variables(models.ResNetSmall16(), (8, 8, 1))
    with pytest.raises(ValueError, match="do not fit the model"):
        train.train_and_evaluate(cfg, dataset=digits, variables=wrong)
    with pytest.raises(ValueError, match="exceeds"):
        train.train_and_evaluate(cfg.replace(batch_size=5000), dataset=digits)


def test_command_line(trained, tmp_path, capsys):
    from jaxmpc.nn import save_spec
    from jaxmpc.train.__main__ import main

    base = trained[0]
    # same hyperparameters as the module's runs, so the compiled steps are reused
    assert main(["--config", "digits", "--workdir", str(tmp_path / "a"), "--set", "progress=false"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test"]["accuracy"] == pytest.approx(base.final["test"]["accuracy"])
    save_spec(tmp_path / "spec.json", _spec_8x(base.model), model="ResNetSmall", input_shape=[8, 8, 1])
    args = ["--config", "digits_finetune", "--workdir", str(tmp_path / "b"), "--init", base.workdir]
    assert main([*args, "--spec", str(tmp_path / "spec.json"), "--set", "progress=false"]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["accuracy"] > 0.5
    with pytest.raises(SystemExit):
        main(["--config", "digits", "--workdir", str(tmp_path / "c"), "--spec", "x.json"])
