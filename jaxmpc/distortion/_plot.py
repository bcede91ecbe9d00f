"""Plots of distortion against DReLU cost (Gorski & Avidan, arXiv 2304.10442, §3.2, Fig. 3 style).

Uses matplotlib's object API with the Agg canvas only (no pyplot, no global backend switch), so
it works headless and has no side effects on the caller's matplotlib state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from jaxmpc.distortion._table import DistortionTable, LayerDistortion


def _layer_axes(ax, layer: LayerDistortion, channel: int | None) -> None:
    cand = layer.candidates
    cost = layer.costs.astype(np.float64)
    if channel is None:
        d = layer.distortion
        lo, med, hi = np.percentile(d, [25, 50, 75], axis=0)
        label = f"median over {layer.channels} channels (bars: quartiles)"
    else:
        if not 0 <= channel < layer.channels:
            raise ValueError(f"layer {layer.name!r} has {layer.channels} channels; channel {channel} is out of range")
        med = layer.distortion[channel]
        lo = hi = med
        label = f"channel {channel}"
    identity = (cand[:, 0] == 0) & (cand[:, 1] == 1)
    zero = (cand[:, 0] == 1) & (cand[:, 1] == 0)
    patch = ~(identity | zero)
    ax.errorbar(
        cost[patch],
        med[patch],
        yerr=[med[patch] - lo[patch], hi[patch] - med[patch]],
        fmt="o",
        ms=3,
        lw=0.6,
        capsize=1.5,
        color="tab:blue",
        label=label,
        clip_on=False,
    )
    # Lower envelope: the best candidate at each cost or cheaper.
    order = np.argsort(cost[patch], kind="stable")
    xs, ys = cost[patch][order], med[patch][order]
    env_y = np.minimum.accumulate(ys) if ys.size else ys
    env_x = xs
    ax.plot(env_x, env_y, "-", lw=0.8, color="tab:blue", alpha=0.5)
    for mask, marker, color, name in ((identity, "s", "tab:green", "identity"), (zero, "x", "tab:red", "zero")):
        if mask.any():
            ax.plot(cost[mask], med[mask], marker, color=color, ms=5, label=name, clip_on=False, zorder=3)
    relu = (cand[:, 0] == 1) & (cand[:, 1] == 1)
    if relu.any():
        ax.axvline(layer.relu_cost, color="gray", lw=0.6, ls=":")
    positive = layer.distortion[layer.distortion > 0]
    floor = float(positive.min()) if positive.size else 1e-12
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("symlog", linthresh=floor)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_title(f"{layer.name}  ({layer.height}x{layer.width}x{layer.channels})", fontsize=8)
    ax.set_xlabel("DReLUs per channel", fontsize=7)
    ax.set_ylabel("distortion (output MSE)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(True, lw=0.3, alpha=0.5)


def plot_distortion(
    table: DistortionTable,
    path: str | os.PathLike | None = None,
    *,
    layers: Sequence[str] | None = None,
    channel: int | None = None,
    ncols: int = 4,
    dpi: int = 120,
):
    """Plots distortion against DReLU cost per layer, and optionally saves a PNG.

    One panel per layer: for each candidate patch size, the median distortion over the
    layer's channels with quartile bars (or one ``channel``'s values), against the candidate's
    DReLU count per channel (symmetric-log axes so that identity, cost 0, shows). The line is
    the lower envelope (best candidate at that cost or cheaper); identity and zero are marked;
    the dotted line is the ReLU cost ``H * W``.

    Args:
      table: a :class:`DistortionTable`.
      path: where to save the PNG (its folder must exist); ``None`` to only return the figure.
      layers: layer names to plot (default: all).
      channel: plot this channel of every layer instead of the median over channels.
      ncols: panels per row.
      dpi: resolution of the PNG.

    Returns:
      The ``matplotlib.figure.Figure``.

    Raises:
      KeyError: for an unknown layer; ValueError: for a channel out of range.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(layers) if layers is not None else table.names
    if not names:
        raise ValueError("nothing to plot: no layers")
    chosen = [table[n] for n in names]
    ncols = max(1, min(int(ncols), len(chosen)))
    nrows = math.ceil(len(chosen) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, layer in zip(axes.ravel(), chosen):
        _layer_axes(ax, layer, channel)
    for ax in axes.ravel()[len(chosen) :]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=6, loc="best")
    model = table.meta.get("model", "")
    method = table.meta.get("method", "")
    fig.suptitle(f"Distortion vs DReLU cost  {model}  ({method})", fontsize=9)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig
