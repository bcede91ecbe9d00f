"""Tests of block-size specs: file format, validation, variables <-> spec, counting, candidates."""

import json
import os
import pickle

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.core import blocks
from jaxmpc.nn import (
    SPEC_FORMAT,
    SPEC_VERSION,
    DeepLabV3MobileNetV2,
    ResNet18,
    ResNetSmall,
    SpecError,
    apply_spec,
    candidate_table,
    check_spec,
    count_drelus,
    load_spec,
    relu_layers,
    save_spec,
    spec_from_variables,
)

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def small():
    """ResNetSmall on 8x8 grey images, with abstract variables (no compilation)."""
    model = ResNetSmall()
    variables = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1,) + SHAPE, jnp.float32))
    return model, variables, relu_layers(model, SHAPE)


def a_spec(layers, seed=0):
    """A valid spec touching every layer: random patches, identity and zero channels."""
    rng = np.random.default_rng(seed)
    spec = {}
    for name, (h, w, c) in layers:
        cands = blocks.default_candidates(h, w)
        spec[name] = cands[rng.integers(0, len(cands), size=c)]
    return spec


# --------------------------------------------------------------------------------------------
# Layers, counts, candidates


def test_relu_layers_names_and_nonsquare_shapes(small):
    model, variables, layers = small
    assert [n for n, _ in layers] == [
        "stem/relu", "layer1_0/relu1", "layer1_0/relu2", "layer2_0/relu1", "layer2_0/relu2",
        "layer3_0/relu1", "layer3_0/relu2",
    ]  # fmt: skip
    # The names are the key paths of the "sizes" leaves (jax sorts keys when it rebuilds dicts).
    concrete = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), variables)
    assert list(spec_from_variables(concrete)) == sorted(n for n, _ in layers)
    nonsquare = dict(relu_layers(model, (28, 13, 1)))
    assert nonsquare["stem/relu"] == (28, 13, 8)
    assert nonsquare["layer2_0/relu1"] == (14, 7, 16)
    assert nonsquare["layer3_0/relu2"] == (7, 4, 32)
    assert dict(relu_layers(model, (3, 28, 13, 1))) == nonsquare  # a batch dimension is accepted
    with pytest.raises(ValueError, match="input_shape"):
        relu_layers(model, (28, 13))


def test_count_drelus(small):
    model, _, layers = small
    base = count_drelus(model, None, SHAPE)
    assert base.total == sum(h * w * c for _, (h, w, c) in layers)
    spec = a_spec(layers)
    counted = count_drelus(model, spec, SHAPE)
    assert counted.per_layer == {n: blocks.drelu_count(h, w, spec[n]) for n, (h, w, _) in layers}
    assert counted.total == sum(counted.per_layer.values()) < base.total
    # A partial spec: the other layers count as ReLUs.
    first = layers[0][0]
    partial = count_drelus(model, {first: spec[first]}, SHAPE)
    assert partial.total == base.total - base.per_layer[first] + counted.per_layer[first]
    # Non-square maps use ceil(H/bh) * ceil(W/bw).
    c = layers[0][1][2]
    wide = count_drelus(model, {first: np.tile([3, 2], (c, 1))}, (7, 11, 1))
    assert wide.per_layer[first] == c * 3 * 6


def test_count_drelus_from_variables(small):
    model, variables, layers = small
    spec = a_spec(layers, seed=1)
    concrete = apply_spec(variables, spec)
    assert count_drelus(model, concrete, SHAPE) == count_drelus(model, spec, SHAPE)


