"""TLS links between the three parties: set-up, handshake, pipelined messages, counters, faults.

Topology. Every party listens on one port and opens one connection to each peer, so there is
one TCP+TLS connection per *ordered* pair (6 in all): the connection a party opens is the one it
sends on, the ones it accepts are the ones it receives on. Each connection is used by exactly
one thread after set-up (a writer at one end, a reader at the other), which is what OpenSSL
needs to be thread-safe, and no message is ever acknowledged: sends go to a per-link queue
drained by the writer thread, receives come from a per-link queue filled by the reader thread,
so a send never waits for the peer and no protocol can deadlock on the network.

Authentication. TLS 1.3 with mutual authentication (``CERT_REQUIRED`` both ways) against the
configured CA. A connecting party checks that the peer's certificate names the peer's role
(hostname verification of ``<role>.jaxmpc``, :mod:`jaxmpc.net.pki`); an accepting party reads
the connecting party's role from its certificate and refuses unknown or duplicate roles.

Handshake, on every connection, right after TLS: both ends send a ``HELLO`` frame (JSON: wire
version, role, the model fingerprint, software versions, and role-specific fields such as the
client's number of batches) and check the other's: another wire version, a role that
contradicts the certificate, or another model fingerprint (architecture, spec, protocol
config, batch shape, see :func:`jaxmpc.net.party.model_fingerprint`) stops both ends with an
error naming both sides' values. Then the lower-numbered party of each pair sends a fresh
pairwise key (``KEY`` frame, 8 bytes from OS entropy) over the authenticated channel.

Untrusted input. A frame is checked from its 20-byte header before any of its payload is read:
handshake frames may carry at most :data:`wire.MAX_HANDSHAKE_PAYLOAD` bytes, ``DATA`` frames at
most :data:`wire.MAX_PAYLOAD`, or, once the party has traced its program, the largest message the
protocol sends on that link (:meth:`Session.set_message_limits`), and control frames during the
run at most ``MAX_HANDSHAKE_PAYLOAD``. A frame over its limit, or a malformed one (bad magic,
version, type, sequence number or compression), aborts the run with a :class:`ProtocolError`
naming the peer, and the peer receives the reason in an ``ERROR`` frame.

Back-pressure. Each receiving link buffers at most ``recv_queue_bytes`` payload bytes
(:data:`RECV_QUEUE_BYTES`) and ``recv_queue_messages`` messages (:data:`RECV_QUEUE_MESSAGES`) that
the protocol has not consumed yet (an empty buffer still takes one message of any allowed size).
When the buffer is full the reader thread stops reading; TCP flow control then stops the
sender's writer thread, while the sender's program carries on (its sends are queued on its side).
This cannot deadlock a run: the protocol consumes each link's messages in order, so the message
a party waits for is always at the head of a full buffer, never behind it. A sender whose writer
stays blocked for ``timeout`` seconds fails the run (``stopped reading``).

Faults. Every wait has a deadline (connect and handshake: ``connect_timeout``; peers'
compilation: ``compile_timeout``; each message: ``timeout``). The first error on any link aborts
the whole session (:meth:`Session.fail`): receive calls raise it, an ``ERROR`` frame with the
reason goes to each peer still reachable, and every socket is shut down, so the peers fail fast
too ("a party died" shows up as a connection closed without ``BYE``). A stream that ends inside a
frame, a frame of the wrong length for the protocol's next message, and out-of-order frames are
all errors.

Accounting. Per peer and direction: protocol payload bytes and messages (``DATA`` frames: what
:class:`jaxmpc.core.comm.CommRecord` counts), frame bytes (payload as sent + 20-byte headers) and
control bytes (handshake, keys, ``READY``/``BYE``). TLS record overhead (about 22 bytes per
16 KiB record) and TCP/IP headers are not counted.

Simulated network (what-if measurements, off by default): a bandwidth per direction paces each
writer (a frame leaves when the link would have finished transmitting it) and a latency delays
each received message before the protocol may use it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import queue
import secrets
import socket
import ssl
import threading
import time

import numpy as np

from jaxmpc.net import wire
from jaxmpc.net.pki import ROLE_NAMES, role_hostname, role_of_certificate
from jaxmpc.net.wire import FrameType
from jaxmpc.core.parties import PARTIES, Party

__all__ = ["Session", "NetError", "HandshakeError", "PeerAborted", "ConnectionLost", "NetTimeout", "ProtocolError",
           "LinkCounters", "tls_contexts", "certificate_role"]

from jaxmpc.core.randomness import KEY_BYTES  # noqa: E402  (32: a 256-bit ChaCha20 key)
#: Default bound on the payload bytes a receiving link buffers before its reader thread stops
#: reading (back-pressure, see the module docstring). Per link: a party buffers at most twice this
#: (plus one message larger than it, if the protocol sends such messages).
RECV_QUEUE_BYTES = 128 << 20
#: Default bound on the number of messages (any size, control frames included) a receiving link
#: buffers: a peer cannot fill memory with empty frames either.
RECV_QUEUE_MESSAGES = 4096


class NetError(RuntimeError):
    """A networked run failed (base class); the message says which peer and why."""


class HandshakeError(NetError):
    """A peer was reached but refused, or was refused: certificate, wire version, role or model."""


class PeerAborted(NetError):
    """A peer stopped with an error and told us why."""


class ConnectionLost(NetError):
    """A connection broke: the peer died, closed without finishing, or a frame was cut short."""


class NetTimeout(NetError, TimeoutError):
    """A peer did not connect, compile or send within its deadline."""


class ProtocolError(NetError):
    """The parties disagree on the protocol (a message of the wrong size, an unexpected frame)."""


def _name(p: Party) -> str:
    return ROLE_NAMES[p]


@dataclasses.dataclass
class LinkCounters:
    """What went over one direction of one link (see the module docstring)."""

    payload_bytes: int = 0
    messages: int = 0
    frame_bytes: int = 0
    control_bytes: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def certificate_role(path: str) -> Party | None:
    """The role named by a PEM certificate file (``None`` if it names none or several)."""
    from cryptography import x509

    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    cns = [a.value for a in cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)]
    return role_of_certificate({"subjectAltName": [("DNS", d) for d in dns], "subject": [[("commonName", c)]
                                                                                           for c in cns]})


def tls_contexts(ca: str, cert: str, key: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """``(accepting, connecting)`` TLS 1.3 contexts with mutual certificate authentication.

    Raises:
      NetError: a file cannot be loaded.
    """
    try:
        acc = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        acc.minimum_version = ssl.TLSVersion.TLSv1_3
        acc.verify_mode = ssl.CERT_REQUIRED
        acc.load_verify_locations(ca)
        acc.load_cert_chain(cert, key)
        con = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
        con.minimum_version = ssl.TLSVersion.TLSv1_3
        con.load_verify_locations(ca)
        con.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise NetError(f"cannot load the TLS files (ca {ca}, cert {cert}, key {key}): {e}") from None
    return acc, con


_ABORT, _READY, _BYE = object(), object(), object()
_STOP = object()


def _describe_tls_error(e: Exception, peer: str, addr: str) -> str:
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)) or isinstance(e, ssl.SSLZeroReturnError):
        return f"{peer} at {addr} dropped the connection during set-up ({e}); it has probably stopped with an error"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"the certificate presented by {peer} at {addr} was rejected: {e.verify_message or e}"
    text = str(e)
    if "alert" in text or "certificate" in text.lower():
        return f"{peer} at {addr} rejected this party's certificate ({text})"
    return f"TLS handshake with {peer} at {addr} failed: {text}"


class _RecvQueue:
    """A receiving link's buffer: FIFO, bounded by payload bytes and by item count.

    :meth:`put` (the reader thread) blocks while the buffer is full; an empty buffer takes any one
    item, so a message larger than ``max_bytes`` still gets through, alone. :meth:`abort` (the
    session failed or closed) wakes everyone: blocked and later ``put`` calls return ``False`` and
    ``get`` returns ``_ABORT`` from then on. ``peak_bytes`` / ``peak_items``: the most ever held.
    """

    def __init__(self, max_bytes: int, max_items: int):
        self.max_bytes, self.max_items = int(max_bytes), int(max_items)
        self._items: collections.deque = collections.deque()
        self._bytes = 0
        self._aborted = False
        self._cond = threading.Condition()
        self.peak_bytes = 0
        self.peak_items = 0

    def _full(self, nbytes: int) -> bool:
        return bool(self._items) and (self._bytes + nbytes > self.max_bytes or len(self._items) >= self.max_items)

    def put(self, item, nbytes: int = 0) -> bool:
        with self._cond:
            while not self._aborted and self._full(nbytes):
                self._cond.wait()
            if self._aborted:
                return False
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            self.peak_items = max(self.peak_items, len(self._items))
            self._cond.notify_all()
            return True

    def get(self, timeout: float):
        """The next item; ``_ABORT`` once aborted; raises :class:`queue.Empty` after ``timeout`` s."""
        end = time.monotonic() + timeout
        with self._cond:
            while not self._items and not self._aborted:
                left = end - time.monotonic()
                if left <= 0:
                    raise queue.Empty
                self._cond.wait(left)
            if self._aborted:
                return _ABORT
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._cond.notify_all()
            return item

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()

    @property
    def buffered(self) -> tuple[int, int]:
        """``(bytes, items)`` held now."""
        with self._cond:
            return self._bytes, len(self._items)


class _Link:
    """One direction of one connection, as seen from this party.

    ``queue``: what the writer thread sends (an unbounded :class:`queue.Queue` of this party's
    own messages) or what the reader thread received (a bounded :class:`_RecvQueue`).
    """

    def __init__(self, peer: Party, sock: ssl.SSLSocket, seq: int, recv_queue: _RecvQueue | None = None):
        self.peer = peer
        self.sock = sock
        self.seq = seq  # next sequence number (sent or expected)
        self.counters = LinkCounters()
        self.queue = recv_queue if recv_queue is not None else queue.Queue()
        self.thread: threading.Thread | None = None
        self.bye = threading.Event()
        self.free_at = 0.0  # simulated bandwidth: when the link finishes its last frame

    def close(self):
        _shutdown(self.sock)
        try:
            self.sock.close()
        except OSError:
            pass


def _shutdown(sock):
    """Shuts a socket down at the OS level (wakes any thread blocked on it)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class Session:
    """One party's links to the two others, for one run.

    Args:
      role: this party.
      addresses: ``{party: (host, port)}`` where each party accepts connections.
      listen: ``(host, port)`` this party binds (default: its own address).
      ca, cert, key: PEM files (the CA, this party's certificate naming its role, its key).
      connect_timeout: seconds to connect to, and be connected by, both peers and finish the
        handshakes.
      timeout: seconds to wait for any one message (and for a blocked send).
      compile_timeout: seconds to wait for the peers' ``READY``.
      compression: zlib-compress payloads.
      bandwidth: simulated bytes per second per direction (0: unlimited).
      latency: simulated seconds added to every received message.
      recv_queue_bytes, recv_queue_messages: bounds of each receiving link's buffer of messages
        the protocol has not consumed yet (back-pressure, see the module docstring).
      version: wire version spoken (tests only: a peer of another version).
      log: ``callable(str)`` for progress messages (default: silent).
    """

    def __init__(self, role, addresses: dict, *, ca: str, cert: str, key: str, listen: tuple | None = None,
                 connect_timeout: float = 60.0, timeout: float = 120.0, compile_timeout: float = 900.0,
                 compression: bool = False, bandwidth: float = 0.0, latency: float = 0.0,
                 recv_queue_bytes: int = RECV_QUEUE_BYTES, recv_queue_messages: int = RECV_QUEUE_MESSAGES,
                 version: int = wire.WIRE_VERSION, log=None):
        if int(recv_queue_bytes) < 1 or int(recv_queue_messages) < 1:
            raise ValueError(f"the receive buffer bounds must be positive, got {recv_queue_bytes} bytes and "
                             f"{recv_queue_messages} messages")
        self.recv_queue_bytes, self.recv_queue_messages = int(recv_queue_bytes), int(recv_queue_messages)
        self.role = Party.parse(role)
        self.addresses = {Party.parse(p): tuple(a) for p, a in addresses.items()}
        self.peers = tuple(p for p in PARTIES if p != self.role)
        for p in PARTIES:
            if p not in self.addresses:
                raise ValueError(f"no address for {_name(p)}")
        self.listen = tuple(listen) if listen else self.addresses[self.role]
        own = certificate_role(cert)
        if own != self.role:
            got = _name(own) if own is not None else "no role"
            raise HandshakeError(f"certificate {cert} is for {got}, but this party is the {_name(self.role)}")
        self.acc_ctx, self.con_ctx = tls_contexts(ca, cert, key)
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self.compile_timeout = float(compile_timeout)
        self.compression = bool(compression)
        self.bandwidth = float(bandwidth)
        self.latency = float(latency)
        self._max_data = {p: wire.MAX_PAYLOAD for p in self.peers}  # largest DATA payload accepted per peer
        self.version = version
        self.log = log or (lambda msg: None)
        self.error: BaseException | None = None
        self.warnings: list[str] = []
        self.peer_hellos: dict = {}
        self.pair_secrets: dict = {}
        self._out: dict = {}  # peer -> _Link (we write)
        self._in: dict = {}  # peer -> _Link (we read)
        self._lock = threading.Lock()
        self._closing = False
        self._finishing = False
        self._opened = False
        self._pending: set = set()  # sockets in set-up (shut down if set-up fails)
        self._setup_failed = threading.Event()
        self._linger = 1.0  # seconds a party that failed during set-up still answers new connections
        self._shut_done = threading.Event()
        self._listener: socket.socket | None = None
        self._rejected: list[str] = []
        self._recv_count = {p: 0 for p in self.peers}

    @classmethod
    def from_config(cls, role, cfg, *, cert: str | None = None, key: str | None = None, **kw) -> "Session":
        """A session from a parsed ``parties.toml`` (:class:`jaxmpc.net.config.NetConfig`)."""
        role = Party.parse(role)
        ca, cert, key = cfg.credentials(role, cert, key)
        entry = cfg.parties[role]
        n = cfg.network
        opts = dict(connect_timeout=n.connect_timeout, timeout=n.timeout, compile_timeout=n.compile_timeout,
                    compression=n.compression, bandwidth=n.bandwidth, latency=n.latency)
        opts.update(kw)
        return cls(role, {p: (e.host, e.port) for p, e in cfg.parties.items()}, ca=ca, cert=cert, key=key,
                   listen=(entry.listen_host, entry.listen_port), **opts)

    # ------------------------------------------------------------------------------------------
    # set-up

    def open(self, hello: dict) -> dict:
        """Connects to both peers, accepts both peers, runs the handshakes, agrees pairwise keys.

        Args:
          hello: this party's handshake fields; ``fingerprint`` (a string) must equal the
            peers'; other fields are passed along (e.g. the client's number of batches).

        Returns:
          ``{peer: hello}`` of both peers.

        Raises:
          HandshakeError / NetTimeout / ConnectionLost / PeerAborted / NetError: with the peer
          and the reason. The first error anywhere stops the whole set-up at once.
        """
        self.hello = dict(hello, protocol="jaxmpc", version=self.version, role=_name(self.role))
        deadline = time.monotonic() + self.connect_timeout
        try:
            self._listener = socket.create_server(self.listen)
        except OSError as e:
            raise NetError(f"cannot listen on {self.listen[0]}:{self.listen[1]}: {e.strerror or e}") from None
        self._listener.settimeout(0.2)

        def guarded(fn, *a):
            try:
                fn(*a)
            except BaseException as e:  # noqa: BLE001 - aborts the session, re-raised by open()
                if isinstance(e, ConnectionLost):
                    # a peer that drops a connection during set-up has usually stopped with an error
                    # of its own: give its ERROR frame (on another link) a moment to arrive first
                    end = time.monotonic() + 1.0
                    while self.error is None and time.monotonic() < end:
                        time.sleep(0.02)
                self.fail(e if isinstance(e, NetError) else NetError(f"{type(e).__name__}: {e}"))

        threads = [threading.Thread(target=guarded, args=(self._accept_loop, deadline), daemon=True,
                                    name=f"jaxmpc-accept-{_name(self.role)}")]
        threads += [threading.Thread(target=guarded, args=(self._connect, p, deadline), daemon=True,
                                     name=f"jaxmpc-connect-{_name(self.role)}-{_name(p)}") for p in self.peers]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads) and not self._setup_failed.is_set():
            if time.monotonic() > deadline + 5.0:
                self.fail(NetTimeout(f"set-up did not finish within {self.connect_timeout:g} s"))
                break
            for t in threads:
                t.join(0.05)
        for t in threads:
            t.join(self._linger + 2.0)
        try:
            self._listener.close()
        except OSError:
            pass
        if self.error is None and (len(self._out) != len(self.peers) or len(self._in) != len(self.peers)):
            self.fail(NetError("set-up ended without a connection to and from each peer"))
        if self.error is not None:
            raise self.error
        self._opened = True
        self.log(f"connected to {', '.join(_name(p) for p in self.peers)} (TLS, mutual authentication)")
        return dict(self.peer_hellos)

    def _track(self, sock):
        with self._lock:
            self._pending.add(sock)

    def _untrack(self, sock):
        with self._lock:
            self._pending.discard(sock)

    def _start_writer(self, link: _Link):
        link.sock.settimeout(self.timeout)  # a send blocked this long: the peer stopped reading
        link.thread = threading.Thread(target=self._writer, args=(link,), daemon=True,
                                       name=f"jaxmpc-send-{_name(self.role)}-{_name(link.peer)}")
        link.thread.start()

    def _start_reader(self, link: _Link):
        link.sock.settimeout(None)
        link.thread = threading.Thread(target=self._reader, args=(link,), daemon=True,
                                       name=f"jaxmpc-recv-{_name(self.role)}-{_name(link.peer)}")
        link.thread.start()

    def _check_hello(self, peer: Party, frame) -> dict:
        if frame is None:
            raise ConnectionLost(f"{_name(peer)} closed the connection during the handshake; it has probably "
                                 "stopped with an error")
        if frame.type == FrameType.ERROR:
            raise HandshakeError(f"{_name(peer)} refused the connection: {frame.payload.decode(errors='replace')}")
        if frame.type != FrameType.HELLO:
            raise HandshakeError(f"{_name(peer)} sent {frame.type.name} instead of HELLO")
        try:
            h = json.loads(frame.payload)
            assert isinstance(h, dict) and h.get("protocol") == "jaxmpc"
        except (ValueError, AssertionError):
            raise HandshakeError(f"{_name(peer)} is not a jaxmpc party (bad HELLO)") from None
        if h.get("version") != self.version:
            raise HandshakeError(f"{_name(peer)} speaks jaxmpc wire protocol version {h.get('version')}, "
                                 f"this party speaks {self.version}")
        if h.get("role") != _name(peer):
            raise HandshakeError(f"the peer with the {_name(peer)} certificate says it is {h.get('role')!r}")
        mine, theirs = self.hello.get("fingerprint"), h.get("fingerprint")
        if mine != theirs:
            raise HandshakeError(
                f"model mismatch with {_name(peer)}: its model fingerprint {str(theirs)[:16]} "
                f"({h.get('model', '?')}) differs from ours {str(mine)[:16]} ({self.hello.get('model', '?')}); "
                "the parties must use the same architecture, spec, protocol settings, batch shape and "
                "jaxmpc/JAX versions")
        return h

    def _send_error_now(self, sock, seq: int, text: str):
        try:
            sock.sendall(wire.encode_frame(FrameType.ERROR, seq, text.encode(), version=self.version))
        except OSError:
            pass

    def _refuse_if_failed(self, sock, seq: int) -> bool:
        """After this party failed, a connection that completes TLS gets our reason (ERROR) and is closed."""
        if not self._setup_failed.is_set():
            return False
        self._send_error_now(sock, seq, f"{_name(self.role)} stopped: {self.error}")
        self._untrack(sock)
        sock.close()
        return True

    def _tls_failure(self, e: BaseException, peer: str, addr: str) -> NetError:
        if isinstance(e, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return ConnectionLost(_describe_tls_error(e, peer, addr))
        if isinstance(e, ssl.SSLError):
            return HandshakeError(_describe_tls_error(e, peer, addr))
        if isinstance(e, (TimeoutError, socket.timeout)):
            return NetTimeout(f"handshake with {peer} at {addr} timed out")
        return ConnectionLost(f"handshake with {peer} at {addr} failed: {e}")

    def _connect(self, peer: Party, deadline: float):
        host, port = self.addresses[peer]
        addr = f"{host}:{port}"
        last = None
        while True:
            if self._setup_failed.is_set():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetTimeout(f"could not connect to {_name(peer)} at {addr} within {self.connect_timeout:g} s "
                                 f"(last error: {last or 'none'}); is it running?")
            try:
                raw = socket.create_connection((host, port), timeout=min(left, 5.0))
                break
            except socket.gaierror as e:
                raise NetError(f"cannot resolve {_name(peer)}'s address {addr}: {e}") from None
            except OSError as e:
                last = e.strerror or str(e)
                time.sleep(min(0.2, max(left, 0)))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(max(0.1, deadline - time.monotonic()))
        self._track(raw)
        try:
            sock = self.con_ctx.wrap_socket(raw, server_hostname=role_hostname(peer))
        except (ssl.SSLError, OSError) as e:
            self._untrack(raw)
            raw.close()
            if self._setup_failed.is_set():
                return
            raise self._tls_failure(e, _name(peer), addr) from None
        self._untrack(raw)
        self._track(sock)
        if self._refuse_if_failed(sock, 0):
            return
        self._handshake(sock, peer, addr, connecting=True)

    def _accept_loop(self, deadline: float):
        expected = set(self.peers)
        linger_until = None
        while expected or linger_until is not None:
            if self._setup_failed.is_set():
                # stay reachable a moment: peers that connect now learn why we stopped
                linger_until = linger_until or time.monotonic() + self._linger
                if time.monotonic() > linger_until:
                    return
            elif time.monotonic() > deadline:
                why = f"; rejected: {'; '.join(self._rejected[-3:])}" if self._rejected else ""
                raise NetTimeout(f"{' and '.join(_name(p) for p in sorted(expected))} did not connect to this party "
                                 f"({self.listen[0]}:{self.listen[1]}) within {self.connect_timeout:g} s{why}")
            try:
                raw, addr = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                if self._setup_failed.is_set():
                    return
                raise
            peer = self._accept_one(raw, f"{addr[0]}:{addr[1]}", expected, deadline)
            if peer is not None:
                expected.discard(peer)

    def _accept_one(self, raw, addr: str, expected: set, deadline: float):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(max(0.1, min(deadline - time.monotonic(), 30.0)) if not self._setup_failed.is_set() else 1.0)
        self._track(raw)
        try:
            sock = self.acc_ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self._untrack(raw)
            raw.close()
            reason = f"a connection from {addr} failed TLS: {e}"
            self._rejected.append(reason)
            self.log(reason)
            return None
        self._untrack(raw)
        self._track(sock)
        if self._refuse_if_failed(sock, 0):
            return None
        cert_role = role_of_certificate(sock.getpeercert() or {})
        if cert_role not in expected:
            self._untrack(sock)
            sock.close()
            who = _name(cert_role) if cert_role is not None else "no role"
            reason = f"a connection from {addr} with a certificate for {who} was refused"
            self._rejected.append(reason)
            self.log(reason)
            return None
        return cert_role if self._handshake(sock, cert_role, addr, connecting=False) is not None else None

    def _handshake(self, sock, peer: Party, addr: str, *, connecting: bool) -> _Link | None:
        """The handshake on one connection right after TLS, from either end; then starts its thread.

        Both ends send a ``HELLO`` and check the other's (:meth:`_check_hello`): the connecting end
        first, the accepting end once it has read the connecting end's. Then, on the connection
        the lower-numbered party of the pair opened, that party sends the pairwise key (``KEY``,
        :data:`KEY_BYTES` from OS entropy). Each end numbers its own frames from 0. A refusal goes
        to the peer as an ``ERROR`` frame before it is raised here.

        Returns:
          the link, registered (in ``_out`` with its writer thread when connecting, in ``_in``
          with its reader thread when accepting), or ``None`` when this party failed meanwhile
          (the peer was told why, the socket is closed).
        """
        who = f"{_name(peer)} at {addr}"
        sent = received = 0  # frames sent / read on this connection: the next sequence numbers
        secret = None

        def send(ftype, payload):
            nonlocal sent
            sock.sendall(wire.encode_frame(ftype, sent, payload, version=self.version))
            sent += 1

        def read():
            nonlocal received
            frame = wire.read_frame(sock, expect_seq=received, version=self.version,
                                    max_payload=wire.MAX_HANDSHAKE_PAYLOAD)
            received += 1
            return frame

        hello = json.dumps(self.hello).encode()
        try:
            if connecting:
                send(FrameType.HELLO, hello)
            try:
                frame = read()
            except wire.TruncatedFrame as e:
                raise ConnectionLost(f"{who} closed the connection inside its HELLO ({e})") from None
            except wire.WireError as e:
                self._send_error_now(sock, sent, f"{_name(self.role)}: {e}")
                raise HandshakeError(f"{who}: {e}") from None
            if not connecting:
                if self._refuse_if_failed(sock, sent):
                    return None
                send(FrameType.HELLO, hello)
            try:
                h = self._check_hello(peer, frame)
            except HandshakeError as e:
                self._send_error_now(sock, sent, f"{_name(self.role)} refuses: {e}")
                raise
            if connecting and self._refuse_if_failed(sock, sent):
                return None
            if connecting and self.role < peer:
                secret = secrets.token_bytes(KEY_BYTES)
                send(FrameType.KEY, secret)
            elif not connecting and peer < self.role:
                kf = read()
                if kf is not None and kf.type == FrameType.ERROR:
                    raise PeerAborted(f"{_name(peer)} refused: {kf.payload.decode(errors='replace')}")
                if kf is None:
                    raise ConnectionLost(f"{_name(peer)} closed the connection during set-up before sending the "
                                         "pairwise key; it has probably stopped with an error")
                if kf.type != FrameType.KEY or len(kf.payload) != KEY_BYTES:
                    raise HandshakeError(f"{_name(peer)} did not send the pairwise key (got {kf.type.name})")
                secret = kf.payload
        except (OSError, TimeoutError) as e:
            self._untrack(sock)
            sock.close()
            if self._setup_failed.is_set():
                return None
            raise self._tls_failure(e, _name(peer), addr) from None
        except BaseException:
            self._untrack(sock)
            sock.close()
            raise
        if connecting:
            link = _Link(peer, sock, sent)
        else:
            link = _Link(peer, sock, received, _RecvQueue(self.recv_queue_bytes, self.recv_queue_messages))
        with self._lock:
            if secret is not None:
                self.pair_secrets[peer] = secret
            self._pending.discard(sock)
            if not self._setup_failed.is_set():
                self.peer_hellos[peer] = h
                (self._out if connecting else self._in)[peer] = link
        if self._refuse_if_failed(sock, sent):
            return None
        (self._start_writer if connecting else self._start_reader)(link)
        return link

    # ------------------------------------------------------------------------------------------
    # threads

    def _writer(self, link: _Link):
        try:
            while True:
                item = link.queue.get()
                if item is _STOP:
                    return
                ftype, payload = item
                frame = wire.encode_frame(ftype, link.seq, payload, version=self.version,
                                          compress=self.compression and ftype == FrameType.DATA)
                link.seq += 1
                if self.bandwidth > 0:
                    now = time.monotonic()
                    link.free_at = max(now, link.free_at) + len(frame) / self.bandwidth
                    if link.free_at > now:
                        time.sleep(link.free_at - now)
                c = link.counters  # counted first: once a peer holds a message, its sender has counted it
                if ftype == FrameType.DATA:
                    c.payload_bytes += len(payload)
                    c.messages += 1
                    c.frame_bytes += len(frame)
                else:
                    c.control_bytes += len(frame)
                link.sock.sendall(frame)
                if ftype in (FrameType.BYE, FrameType.ERROR):
                    return
        except (OSError, TimeoutError) as e:
            if self._closing or self.error is not None or self._finishing:
                return
            if isinstance(e, (TimeoutError, socket.timeout)):
                self.fail(NetTimeout(f"{_name(link.peer)} stopped reading: a send blocked for {self.timeout:g} s"))
            else:
                self.fail(ConnectionLost(f"sending to {_name(link.peer)} failed: {e} (did it exit or crash?)"))

    def _frame_limit(self, peer: Party, ftype: FrameType) -> int:
        return self._max_data[peer] if ftype == FrameType.DATA else wire.MAX_HANDSHAKE_PAYLOAD

    def _reader(self, link: _Link):
        peer = _name(link.peer)
        limit = lambda ftype: self._frame_limit(link.peer, ftype)  # noqa: E731 - read when each header arrives
        try:
            while True:
                frame = wire.read_frame(link.sock, expect_seq=link.seq, version=self.version, max_payload=limit)
                if frame is None:
                    if self._closing or self.error is not None:
                        return
                    if self._finishing:
                        self.warnings.append(f"{peer} closed its connection without BYE after the run")
                        link.bye.set()
                        return
                    when = "the protocol" if self._opened else "the set-up"
                    self.fail(ConnectionLost(f"{peer} closed its connection without finishing {when} "
                                             "(did it exit or crash?)"))
                    return
                link.seq += 1
                c = link.counters
                if frame.type == FrameType.DATA:
                    c.payload_bytes += len(frame.payload)
                    c.messages += 1
                    c.frame_bytes += frame.wire_bytes
                    # blocks while the link's buffer is full (back-pressure); False: the session ended
                    if not link.queue.put((time.monotonic() + self.latency, frame.payload), len(frame.payload)):
                        return
                    continue
                c.control_bytes += frame.wire_bytes
                if frame.type == FrameType.READY:
                    if not link.queue.put(_READY):
                        return
                elif frame.type == FrameType.BYE:
                    link.bye.set()
                    link.queue.put(_BYE)
                    return
                elif frame.type == FrameType.ERROR:
                    self.fail(PeerAborted(f"{peer} aborted: {frame.payload.decode(errors='replace')}"))
                    return
                else:
                    self.fail(ProtocolError(f"unexpected {frame.type.name} frame from {peer}"))
                    return
        except wire.TruncatedFrame as e:
            if not (self._closing or self.error is not None):
                self.fail(ConnectionLost(f"the connection from {peer} broke inside a message: {e}"))
        except wire.WireError as e:  # malformed or over its limit: refused from the header
            if not (self._closing or self.error is not None or self._finishing):
                self.fail(ProtocolError(f"{peer} sent a malformed frame: {e}"))
        except (OSError, ValueError) as e:
            if not (self._closing or self.error is not None or self._finishing):
                self.fail(ConnectionLost(f"receiving from {peer} failed: {e}"))

    # ------------------------------------------------------------------------------------------
    # protocol messages

    def _check(self):
        if self.error is not None:
            raise self.error

    def set_message_limits(self, limits: dict) -> None:
        """Largest ``DATA`` payload accepted from each peer from now on, ``{peer: bytes}``.

        Give the largest message the protocol sends on each link (:func:`jaxmpc.net.party.run_party`
        reads it from the traced program before ``READY``); peers left out keep
        :data:`wire.MAX_PAYLOAD`. A frame announcing more is refused from its header, before any
        of its payload is read, and aborts the run (:class:`ProtocolError`).
        """
        for p, n in limits.items():
            p = Party.parse(p)
            if p not in self._max_data:
                raise ValueError(f"{_name(p)} is not a peer of the {_name(self.role)}")
            n = int(n)
            if not 0 <= n <= wire.MAX_PAYLOAD:
                raise ValueError(f"a message limit must lie in [0, {wire.MAX_PAYLOAD}], got {n}")
            self._max_data[p] = n

    def send(self, dst, payload: bytes) -> None:
        """Queues one protocol message for ``dst`` (returns at once; the writer thread sends it)."""
        self._check()
        self._out[Party.parse(dst)].queue.put((FrameType.DATA, payload))

    def send_array(self, dst, value, wire_dtype) -> None:
        """Sends an array as little-endian ``wire_dtype`` bytes."""
        dt = np.dtype(wire_dtype).newbyteorder("<")
        self.send(dst, np.ascontiguousarray(np.asarray(value).astype(dt, copy=False)).tobytes())

    def recv(self, src, nbytes: int | None = None) -> bytes:
        """The next protocol message from ``src`` (waits at most ``timeout``; checks its size).

        Raises:
          NetTimeout, ConnectionLost, PeerAborted, ProtocolError: the session is aborted.
        """
        src = Party.parse(src)
        self._check()
        link = self._in[src]
        try:
            item = link.queue.get(timeout=self.timeout)
        except queue.Empty:
            self.fail(NetTimeout(f"no message from {_name(src)} within {self.timeout:g} s (message "
                                 f"#{self._recv_count[src] + 1} from it); is it alive?"))
            raise self.error from None
        if item is _ABORT:  # the buffer stays aborted: every later receive gets _ABORT too
            raise self.error
        if item is _READY or item is _BYE:
            what = "finished" if item is _BYE else "sent READY"
            self.fail(ProtocolError(f"{_name(src)} {what} where this party expected its message "
                                    f"#{self._recv_count[src] + 1} (the parties run different programs)"))
            raise self.error
        ready_at, payload = item
        self._recv_count[src] += 1
        if self.latency > 0:
            wait = ready_at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        if nbytes is not None and len(payload) != nbytes:
            self.fail(ProtocolError(f"message #{self._recv_count[src]} from {_name(src)} has {len(payload)} bytes "
                                    f"where the protocol expects {nbytes} (the parties are out of step)"))
            raise self.error
        return payload

    def recv_array(self, src, shape, wire_dtype) -> np.ndarray:
        """Receives an array of ``shape`` sent as little-endian ``wire_dtype`` bytes."""
        dt = np.dtype(wire_dtype).newbyteorder("<")
        shape = tuple(int(d) for d in shape)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        return np.frombuffer(self.recv(src, n), dtype=dt).astype(np.dtype(wire_dtype), copy=False).reshape(shape)

    def ready(self) -> None:
        """Tells the peers this party is compiled and waits until both are (``compile_timeout``)."""
        self._check()
        for link in self._out.values():
            link.queue.put((FrameType.READY, b""))
        for peer, link in self._in.items():
            try:
                item = link.queue.get(timeout=self.compile_timeout)
            except queue.Empty:
                self.fail(NetTimeout(f"{_name(peer)} was not ready within {self.compile_timeout:g} s"))
                raise self.error from None
            if item is _ABORT:
                raise self.error
            if item is not _READY:
                self.fail(ProtocolError(f"{_name(peer)} sent a message before READY"))
                raise self.error

    def finish(self) -> None:
        """Ends a successful run: ``BYE`` to both peers, waits for theirs, closes the links."""
        self._check()
        self._finishing = True
        for link in self._out.values():
            link.queue.put((FrameType.BYE, b""))
        deadline = time.monotonic() + self.timeout
        for link in self._out.values():
            link.thread.join(max(0.0, deadline - time.monotonic()))  # started in set-up, before open() returned
            if link.thread.is_alive():
                self.warnings.append(f"could not flush the last messages to {_name(link.peer)}")
        for link in self._in.values():
            if not link.bye.wait(max(0.0, deadline - time.monotonic())):
                self.warnings.append(f"{_name(link.peer)} did not say BYE within {self.timeout:g} s")
        self.close()

    def fail(self, err: BaseException) -> None:
        """Aborts the session with ``err`` (first error wins): wakes every receive, tells the
        peers why (``ERROR`` frame), then shuts every connection down."""
        with self._lock:
            if self.error is not None:
                return
            self.error = err
            self._setup_failed.set()
            pending = list(self._pending)
        self.log(f"aborting: {err}")
        if self._opened:
            for sock in pending:
                _shutdown(sock)
        linger = 0.0 if self._opened else self._linger
        for link in self._in.values():
            link.queue.abort()
        text = f"{_name(self.role)}: {err}".encode()
        for link in self._out.values():
            while True:
                try:
                    link.queue.get_nowait()
                except queue.Empty:
                    break
            link.queue.put((FrameType.ERROR, text))

        def shut():
            try:
                # during set-up, in-flight handshakes may finish for a moment so that peers learn
                # why (see _accept_loop and _refuse_if_failed)
                time.sleep(linger)
                end = time.monotonic() + 2.0
                for link in list(self._out.values()):
                    t = link.thread
                    if t is not None and t.ident is not None and t is not threading.current_thread():
                        t.join(max(0.0, end - time.monotonic()))
                self.close()
            finally:
                self._shut_done.set()

        threading.Thread(target=shut, daemon=True, name="jaxmpc-abort").start()

    def abort(self, err: BaseException, wait: float = 3.0) -> None:
        """:meth:`fail` (if not failed yet), then waits up to ``wait`` seconds for the ``ERROR``
        frames to leave, and closes everything."""
        self.fail(err)
        self._shut_done.wait(wait)
        self.close()

    def close(self) -> None:
        """Shuts every connection down (idempotent)."""
        self._closing = True
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        with self._lock:
            pending = list(self._pending)
        for sock in pending:
            _shutdown(sock)
        for link in self._out.values():
            link.queue.put(_STOP)
        for link in self._in.values():
            link.queue.abort()  # a reader blocked on a full buffer returns
        for link in list(self._out.values()) + list(self._in.values()):
            link.close()

    # ------------------------------------------------------------------------------------------
    # accounting

    def counters(self) -> dict:
        """``{"client->server": {...}, ...}``: the four directed links this party is on, counted here."""
        out = {}
        for p, link in self._out.items():
            out[f"{_name(self.role)}->{_name(p)}"] = link.counters.to_dict()
        for p, link in self._in.items():
            out[f"{_name(p)}->{_name(self.role)}"] = link.counters.to_dict()
        return out
