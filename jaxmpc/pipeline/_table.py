"""The report's tables (markdown): accuracies with intervals and seed spread, costs, comparisons."""

from __future__ import annotations


def fmt_budget(v) -> str:
    """``10%`` for the fraction 0.1, ``5,000 DReLUs`` for the count 5000."""
    return f"{100 * v:g}%" if isinstance(v, float) else f"{v:,} DReLUs"


def _fmt_acc(v):
    return "-" if v is None else f"{100 * v:.2f}"


def _fmt_ci(lo, hi):
    return "" if lo is None or hi is None else f" [{100 * lo:.1f}, {100 * hi:.1f}]"


def _fmt_spread(st):
    if not st or st.get("sd") is None:
        return "- (1)" if st else "-"
    return f"±{100 * st['sd']:.2f} ({st['seeds']})"


def _mb(per_image: dict) -> str:
    """Per-inference MB per image (online MB) + the masked weights sent once per session."""
    if "inference_bytes" not in per_image:  # a result written before the split was recorded
        return f"{per_image['bytes'] / 1e6:.2f} ({per_image['online_bytes'] / 1e6:.2f})"
    return (f"{per_image['inference_bytes'] / 1e6:.2f} ({per_image['online_bytes'] / 1e6:.2f}) + "
            f"{per_image['session_bytes'] / 1e6:.2f}")


def summary_table(summary: dict) -> str:
    """The demo's tables: accuracies with intervals and seed spread (segmentation: mIoU), DReLUs,
    bytes and rounds per image, time; then the knapsack against each baseline at equal budget."""
    metric = summary.get("metric", "accuracy")
    sec_key = "secure_miou" if metric == "miou" else "secure_accuracy"
    name = "mIoU" if metric == "miou" else "acc"
    conf = int(round(100 * summary.get("confidence", 0.95)))
    ci = f" [{conf}% CI]" if metric == "accuracy" else ""
    hdr = (f"| model | DReLUs/image | plaintext {name} %{ci} | sd over seeds (n) | before finetune %{ci} | "
           f"secure {name} %{ci} | secure = plaintext | MB/image per inference (online) + once per session | rounds | s/image |")
    lines = [hdr, "|" + "---|" * 10]
    ar = summary["all_relu"]
    st = ar.get("accuracy") or {}
    sec = ar.get("secure")
    sec_ci = ar.get("secure_interval") or (None, None)
    plain = f"{_fmt_acc(ar['plaintext_accuracy'])}{_fmt_ci(st.get('lo'), st.get('hi'))}"
    if sec:
        pi = sec["per_image"]
        lines.append(f"| all-ReLU | {pi['drelus']:,} | {plain} | - | - | "
                     f"{_fmt_acc(sec.get(sec_key))}{_fmt_ci(*sec_ci)} | {sec['same_predictions']}/{sec['images']} | "
                     f"{_mb(pi)} | {pi['rounds']} | "
                     f"{sec['seconds_per_image']:.3f} |")
    else:
        lines.append(f"| all-ReLU | - | {plain} | - | - | - | - | - | - | - |")
    for row in summary["rows"]:
        ft, inf, plan = row["finetune"] or {}, row["infer"], row["plan"]
        st = row.get("accuracy") or {}
        acc = st.get("mean", ft.get("test", {}).get(metric))
        before = (ft.get("before_finetune") or {}).get(metric)
        if inf:
            pi = inf["per_image"]
            sec_ci = row.get("secure_interval") or (None, None)
            cells = (f"{_fmt_acc(inf.get(sec_key))}{_fmt_ci(*sec_ci)} | {inf['same_predictions']}/{inf['images']} | "
                     f"{_mb(pi)} | {pi['rounds']} | "
                     f"{inf['seconds_per_image']:.3f}")
        else:
            cells = "- | - | - | - | -"
        lines.append(f"| {row['method']} @ {fmt_budget(row['budget'])} ({100 * plan['ratio']:.1f}%) | "
                     f"{plan['drelus']:,} | "
                     f"{_fmt_acc(acc)}{_fmt_ci(st.get('lo'), st.get('hi'))} | {_fmt_spread(st or None)} | "
                     f"{_fmt_acc(before)}{_fmt_ci(*(row.get('before_interval') or (None, None)))} | {cells} |")
    n = (ar.get("accuracy") or {}).get("n")
    if metric == "accuracy":
        lines.append("")
        lines.append(f"Plaintext accuracy on {n or '?'} test images: mean over the finetuning seeds, with its {conf}% "
                     "Wilson interval over the test images; sd: standard deviation over the seeds (their number "
                     "in brackets). Secure accuracy: one run, on the images of its `secure = plaintext` column.")
    comps = summary.get("comparisons") or []
    if comps:
        lines += ["", f"Knapsack against the baselines at the same budget (paired on the same test images, "
                  f"{conf}% CI):",
                  "", "| budget | baseline | DReLUs knapsack / baseline | knapsack - baseline, points [CI] | "
                  "per seed | discordant images | accuracy intervals | verdict |", "|" + "---|" * 8]
        for c in comps:
            p = c.get("paired")
            if p:
                diff = f"{100 * p['diff']:+.2f} [{100 * p['lo']:+.1f}, {100 * p['hi']:+.1f}]"
                seeds = ", ".join(f"{100 * v:+.1f}" for v in p.get("per_seed", [])) or "-"
                disc = f"{p['discordant']}/{p['n']}"
            else:
                diff, seeds, disc = f"{100 * c['mean_diff']:+.2f}", "-", "-"
            verdict = c["verdict"]
            if not c.get("equal_budget", c["baseline_drelus"] >= 0.95 * c["knapsack_drelus"]):
                verdict += (f" (unequal budget: {c['baseline']} uses only {100 * c['baseline_ratio']:.1f}% "
                            f"against {100 * c['knapsack_ratio']:.1f}%)")
            lines.append(f"| {fmt_budget(c['budget'])} | {c['baseline']} | "
                         f"{c['knapsack_drelus']:,} / {c['baseline_drelus']:,} | "
                         f"{diff} | {seeds} | {disc} | {'apart' if c.get('intervals_apart') else 'overlap'} | "
                         f"{verdict} |")
        lines += ["", "Verdict: 'knapsack better' when the interval lies above 0 and every seed's difference is "
                  "positive; 'within noise' otherwise (the interval covers 0 or the seeds disagree)."]
    head = (summary.get("headline") or {}).get("lines") or []
    if head:
        lines += ["", f"**{head[0]}**", ""] + head[1:]
        lines += ["", "Beyond the intervals: against each baseline the paired interval lies above 0, every seed "
                  "agrees, and the knapsack's accuracy interval lies above the baseline's; equal budget: the "
                  "baseline's spec has at least 95% of the knapsack spec's DReLUs."]
    return "\n".join(lines)
