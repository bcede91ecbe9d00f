"""Every op's communication record equals the documented cost table (jaxmpc.protocols.costs, docs/protocols.md)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmpc
from jaxmpc.core import blocks
from jaxmpc.protocols import costs
from jaxmpc.core.comm import CommRecord
from jaxmpc.core.config import ProtocolConfig
from jaxmpc.core.parties import LINKS, SERVER
from jaxmpc.protocols import compare, linear, nonlinear
from jaxmpc.core.ring import encode, ring_conv

from utils import run_jitted, shared, u64

CONFIGS = [
    ProtocolConfig(),
    ProtocolConfig(compare_bits=16, lsb_drop_bits=3),
    ProtocolConfig(compare_bits=8),
    ProtocolConfig(compare_bits=32, compact_wire=False),
    ProtocolConfig.reference(),
    ProtocolConfig.reference(compare_bits=16),
]
IDS = ["jaxmpc64", "jaxmpc16", "jaxmpc8", "jaxmpc32-wide", "securenn64", "securenn16"]


def assert_links(record: CommRecord, expected: costs.LinkCost):
    got = {(a, b): record.link_bytes(a, b) for a, b in LINKS}
    assert got == expected.links


@pytest.fixture(scope="module")
def values():
    return u64(np.random.default_rng(0).integers(-(2**30), 2**30, (2, 5, 5, 3)))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_drelu_relu_maxpool_blockrelu_costs(config, values):
    sizes = np.array([(1, 1), (2, 2), (0, 1)], np.int32)
    n = values.size

    def build(rt, x):
        out = {}
        with rt.scope("drelu_op"):
            compare.drelu(shared(rt, x, scale=12))
        with rt.scope("relu_op"):
            nonlinear.relu(shared(rt, x, scale=12))
        with rt.scope("maxpool_op"):
            nonlinear.maxpool(shared(rt, x, scale=12), (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
        with rt.scope("block_op"):
            nonlinear.block_relu(shared(rt, x, scale=12), sizes)
        return out

    _, comm = run_jitted(build, jnp.asarray(values), config=config)
    assert_links(comm.select(prefix="drelu_op"), costs.drelu(n, config))
    assert comm.select(prefix="drelu_op").rounds == costs.drelu_rounds(config)
    assert_links(comm.select(prefix="relu_op"), costs.relu(n, config))
    assert comm.select(prefix="relu_op").rounds == costs.relu_rounds(config)
    n_out = 2 * 3 * 3 * 3
    assert_links(comm.select(prefix="maxpool_op"), costs.maxpool(n_out, 9, config))
    assert comm.select(prefix="maxpool_op").rounds == costs.maxpool_rounds(9, config)
    nb = 2 * blocks.drelu_count(5, 5, sizes)
    na = 2 * blocks.mult_count(5, 5, sizes)
    assert_links(comm.select(prefix="block_op"), costs.block_relu(nb, na, config))
    # the per-DReLU figures quoted in the docs
    if config.compare_bits == 64 and config.nonlinear_protocol == "securenn":
        assert costs.bytes_per_drelu(config) == 496
    if config.compare_bits == 64 and config.nonlinear_protocol == "jaxmpc":
        assert costs.bytes_per_drelu(config) == 440
    if config.compare_bits == 16 and config.nonlinear_protocol == "jaxmpc":
        assert costs.bytes_per_drelu(config) == 116
    if config.compare_bits == 16 and config.nonlinear_protocol == "securenn":
        assert costs.bytes_per_drelu(config) == 208  # the reference's reduced-bit figure (8-byte ring elements)


@pytest.mark.parametrize("config", [ProtocolConfig(), ProtocolConfig(linear_protocol="shared_weights")],
                         ids=["server_weights", "shared_weights"])
def test_linear_costs(config, values):
    w = jnp.asarray(encode(np.random.default_rng(1).normal(size=(3, 3, 3, 4)), 12))
    op = functools.partial(ring_conv, window_strides=(1, 1), padding="SAME")

    def build(rt, x):
        y = linear.bilinear_av(shared(rt, x, scale=12), rt.private(SERVER, w), op, scale=12)
        return y.c.value

    _, comm = run_jitted(build, jnp.asarray(values), config=config)
    x_size, w_size, y_size = values.size, w.size, 2 * 5 * 5 * 4
    if config.linear_protocol == "server_weights":
        assert_links(comm, costs.linear_server_weights(x_size, w_size, y_size))
        assert comm.online_bytes == 8 * x_size  # only the masked client share is online
    else:
        assert_links(comm, costs.beaver(x_size, w_size, y_size))
    assert comm.rounds == 1


def test_simulate_record_includes_reveal_and_elementwise_beaver():
    x = np.linspace(-1, 1, 10)
    _, comm = jaxmpc.simulate(lambda a, b: jaxmpc.ops.mul(a, b), x, x, key=jax.random.key(0))
    assert_links(comm.select(kind="mult"), costs.beaver(10, 10, 10))
    assert_links(comm.select(kind="reveal"), costs.reveal(10))
    assert comm.rounds == 2  # one Beaver round, one to reveal
    assert comm.total_bytes == comm.select(kind="mult").total_bytes + comm.select(kind="reveal").total_bytes


def test_record_is_static_and_composes():
    x = np.linspace(-1, 1, 6)
    _, a = jaxmpc.simulate(jaxmpc.ops.relu, x, key=jax.random.key(0))
    _, b = jaxmpc.simulate(jaxmpc.ops.relu, x, key=jax.random.key(1))
    assert a == b and hash(a) == hash(b)
    seq = a.then(b)
    assert seq.total_bytes == 2 * a.total_bytes and seq.rounds == 2 * a.rounds
    d = a.to_dict()
    assert d["total_bytes"] == a.total_bytes and sum(d["sent"].values()) == a.total_bytes
    assert set(a.by_kind()) == {"drelu", "mult", "reveal"}