def test_candidate_table():
    table = candidate_table(ResNet18(), (32, 32, 3))
    assert list(table) == [n for n, _ in relu_layers(ResNet18(), (32, 32, 3))]
    np.testing.assert_array_equal(table["stem/relu"], blocks.default_candidates(32, 32))
    np.testing.assert_array_equal(table["layer4_1/relu2"], blocks.default_candidates(4, 4))
    seg = candidate_table(DeepLabV3MobileNetV2(), (512, 512, 3))
    np.testing.assert_array_equal(seg["decode/image_pool/relu"], [[1, 1], [0, 1], [1, 0]])
    np.testing.assert_array_equal(seg["decode/aspp0/relu"], blocks.default_candidates(64, 64))
    wide = candidate_table(ResNet18(), (32, 48, 3))
    np.testing.assert_array_equal(wide["stem/relu"], blocks.default_candidates(32, 48))


# --------------------------------------------------------------------------------------------
# Variables <-> spec


def test_apply_spec_changes_the_model(small):
    model, abstract, layers = small
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2,) + SHAPE), jnp.float32)
    # Numpy-filled variables of the model's structure (compiling the RNG initialisers is slow).
    variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.3 + 0.5, s.dtype), abstract)
    variables = apply_spec(variables, {})
    apply = jax.jit(model.apply)
    y_relu = apply(variables, x)
    spec = a_spec(layers, seed=2)
    new = apply_spec(variables, spec)
    assert new["params"] is variables["params"]  # shared, not copied
    np.testing.assert_array_equal(np.asarray(variables["block_sizes"]["stem"]["relu"]["sizes"]), 1)  # unchanged
    back = spec_from_variables(new)
    assert sorted(back) == sorted(n for n, _ in layers)
    for name in spec:
        np.testing.assert_array_equal(back[name], spec[name])
        assert back[name].dtype == np.int32
    assert not np.allclose(np.asarray(apply(new, x)), np.asarray(y_relu))
    # The empty spec restores the all-ReLU model.
    np.testing.assert_array_equal(np.asarray(apply(apply_spec(new, {}), x)), np.asarray(y_relu))
    # Identity everywhere: the network becomes linear in its input.
    linear = apply_spec(variables, {n: np.tile([0, 1], (c, 1)) for n, (_, _, c) in layers})

    def f(x):
        return apply(linear, x)

    np.testing.assert_allclose(np.asarray(f(2 * x) - f(x)), np.asarray(f(x) - f(0 * x)), rtol=1e-4, atol=1e-4)


def test_apply_spec_keeps_frozendict(small):
    _, variables, layers = small
    frozen = flax.core.freeze(jax.tree.map(lambda s: np.ones(s.shape, s.dtype), variables))
    out = apply_spec(frozen, a_spec(layers))
    assert isinstance(out, flax.core.FrozenDict)


def test_apply_spec_errors(small):
    _, variables, layers = small
    name, (_, _, c) = layers[1]
    with pytest.raises(SpecError, match=r"unknown layer 'layer1_0/relu_1'.*did you mean 'layer1_0/relu1'"):
        apply_spec(variables, {"layer1_0/relu_1": np.ones((c, 2), np.int32)})
    with pytest.raises(SpecError, match=f"layer '{name}': expected {c} channels, got {c + 1}"):
        apply_spec(variables, {name: np.ones((c + 1, 2), np.int32)})
    with pytest.raises(SpecError, match=f"layer '{name}': channel 3 has patch size \\(0, 0\\)"):
        bad = np.ones((c, 2), np.int32)
        bad[3] = 0
        apply_spec(variables, {name: bad})
    with pytest.raises(SpecError, match=r"missing layer '.*' \(6 missing in total; strict=True\)"):
        apply_spec(variables, {name: np.ones((c, 2), np.int32)}, strict=True)
    with pytest.raises(SpecError, match="block_sizes"):
        apply_spec({"params": {}}, {})
    with pytest.raises(SpecError, match="mapping"):
        check_spec([("stem/relu", np.ones((8, 2)))], layers)


# --------------------------------------------------------------------------------------------
# Files


