"""The public entry point ``jaxmpc.simulate``: results, jit equivalence, tracing, input validation."""

import jax
import numpy as np
import pytest

import jaxmpc
from jaxmpc.protocols import costs
from jaxmpc import ops


def fp(x, f=12):
    return np.rint(np.asarray(x) * 2**f) / 2**f


def test_single_op_relu_and_cost():
    x = np.array([-3.5, -1e-3, 0.0, 2 ** -12, 1.25, 100.0])
    y, comm = jaxmpc.simulate(ops.relu, x, config=jaxmpc.ProtocolConfig(), key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(y), np.maximum(fp(x), 0))
    cfg = jaxmpc.ProtocolConfig()
    assert comm.total_bytes == costs.relu(6, cfg).total + costs.reveal(6).total
    assert comm.rounds == costs.relu_rounds(cfg) + 1
    assert comm.bytes_sent("client") + comm.bytes_sent("server") + comm.bytes_sent("cp") == comm.total_bytes


OPS = {
    "drelu": (ops.drelu, lambda x: (fp(x) >= 0).astype(float)),
    "relu": (ops.relu, lambda x: np.maximum(fp(x), 0)),
    "maxpool": (lambda a: ops.maxpool(ops.reshape(a, (1, 4, 4, 1)), 2, 2),
                lambda x: fp(x).reshape(4, 4).reshape(2, 2, 2, 2).max(axis=(1, 3)).reshape(1, 2, 2, 1)),
    "block_relu": (lambda a: ops.block_relu(ops.reshape(a, (1, 4, 4, 1)), [[2, 2]]), None),
    "conv": (lambda a: ops.conv2d(ops.reshape(a, (1, 4, 4, 1)), np.full((3, 3, 1, 2), 0.25)), None),
}


@pytest.mark.parametrize("name", list(OPS))
def test_jit_and_eager_agree_bitwise(name):
    fn, want = OPS[name]
    x = np.random.default_rng(0).normal(size=16)
    a, ca = jaxmpc.simulate(fn, x, key=jax.random.key(3), jit=True)
    b, cb = jaxmpc.simulate(fn, x, key=jax.random.key(3), jit=False)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert ca == cb
    if want is not None:
        np.testing.assert_array_equal(np.asarray(a), want(x))


def test_whole_protocol_traces_once():
    calls = []

    def fn(a, b):
        calls.append(1)
        return ops.relu(ops.mul(a, b))

    x = np.linspace(-1, 1, 9)
    for seed in range(3):
        jaxmpc.simulate(fn, x, x[::-1] * seed, key=jax.random.key(seed))
    assert len(calls) == 2  # one abstract pass (randomness plan) + one real trace, never again


def test_pytree_outputs_and_bits():
    x = np.array([-1.0, 2.0])
    out, _ = jaxmpc.simulate(lambda a: {"bit": ops.drelu(a), "pair": (ops.relu(a), ops.neg(a))}, x,
                             key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(out["bit"]), [0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(out["pair"][1]), -x)


def test_fresh_key_when_none():
    y, _ = jaxmpc.simulate(ops.relu, np.array([1.0, -1.0]))
    np.testing.assert_array_equal(np.asarray(y), [1.0, 0.0])


def test_errors_before_tracing():
    calls = []

    def fn(a):
        calls.append(1)
        return ops.relu(a)

    with pytest.raises(ValueError, match="input 0: cannot encode non-finite"):
        jaxmpc.simulate(fn, np.array([1.0, np.nan]), key=jax.random.key(0))
    with pytest.raises(ValueError, match="representable"):
        jaxmpc.simulate(fn, np.array([2.0**60]), key=jax.random.key(0))
    with pytest.raises(TypeError, match="ProtocolConfig"):
        jaxmpc.simulate(fn, np.ones(2), config={"frac_bits": 12})
    with pytest.raises(TypeError, match="key"):
        jaxmpc.simulate(fn, np.ones(2), key="seed")
    with pytest.raises(TypeError, match="callable"):
        jaxmpc.simulate("relu", np.ones(2))
    with pytest.raises(ValueError, match="at least one input"):
        jaxmpc.simulate(fn)
    with pytest.raises(TypeError, match="real numbers"):
        jaxmpc.simulate(fn, np.array(["a"]))
    assert calls == []
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(RuntimeError, match="64-bit"):
            jaxmpc.simulate(fn, np.ones(2))
    finally:
        jax.config.update("jax_enable_x64", True)
    assert calls == []


def test_enable_compilation_cache(tmp_path, monkeypatch):
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    try:
        where = tmp_path / "xla"
        assert jaxmpc.enable_compilation_cache(str(where), min_compile_seconds=0.5) == str(where)
        assert where.is_dir() and jax.config.jax_compilation_cache_dir == str(where)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.5
        monkeypatch.setenv("JAXMPC_COMPILATION_CACHE", "0")
        assert jaxmpc.enable_compilation_cache() is None
        with pytest.raises(ValueError, match="min_compile_seconds"):
            jaxmpc.enable_compilation_cache(str(where), min_compile_seconds=-1)
    finally:
        for n, v in saved.items():
            jax.config.update(n, v)
