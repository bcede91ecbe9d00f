"""Attacks a curious crypto provider would mount on its *joint* view of PrivateCompare.

The CP knows both parties' bit shares of ``x`` (the client's from the client-CP key, the server's
it computes itself) and receives one vector from each of the client and the server. Before the
additive mask ``u`` (SecureNN Alg. 1 as first implemented here), both vectors were
``pi(s * c^j)`` with one common ``s`` and ``pi``: their ratios cancel ``s``, and the multiset of
ratios depends only on ``r``, ``beta`` and the known bit shares, so checking a guess of ``r`` is
easy (and at 16 compared bits, a brute force over all ``r`` recovers it). These tests keep that
attack as a regression test: it must succeed on a leaky view built from the same data, and fail
on the protocol's real messages.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.core.config import ProtocolConfig
from jaxmpc.core.parties import CP
from jaxmpc.protocols import compare

from utils import run_jitted, shared, u64

P = 67
INV = np.array([0] + [pow(int(v), P - 2, P) for v in range(1, P)], np.int64)


def _c_vectors(xb, q, beta, j):
    """Party ``j``'s PrivateCompare vector (LSB first) for compared value ``q`` (numpy, int64).

    ``xb``: [m] Z_67 bit shares; ``q``: [Q] candidates; ``beta``: 0/1. Returns [Q, m].
    """
    m = xb.shape[-1]
    q = np.asarray(q, np.uint64)
    qb = ((q[:, None] >> np.arange(m, dtype=np.uint64)) & np.uint64(1)).astype(np.int64)
    xs = np.where(qb == 1, (P - xb) % P, xb)
    w = (xs + j * qb) % P
    above = (np.cumsum(w[:, ::-1], axis=1)[:, ::-1] - w) % P
    term = (j * qb + P - xb) % P
    if beta:
        term = (P - term) % P
    return (term + j + above) % P


def _ratio_multiset(dc, ds):
    """Sorted ``dc / ds`` per row (``ds == 0`` encoded as ``P``, or ``P + 1`` when ``dc == 0`` too):
    invariant under a common multiplier ``s`` per position and a common permutation."""
    r = np.where(ds == 0, np.where(dc == 0, P + 1, P), (dc * INV[ds]) % P)
    return np.sort(r, axis=-1)


def _capture_msb_compare(values, config, monkeypatch):
    """Runs DReLU; returns the CP's knowledge and the secrets of the MSB's PrivateCompare."""
    captured = []
    real = compare.private_compare

    def spy(rt, xb_c, xb_s, r, beta, m, **kw):
        out = real(rt, xb_c, xb_s, r, beta, m, **kw)
        captured.append((xb_c, xb_s, r, beta))
        return out

    monkeypatch.setattr(compare, "private_compare", spy)

    def build(rt, x):
        rt.transcript = []
        captured.clear()
        compare.drelu(shared(rt, x))
        to_cp = [i for i, msg in enumerate(rt.messages) if msg.dst == CP and "private_compare" in msg.path]
        xb_c, xb_s, r, beta = captured[-1]  # the MSB's comparison
        d_c, d_s = (rt.transcript[i][1] for i in to_cp[-2:])
        return dict(xb_c=xb_c.value, xb_s=xb_s.value, r=r.value, beta=beta.value, d_c=d_c, d_s=d_s)

    out, _ = run_jitted(build, jnp.asarray(u64(values)), config=config, key=7)
    return {k: np.asarray(v).astype(np.int64) if k != "r" else np.asarray(v).astype(np.uint64) for k, v in out.items()}


def _leaky_view(v, rng):
    """The view the CP had before the mask: ``pi(s c^c)``, ``pi(s c^s)`` for the true ``r``, ``beta``."""
    d_c, d_s = [], []
    for e in range(len(v["beta"])):
        q = np.array([int(v["r"][e]) + int(v["beta"][e])], np.uint64)
        cc = _c_vectors(v["xb_c"][e], q, int(v["beta"][e]), 0)[0]
        cs = _c_vectors(v["xb_s"][e], q, int(v["beta"][e]), 1)[0]
        s = rng.integers(1, P, cc.shape)
        perm = rng.permutation(cc.shape[0])
        d_c.append((s * cc % P)[perm])
        d_s.append((s * cs % P)[perm])
    return np.array(d_c), np.array(d_s)


def _guess_verifies(v, d_c, d_s):
    """Per element: does the CP's check of the *true* (r, beta) against its received vectors pass?"""
    ok = []
    for e in range(len(v["beta"])):
        beta = int(v["beta"][e])
        q = np.array([int(v["r"][e]) + beta], np.uint64)
        want = _ratio_multiset(_c_vectors(v["xb_c"][e], q, beta, 0), _c_vectors(v["xb_s"][e], q, beta, 1))[0]
        ok.append(np.array_equal(want, _ratio_multiset(d_c[e][None], d_s[e][None])[0]))
    return np.array(ok)


