"""The report's plots."""

from __future__ import annotations

import json
import os

import numpy as np

from jaxmpc import _io
from jaxmpc.pipeline._workdir import Workdir


def plot_report(wd: Workdir, summary: dict) -> None:
    """``report/accuracy_vs_budget.png`` (accuracies with their intervals and seeds) and
    ``report/communication.png`` (bytes per layer of the secure runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if r["finetune"] and r.get("accuracy")]
    metric = summary.get("metric", "accuracy")
    if rows:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        span = max(r["plan"]["ratio"] for r in rows) * 100
        for i, (method, marker) in enumerate((("knapsack", "o"), ("uniform", "s"), ("random", "^"))):
            rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["plan"]["ratio"])
            if not rs:
                continue
            dx = (i - 1) * 0.012 * span  # side by side, so the intervals do not hide each other
            x = np.array([100 * r["plan"]["ratio"] + dx for r in rs])
            y = np.array([100 * r["accuracy"]["mean"] for r in rs])
            line = ax.plot(x, y, marker=marker, label=method)[0]
            if all(r["accuracy"]["lo"] is not None for r in rs):
                lo = y - np.array([100 * r["accuracy"]["lo"] for r in rs])
                hi = np.array([100 * r["accuracy"]["hi"] for r in rs]) - y
                ax.errorbar(x, y, yerr=[lo, hi], fmt="none", ecolor=line.get_color(), capsize=3, lw=1)
            for xi, r in zip(x, rs):
                vals = r["accuracy"]["values"]
                if len(vals) > 1:
                    ax.scatter([xi] * len(vals), 100 * np.asarray(vals), s=9, color=line.get_color(), alpha=0.45,
                               zorder=3)
        base = summary["all_relu"].get("accuracy") or {}
        if base:
            ax.axhline(100 * base["mean"], color="k", ls="--", lw=1, label="all-ReLU")
            if base.get("lo") is not None:
                ax.axhspan(100 * base["lo"], 100 * base["hi"], color="k", alpha=0.07, lw=0)
        ax.set_xlabel("DReLU budget (% of all-ReLU)")
        unit = "mIoU" if metric == "miou" else "accuracy"
        ax.set_ylabel(f"test {unit} after finetuning (%)")
        n = base.get("n")
        conf = int(round(100 * summary.get("confidence", 0.95)))
        if metric == "accuracy" and n:
            ax.set_title(f"mean over seeds (dots: each seed); bars: {conf}% Wilson CI, {n} test images", fontsize=8)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with _io.atomic_open(wd.path("report", "accuracy_vs_budget.png"), "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        plt.close(fig)
    reports = []
    for tag in ["all_relu"] + [r["tag"] for r in summary["rows"] if r["method"] == "knapsack"]:
        p = os.path.join(wd.infer(tag), "report.json")
        if os.path.exists(p):
            with open(p) as f:
                reports.append((tag, json.load(f)))
    if reports:
        fig, axes = plt.subplots(len(reports), 1, figsize=(10, 3.2 * len(reports)), squeeze=False)
        kinds = ["linear", "weights", "drelu", "mult", "reveal"]
        for ax, (tag, rep) in zip(axes[:, 0], reports):
            layers = [lay for lay in rep["layers"] if lay["total_bytes"] > 0]
            names = [lay["layer"] for lay in layers]
            bottom = np.zeros(len(layers))
            for k in kinds:
                vals = np.array([lay["by_kind"].get(k, 0) for lay in layers], float) / 1e3
                if vals.any():
                    ax.bar(range(len(layers)), vals, bottom=bottom, label=k)
                    bottom += vals
            ax.set_xticks(range(len(layers)))
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("kB per batch")
            tot = rep["totals"]
            ax.set_title(f"{tag}: {tot['total_bytes'] / 1e6:.2f} MB per batch of {tot['batch']}, "
                         f"{tot['rounds']} rounds")
            ax.legend(fontsize=7)
        fig.tight_layout()
        with _io.atomic_open(wd.path("report", "communication.png"), "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        plt.close(fig)
