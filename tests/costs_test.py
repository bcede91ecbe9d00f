"""jaxmpc.protocols.costs: the closed-form cost table (docs/protocols.md).

What the module guarantees: the per-link formulas of every protocol (and their sums quoted in
the docs, ``6w + 6m + 8`` bytes per DReLU for jaxmpc and ``7w + 6m + 56`` for SecureNN), wire
widths, linearity in the element count, the round counts, and -- on one run through the public
ops -- that the formulas equal the record the runtime logs. (``tests/comm_test.py`` checks each
protocol's record op by op for several configurations.)
"""

import dataclasses

import jax
import numpy as np
import pytest

from jaxmpc.protocols import costs
from jaxmpc import ops
from jaxmpc.core.config import ProtocolConfig
from jaxmpc.core.parties import CLIENT, CP, LINKS, SERVER
from jaxmpc.simulate import simulate

JAXMPC = [ProtocolConfig(compare_bits=m) for m in (2, 8, 9, 16, 17, 32, 33, 64)]
SECURENN = [ProtocolConfig.reference(compare_bits=m) for m in (8, 16, 64)]


def test_link_cost_arithmetic():
    a = costs.LinkCost(c_s=1, c_cp=2, s_c=3, s_cp=4, cp_c=5, cp_s=6)
    b = costs.LinkCost(c_s=10)
    assert a + b == costs.LinkCost(11, 2, 3, 4, 5, 6)
    assert 3 * a == a * 3 == costs.LinkCost(3, 6, 9, 12, 15, 18)
    assert a.total == 21 and costs.LinkCost().total == 0
    assert a.link(CLIENT, SERVER) == 1 and a.link(CP, SERVER) == 6 and a.link(SERVER, CLIENT) == 3
    assert set(a.links) == set(LINKS) and sum(a.links.values()) == a.total
    assert a.sent(CLIENT) == 3 and a.sent(SERVER) == 7 and a.sent(CP) == 11
    with pytest.raises(KeyError):
        a.link(CLIENT, CLIENT)


@pytest.mark.parametrize("m, compact, w", [(2, True, 1), (8, True, 1), (9, True, 2), (16, True, 2), (17, True, 4),
                                           (32, True, 4), (33, True, 8), (64, True, 8), (8, False, 8),
                                           (16, False, 8)])
def test_wire_bytes(m, compact, w):
    assert costs.wire_bytes(ProtocolConfig(compare_bits=m, compact_wire=compact)) == w


@pytest.mark.parametrize("config", JAXMPC + SECURENN, ids=lambda c: f"{c.nonlinear_protocol}{c.compare_bits}")
def test_drelu_bytes_match_the_documented_sums(config):
    m, w = config.compare_bits, costs.wire_bytes(config)
    expected = 6 * w + 6 * m + 8 if config.nonlinear_protocol == "jaxmpc" else 7 * w + 6 * m + 56
    assert costs.bytes_per_drelu(config) == costs.drelu(1, config).total == expected
    assert costs.drelu(1, config) == costs.share_convert(1, config) + costs.msb(1, config)
    # nothing goes from the client or the server to itself, and the CP receives no secret share
    assert costs.drelu(1, config).link(CP, CLIENT) == (0 if config.nonlinear_protocol == "jaxmpc" else w + 8)


def test_known_figures():
    assert costs.bytes_per_drelu(ProtocolConfig()) == 440
    assert costs.bytes_per_drelu(ProtocolConfig.reference()) == 496
    assert costs.bytes_per_drelu(ProtocolConfig(compare_bits=16)) == 116
    assert costs.bytes_per_mult(ProtocolConfig()) == costs.bytes_per_mult(ProtocolConfig.reference()) == 24


@pytest.mark.parametrize("config", [ProtocolConfig(), ProtocolConfig(compare_bits=16), ProtocolConfig.reference()],
                         ids=["jaxmpc64", "jaxmpc16", "securenn64"])
def test_composition_and_linearity(config):
    for n in (0, 1, 7, 1000):
        assert costs.drelu(n, config) == n * costs.drelu(1, config)
        assert costs.relu(n, config) == costs.drelu(n, config) + costs.mult(n, n, config)
        assert costs.maxpool(n, 9, config) == costs.relu(8 * n, config)
        assert costs.maxpool(n, 1, config).total == 0
        assert costs.block_relu(n, 4 * n, config) == costs.drelu(n, config) + costs.mult(4 * n, n, config)
        assert costs.reveal(n) == costs.LinkCost(s_c=8 * n)
    if config.nonlinear_protocol == "jaxmpc":  # bit product: 24 B per value element, none per bit
        assert costs.mult(5, 100, config) == costs.mult(5, 0, config) == costs.LinkCost(c_s=40, s_c=40, cp_s=40)
    else:  # Beaver: both operands opened, a triple share from the CP
        assert costs.mult(5, 3, config) == costs.LinkCost(c_s=64, s_c=64, cp_c=40)
    assert costs.beaver(2, 3, 4) == costs.LinkCost(c_s=40, s_c=40, cp_c=32)
    assert costs.linear_server_weights(2, 3, 4) == costs.LinkCost(c_s=16, s_c=24, cp_c=32)


def test_rounds():
    j, s = ProtocolConfig(), ProtocolConfig.reference()
    assert (costs.drelu_rounds(j), costs.relu_rounds(j)) == (7, 7)
    assert (costs.drelu_rounds(s), costs.relu_rounds(s)) == (8, 9)
    tree = dataclasses.replace(j, maxpool_schedule="tree")
    for k, levels in [(1, 0), (2, 1), (4, 2), (9, 4), (16, 4), (17, 5)]:
        assert costs.maxpool_rounds(k, tree) == levels * 7
        assert costs.maxpool_rounds(k, dataclasses.replace(j, maxpool_schedule="sequential")) == (k - 1) * 7
    assert costs.maxpool_rounds(9, s) == 8 * 9  # the reference's schedule is sequential


def test_formulas_equal_the_record_of_a_run():
    """A tiny secure layer through the public ops: conv (server weights) -> ReLU -> mean, revealed."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 3, 2))
    w = rng.normal(size=(3, 3, 2, 4)) / 8
    config = ProtocolConfig(compare_bits=16, lsb_drop_bits=2)

    def layer(a):
        return ops.global_avg_pool(ops.relu(ops.conv2d(a, w)))

    out, comm = simulate(layer, x, config=config, key=jax.random.key(0), jit=False)
    y = 1 * 3 * 3 * 4
    expected = (costs.linear_server_weights(x.size, w.size, y) + costs.relu(y, config) + costs.reveal(4))
    assert {(a, b): comm.link_bytes(a, b) for a, b in LINKS} == expected.links
    assert comm.total_bytes == expected.total
    assert comm.select(kind="weights").online_bytes == 0  # the masked weights are offline
    assert comm.rounds == 1 + costs.relu_rounds(config) + 1  # input, ReLU, reveal
    assert out.shape == (1, 4)
