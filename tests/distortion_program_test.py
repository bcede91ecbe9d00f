"""Tracing a model into a flat program cut at its Block ReLUs; structural signatures; FLOP counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.distortion import _engine as eng
from jaxmpc.distortion import _program as pg
from jaxmpc.nn import ResNet18, ResNetSmall, relu_layers
from jaxmpc.nn import models as nn_models

MODELS = [
    ("ResNetSmall", ResNetSmall, (8, 8, 1)),
    ("ResNet18Tiny", nn_models._ResNet18Tiny, (8, 8, 3)),
    ("ResNet50Tiny", nn_models._ResNet50Tiny, (32, 32, 3)),
    ("MobileNetV2Tiny", nn_models._MobileNetV2Tiny, (32, 32, 3)),
    ("DeepLabV3MobileNetV2Tiny", nn_models._DeepLabV3MobileNetV2Tiny, (32, 32, 3)),
    ("DeepLabV3ResNet50Tiny", nn_models._DeepLabV3ResNet50Tiny, (32, 24, 3)),
]


def trace(model, shape, n=2):
    x = jax.ShapeDtypeStruct((n,) + shape, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return pg.trace_program(lambda v, x: model.apply(v, x, train=False), variables, x)


@pytest.mark.parametrize("name,ctor,shape", MODELS, ids=[m[0] for m in MODELS])
def test_cuts_are_the_models_relu_layers(name, ctor, shape):
    model = ctor()
    prog = trace(model, shape)
    expected = relu_layers(model, shape)
    assert [c.name for c in prog.cuts] == [n for n, _ in expected]
    assert [c.shape[1:] for c in prog.cuts] == [s for _, s in expected]
    for cut in prog.cuts:
        sl = pg.slice_layer(prog, cut)
        assert sl.dependent and cut.x in sl.cache and cut.y in sl.cache
        assert cut.index in sl.producers  # the clean layer output is cached
        readers = {k for k in sl.producers if any(a == cut.y for a in prog.instrs[k].ins)}
        assert readers == set(sl.delta)  # only the delta convolutions' clean outputs are downstream
        assert set(sl.full) == set(sl.dependent) | set(sl.delta)
        assert not set(sl.producers) & set(sl.dependent)


def test_parallel_branches_are_cached_not_recomputed():
    model = nn_models._DeepLabV3MobileNetV2Tiny()
    prog = trace(model, (32, 32, 3))
    sl = pg.slice_layer(prog, prog.cut("decode/aspp0/relu"))
    # The other ASPP branches come after aspp0 in the program but do not depend on it: they are
    # part of the cache, and the dependent part is only the concat and what follows.
    later = [c for c in prog.cuts if c.name.startswith("decode/aspp") and c.name != "decode/aspp0/relu"]
    for c in later:
        assert c.index > sl.cut.index and c.y in sl.cache and c.index not in sl.dependent
    dep_prims = {prog.instrs[k].prim.name for k in sl.dependent if prog.instrs[k].prim is not None}
    assert "concatenate" in dep_prims


def test_signatures_identify_structure_not_objects():
    m = ResNetSmall()
    a, b = trace(m, (8, 8, 1)), trace(ResNetSmall(), (8, 8, 1))
    for ca, cb in zip(a.cuts, b.cuts):
        sa, sb = eng.sweep_spec(a, pg.slice_layer(a, ca), None), eng.sweep_spec(b, pg.slice_layer(b, cb), None)
        assert sa == sb and hash(sa) == hash(sb)
    keys = {eng.sweep_spec(a, pg.slice_layer(a, c), None).key for c in a.cuts}
    assert len(keys) == len(a.cuts)
    c = trace(m, (8, 8, 1), n=3)  # another sample count is another compilation
    assert eng.sweep_spec(c, pg.slice_layer(c, c.cuts[0]), None) != eng.sweep_spec(
        a, pg.slice_layer(a, a.cuts[0]), None
    )


def test_flop_count_matches_hand_count_for_resnet18():
    prog = trace(ResNet18(), (32, 32, 3), n=1)
    sl = pg.slice_layer(prog, prog.cut("layer4_1/relu1"))
    # conv2 of the last block (512 -> 512, 3x3, 4x4 map) and the 512 -> 100 classifier.
    conv2, fc = 2 * 4 * 4 * 512 * 512 * 9, 2 * 512 * 100
    assert pg.slice_flops(prog, sl.full) == conv2 + fc
    assert len(sl.delta) == 1 and prog.instrs[sl.delta[0]].prim.name == "conv_general_dilated"
    assert eng.candidate_flops(prog, sl) == conv2 // 512 + fc  # conv2 runs on one input channel
    plain = pg.slice_layer(prog, prog.cut("layer4_1/relu1"), delta_convs=False)
    assert plain.delta == () and eng.candidate_flops(prog, plain) == conv2 + fc
    total = pg.slice_flops(prog, range(len(prog.instrs)))
    assert total == pytest.approx(2 * 0.557e9, rel=0.01)  # ResNet18-CIFAR: ~0.56 GMAC


def test_evaluate_reproduces_the_model():
    model = nn_models._ResNet50Tiny()
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, s: (
            jnp.ones(s.shape, s.dtype)
            if str(getattr(p[0], "key", "")) == "block_sizes" or str(getattr(p[-1], "key", "")) == "var"
            else jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype)
        ),
        variables,
    )
    prog = pg.trace_program(lambda v, x: model.apply(v, x, train=False), variables, x)
    inputs = tuple(jax.tree_util.tree_leaves(variables)) + (x,)
    relu = frozenset(c.sizes for c in prog.cuts)
    out = eng.run_eval(eng.forward_spec(prog, relu), inputs)
    ref = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(out[0], ref, rtol=1e-5, atol=1e-5)
