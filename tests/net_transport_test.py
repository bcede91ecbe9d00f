"""TLS links between parties (``jaxmpc.net.transport``), three sessions in threads on loopback.

Covers mutual authentication, the handshake (model fingerprint, wire version, roles), pairwise
key agreement, pipelined messages with exact counters, and fast, clear failures.
"""

import re
import socket
import threading
import time

import numpy as np
import pytest

from jaxmpc.net import transport, wire
from jaxmpc.net.launcher import free_ports
from jaxmpc.net.pki import create_test_pki, role_hostname
from jaxmpc.net.transport import (ConnectionLost, HandshakeError, NetTimeout, PeerAborted, ProtocolError, Session,
                                  certificate_role)
from jaxmpc.core.parties import CLIENT, CP, PARTIES, SERVER

NAMES = {CLIENT: "client", SERVER: "server", CP: "cp"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return create_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    return create_test_pki(tmp_path_factory.mktemp("other_pki"), ca_name="another CA")


def make(pki, *, hello=None, files=None, versions=None, **kw):
    """Three sessions on loopback; returns ({party: session}, {party: hellos or exception}, seconds)."""
    ports = free_ports(3)
    addrs = {p: ("127.0.0.1", port) for p, port in zip(PARTIES, ports)}
    opts = dict(connect_timeout=10.0, timeout=5.0, compile_timeout=5.0)
    opts.update(kw)
    sessions = {}
    for p in PARTIES:
        ca, cert, key = (files or {}).get(p, (pki.ca, pki.cert(NAMES[p]), pki.key(NAMES[p])))
        sessions[p] = Session(p, addrs, ca=ca, cert=cert, key=key, version=(versions or {}).get(p, wire.WIRE_VERSION),
                              **opts)
    results = {}

    def go(p):
        h = {"fingerprint": "abc", "model": "m"}
        h.update((hello or {}).get(p, {}))
        try:
            results[p] = sessions[p].open(h)
        except Exception as e:  # noqa: BLE001 - inspected by the tests
            results[p] = e

    t0 = time.monotonic()
    threads = [threading.Thread(target=go, args=(p,)) for p in PARTIES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return sessions, results, time.monotonic() - t0


def close_all(sessions):
    for s in sessions.values():
        s.close()


def test_certificates_name_their_roles(pki, other_pki):
    for p in PARTIES:
        assert certificate_role(pki.cert(NAMES[p])) == p
    assert role_hostname("cp") == "cp.jaxmpc"
    with pytest.raises(HandshakeError, match="is for server, but this party is the client"):
        Session("client", {p: ("127.0.0.1", 1 + p) for p in PARTIES}, ca=pki.ca, cert=pki.cert("server"),
                key=pki.key("server"))


def test_open_agrees_keys_and_pipelines_messages_with_exact_counts(pki):
    sessions, res, _ = make(pki, hello={CLIENT: {"batches": 3}})
    try:
        assert all(isinstance(r, dict) for r in res.values()), res
        assert res[SERVER][CLIENT]["batches"] == 3 and res[CP][CLIENT]["role"] == "client"
        # each pair shares one fresh 32-byte (256-bit) key; the three pairs' keys differ
        for a, b in ((CLIENT, SERVER), (CLIENT, CP), (SERVER, CP)):
            ka, kb = sessions[a].pair_secrets[b], sessions[b].pair_secrets[a]
            assert ka == kb and len(ka) == 32
        keys = {sessions[CLIENT].pair_secrets[SERVER], sessions[CLIENT].pair_secrets[CP],
                sessions[SERVER].pair_secrets[CP]}
        assert len(keys) == 3
        # pipelined: 300 messages each way queued before anyone reads (no acks, no deadlock)
        rng = np.random.default_rng(0)
        msgs = [rng.integers(0, 2**63, size=int(rng.integers(0, 300)), dtype=np.uint64) for _ in range(300)]
        for m in msgs:
            sessions[CLIENT].send_array(SERVER, m, np.uint64)
            sessions[SERVER].send_array(CLIENT, m.astype(np.uint8), np.uint8)
        for m in msgs:
            np.testing.assert_array_equal(sessions[SERVER].recv_array(CLIENT, m.shape, np.uint64), m)
            np.testing.assert_array_equal(sessions[CLIENT].recv_array(SERVER, m.shape, np.uint8), m.astype(np.uint8))
        total = sum(m.size for m in msgs)
        for side in (sessions[CLIENT], sessions[SERVER]):
            c = side.counters()
            assert c["client->server"]["payload_bytes"] == 8 * total and c["client->server"]["messages"] == 300
            assert c["server->client"]["payload_bytes"] == total
            assert c["client->server"]["frame_bytes"] == 8 * total + 300 * wire.HEADER.size
        assert sessions[CP].counters()["cp->client"]["messages"] == 0
        for s in sessions.values():  # READY barrier, then a clean end (BYE both ways)
            threading.Thread(target=s.ready).start()
        time.sleep(0.3)
        done = []
        threads = [threading.Thread(target=lambda s=s: (s.finish(), done.append(s.warnings)))
                   for s in sessions.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert done == [[], [], []]
    finally:
        close_all(sessions)


@pytest.mark.parametrize("case", ["model", "version", "wrong_ca"])
def test_refused_peers_stop_everyone_fast_with_a_clear_error(pki, other_pki, case):
    if case == "model":
        sessions, res, secs = make(pki, hello={CLIENT: {"fingerprint": "other", "model": "ResNetSmall(num_filters=2)"}})
        pattern = "model mismatch"
    elif case == "version":
        sessions, res, secs = make(pki, versions={CP: wire.WIRE_VERSION + 1})
        pattern = "version"
    else:
        files = {CP: (other_pki.ca, other_pki.cert("cp"), other_pki.key("cp"))}
        sessions, res, secs = make(pki, files=files)
        pattern = "certificate|certificate verify failed|unknown ca|closed|connect"
    close_all(sessions)
    assert all(isinstance(r, Exception) for r in res.values()), res
    assert secs < 10.0  # well within connect_timeout for the parties that see the fault directly
    msgs = {p: str(r) for p, r in res.items()}
    # the parties that meet the fault name it; a third may only see its peer stop during set-up
    if case == "model":
        assert "model mismatch" in msgs[CLIENT] and "ResNetSmall(num_filters=2)" in msgs[SERVER] + msgs[CP], msgs
    elif case == "version":
        other = wire.WIRE_VERSION + 1
        assert f"this party speaks {other}" in msgs[CP] and f"version {other}" in msgs[CLIENT] + msgs[SERVER], msgs
    else:
        assert "certificate" in msgs[CP] and "certificate" in msgs[CLIENT] + msgs[SERVER], msgs
    for m in msgs.values():
        assert re.search(pattern, m) or "stopped with an error" in m or "aborted" in m, msgs


def make_open(pki, **kw):
    sessions, res, _ = make(pki, **kw)
    assert all(isinstance(r, dict) for r in res.values()), res
    return sessions


def test_a_dead_peer_is_detected_at_once_not_at_the_timeout(pki):
    sessions = make_open(pki, timeout=30.0)
    try:
        sessions[SERVER].send_array(CLIENT, np.arange(5, dtype=np.uint64), np.uint64)
        np.testing.assert_array_equal(sessions[CLIENT].recv_array(SERVER, (5,), np.uint64), np.arange(5))
        # the server "crashes": its sockets close without BYE
        for link in list(sessions[SERVER]._out.values()) + list(sessions[SERVER]._in.values()):
            link.sock.close()
        t0 = time.monotonic()
        # each survivor sees the server's link close, or hears it first from the other survivor
        for p, src in ((CLIENT, SERVER), (CP, CLIENT)):
            with pytest.raises((ConnectionLost, PeerAborted),
                               match="server closed its connection without finishing the protocol"):
                sessions[p].recv(src)
        assert time.monotonic() - t0 < 5.0
    finally:
        close_all(sessions)


def test_abort_tells_the_peers_why(pki):
    sessions = make_open(pki)
    try:
        sessions[CP].fail(RuntimeError("out of memory"))
        for p in (CLIENT, SERVER):
            with pytest.raises(PeerAborted, match="cp aborted: .*out of memory"):
                sessions[p].recv(CP)
    finally:
        close_all(sessions)


def test_truncated_message_breaks_the_link(pki):
    sessions = make_open(pki)
    try:
        link = sessions[SERVER]._out[CLIENT]
        link.queue.put(transport._STOP)  # stop the writer thread, then write half a frame by hand
        link.thread.join(5)
        frame = wire.encode_frame(wire.FrameType.DATA, link.seq, b"\1" * 1000)
        link.sock.sendall(frame[:300])
        link.sock.close()
        with pytest.raises(ConnectionLost, match="broke inside a message.*got 280 of 1000"):
            sessions[CLIENT].recv(SERVER, 1000)
    finally:
        close_all(sessions)


def test_timeouts_and_wrong_sizes_are_errors(pki):
    sessions = make_open(pki, timeout=0.5)
    try:
        t0 = time.monotonic()
        with pytest.raises(NetTimeout, match="no message from cp within 0.5 s"):
            sessions[SERVER].recv(CP)
        assert 0.4 < time.monotonic() - t0 < 3.0
    finally:
        close_all(sessions)
    sessions = make_open(pki)
    try:
        sessions[CLIENT].send_array(CP, np.zeros(3, np.uint64), np.uint64)
        with pytest.raises(ProtocolError, match="has 24 bytes where the protocol expects 32"):
            sessions[CP].recv_array(CLIENT, (4,), np.uint64)
    finally:
        close_all(sessions)


def test_nobody_there_times_out_at_connect(pki):
    ports = free_ports(3)
    addrs = {p: ("127.0.0.1", port) for p, port in zip(PARTIES, ports)}
    s = Session(CLIENT, addrs, ca=pki.ca, cert=pki.cert("client"), key=pki.key("client"), connect_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(NetTimeout, match="could not connect to (server|cp)|did not connect"):
        s.open({"fingerprint": "x"})
    assert time.monotonic() - t0 < 4.0
    # a port that is taken: a clear error, not a traceback
    blocker = socket.create_server(("127.0.0.1", 0))
    addrs[CLIENT] = blocker.getsockname()
    s = Session(CLIENT, addrs, ca=pki.ca, cert=pki.cert("client"), key=pki.key("client"), connect_timeout=1.0)
    with pytest.raises(Exception, match="cannot listen on 127.0.0.1"):
        s.open({"fingerprint": "x"})
    blocker.close()


def test_simulated_latency_and_bandwidth(pki):
    sessions = make_open(pki, latency=0.2, bandwidth=200_000.0)  # 0.2 s one way, 200 kB/s
    try:
        t0 = time.monotonic()
        sessions[CLIENT].send(SERVER, b"x" * 8)
        sessions[SERVER].recv(CLIENT, 8)
        assert time.monotonic() - t0 >= 0.2
        t0 = time.monotonic()
        for _ in range(4):
            sessions[CLIENT].send(SERVER, b"y" * 25_000)  # 100 kB: 0.5 s at 200 kB/s, plus 0.2 s latency
        for _ in range(4):
            sessions[SERVER].recv(CLIENT, 25_000)
        assert 0.65 <= time.monotonic() - t0 < 3.0
    finally:
        close_all(sessions)


def test_compression_is_transparent_and_counted_as_payload(pki):
    sessions = make_open(pki, compression=True)
    try:
        z = np.zeros(10_000, np.uint64)
        sessions[SERVER].send_array(CP, z, np.uint64)
        np.testing.assert_array_equal(sessions[CP].recv_array(SERVER, z.shape, np.uint64), z)
        c = sessions[SERVER].counters()["server->cp"]
        assert c["payload_bytes"] == 80_000 and c["frame_bytes"] < 1_000  # payload counted uncompressed
    finally:
        close_all(sessions)


def test_a_flooding_peer_is_held_back_by_the_bounded_receive_buffer(pki):
    """A peer that sends far more than the receiver consumes fills at most the receiver's bounded
    buffer (bytes and messages); then the reader stops reading and TCP holds the sender's writer
    back. Once the receiver consumes, every message arrives in order: back-pressure, no deadlock."""
    limit, count = 64 << 10, 16
    sessions = make_open(pki, timeout=30.0, recv_queue_bytes=limit, recv_queue_messages=count)
    try:
        body = bytes(range(256)) * 32  # 8 KiB
        n = 4000  # 32 MiB: far more than the buffer and the kernel's socket buffers together
        for i in range(n):
            sessions[SERVER].send(CLIENT, i.to_bytes(4, "big") + body)
        time.sleep(1.5)  # the client reads nothing meanwhile
        buf = sessions[CLIENT]._in[SERVER].queue
        held, items = buf.buffered
        assert held <= limit and items <= count
        assert buf.peak_bytes <= limit and buf.peak_items <= count
        assert sessions[SERVER].counters()["server->client"]["messages"] < n  # the writer is held back
        for i in range(n):
            assert sessions[CLIENT].recv(SERVER, len(body) + 4) == i.to_bytes(4, "big") + body
        assert buf.peak_bytes <= limit and buf.peak_items <= count
        assert sessions[CLIENT].counters()["server->client"]["messages"] == n
        # a message larger than the buffer still passes (alone), and a tiny buffer of messages too
        sessions[SERVER].send(CLIENT, b"z" * (2 * limit))
        assert sessions[CLIENT].recv(SERVER, 2 * limit) == b"z" * (2 * limit)
        assert sessions[CLIENT].error is None and sessions[SERVER].error is None
    finally:
        close_all(sessions)


@pytest.mark.parametrize("case", ["oversize", "malformed", "oversize_error"])
def test_an_oversize_or_malformed_frame_ends_the_run_on_both_sides(pki, case):
    """A frame over the link's limit is refused from its header (nothing of its announced size is
    read or allocated); a malformed one likewise. The receiver aborts with a ProtocolError naming
    the peer, and the peer (and the third party) learn why."""
    sessions = make_open(pki)
    try:
        sessions[CLIENT].set_message_limits({SERVER: 1000})
        sessions[SERVER].send(CLIENT, b"x" * 1000)  # at the limit: accepted
        assert sessions[CLIENT].recv(SERVER, 1000) == b"x" * 1000
        link = sessions[SERVER]._out[CLIENT]
        link.queue.put(transport._STOP)  # stop the writer thread, then write a bad frame by hand
        link.thread.join(5)
        if case == "oversize":
            bad = wire.HEADER.pack(wire.MAGIC, wire.WIRE_VERSION, int(wire.FrameType.DATA), 0, link.seq, 1001)
            bad += b"x" * 1001
            why = r"server sent a malformed frame: DATA frame payload of 1001 bytes exceeds the limit \(1000\)"
        elif case == "oversize_error":  # a control frame during the run: the handshake limit
            bad = wire.HEADER.pack(wire.MAGIC, wire.WIRE_VERSION, int(wire.FrameType.ERROR), 0, link.seq, 1 << 40)
            why = "ERROR frame payload of 1099511627776 bytes exceeds the limit"
        else:
            bad = b"GET / HTTP/1.1\r\n\r\n" + b"\0" * 10
            why = "server sent a malformed frame: not a jaxmpc peer"
        t0 = time.monotonic()
        link.sock.sendall(bad)
        with pytest.raises(ProtocolError, match=why):
            sessions[CLIENT].recv(SERVER, 1000)
        with pytest.raises(PeerAborted, match="client aborted: .*" + why):
            sessions[SERVER].recv(CLIENT)
        with pytest.raises(PeerAborted, match="client aborted"):
            sessions[CP].recv(CLIENT)
        assert time.monotonic() - t0 < 5.0
        assert sessions[CLIENT]._in[SERVER].queue.buffered == (0, 0)
    finally:
        close_all(sessions)


def test_message_limits_are_checked():
    s = Session.__new__(Session)  # only the limits: no sockets needed
    s.role, s._max_data = CLIENT, {SERVER: wire.MAX_PAYLOAD, CP: wire.MAX_PAYLOAD}
    s.set_message_limits({"server": 5, CP: 0})
    assert s._max_data == {SERVER: 5, CP: 0}
    with pytest.raises(ValueError, match="client is not a peer of the client"):
        s.set_message_limits({CLIENT: 5})
    with pytest.raises(ValueError, match="a message limit must lie in"):
        s.set_message_limits({SERVER: -1})
    with pytest.raises(ValueError, match="receive buffer bounds must be positive"):
        Session(CLIENT, {p: ("127.0.0.1", 1 + p) for p in PARTIES}, ca="x", cert="x", key="x", recv_queue_bytes=0)


def test_pki_files_are_written_atomically_with_private_keys(tmp_path):
    import os
    import stat

    files = create_test_pki(tmp_path / "pki")
    for name in ("client", "server", "cp"):
        assert stat.S_IMODE(os.stat(files.key(name)).st_mode) == 0o600
        assert certificate_role(files.cert(name)) == {"client": CLIENT, "server": SERVER, "cp": CP}[name]
    assert stat.S_IMODE(os.stat(files["ca_key"]).st_mode) == 0o600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(files.ca).st_mode) == 0o666 & ~umask  # certificates: as a plain open()
    assert not [f for f in os.listdir(tmp_path / "pki") if f.endswith(".tmp")]
