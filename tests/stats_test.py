"""Uncertainty of accuracies: Wilson intervals, paired differences, and the report that shows them."""

import json
import os

import numpy as np
import pytest

from jaxmpc import pipeline as pl
from jaxmpc import stats  # the old path of jaxmpc.train's interval functions (an alias)
from jaxmpc import train


@pytest.mark.parametrize("k,n", [(81, 263), (0, 10), (10, 10), (359, 359), (333, 359), (1, 2)])
def test_wilson_interval_matches_scipy(k, n):
    scipy_stats = pytest.importorskip("scipy.stats")
    want = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = stats.wilson_interval(k, n)
    assert lo == pytest.approx(want.low, abs=1e-12) and hi == pytest.approx(want.high, abs=1e-12)
    lo90, hi90 = stats.wilson_interval(k, n, confidence=0.9)
    assert lo <= lo90 <= hi90 <= hi


def test_old_module_path_is_the_same_module():
    assert stats.wilson_interval is train.wilson_interval and stats.paired_difference is train.paired_difference


def test_wilson_interval_covers_the_true_proportion():
    """Coverage by simulation (independent of the formula): near 95% even at small n and p near 1."""
    rng = np.random.default_rng(3)
    for n, p in [(359, 0.92), (128, 0.97), (40, 0.5)]:
        k = rng.binomial(n, p, size=4000)
        cover = np.mean([lo <= p <= hi for lo, hi in (stats.wilson_interval(int(x), n) for x in k)])
        assert 0.93 <= cover <= 0.975, (n, p, cover)


def test_wilson_interval_known_value_and_bad_input():
    # 92.76% of 359 images (the old demo's headline): the interval is about +-2.7 points
    lo, hi = stats.wilson_interval(333, 359)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (89.6, 95.0)
    assert stats.z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    for bad in [(5, 0), (-1, 10), (11, 10), (float("nan"), 10), (1, 2.5), (1, True)]:
        with pytest.raises(ValueError):
            stats.wilson_interval(*bad)
    with pytest.raises(ValueError, match="confidence"):
        stats.wilson_interval(1, 2, confidence=1.0)


def test_paired_difference_counts_and_coverage():
    a = np.array([1, 1, 1, 0, 1, 0, 1, 1], bool)
    b = np.array([1, 0, 1, 0, 0, 1, 1, 1], bool)
    p = stats.paired_difference(a, b)
    assert p["diff"] == pytest.approx(1 / 8) and p["discordant"] == 3 and p["n"] == 8
    assert p["lo"] < p["diff"] < p["hi"] and p["per_seed"] == [pytest.approx(1 / 8)]
    # identical models: the interval is centred on 0 and still has a width (no false certainty)
    same = stats.paired_difference(a, a)
    assert same["diff"] == 0 and same["lo"] < 0 < same["hi"]
    # coverage of the 95% interval on correlated pairs with a known true difference
    rng = np.random.default_rng(0)
    for n, pa, pb, rho in [(359, 0.92, 0.88, 0.5), (200, 0.90, 0.90, 0.3)]:
        hits = 0
        for _ in range(600):
            u = rng.random(n)
            v = np.where(rng.random(n) < rho, u, rng.random(n))
            r = stats.paired_difference(u < pa, v < pb)
            hits += r["lo"] <= pa - pb <= r["hi"]
        assert 0.92 <= hits / 600 <= 0.985, (n, pa, pb, hits / 600)
    # a real difference of 5 points on 359 images with ~15% discordant pairs is detected
    u = rng.random(359)
    r = stats.paired_difference(u < 0.93, u < 0.88)
    assert r["lo"] > 0
    # seeds: averaged per image, per-seed differences reported
    a3, b3 = np.stack([a, a, ~b]), np.stack([b, b, b])
    r3 = stats.paired_difference(a3, b3)
    assert r3["per_seed"] == [pytest.approx(1 / 8), pytest.approx(1 / 8), pytest.approx(3 / 8 - 5 / 8)]
    with pytest.raises(ValueError, match="same images"):
        stats.paired_difference(a, b[:5])
    with pytest.raises(ValueError, match="0/1"):
        stats.paired_difference(np.array([0.5, 1.0]), np.array([1, 1]))


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def _workdir(tmp_path, correct, drelus=None, n=300):
    """A work folder written by hand (no training) with ``correct[method]``: [seeds, n] per-image results."""
    wd = pl.Workdir(str(tmp_path))
    seeds = len(next(iter(correct.values())))
    wd.save_config(pl.PipelineConfig(budgets=(0.1,), finetune_seeds=seeds))
    _write(wd.path("train", "result.json"), {"test": {"accuracy": 0.97, "count": n}})
    for method, c in correct.items():
        tag = f"{method}_10pct"
        d = (drelus or {}).get(method, 230)
        _write(wd.path("plans", f"{tag}.summary.json"), {"tag": tag, "drelus": d, "ratio": d / 2300, "budget": 0.1})
        for k in range(seeds):
            _write(os.path.join(wd.finetune_seed(tag, k), "result.json"),
                   {"test": {"accuracy": float(c[k].mean()), "count": n}, "before_finetune": {"accuracy": 0.3}})
        _write(os.path.join(wd.finetune(tag), "test_correct.json"), {"correct": c.astype(int).tolist()})
    return wd


