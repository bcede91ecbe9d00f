"""The ``report`` step: every result with its uncertainty (:func:`jaxmpc.train.wilson_interval`...)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxmpc import _io
from jaxmpc.pipeline._config import budget_tag
from jaxmpc.pipeline._plot import plot_report
from jaxmpc.pipeline._table import fmt_budget, summary_table
from jaxmpc.pipeline._workdir import Workdir, read_json, read_optional, write_json


def report_step(wd: Workdir, *, plots: bool = True, confidence: float = 0.95) -> dict:
    """Collects every step's results into ``report/summary.{json,md}`` and plots.

    Every accuracy comes with its uncertainty (:func:`jaxmpc.train.wilson_interval`,
    :func:`~jaxmpc.train.paired_difference`): a Wilson interval from the number of test images (for
    the seed-mean accuracy, the accuracy before finetuning and the secure accuracy), the mean and
    standard deviation over the finetuning seeds found in ``finetune_seeds/`` (``run_demo``), and
    -- where per-image predictions were saved (``finetune/<tag>/test_correct.json``, written by
    ``run_demo``) -- the paired difference between the knapsack spec and each baseline at the same
    budget, with its interval and a verdict, and the :func:`headline` computed from them.
    """
    cfg = wd.config()
    summary: dict[str, Any] = {"config": cfg.to_json(), "rows": [], "confidence": confidence}
    train_res = read_json(wd.path("train", "result.json"), "training result (run `jaxmpc train`)")
    seg = "miou" in train_res["test"]
    metric = summary["metric"] = "miou" if seg else "accuracy"
    base_acc = train_res["test"].get(metric)
    all_relu = read_optional(wd.path("infer", "all_relu", "result.json"))
    summary["all_relu"] = {"plaintext_accuracy": base_acc, "secure": all_relu,
                           "accuracy": _accuracy_stats([train_res["test"]], metric, confidence),
                           "secure_interval": _secure_interval(all_relu, metric, confidence)}
    for budget in cfg.budgets:
        for method in (["knapsack", "uniform", "random"] if cfg.baselines else ["knapsack"]):
            tag = f"{method}_{budget_tag(budget)}"
            plan = read_optional(wd.path("plans", f"{tag}.summary.json"))
            ft = read_optional(os.path.join(wd.finetune(tag), "result.json"))
            inf = read_optional(os.path.join(wd.infer(tag), "result.json"))
            if plan is None:
                continue
            seeds = [ft] if ft else []
            if ft:
                k = 1
                while (extra := read_optional(os.path.join(wd.finetune_seed(tag, k), "result.json"))) is not None:
                    seeds.append(extra)
                    k += 1
            summary["rows"].append({"tag": tag, "method": method, "budget": budget, "plan": plan,
                                    "finetune": ft, "infer": inf,
                                    "accuracy": _accuracy_stats([s["test"] for s in seeds], metric, confidence),
                                    "secure_interval": _secure_interval(inf, metric, confidence),
                                    "before_interval": _before_interval(ft, metric, confidence)})
    summary["comparisons"] = _comparisons(wd, summary["rows"], confidence)
    summary["headline"] = headline(summary["rows"], summary["comparisons"], confidence)
    write_json(wd.path("report", "summary.json"), summary)
    _io.atomic_write_text(wd.path("report", "summary.md"), summary_table(summary) + "\n")
    if plots:
        plot_report(wd, summary)
    return summary


def _accuracy_stats(tests: list, metric: str, confidence: float) -> dict | None:
    """Mean, spread over seeds and (classification) Wilson interval of finetuned test metrics."""
    from jaxmpc import train as stats

    vals = [t.get(metric) for t in tests if t and t.get(metric) is not None]
    if not vals:
        return None
    out = stats.seed_spread(vals)
    n = tests[0].get("count")
    out["n"] = int(n) if n else None
    out["lo"] = out["hi"] = None
    if metric == "accuracy" and n:
        out["lo"], out["hi"] = stats.wilson_interval(out["mean"] * int(n), int(n), confidence)
    return out


def _secure_interval(inf: dict | None, metric: str, confidence: float):
    from jaxmpc import train as stats

    if not inf or metric != "accuracy" or inf.get("secure_accuracy") is None:
        return None
    n = int(inf["images"])
    return list(stats.wilson_interval(inf["secure_accuracy"] * n, n, confidence))


def _before_interval(ft: dict | None, metric: str, confidence: float):
    """Wilson interval of the accuracy before finetuning (the same for every seed)."""
    from jaxmpc import train as stats

    before = (ft or {}).get("before_finetune") or {}
    if metric != "accuracy" or before.get("accuracy") is None or not before.get("count"):
        return None
    n = int(before["count"])
    return list(stats.wilson_interval(before["accuracy"] * n, n, confidence))


#: a baseline whose spec uses at least this fraction of the knapsack spec's DReLUs is at "equal budget"
EQUAL_BUDGET = 0.95


def _comparisons(wd: Workdir, rows: list, confidence: float) -> list:
    """Knapsack minus each baseline at the same budget, paired on the same test images."""
    from jaxmpc import train as stats

    out = []
    by = {(r["budget"], r["method"]): r for r in rows}
    for (budget, method), row in by.items():
        k = by.get((budget, "knapsack"))
        if method == "knapsack" or k is None or not row["accuracy"] or not k["accuracy"]:
            continue
        c = {"budget": budget, "baseline": method, "knapsack_ratio": k["plan"]["ratio"],
             "baseline_ratio": row["plan"]["ratio"], "knapsack_drelus": k["plan"]["drelus"],
             "baseline_drelus": row["plan"]["drelus"],
             "equal_budget": row["plan"]["drelus"] >= EQUAL_BUDGET * k["plan"]["drelus"],
             "mean_diff": k["accuracy"]["mean"] - row["accuracy"]["mean"],
             # the two accuracies' own intervals (over the test images) do not overlap
             "intervals_apart": (k["accuracy"].get("lo") is not None and row["accuracy"].get("hi") is not None
                                 and k["accuracy"]["lo"] > row["accuracy"]["hi"])}
        ca = read_optional(os.path.join(wd.finetune(k["tag"]), "test_correct.json"))
        cb = read_optional(os.path.join(wd.finetune(row["tag"]), "test_correct.json"))
        if ca and cb and len(ca["correct"][0]) == len(cb["correct"][0]):
            p = stats.paired_difference(np.asarray(ca["correct"], bool), np.asarray(cb["correct"], bool),
                                        confidence)
            c.update(paired=p)
            per_seed = p.get("per_seed", [])
            if p["lo"] > 0 and all(v > 0 for v in per_seed):
                c["verdict"] = "knapsack better"
            elif p["hi"] < 0 and all(v < 0 for v in per_seed):
                c["verdict"] = f"{method} better"
            else:
                c["verdict"] = "within noise"
        else:
            c["paired"] = None
            c["verdict"] = "no per-image predictions"
        out.append(c)
    return out


def headline(rows: list, comparisons: list, confidence: float = 0.95) -> dict:
    """Whether the knapsack beats *both* baselines at equal budget beyond the intervals, per budget.

    Computed from the comparisons (nothing is assumed): at a budget, the knapsack's advantage is
    ``"paired"`` when against each baseline the paired interval lies above 0 and every seed agrees
    (verdict ``knapsack better``), ``"visible"`` when moreover its accuracy interval lies above
    each baseline's (they do not overlap, as seen in the plot). A budget counts only where both
    baselines were planned at equal budget (:data:`EQUAL_BUDGET`) with per-image predictions.

    Returns:
      ``{"budgets": [{"budget", "status", "why"}], "paired": [budgets], "visible": [budgets],
      "lines": [text]}`` with ``status`` one of ``visible``, ``paired``, ``no``, ``not comparable``.
    """
    conf = int(round(100 * confidence))
    out = {"budgets": [], "paired": [], "visible": [], "lines": []}
    methods = sorted({r["method"] for r in rows} - {"knapsack"})
    if not methods:  # no baselines were run
        return out
    for budget in dict.fromkeys(r["budget"] for r in rows):
        cs = {c["baseline"]: c for c in comparisons if c["budget"] == budget}
        missing = [m for m in ("uniform", "random") if m not in cs]
        unequal = [m for m, c in cs.items() if not c["equal_budget"]]
        unpaired = [m for m, c in cs.items() if not c.get("paired")]
        if missing or unequal or unpaired:
            why = "; ".join(
                ([f"no {', '.join(missing)} spec"] if missing else [])
                + [f"{m} uses {100 * cs[m]['baseline_ratio']:.1f}% of the DReLUs against "
                   f"{100 * cs[m]['knapsack_ratio']:.1f}%" for m in unequal]
                + ([f"no per-image predictions for {', '.join(unpaired)}"] if unpaired else []))
            status = "not comparable"
        else:
            diffs = ", ".join(f"{m} {100 * c['paired']['diff']:+.1f} [{100 * c['paired']['lo']:+.1f}, "
                              f"{100 * c['paired']['hi']:+.1f}]" for m, c in sorted(cs.items()))
            if all(c["verdict"] == "knapsack better" for c in cs.values()):
                if all(c["intervals_apart"] for c in cs.values()):
                    status, why = "visible", f"{diffs} points; its accuracy interval lies above both baselines'"
                else:
                    close = ", ".join(m for m, c in sorted(cs.items()) if not c["intervals_apart"])
                    status, why = "paired", (f"{diffs} points; but its accuracy interval overlaps {close}'s "
                                             "(the paired comparison resolves it)")
            else:
                status, why = "no", f"{diffs} points: " + ", ".join(
                    f"{m} {c['verdict']}" for m, c in sorted(cs.items()) if c["verdict"] != "knapsack better")
        out["budgets"].append({"budget": budget, "status": status, "why": why})
        if status in ("visible", "paired"):
            out["paired"].append(budget)
        if status == "visible":
            out["visible"].append(budget)
        out["lines"].append(f"* {fmt_budget(budget)}: " + {
            "visible": "knapsack better than both baselines beyond the intervals",
            "paired": "knapsack better than both baselines on the same images",
            "no": "not better than both baselines",
            "not comparable": "no comparison at equal budget"}[status] + f" ({why})")
    if out["visible"]:
        first = (f"The knapsack's advantage over both baselines at equal budget is visible beyond the {conf}% "
                 f"intervals at {', '.join(fmt_budget(b) for b in out['visible'])}.")
    elif out["paired"]:
        first = (f"The knapsack beats both baselines at equal budget on the same test images at "
                 f"{', '.join(fmt_budget(b) for b in out['paired'])}, but not beyond the accuracies' own "
                 f"{conf}% intervals.")
    else:
        first = ("The knapsack's advantage over both baselines at equal budget is NOT established here: at no "
                 f"budget is it beyond the {conf}% intervals.")
    out["lines"].insert(0, first)
    return out

