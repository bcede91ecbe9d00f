"""Correlated randomness: the PRF is JAX's Threefry, stable ids, batched == single requests."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

from jaxmpc.core.parties import C_CP, C_S, CLIENT
from jaxmpc.core.randomness import op_id, request_keys, simulation_keys, stream_words, threefry2x32
from jaxmpc.core.ring import RING64
from jaxmpc.core.runtime import Runtime
from jaxmpc.core.config import ProtocolConfig


def test_threefry_is_bit_identical_to_jax():
    rng = np.random.default_rng(0)
    k0, k1, x0, x1 = (jnp.asarray(rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)) for _ in range(4))
    ours = threefry2x32(k0, k1, x0, x1)
    ref = threefry2x32_p.bind(k0, k1, x0, x1)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_batched_streams_equal_single_streams():
    keys = request_keys(jnp.asarray(np.array([[1, 2], [3, 4], [1, 2]], np.uint32)),
                        np.array([[5, 6], [7, 8], [9, 10]], np.uint32))
    sizes = (7, 1, 13)
    batched = np.asarray(stream_words(keys, sizes))
    parts = [np.asarray(stream_words(keys[i:i + 1], (n,))) for i, n in enumerate(sizes)]
    np.testing.assert_array_equal(batched, np.concatenate(parts))
    assert len(set(batched.tolist())) == len(batched)
    # word i of a stream is Threefry_k(0, i), as jax.random's primitive computes it
    y0, y1 = threefry2x32_p.bind(keys[0, 0], keys[0, 1], jnp.uint32(0), jnp.uint32(3))
    assert int(batched[3]) == (int(y0) << 32) | int(y1)


def test_op_ids_are_stable_and_distinct():
    assert op_id(("a", "b"), "r", 0) == op_id(("a", "b"), "r", 0)
    ids = {op_id(("layer", str(i)), n, c) for i in range(50) for n in ("a", "b") for c in range(3)}
    assert len(ids) == 300


def test_planned_randomness_is_fresh_and_consistent():
    """A stage's requests get disjoint counter ranges; the same run gives the same tensors."""
    from jaxmpc.simulate import run_planned

    def body(rt, x):
        with rt.scope("stage1"):
            a = rt.random(C_S, RING64, (3, 4), "a")
            b = rt.random(C_S, RING64, (5,), "b")
            d = rt.random(C_CP, RING64, (5,), "b")
        with rt.scope("stage2"):
            c = rt.random(C_S, RING64, (2,), "a")
        return a.value, b.value, c.value, d.value

    keys = simulation_keys(jax.random.key(0))
    first, _ = run_planned(ProtocolConfig(), keys, body, jnp.zeros(1))
    again, _ = run_planned(ProtocolConfig(), keys, body, jnp.zeros(1))
    for p, q in zip(first, again):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
    words = np.concatenate([np.asarray(v).ravel() for v in first])
    assert len(set(words.tolist())) == words.size  # no reuse across requests, stages or key sets


def test_two_parties_derive_the_same_tensor():
    keys = simulation_keys(jax.random.key(1))

    def draw(party):
        rt = Runtime(ProtocolConfig(), keys.restrict(party))
        with rt.scope("x"):
            return np.asarray(rt.random(C_S, RING64, (4,), "r").value)

    np.testing.assert_array_equal(draw(CLIENT), draw(1))