def test_report_shows_intervals_seed_spread_and_paired_verdicts(tmp_path):
    """The report's numbers follow from the files."""
    n = 300
    rng = np.random.default_rng(1)
    u = rng.random((2, n))
    correct = {"knapsack": u < 0.93, "uniform": u < 0.80, "random": rng.random((2, n)) < 0.93}
    wd = _workdir(tmp_path, correct, n=n)
    s = pl.report_step(wd, plots=False)
    rows = {r["method"]: r for r in s["rows"]}
    k = rows["knapsack"]["accuracy"]
    assert k["seeds"] == 2 and k["mean"] == pytest.approx(correct["knapsack"].mean())
    assert (k["lo"], k["hi"]) == pytest.approx(stats.wilson_interval(k["mean"] * n, n))
    assert k["sd"] == pytest.approx(np.std(correct["knapsack"].mean(1), ddof=1))
    verdict = {c["baseline"]: c["verdict"] for c in s["comparisons"]}
    assert verdict["uniform"] == "knapsack better"  # 13 points on the same images
    assert verdict["random"] in ("within noise", "random better", "knapsack better")
    rnd = next(c for c in s["comparisons"] if c["baseline"] == "random")["paired"]
    assert rnd["lo"] < rnd["diff"] < rnd["hi"]
    text = open(wd.path("report", "summary.md")).read()
    lo, hi = stats.wilson_interval(0.97 * n, n)
    assert f"97.00 [{100 * lo:.1f}, {100 * hi:.1f}]" in text
    assert f"±{100 * k['sd']:.2f} (2)" in text and "knapsack better" in text and "Wilson" in text
    # the headline is computed: random is within noise here, so the advantage is not established
    assert s["headline"]["budgets"][0]["status"] == "no" and not s["headline"]["visible"]
    assert "NOT established" in text and "random within noise" in text


@pytest.mark.parametrize("gap, random_drelus, status", [
    (0.20, 230, "visible"),          # far apart: paired interval above 0 and accuracy intervals apart
    (0.04, 230, "paired"),           # paired interval above 0, the accuracies' intervals overlap
    (0.20, 150, "not comparable"),   # random's spec uses 65% of the DReLUs: not at equal budget
])
def test_headline_follows_the_intervals(tmp_path, gap, random_drelus, status):
    n = 359
    rng = np.random.default_rng(2)
    u = rng.random((3, n))
    correct = {"knapsack": u < 0.93, "uniform": u < 0.93 - gap, "random": u < 0.93 - gap}
    s = pl.report_step(_workdir(tmp_path, correct, {"random": random_drelus}, n=n), plots=False)
    h = s["headline"]
    assert h["budgets"][0]["status"] == status, h
    rows = {r["method"]: r["accuracy"] for r in s["rows"]}
    apart = all(rows["knapsack"]["lo"] > rows[m]["hi"] for m in ("uniform", "random"))
    assert apart == (status == "visible" or (status == "not comparable" and gap == 0.20))
    text = open(os.path.join(str(tmp_path), "report", "summary.md")).read()
    assert h["lines"][0] in text
    if status == "visible":
        assert h["visible"] == [0.1] and "visible beyond the 95% intervals at 10%" in text
    elif status == "paired":
        assert h["paired"] == [0.1] and h["visible"] == [] and "overlaps" in text
    else:
        assert "random uses 6.5% of the DReLUs" in text and "NOT established" in text