def test_save_load_round_trip(tmp_path, small):
    model, variables, layers = small
    spec = a_spec(layers, seed=3)
    path = tmp_path / "spec.json"
    save_spec(path, spec, model="ResNetSmall", input_shape=SHAPE, budget=np.int64(123), ratio=0.06)
    assert os.listdir(tmp_path) == ["spec.json"]  # no temporary file left behind
    doc = json.loads(path.read_text())
    assert doc["format"] == SPEC_FORMAT and doc["version"] == SPEC_VERSION
    assert doc["meta"] == {"model": "ResNetSmall", "input_shape": [8, 8, 1], "budget": 123, "ratio": 0.06}
    assert list(doc["layers"]) == list(spec)
    assert len(path.read_text().splitlines()) == 7 + len(spec)  # one line per layer

    loaded, meta = load_spec(path, with_meta=True)
    assert meta["budget"] == 123
    assert list(loaded) == list(spec)
    for name in spec:
        np.testing.assert_array_equal(loaded[name], spec[name])
        assert loaded[name].dtype == np.int32
    # Against the model, by variables or by model + the file's input shape.
    for kwargs in ({"variables": variables}, {"model": model}, {"model": model, "input_shape": (28, 28, 1)}):
        checked = load_spec(path, strict=True, **kwargs)
        assert all(np.array_equal(checked[n], spec[n]) for n in spec)


def test_partial_spec_file_is_refused_unless_strict_false(tmp_path, small):
    model, variables, layers = small
    name, (_, _, c) = layers[2]
    path = tmp_path / "partial.json"
    save_spec(path, {name: np.tile([2, 2], (c, 1))})
    for kwargs in ({"variables": variables}, {"model": model, "input_shape": SHAPE}, {"variables": variables,
                                                                                     "strict": True}):
        with pytest.raises(SpecError, match="partial.json: missing layer '.*' \\(6 missing in total"):
            load_spec(path, **kwargs)
    loaded = load_spec(path, variables=variables, strict=False)
    assert sorted(loaded) == sorted(n for n, _ in layers)
    assert list(load_spec(path, model=model, input_shape=SHAPE, strict=False)) == [n for n, _ in layers]
    assert all(np.all(loaded[n] == 1) for n, _ in layers if n != name)
    assert sorted(load_spec(path)) == [name]  # on its own the file is returned as written
    with pytest.raises(ValueError, match="input_shape"):
        load_spec(path, model=model, strict=False)  # no input shape in the file or the call


def test_patch_larger_than_the_map_is_refused(tmp_path, small):
    model, variables, layers = small
    spec = a_spec(layers)
    name, (h, w, c) = layers[3]
    spec[name] = np.array(spec[name])
    spec[name][5] = (10**6, 1)
    path = tmp_path / "big.json"
    save_spec(path, spec, input_shape=SHAPE)
    msg = f"layer '{name}': channel 5 has patch size \\(1000000, 1\\), larger than the layer's {h}x{w}"
    with pytest.raises(SpecError, match=msg):
        load_spec(path, model=model)  # the file's input shape
    with pytest.raises(SpecError, match=msg):
        load_spec(path, model=model, variables=variables)
    with pytest.raises(SpecError, match=msg):
        count_drelus(model, spec, SHAPE)
    with pytest.raises(SpecError, match=msg):
        check_spec(spec, layers)
    spec[name][5] = (h, w)  # the whole map is fine; so are identity and zero
    check_spec(spec, layers)
    # without map sizes (variables only) the channels are checked, not the map
    assert load_spec(path, variables=variables)[name][5].tolist() == [10**6, 1]


def test_empty_spec_file(tmp_path):
    path = tmp_path / "empty.json"
    save_spec(path, {})
    assert load_spec(path) == {}
    assert json.loads(path.read_text())["layers"] == {}


