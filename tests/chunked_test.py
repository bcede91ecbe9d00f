"""Chunked nonlinear layers under a memory budget (``Runtime.chunked``, ``memory_budget=``):
the same outputs and the same communication record for any chunk size, one compiled loop, and
clear errors for bad budgets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmpc
from jaxmpc import ops
from jaxmpc.protocols.compare import drelu_bytes_per_element
from jaxmpc.simulate import memory_budget_bytes

# at most 1024 (the minimum) or 1700 elements a chunk: 5 chunks of 980 or 3 of 1634 (2 padding)
N = 4 * 1200 + 100


def _budgets(cfg):
    bpe = drelu_bytes_per_element(cfg)
    return [None, 1024 * bpe, 1700 * bpe]


def _values(shape, seed=0):
    x = np.random.default_rng(seed).normal(size=shape) * 4
    flat = x.reshape(-1)
    flat[:6] = [0.0, -2.0**-12, 2.0**-12, 1e3, -1e3, -0.0]  # edge values: 0, one quantum either side
    return x


CASES = {
    "drelu": (lambda x: ops.drelu(x), (N,)),
    "relu": (lambda x: ops.relu(x), (3, N // 3 + 1)),
    "maxpool": (lambda x: ops.maxpool(x, 2, 2), (1, 100, 100, 1)),
    "block_relu": (lambda x: ops.block_relu(x, np.array([[1, 1], [2, 2], [1, 3]])), (1, 60, 60, 3)),
}


@pytest.mark.parametrize("bits", [64, 16])
@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_and_comm_do_not_depend_on_the_chunk_size(case, bits):
    fn, shape = CASES[case]
    cfg = jaxmpc.ProtocolConfig() if bits == 64 else jaxmpc.ProtocolConfig(compare_bits=16, lsb_drop_bits=4)
    x = _values(shape)
    # one root key: the input sharing (and so a reduced-bit DReLU's local truncation, exact only
    # up to one unit that depends on the shares) is the same; the DReLU chunks draw their own keys
    key = jax.random.key(7)
    runs = [jaxmpc.simulate(fn, x, config=cfg, memory_budget=b, key=key) for b in _budgets(cfg)]
    (y0, c0), rest = runs[0], runs[1:]
    for y, c in rest:
        np.testing.assert_array_equal(np.asarray(y), np.asarray(y0))  # exact, bit for bit
        assert c == c0  # every message: path, kind, parties, bytes, hops
    if case == "drelu" and bits == 64:
        np.testing.assert_array_equal(np.asarray(y0), (np.round(x * 2**12) >= 0).astype(float))


def test_a_chunked_layer_needs_a_fraction_of_the_temporary_memory():
    cfg = jaxmpc.ProtocolConfig()
    x = jnp.asarray(_values((64 * 1024,)))
    bpe = drelu_bytes_per_element(cfg)

    def hlo(budget):
        from jaxmpc.core.ring import encode
        from jaxmpc.simulate import _simulate_core

        f = jax.jit(lambda k, e: _simulate_core(k, (e,), fn=ops.drelu, config=cfg, memory_budget=budget)[0])
        return f.lower(jax.random.key(0), jnp.asarray(encode(np.asarray(x), 12))).compile()

    whole, chunked = hlo(None), hlo(4096 * bpe)
    mem = lambda c: c.memory_analysis().temp_size_in_bytes  # noqa: E731
    assert mem(chunked) < mem(whole) / 4, (mem(chunked), mem(whole))


@pytest.mark.parametrize("text, expected", [("4GiB", 4 * 2**30), ("512MB", 512 * 10**6), ("1.5 kib", 1536),
                                            (2**20, 2**20), (None, None)])
def test_memory_budget_units(text, expected):
    assert memory_budget_bytes(text) == expected


def test_memory_budget_auto_is_a_fraction_of_the_device():
    from jaxmpc.simulate import device_memory_bytes

    assert memory_budget_bytes("auto") == max(device_memory_bytes() // 8, 64 * 2**20)


@pytest.mark.parametrize("bad", ["4 parsecs", "-1GiB", "nan", 0, -5, 1.5, True, "GiB"])
def test_bad_memory_budgets_are_refused_before_any_work(bad):
    with pytest.raises(ValueError, match="memory_budget"):
        jaxmpc.simulate(ops.drelu, np.zeros(4), memory_budget=bad)


def test_a_message_that_is_not_linear_in_the_elements_cannot_be_chunked():
    from jaxmpc.core.parties import CLIENT, SERVER
    from jaxmpc.core.ring import RING64
    from jaxmpc.core.runtime import reshape_held, slice_held

    def fn(x):
        rt, n = x.rt, x.size

        def body(c, s):  # one element per chunk, whatever its size: not a per-element protocol
            rt.send(SERVER, CLIENT, slice_held(s, 0, 1), RING64)
            return c, s

        rt.chunked("odd", body, (reshape_held(x.c, (n,)), reshape_held(x.s, (n,))), 1024)
        return x

    with pytest.raises(RuntimeError, match="not linear in the elements"):
        jaxmpc.simulate(fn, np.zeros(2500), key=jax.random.key(0))
