"""Uncertainty of measured accuracies: Wilson intervals, paired differences, seed spread.

An accuracy measured on ``n`` test images is a binomial proportion: with a few hundred images one
point of accuracy is within noise. :func:`wilson_interval` gives its confidence interval (Wilson,
1927), which stays inside ``[0, 1]`` and keeps close to its nominal coverage for small ``n`` and
accuracies near 100%, unlike ``p +- z sqrt(p(1-p)/n)``.

Two models evaluated on the *same* images are compared with :func:`paired_difference`: most
images are right (or wrong) under both, and only the discordant images carry information, so
the interval of the difference is much narrower than the two accuracies' intervals suggest.

Exported from :mod:`jaxmpc.train` (``train.wilson_interval``...); ``jaxmpc.stats``, the module's
old path, still imports.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

__all__ = ["z_value", "wilson_interval", "paired_difference", "seed_spread"]


def z_value(confidence: float = 0.95) -> float:
    """The two-sided standard-normal quantile of ``confidence`` (1.959964 for 0.95)."""
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(lo, hi)`` of a proportion ``successes / n``.

    ``lo, hi = (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with ``p = successes/n``
    and ``z`` the normal quantile of ``confidence``. ``successes`` may be fractional (e.g. the
    accuracy averaged over finetuning seeds times ``n``).

    Raises:
      ValueError: ``n < 1``, ``successes`` outside ``[0, n]`` or not finite, bad ``confidence``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    k = float(successes)
    if not math.isfinite(k) or k < 0 or k > n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes!r}")
    z = z_value(confidence)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / den
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends: no rounding residue at 0/n and n/n
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def _correct_matrix(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold 0/1 (or bool) correctness values")
        arr = arr.astype(bool)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be [images] or [seeds, images], got shape {np.shape(a)}")
    return arr


def paired_difference(a, b, confidence: float = 0.95) -> dict:
    """Accuracy of ``a`` minus accuracy of ``b`` on the same images, with a confidence interval.

    Args:
      a, b: per-image correctness, ``[images]`` or ``[seeds, images]`` (0/1 or bool; the same
        images in the same order; seeds may differ in number). With several seeds each image's
        correctness is first averaged over the seeds.
      confidence: of the interval.

    Returns:
      ``{"diff", "lo", "hi", "n", "discordant", "per_seed"}``: the difference of the mean
      accuracies, its interval over test images, the number of images, the number of images
      whose seed-averaged correctness differs, and (when both have the same number of seeds)
      the difference seed by seed (``a``'s seed ``s`` against ``b``'s seed ``s``).

    The interval is the Wald interval of the mean per-image difference ``d_i`` with Agresti and
    Min's (2005) adjustment for paired proportions (half a pseudo-image in each cell of the
    2x2 table: weight 1/2 at ``d = +1`` and at ``d = -1``, 1 at ``d = 0``), which keeps its
    coverage near nominal when few images are discordant. It covers the sampling of test images
    for these trained models; the spread over finetuning seeds is reported in ``per_seed``, not
    folded into the interval.
    """
    a, b = _correct_matrix(a, "a"), _correct_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must cover the same images, got {a.shape[1]} and {b.shape[1]}")
    n = a.shape[1]
    d = a.mean(0) - b.mean(0)
    diff = float(d.mean())
    # Agresti-Min: pseudo-observations +1 and -1 (weight 1/2 each) and 0 (weight 1)
    w_n = n + 2.0
    mean_adj = float(d.sum()) / w_n
    second = (float(np.sum(d * d)) + 1.0) / w_n
    var = max(second - mean_adj * mean_adj, 0.0) / w_n
    half = z_value(confidence) * math.sqrt(var)
    out = {"diff": diff, "lo": max(-1.0, mean_adj - half), "hi": min(1.0, mean_adj + half), "n": n,
           "discordant": int(np.sum(d != 0))}
    if a.shape[0] == b.shape[0]:
        out["per_seed"] = [float(v) for v in a.mean(1) - b.mean(1)]
    return out


def seed_spread(values) -> dict:
    """``{"mean", "sd", "seeds", "values"}`` of per-seed results (``sd`` is the sample standard
    deviation, ``None`` for one seed)."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("seed_spread needs at least one value")
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else None
    return {"mean": float(np.mean(v)), "sd": sd, "seeds": len(v), "values": v}
