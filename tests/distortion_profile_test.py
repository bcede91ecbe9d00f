"""The batched distortion sweep against an independent one-at-a-time computation (paper §3.1).

The reference here never touches jaxmpc.distortion's machinery: it sets one channel's patch
size in the "block_sizes" collection (jaxmpc.nn.apply_spec), runs the whole network with
model.apply and compares the logits with the clean ones.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.core import blocks
from jaxmpc.distortion import ProgramError, profile_distortion
from jaxmpc.nn import BlockReLU, ResNetSmall, apply_spec, relu_layers
from jaxmpc.nn import models as nn_models


def random_variables(model, images, seed):
    """Random weights with non-trivial BatchNorm statistics, without compiling ``model.init``.

    (``model.init`` compiles every initializer and Block ReLU: many seconds on 2 cores.)
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        names = [str(getattr(k, "key", k)) for k in path]
        if names[0] == "block_sizes":
            return jnp.ones(s.shape, s.dtype)
        if names[-1] == "mean":
            return jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype)
        if names[-1] == "var":
            return jnp.asarray(rng.uniform(0.3, 2.0, s.shape), s.dtype)
        if names[-1] == "scale":
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
        if names[-1] == "bias":
            return jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype)
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        return jnp.asarray(rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in), s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def jitted_apply(model):
    """One compiled forward pass whose variables (and so the block sizes) are arguments."""
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


def reference_distortion(apply, variables, images, layer, channels, channel, size):
    """Mean over samples of the mean over output elements of the squared output change."""
    clean = jax.tree_util.tree_leaves(apply(variables, images))
    sizes = np.ones((channels, 2), np.int32)
    sizes[channel] = size
    out = jax.tree_util.tree_leaves(apply(apply_spec(variables, {layer: sizes}), images))
    n = images.shape[0]
    sq = sum(
        np.sum((np.asarray(o, np.float64) - np.asarray(k, np.float64)).reshape(n, -1) ** 2, axis=1)
        for o, k in zip(out, clean)
    )
    count = sum(int(np.prod(o.shape[1:])) for o in out)
    return float(np.mean(sq / count))


@pytest.fixture(scope="module")
def small():
    model = ResNetSmall()
    images = jax.random.normal(jax.random.key(0), (4, 8, 8, 1), jnp.float32)
    variables = random_variables(model, images, 1)
    table = profile_distortion(model, variables, images, progress=False)
    return jitted_apply(model), variables, images, table


def test_table_layout_matches_model(small):
    _, _, images, table = small
    layers = relu_layers(ResNetSmall(), images.shape)
    assert table.names == [n for n, _ in layers]
    for layer, (name, (h, w, c)) in zip(table.layers, layers):
        assert (layer.height, layer.width, layer.channels) == (h, w, c)
        np.testing.assert_array_equal(layer.candidates, blocks.default_candidates(h, w))
        np.testing.assert_array_equal(layer.costs, blocks.num_patches(h, w, layer.candidates))
        assert layer.distortion.shape == (c, len(layer.candidates))
        assert np.all(np.isfinite(layer.distortion)) and np.all(layer.distortion >= 0)
    assert table.meta["method"] == "exact" and table.meta["num_samples"] == 4


def test_random_triples_match_one_at_a_time(small):
    apply, variables, images, table = small
    rng = np.random.default_rng(0)
    for _ in range(12):
        layer = table.layers[rng.integers(len(table))]
        c = int(rng.integers(layer.channels))
        k = int(rng.integers(len(layer.candidates)))
        ref = reference_distortion(apply, variables, images, layer.name, layer.channels, c, layer.candidates[k])
        np.testing.assert_allclose(
            layer.distortion[c, k], ref, rtol=2e-4, atol=1e-9, err_msg=f"{layer.name} c={c} k={k}"
        )


def test_relu_candidate_is_exactly_zero_and_others_are_not(small):
    *_, table = small
    for layer in table.layers:
        relu = np.flatnonzero((layer.candidates[:, 0] == 1) & (layer.candidates[:, 1] == 1))
        assert relu.size == 1
        assert np.all(layer.distortion[:, relu] == 0.0)
    # With random-sign activations, the identity and zero candidates change the output.
    assert np.all(table["stem/relu"].distortion[:, -2:] > 0)


