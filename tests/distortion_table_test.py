"""DistortionTable: construction checks, the .npz file format, the planner hand-off."""

import io
import json
import os
import pickle

import numpy as np
import pytest

from jaxmpc.core import blocks
from jaxmpc.distortion import DISTORTION_FORMAT, DISTORTION_VERSION, DistortionTable, LayerDistortion, TableError


def make_table():
    rng = np.random.default_rng(0)
    layers = []
    for name, (h, w, c) in {"stem/relu": (8, 6, 3), "layer1_0/relu1": (4, 3, 5), "head/relu": (1, 1, 2)}.items():
        cand = blocks.default_candidates(h, w)
        d = rng.uniform(0, 1, (c, len(cand)))
        d[:, 0] = 0.0
        layers.append(LayerDistortion.create(name, h, w, cand, d))
    return DistortionTable(tuple(layers), {"model": "Toy", "input_shape": (8, 6, 1), "num_samples": np.int64(4)})


def test_layer_costs_follow_blocks_for_non_square_maps():
    t = make_table()
    stem = t["stem/relu"]
    np.testing.assert_array_equal(stem.costs, blocks.num_patches(8, 6, stem.candidates))
    assert stem.relu_cost == 48 and t.relu_drelus() == 3 * 48 + 5 * 12 + 2 * 1
    assert t.num_channels == 10 and len(t) == 3 and "head/relu" in t and "nope" not in t
    assert t.meta["input_shape"] == [8, 6, 1] and t.meta["num_samples"] == 4  # JSON-normalised
    with pytest.raises(KeyError, match="no layer"):
        t["nope"]


def test_round_trip_is_exact_and_never_pickles(tmp_path):
    t = make_table()
    path = tmp_path / "t.npz"
    t.save(path)
    assert not [f for f in os.listdir(tmp_path) if f != "t.npz"]  # no temporary files left
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(bytes(z["meta"]).decode())
        assert all(z[k].dtype != object for k in z.files)
    assert header["format"] == DISTORTION_FORMAT and header["version"] == DISTORTION_VERSION
    u = DistortionTable.load(path)
    assert u.names == t.names and u.meta == t.meta
    for a, b in zip(t.layers, u.layers):
        assert (a.height, a.width, a.channels) == (b.height, b.width, b.channels)
        np.testing.assert_array_equal(a.distortion, b.distortion)
        np.testing.assert_array_equal(a.candidates, b.candidates)
        assert b.candidates.dtype == np.int32 and b.costs.dtype == np.int64
    sub = t.select(["head/relu", "stem/relu"])
    assert sub.names == ["head/relu", "stem/relu"]


def test_load_rejects_foreign_and_damaged_files(tmp_path):
    t = make_table()
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(TableError, match="not a readable"):
        DistortionTable.load(tmp_path / "pickle.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(TableError, match="no 'meta'"):
        DistortionTable.load(tmp_path / "other.npz")
    t.save(tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(bytes(arrays["meta"]).decode())
    for mutate, match in (
        (lambda h, a: h.update(version=99), "unsupported version"),
        (lambda h, a: h.update(format="x"), "not a jaxmpc distortion table"),
        (lambda h, a: a.pop("distortion_1"), "incomplete"),
        (lambda h, a: a.update(costs_0=a["costs_0"] + 1), "costs do not match"),
        (lambda h, a: a.update(distortion_2=a["distortion_2"][:1]), "distortion has shape"),
    ):
        h2 = json.loads(json.dumps(header))
        a2 = dict(arrays)
        mutate(h2, a2)
        a2["meta"] = np.frombuffer(json.dumps(h2).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **a2)
        (tmp_path / "bad.npz").write_bytes(buf.getvalue())
        with pytest.raises(TableError, match=match):
            DistortionTable.load(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        DistortionTable.load(tmp_path / "missing.npz")


def test_construction_checks():
    cand = np.array([[1, 1], [2, 2], [0, 1]])
    with pytest.raises(TableError, match="distortion has shape"):
        LayerDistortion("a", 4, 4, 3, cand, np.zeros((3, 2)), blocks.num_patches(4, 4, cand))
    with pytest.raises(TableError, match="candidate"):
        LayerDistortion.create("a", 4, 4, np.array([[0, 0]]), np.zeros((3, 1)))
    with pytest.raises(TableError, match="positive int"):
        LayerDistortion.create("a", 0, 4, cand, np.zeros((3, 3)))
    layer = LayerDistortion.create("a", 4, 4, cand, np.zeros((3, 3)))
    with pytest.raises(TableError, match="twice"):
        DistortionTable((layer, layer))
    with pytest.raises(TableError, match="JSON"):
        DistortionTable((layer,), {"x": object()})
    with pytest.raises(ValueError):
        layer.distortion[0, 0] = 1.0  # read-only


def test_planner_layers_feed_the_knapsack():
    knapsack = pytest.importorskip("jaxmpc.knapsack")
    t = make_table()
    layers = t.planner_layers()
    assert [layer.name for layer in layers] == t.names
    stem = layers[0]
    assert (stem.height, stem.width) == (8, 6)
    assert not np.any((stem.candidates[:, 0] == 1) & (stem.candidates[:, 1] == 0))  # zero dropped
    assert stem.distortion.shape == (3, len(t["stem/relu"].candidates) - 1)
    assert len(t.planner_layers(drop_zero=False)[0].candidates) == len(t["stem/relu"].candidates)
    assert isinstance(stem, knapsack.LayerCandidates)