def _brute_force_16(v, d_c, d_s):
    """Recovers ``(q, beta)`` at m = 16 by trying every candidate; returns the unique match or -1."""
    cands = np.arange(2**16, dtype=np.uint64)
    found = []
    for e in range(len(v["beta"])):
        got = _ratio_multiset(d_c[e][None], d_s[e][None])[0]
        hits = []
        for beta in (0, 1):
            ms = _ratio_multiset(_c_vectors(v["xb_c"][e], cands, beta, 0), _c_vectors(v["xb_s"][e], cands, beta, 1))
            hits += [(int(q), beta) for q in np.flatnonzero(np.all(ms == got, axis=1))]
        found.append(hits[0] if len(hits) == 1 else None)
    return found


SECRETS = [-3.25, 0.5, 7.0, -0.01, 1234.5, -77.0]


@pytest.mark.parametrize("bits", [64, 16])
def test_cp_ratio_attack_fails_on_private_compare(bits, monkeypatch):
    config = ProtocolConfig(compare_bits=bits)
    values = np.round(np.array(SECRETS * 4) * 2**12).astype(np.int64)
    v = _capture_msb_compare(values, config, monkeypatch)
    assert v["d_c"].shape == (len(values), bits)
    # the attack has power: on the unmasked view every true guess verifies
    leak_c, leak_s = _leaky_view(v, np.random.default_rng(0))
    assert _guess_verifies(v, leak_c, leak_s).all()
    # on the real messages it verifies (by chance) essentially never
    assert _guess_verifies(v, v["d_c"], v["d_s"]).mean() < 0.05
    # the client's vector alone is uniform on Z_67 (the additive mask), not on Z_67^* as s * c would be
    assert (v["d_c"] == 0).mean() > 0.2 / P


def test_cp_brute_force_recovers_r_only_from_the_leaky_view(monkeypatch):
    """At 16 compared bits a brute force over all r recovers every secret from the unmasked
    view, and none from the protocol's real messages."""
    config = ProtocolConfig(compare_bits=16)
    values = np.round(np.array(SECRETS[:4]) * 2**8).astype(np.int64)
    v = _capture_msb_compare(values, config, monkeypatch)
    truth = [(int(v["r"][e]) + int(v["beta"][e]), int(v["beta"][e])) for e in range(len(values))]
    leak_c, leak_s = _leaky_view(v, np.random.default_rng(1))
    leaked = _brute_force_16(v, leak_c, leak_s)
    assert sum(g == t for g, t in zip(leaked, truth)) >= len(values) - 1  # a rare double match aside
    real = _brute_force_16(v, v["d_c"], v["d_s"])
    assert sum(g == t for g, t in zip(real, truth)) == 0


def test_compiled_program_cache_is_keyed_on_the_program():
    """Two models with the same parameter structure (Dense, relu(Dense)) get their own compiled
    secure programs and results, in either order."""
    import flax.linen as nn
    import jax

    import jaxmpc

    class Lin(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x)

    class LinRelu(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.relu(nn.Dense(3)(x))

    x = np.linspace(-2, 2, 8, dtype=np.float32).reshape(2, 4)
    variables = Lin().init(jax.random.key(0), x)
    want = {m: np.asarray(m.apply(variables, x)) for m in (Lin(), LinRelu())}
    assert (want[Lin()] < -0.05).any()  # the two models really differ on this input
    for order in ((Lin(), LinRelu()), (LinRelu(), Lin())):
        jaxmpc.inference.api._CACHE.clear()
        jaxmpc.inference.api._TRACES.clear()
        for model in order:
            y, _ = jaxmpc.secure_apply(model, variables, x, key=jax.random.key(1))
            np.testing.assert_allclose(np.asarray(y), want[model], atol=1e-2)
