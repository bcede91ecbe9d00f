"""One party's view of the model, its keys, and its compiled program (``jaxmpc.net.party``)."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc import ProtocolConfig
from jaxmpc import nn as jnn
from jaxmpc.inference import secure_apply
from jaxmpc.net.config import ModelConfig
from jaxmpc.net.launcher import free_ports
from jaxmpc.net.transport import NetError
from jaxmpc.net.party import (PartyError, PartyProgram, _load_inputs, batch_keys, load_variables_file, prepare_model,
                              save_variables_npz, session_keys)
from jaxmpc.net.pki import create_test_pki
from jaxmpc.net.transport import Session
from jaxmpc.core.parties import C_CP, C_S, CLIENT, CP, PARTIES, S_CP, SERVER, owners
from jaxmpc.core.randomness import simulation_keys
from jaxmpc.core.ring import encode

KW = {"num_filters": 2, "stage_sizes": (1,)}


def mc(**over):
    base = dict(preset="ResNetSmall", kwargs=dict(KW), input_shape=(8, 8, 1), batch_size=2, spec=None,
                protocol=ProtocolConfig())
    base.update(over)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    model = jnn.ResNetSmall(**KW)
    v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1), jnp.float32))
    v = jax.tree_util.tree_map(np.asarray, v)
    save_variables_npz(d / "w.npz", v)
    return d, model, v


def test_every_role_traces_the_same_program_and_fingerprint(weights):
    d, _, v = weights
    server = prepare_model(mc(), "server", weights=str(d / "w.npz"))
    client, cp = prepare_model(mc(), "client"), prepare_model(mc(), "cp")
    assert server.fingerprint == client.fingerprint == cp.fingerprint
    # the client and CP hold shapes only; the server holds the weights
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in client.server_leaves())
    want = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(v)[0] if path[0].key != "block_sizes"]
    assert len(server.server_leaves()) == len(want) > 0
    for got, w in zip(server.server_leaves(), want):
        np.testing.assert_array_equal(got, w)
    # anything the parties must agree on changes the fingerprint
    others = [mc(kwargs={"num_filters": 3, "stage_sizes": (1,)}), mc(batch_size=3), mc(input_shape=(9, 9, 1)),
              mc(protocol=ProtocolConfig(frac_bits=13)), mc(protocol=ProtocolConfig(compare_bits=40))]
    prints = {prepare_model(m, "cp").fingerprint for m in others}
    assert len(prints) == len(others) and client.fingerprint not in prints


def test_spec_is_public_and_checked_against_the_weights(weights, tmp_path):
    d, model, v = weights
    layers = jnn.relu_layers(model, (8, 8, 1))
    name, (h, w, c) = layers[0]
    spec = {name: np.tile(np.array([[2, 2]], np.int32), (c, 1))}
    jnn.save_spec(tmp_path / "spec.json", spec)
    with_spec = mc(spec=str(tmp_path / "spec.json"))
    fp = prepare_model(with_spec, "client").fingerprint
    assert fp != prepare_model(mc(), "client").fingerprint
    # weights saved with block sizes that contradict the configured spec are refused
    save_variables_npz(tmp_path / "finetuned.npz", jnn.apply_spec(v, spec))
    with pytest.raises(PartyError, match="Block-ReLU sizes stored with the weights .* differ"):
        prepare_model(mc(), "server", weights=str(tmp_path / "finetuned.npz"))
    assert prepare_model(with_spec, "server", weights=str(tmp_path / "finetuned.npz")).fingerprint == fp


def test_bad_models_and_weights_are_clear_errors(weights, tmp_path):
    d, _, v = weights
    with pytest.raises(PartyError, match="unknown model preset 'ResNet9000'"):
        prepare_model(mc(preset="ResNet9000"), "client")
    with pytest.raises(PartyError, match="the server needs --weights"):
        prepare_model(mc(), "server")
    with pytest.raises(PartyError, match="does not exist"):
        prepare_model(mc(), "server", weights=str(tmp_path / "nope.npz"))
    with pytest.raises(PartyError, match="do not fit the model"):
        prepare_model(mc(kwargs={"num_filters": 2, "stage_sizes": (1, 1)}), "server", weights=str(d / "w.npz"))
    with pytest.raises(PartyError, match="has shape"):
        prepare_model(mc(kwargs={"num_filters": 3, "stage_sizes": (1,)}), "server", weights=str(d / "w.npz"))
    bad = jax.tree_util.tree_map(lambda a: a, v)
    bad["params"] = jax.tree_util.tree_map(lambda a: np.full_like(a, np.nan), v["params"])
    save_variables_npz(tmp_path / "nan.npz", bad)
    with pytest.raises(PartyError, match="NaN"):
        prepare_model(mc(), "server", weights=str(tmp_path / "nan.npz"))
    loaded = load_variables_file(d / "w.npz")
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(jax.tree_util.tree_map(np.asarray, v))


def test_client_input_is_validated(tmp_path):
    m = mc()
    np.save(tmp_path / "ok.npy", np.zeros((3, 8, 8, 1), np.float32))
    assert _load_inputs(str(tmp_path / "ok.npy"), m, m.protocol).shape == (3, 8, 8, 1)
    np.save(tmp_path / "one.npy", np.zeros((8, 8, 1)))
    assert _load_inputs(str(tmp_path / "one.npy"), m, m.protocol).shape == (1, 8, 8, 1)
    np.save(tmp_path / "shape.npy", np.zeros((3, 8, 8, 3)))
    with pytest.raises(PartyError, match=r"shape \[3, 8, 8, 3\], expected \[N, 8, 8, 1\]"):
        _load_inputs(str(tmp_path / "shape.npy"), m, m.protocol)
    np.save(tmp_path / "nan.npy", np.full((1, 8, 8, 1), np.nan))
    with pytest.raises(PartyError, match="NaN"):
        _load_inputs(str(tmp_path / "nan.npy"), m, m.protocol)
    np.save(tmp_path / "big.npy", np.full((1, 8, 8, 1), 1e20))
    with pytest.raises(PartyError, match="input"):
        _load_inputs(str(tmp_path / "big.npy"), m, m.protocol)


def test_keys_pairwise_shared_own_fresh_and_new_per_batch():
    secrets_ = {frozenset({CLIENT, SERVER}): b"\1" * 32, frozenset({CLIENT, CP}): b"\2" * 32,
                frozenset({SERVER, CP}): b"\3" * 32}
    keys = {p: session_keys(p, {q: secrets_[frozenset({p, q})] for q in PARTIES if q != p}) for p in PARTIES}
    for ks in (C_S, C_CP, S_CP):
        a, b = sorted(ks)
        np.testing.assert_array_equal(keys[a].get(ks), keys[b].get(ks))
        np.testing.assert_array_equal(batch_keys(keys[a], 5).get(ks), batch_keys(keys[b], 5).get(ks))
    for p in PARTIES:
        assert set(keys[p].keys) == {s for s in (C_S, C_CP, S_CP, owners(p)) if p in s}
    # each party's own key comes from OS entropy: two sessions never share it
    again = session_keys(CLIENT, {SERVER: b"\1" * 32, CP: b"\2" * 32})
    with pytest.raises(NetError, match="expected 32"):  # a 64-bit key is refused
        session_keys(CLIENT, {SERVER: b"\1" * 8, CP: b"\2" * 32})
    assert not np.array_equal(again.get(owners(CLIENT)), keys[CLIENT].get(owners(CLIENT)))
    # batches never reuse randomness
    words = {tuple(np.asarray(batch_keys(keys[CLIENT], i).get(C_S))) for i in range(50)}
    assert len(words) == 50 and tuple(np.asarray(keys[CLIENT].get(C_S))) not in words


def test_compiled_party_programs_are_bit_identical_to_the_simulator(weights, tmp_path):
    """Three compiled party programs (threads, one CPU device each, real TLS links) with the
    simulator's keys reproduce ``secure_apply`` exactly: same outputs, same messages."""
    d, model, v = weights
    if len(jax.devices()) < 3:
        pytest.skip("needs 3 host devices (tests/conftest.py sets 4)")
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        pki = create_test_pki(tmp_path / "pki")
        addrs = {p: ("127.0.0.1", port) for p, port in zip(PARTIES, free_ports(3))}
        names = {CLIENT: "client", SERVER: "server", CP: "cp"}
        x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 1)).astype(np.float32)
        key = jax.random.key(42)
        sim_keys = simulation_keys(key)
        out, err = {}, []

        def party(p):
            try:
                s = Session(p, addrs, ca=pki.ca, cert=pki.cert(names[p]), key=pki.key(names[p]), timeout=120)
                s.open({"fingerprint": "f"})
                prepared = prepare_model(mc(), p, weights=str(d / "w.npz") if p == SERVER else None)
                prog = PartyProgram(p, prepared, s, device=jax.devices()[int(p)])
                x_enc = np.asarray(encode(x, 12)) if p == CLIENT else None
                leaves = prepared.server_leaves() if p == SERVER else None
                prog.compile(sim_keys.restrict(p), x_enc, leaves)
                s.set_message_limits(prog.message_limits)  # as run_party: the protocol's largest messages
                s.ready()
                y = prog.run(sim_keys.restrict(p), x_enc, leaves)
                s.finish()  # counters are final once the writers have flushed
                out[p] = (y, prog.record, s.counters(), prog.message_limits)
            except Exception as e:  # noqa: BLE001 - reported below
                err.append((p, e))

        threads = [threading.Thread(target=party, args=(p,)) for p in PARTIES]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not err, err
        y, report = secure_apply(model, v, x, key=key)
    finally:
        jax.config.update("jax_disable_most_optimizations", old)
    np.testing.assert_array_equal(np.asarray(out[CLIENT][0][0]), np.asarray(y))  # bit for bit
    assert out[SERVER][0] == () and out[CP][0] == ()  # only the client learns the output
    for p in PARTIES:
        assert out[p][1].comm == report.comm  # every party's record of all messages = the simulator's
    for p in PARTIES:  # the frame limits derived from the trace: the largest message per link, no more
        limits = out[p][3]
        assert set(limits) == set(PARTIES) - {p}
        for src, n in limits.items():
            sent = report.comm.link_bytes(src, p)
            assert (0 < n <= sent) if sent else n == 0, (src, p, n, sent)
    c = out[CP][2]
    assert c["cp->server"]["payload_bytes"] == report.comm.link_bytes(CP, SERVER)
    assert c["client->cp"]["payload_bytes"] == report.comm.link_bytes(CLIENT, CP)


def test_old_result_writer_name_is_deprecated(tmp_path):
    import json

    from jaxmpc.net import party

    with pytest.warns(DeprecationWarning, match="jaxmpc._io.write_json"):
        write = party.write_json_atomic
    write(tmp_path / "r.json", {"a": np.int64(3)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 3}
    with pytest.raises(AttributeError):
        party.no_such_name  # noqa: B018