def test_identity_and_zero_have_their_documented_meaning(small):
    _, variables, images, table = small
    model = ResNetSmall()
    layer = table["layer2_0/relu1"]
    ident = int(np.flatnonzero((layer.candidates[:, 0] == 0) & (layer.candidates[:, 1] == 1))[0])
    zero = int(np.flatnonzero((layer.candidates[:, 0] == 1) & (layer.candidates[:, 1] == 0))[0])
    # Identity passes the pre-activation through: same as a network whose ReLU is removed for c.
    intercepted = {}

    def identity_for(channel):
        def hook(next_fun, args, kwargs, context):
            if isinstance(context.module, BlockReLU) and "/".join(context.module.path) == layer.name:
                x = args[0]
                y = next_fun(*args, **kwargs)
                intercepted["x"] = x
                return y.at[..., channel].set(x[..., channel])
            return next_fun(*args, **kwargs)

        return hook

    def zero_for(channel):
        def hook(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            if isinstance(context.module, BlockReLU) and "/".join(context.module.path) == layer.name:
                return y.at[..., channel].set(0.0)
            return y

        return hook

    clean = np.asarray(model.apply(variables, images, train=False), np.float64)
    for c in (0, layer.channels - 1):
        with nn.intercept_methods(identity_for(c)):
            out = np.asarray(model.apply(variables, images, train=False), np.float64)
        np.testing.assert_allclose(layer.distortion[c, ident], np.mean((out - clean) ** 2), rtol=2e-4, atol=1e-9)
        with nn.intercept_methods(zero_for(c)):
            out = np.asarray(model.apply(variables, images, train=False), np.float64)
        np.testing.assert_allclose(layer.distortion[c, zero], np.mean((out - clean) ** 2), rtol=2e-4, atol=1e-9)


def test_duplicates_oversized_patches_and_subset_of_layers(small):
    _, variables, images, _ = small
    model = ResNetSmall()
    name = "layer3_0/relu1"  # 2x2 map
    cands = np.array([[2, 2], [1, 2], [2, 2], [8, 8], [0, 1], [1, 1], [1, 0]])
    table = profile_distortion(model, variables, images, layers=[name], candidates={name: cands}, progress=False)
    assert table.names == [name]
    d = table[name].distortion
    np.testing.assert_array_equal(d[:, 0], d[:, 2])  # duplicate, evaluated once
    np.testing.assert_array_equal(d[:, 0], d[:, 3])  # 8x8 covers the 2x2 map like 2x2
    np.testing.assert_array_equal(d[:, 5], 0.0)
    np.testing.assert_array_equal(table[name].costs, [1, 2, 1, 1, 0, 4, 0])
    # Each representative pair evaluated once: 4 distinct non-ReLU effects per channel.
    assert table.meta["pairs_evaluated"] == 4 * table[name].channels


def test_non_square_input():
    model = ResNetSmall()
    images = jax.random.normal(jax.random.key(3), (3, 8, 6, 1), jnp.float32)
    variables = random_variables(model, images, 4)
    table = profile_distortion(model, variables, images, layers=["stem/relu", "layer2_0/relu2"], progress=False)
    stem = table["stem/relu"]
    assert (stem.height, stem.width) == (8, 6)
    np.testing.assert_array_equal(stem.candidates, blocks.default_candidates(8, 6))
    np.testing.assert_array_equal(stem.costs, blocks.num_patches(8, 6, stem.candidates))
    assert (table["layer2_0/relu2"].height, table["layer2_0/relu2"].width) == (4, 3)
    apply = jitted_apply(model)
    rng = np.random.default_rng(1)
    for layer in table.layers:
        for _ in range(3):
            c, k = int(rng.integers(layer.channels)), int(rng.integers(len(layer.candidates)))
            ref = reference_distortion(apply, variables, images, layer.name, layer.channels, c, layer.candidates[k])
            np.testing.assert_allclose(layer.distortion[c, k], ref, rtol=2e-4, atol=1e-9)


def test_segmentation_model_uses_its_low_resolution_logits():
    model = nn_models._DeepLabV3MobileNetV2Tiny()
    images = jax.random.normal(jax.random.key(6), (2, 32, 32, 3), jnp.float32)
    variables = random_variables(model, images, 7)
    apply = jitted_apply(model)
    assert apply(variables, images).shape == (2, 4, 4, 5)
    names = ["backbone/layer2_0/depthwise/relu", "decode/aspp1/relu"]
    cands = np.array([[1, 1], [2, 2], [2, 1], [0, 1], [1, 0]])
    table = profile_distortion(
        model, variables, images, layers=names, candidates={n: cands for n in names}, progress=False
    )
    rng = np.random.default_rng(2)
    for layer in table.layers:
        for _ in range(3):
            c, k = int(rng.integers(layer.channels)), int(rng.integers(1, len(cands)))
            ref = reference_distortion(apply, variables, images, layer.name, layer.channels, c, cands[k])
            np.testing.assert_allclose(layer.distortion[c, k], ref, rtol=2e-4, atol=1e-9)


def test_base_spec_changes_the_reference_network(small):
    apply, variables, images, _ = small
    model = ResNetSmall()
    name = "layer1_0/relu2"
    base = {"stem/relu": np.tile([2, 2], (8, 1)), name: np.tile([2, 1], (8, 1))}
    cands = np.array([[1, 1], [2, 1], [2, 2], [0, 1]])
    table = profile_distortion(
        model, variables, images, layers=[name], candidates={name: cands}, base_spec=base, progress=False
    )
    d = table[name].distortion
    np.testing.assert_array_equal(d[:, 1], 0.0)  # the channel's base size
    assert np.all(d[:, 0] > 0)  # exact ReLU differs from the base (2, 1)
    based = apply_spec(variables, base)
    clean = np.asarray(apply(based, images), np.float64)
    for c, k in ((0, 0), (3, 2), (7, 3)):
        sizes = np.tile([2, 1], (8, 1))
        sizes[c] = cands[k]
        out = apply(apply_spec(variables, {**base, name: sizes}), images)
        ref = np.mean((np.asarray(out, np.float64) - clean) ** 2)
        np.testing.assert_allclose(d[c, k], ref, rtol=2e-4, atol=1e-9)
    assert table.meta["base"] == "spec"


class _ThirdParty(nn.Module):
    """A model that is not from jaxmpc.nn: BlockReLUs in nn.jit/nn.remat, a residual, two outputs."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(4, (3, 3))(x)
        a = nn.jit(BlockReLU)(name="act_a")(h)
        b = nn.Conv(4, (3, 3))(a)
        b = nn.remat(BlockReLU)(name="act_b")(b + h)
        logits = nn.Dense(3)(jnp.mean(b, axis=(1, 2)))
        aux = nn.Dense(2)(jnp.mean(a * a, axis=(1, 2)))
        return {"logits": logits, "aux": aux}


def test_third_party_flax_model_with_nested_transforms_and_pytree_output():
    model = _ThirdParty()
    images = jax.random.normal(jax.random.key(9), (3, 5, 7, 2), jnp.float32)
    variables = random_variables(model, images, 10)
    table = profile_distortion(model, variables, images, progress=False)
    assert table.names == ["act_a", "act_b"]
    assert (table["act_a"].height, table["act_a"].width, table["act_a"].channels) == (5, 7, 4)

    apply = jax.jit(model.apply)

    for layer in table.layers:
        for c, k in ((0, 1), (3, len(layer.candidates) - 2), (2, len(layer.candidates) - 1)):
            sizes = np.ones((4, 2), np.int32)
            sizes[c] = layer.candidates[k]
            clean = jax.tree_util.tree_leaves(apply(variables, images))
            out = jax.tree_util.tree_leaves(apply(apply_spec(variables, {layer.name: sizes}), images))
            sq = sum(
                np.sum((np.asarray(o, np.float64) - np.asarray(q, np.float64)) ** 2, axis=1) for o, q in zip(out, clean)
            )
            np.testing.assert_allclose(layer.distortion[c, k], np.mean(sq / 5), rtol=2e-4, atol=1e-9)


def test_plain_callable_model(small):
    _, variables, images, table = small
    model = ResNetSmall()
    name = "layer3_0/relu2"
    t2 = profile_distortion(
        lambda v, x: model.apply(v, x, train=False), variables, images, layers=[name], progress=False
    )
    np.testing.assert_allclose(t2[name].distortion, table[name].distortion, rtol=1e-6, atol=1e-12)


def test_block_relu_inside_a_loop_is_reported():
    class Looped(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(2, (1, 1))(x)
            body = nn.scan(
                lambda mdl, carry, _: (mdl(carry), None),
                variable_broadcast=["params", "block_sizes"],
                split_rngs={"params": False},
                length=2,
            )
            x, _ = body(BlockReLU(name="act"), x, None)
            return jnp.mean(x, axis=(1, 2, 3))[:, None]

    model = Looped()
    images = jnp.ones((2, 4, 4, 1), jnp.float32)
    variables = random_variables(model, images, 0)
    with pytest.raises(ProgramError, match="inside a"):
        profile_distortion(model, variables, images, progress=False)


def test_delta_convolutions_equal_plain_evaluation(small):
    """The sweep's delta form of convolutions that read the layer equals evaluating them in full."""
    from jaxmpc.distortion import _engine as eng
    from jaxmpc.distortion import _profile as pf
    from jaxmpc.distortion import _program as pg

    _, variables, images, table = small
    problem = pf.build_problem(ResNetSmall(), variables, images, layers=["stem/relu", "layer1_0/relu2"])
    clean = pf.clean_outputs(problem)
    mesh = eng.make_mesh(jax.local_devices()[:1])
    for plan in problem.layers:
        results = []
        for delta in (True, False):
            sl = pg.slice_layer(problem.program, plan.cut, delta_convs=delta)
            assert bool(sl.delta) == delta
            cache, _ = pf.layer_cache(problem, sl)
            spec = eng.sweep_spec(problem.program, sl, mesh, problem.relu_sizes)
            ch = np.repeat(np.arange(plan.channels, dtype=np.int32), 2)
            sz = np.tile(np.array([[2, 2], [0, 1]], np.int32), (plan.channels, 1))
            results.append(np.asarray(eng.sweep_batch(spec, ch, sz, cache, clean)))
        np.testing.assert_allclose(results[0], results[1], rtol=1e-4, atol=1e-9)
        col = [int(np.flatnonzero((table[plan.name].candidates == s).all(1))[0]) for s in ([2, 2], [0, 1])]
        np.testing.assert_allclose(results[0], table[plan.name].distortion[:, col].ravel(), rtol=1e-6, atol=1e-12)


def test_unchanged_layer_output_gives_exact_zero(small):
    _, variables, images, _ = small
    # A large BatchNorm shift makes stem channel 3 positive everywhere: every patch size then
    # equals the ReLU, which equals the identity; only "zero" changes the output.
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    bias = np.asarray(params["stem"]["bn"]["bias"]).copy()
    bias[3] = 50.0
    params["stem"]["bn"]["bias"] = jnp.asarray(bias)
    table = profile_distortion(
        ResNetSmall(), {**variables, "params": params}, images, layers=["stem/relu"], progress=False
    )
    row = table["stem/relu"].distortion[3]
    np.testing.assert_array_equal(row[:-1], 0.0)
    assert row[-1] > 0


def test_table_drives_the_knapsack_planner_end_to_end(small):
    knapsack = pytest.importorskip("jaxmpc.knapsack")
    from jaxmpc.nn import count_drelus

    _, _, images, table = small
    plan = knapsack.plan_block_sizes(table.planner_layers(), ratio=0.1, method="lagrangian")
    assert set(plan.spec) == set(table.names)
    budget = int(0.1 * table.relu_drelus())
    assert count_drelus(ResNetSmall(), plan.spec, images.shape).total <= budget
    # The plan's summed table distortion is what the table says for the chosen sizes.
    total = 0.0
    for layer in table.layers:
        for c, size in enumerate(plan.spec[layer.name]):
            k = int(np.flatnonzero((layer.candidates == size).all(1))[0])
            total += layer.distortion[c, k]
    assert total > 0