def _write(tmp_path, doc, name="bad.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _doc(**overrides):
    doc = {"format": SPEC_FORMAT, "version": 1, "meta": {}, "layers": {"stem/relu": [[1, 1]] * 8}}
    doc.update(overrides)
    return doc


@pytest.mark.parametrize(
    "doc, message",
    [
        ("{not json", "not a valid JSON block-spec file"),
        ("[1, 2]", "not a jaxmpc block spec"),
        (_doc(format="something-else"), "format 'something-else'"),
        (_doc(version=2), "unsupported spec version 2; this jaxmpc reads version 1"),
        ({k: v for k, v in _doc().items() if k != "version"}, "unsupported spec version None"),
        (_doc(version=True), "unsupported spec version True"),
        (_doc(meta=[1]), "'meta' must be an object"),
        (_doc(layers=[["stem/relu", [[1, 1]]]]), "'layers' must be an object"),
        (_doc(layers={"stem/relu": [[1, 1], [2]]}), "layer 'stem/relu': expected a non-empty list of \\[bh, bw\\]"),
        (_doc(layers={"stem/relu": [[1, 1], [2.5, 2]]}), "layer 'stem/relu': expected a non-empty list"),
        (_doc(layers={"stem/relu": []}), "layer 'stem/relu': expected a non-empty list"),
        (_doc(layers={"stem/relu": "1,1"}), "layer 'stem/relu': expected a non-empty list"),
        (_doc(layers={"stem/relu": [[1, 1], [0, 0]]}), "layer 'stem/relu': channel 1 has patch size \\(0, 0\\)"),
        (_doc(layers={"stem/relu": [[1, 1], [-2, 3]]}), "layer 'stem/relu': channel 1 has patch size \\(-2, 3\\)"),
    ],
    ids=[
        "not-json",
        "not-object",
        "format",
        "version",
        "no-version",
        "bool-version",
        "meta",
        "layers-list",
        "ragged",
        "float",
        "empty",
        "string",
        "zero-zero",
        "negative",
    ],
)
def test_malformed_files(tmp_path, doc, message):
    with pytest.raises(SpecError, match=message):
        load_spec(_write(tmp_path, doc))


def test_pickle_is_rejected(tmp_path):
    path = tmp_path / "spec.pickle"
    path.write_bytes(pickle.dumps({"stem/relu": np.ones((8, 2), np.int32)}))
    with pytest.raises(SpecError, match="JSON|UTF-8"):
        load_spec(path)


def test_file_mismatch_with_model(tmp_path, small):
    _, variables, _ = small
    with pytest.raises(SpecError, match=r"bad\.json: unknown layer 'stem'.*did you mean 'stem/relu'"):
        load_spec(_write(tmp_path, _doc(layers={"stem": [[1, 1]] * 8})), variables=variables)
    with pytest.raises(SpecError, match=r"bad\.json: layer 'stem/relu': expected 8 channels, got 3"):
        load_spec(_write(tmp_path, _doc(layers={"stem/relu": [[1, 1]] * 3})), variables=variables)


def test_save_rejects_bad_specs_and_writes_nothing(tmp_path):
    path = tmp_path / "spec.json"
    with pytest.raises(SpecError, match="layer 'a': channel 0 has patch size \\(0, 0\\)"):
        save_spec(path, {"a": np.zeros((2, 2), np.int32)})
    with pytest.raises(SpecError, match="non-empty strings"):
        save_spec(path, {"": np.ones((2, 2), np.int32)})
    with pytest.raises(TypeError, match="JSON"):
        save_spec(path, {"a": np.ones((2, 2), np.int32)}, model=object())
    assert os.listdir(tmp_path) == []


def test_save_is_atomic_replace(tmp_path):
    path = tmp_path / "spec.json"
    save_spec(path, {"a": np.ones((2, 2), np.int32)}, note="first")
    save_spec(path, {"a": np.tile([0, 1], (2, 1))}, note="second")
    spec, meta = load_spec(path, with_meta=True)
    assert meta == {"note": "second"}
    np.testing.assert_array_equal(spec["a"], [[0, 1], [0, 1]])
    assert os.listdir(tmp_path) == ["spec.json"]
