"""Distortion-vs-cost plots (PNG, headless)."""

import numpy as np
import pytest

from jaxmpc.core import blocks
from jaxmpc.distortion import DistortionTable, LayerDistortion, plot_distortion


def make_table():
    rng = np.random.default_rng(0)
    layers = []
    for name, (h, w, c) in {"stem/relu": (8, 8, 4), "layer1/relu": (4, 2, 3), "pool/relu": (1, 1, 2)}.items():
        cand = blocks.default_candidates(h, w)
        cost = blocks.num_patches(h, w, cand)
        d = np.exp(-cost / (h * w))[None, :] * rng.uniform(0.5, 2.0, (c, len(cand)))
        d[:, 0] = 0.0
        layers.append(LayerDistortion.create(name, h, w, cand, d))
    return DistortionTable(tuple(layers), {"model": "Toy", "method": "exact"})


def test_writes_png_summary_and_single_channel(tmp_path):
    table = make_table()
    fig = plot_distortion(table, tmp_path / "all.png")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 3
    fig = plot_distortion(table, tmp_path / "one.png", layers=["layer1/relu"], channel=2, ncols=2)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 1
    for name in ("all.png", "one.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert plot_distortion(table) is not None  # no file


def test_errors():
    table = make_table()
    with pytest.raises(KeyError):
        plot_distortion(table, layers=["nope"])
    with pytest.raises(ValueError, match="out of range"):
        plot_distortion(table, channel=3)
    with pytest.raises(ValueError, match="no layers"):
        plot_distortion(table, layers=[])
