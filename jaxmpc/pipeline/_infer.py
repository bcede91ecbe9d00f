"""The ``infer`` step: secure inference on held-out test images, its accuracy and costs."""

from __future__ import annotations

import os
import time

import numpy as np

from jaxmpc.pipeline._config import PipelineConfig
from jaxmpc.pipeline._workdir import Workdir, dataset_of, load_run, model_of, write_json


def all_relu_count(model, variables, shape) -> int:
    """DReLUs per image of ``model`` with every ReLU exact."""
    from jaxmpc import nn as jnn

    return jnn.count_drelus(model, jnn.apply_spec(variables, {}), shape).total


def _predict(logits, labels, seg: bool):
    """Class predictions: argmax over classes; segmentation logits are first resized bilinearly
    to the label map (as :func:`jaxmpc.train.evaluate`)."""
    import jax

    logits = np.asarray(logits, np.float32)
    if seg:
        b, h, w = labels.shape
        logits = np.asarray(jax.image.resize(logits, (b, h, w, logits.shape[-1]), "bilinear"))
    return np.argmax(logits, -1)


def infer_step(wd: Workdir, cfg: PipelineConfig, tag: str | None, *, images: int | None = None,
               progress: bool = True, batch_size: int | None = None, dataset=None) -> dict:
    """Secure inference on held-out test images: accuracy, agreement with plaintext, costs.

    Classification: top-1 accuracy of the secure and plaintext logits, and the number of images
    whose secure prediction equals the plaintext one. Segmentation: pixel accuracy and mIoU of
    both, the fraction of pixels predicted alike, and the number of images predicted alike at
    every pixel.
    """
    import jax

    from jaxmpc import train
    from jaxmpc.inference import secure_apply, secure_cost

    batch_size = batch_size or cfg.infer_batch_size
    ds = dataset_of(cfg, dataset)
    seg = ds.info.task == "segmentation"
    src = wd.train if tag is None else wd.finetune(tag)
    variables, _ = load_run(src, f"model ({os.path.relpath(src, wd.root)})")
    model = model_of(cfg, ds)
    n = min(images or cfg.infer_images, len(ds.test))
    batch = ds.test.get(np.arange(n))
    x, y = batch["image"], np.asarray(batch["label"])
    config = cfg.protocol()
    apply = jax.jit(lambda v, a: model.apply(v, a))
    plain = np.concatenate([np.asarray(apply(variables, x[i: i + batch_size])) for i in range(0, n, batch_size)])
    from tqdm.auto import tqdm

    key = jax.random.key(cfg.seed)

    def run(i, start):
        xb = x[start: start + batch_size]
        if len(xb) < batch_size and n > batch_size:  # keep one compiled shape: pad the last batch
            xb = np.concatenate([xb, np.zeros((batch_size - len(xb),) + xb.shape[1:], xb.dtype)])
        out, rep = secure_apply(model, variables, xb, config=config, key=jax.random.fold_in(key, i))
        return np.asarray(out)[: min(batch_size, n - start)], rep

    starts = list(range(0, n, batch_size))
    t0 = time.perf_counter()
    first_out, first_rep = run(0, 0)  # includes compiling the secure program
    first = time.perf_counter() - t0
    preds, reports = [first_out], [first_rep]
    t1 = time.perf_counter()
    for i, start in enumerate(tqdm(starts[1:], desc=f"secure inference ({tag or 'all-ReLU'})",
                                   disable=not progress, unit="batch"), start=1):
        out, rep = run(i, start)
        preds.append(out)
        reports.append(rep)
    if len(starts) > 1:
        steady = (time.perf_counter() - t1) / (n - len(first_out))
    else:  # one batch: time it again, compiled
        t1 = time.perf_counter()
        run(len(starts), 0)
        steady = (time.perf_counter() - t1) / len(first_out)
    seconds = time.perf_counter() - t0
    secure = np.concatenate(preds)
    rep0 = reports[0]
    per_image = secure_cost(model, variables, (1,) + x.shape[1:], config=config)
    rep0.to_json(os.path.join(wd.infer(tag or "all_relu"), "report.json"))
    sp, pp = _predict(secure, y, seg), _predict(plain, y, seg)
    if seg:
        valid = y != ds.info.ignore_index
        conf_s = np.asarray(train.confusion_matrix(sp, y, ds.info.num_classes, ignore_index=ds.info.ignore_index))
        conf_p = np.asarray(train.confusion_matrix(pp, y, ds.info.num_classes, ignore_index=ds.info.ignore_index))
        metrics = {
            "secure_accuracy": train.pixel_accuracy(conf_s),
            "plaintext_accuracy": train.pixel_accuracy(conf_p),
            "secure_miou": float(train.mean_iou(conf_s)[0]),
            "plaintext_miou": float(train.mean_iou(conf_p)[0]),
            "same_predictions": int(np.sum(np.all((sp == pp).reshape(n, -1), axis=1))),
            "pixel_agreement": float(np.mean(sp == pp)),
            "pixel_agreement_labelled": float(np.mean((sp == pp)[valid])) if valid.any() else float("nan"),
        }
    else:
        metrics = {
            "secure_accuracy": float(np.mean(sp == y)),
            "plaintext_accuracy": float(np.mean(pp == y)),
            "same_predictions": int(np.sum(sp == pp)),
        }
    result = {
        "tag": tag or "all_relu",
        "images": n,
        "task": ds.info.task,
        **metrics,
        "max_abs_logit_error": float(np.max(np.abs(secure - plain))),
        "seconds": seconds,
        "seconds_per_image": steady,
        "compile_seconds": max(first - steady * len(first_out), 0.0),
        "per_image": {"drelus": per_image.drelus, "bytes": per_image.total_bytes,
                      "inference_bytes": per_image.inference_bytes, "session_bytes": per_image.session_bytes,
                      "online_bytes": per_image.online_bytes, "rounds": per_image.rounds,
                      "by_kind": per_image.by_kind()},
        "drelus_all_relu": all_relu_count(model, variables, x.shape[1:]),
        "protocol": {"compare_bits": cfg.compare_bits, "lsb_drop_bits": cfg.lsb_drop_bits,
                     "frac_bits": cfg.frac_bits},
    }
    write_json(os.path.join(wd.infer(tag or "all_relu"), "result.json"), result)
    return result
