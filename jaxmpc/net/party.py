"""One party of a networked secure inference: the same protocol code as the simulator, one role.

:func:`run_party` is what ``jaxmpc party --role ...`` runs. Each party

1. builds the model from the public description in ``parties.toml`` (:class:`ModelConfig`):
   the server with its weights, the client and the CP with *shapes only*
   (``jax.ShapeDtypeStruct`` placeholders) plus the public Block-ReLU spec, and traces it to
   the same jaxpr (:func:`jaxmpc.inference.trace_model`);
2. computes the model fingerprint (:func:`model_fingerprint`) and opens TLS links to the two
   others (:class:`~jaxmpc.net.transport.Session`), which refuse peers with another
   fingerprint or wire version;
3. agrees keys: each pairwise key is drawn from OS entropy by the lower-numbered party of the
   pair and sent over the authenticated link; each party's own key never leaves it; every
   batch uses keys derived from these and the batch number (:func:`batch_keys`), so no
   randomness is ever reused;
4. compiles its program and waits until the peers have compiled theirs (``READY``);
5. runs one secure forward pass per batch and, at the end, checks the bytes and messages it
   counted on each of its links against the protocol's own record
   (:meth:`jaxmpc.core.runtime.Runtime.comm`, the simulator's report), then writes its result file
   atomically (the client's holds the predictions).

Execution: the whole per-party program is **one jit-compiled XLA program** per batch shape;
messages leave and enter it through ordered ``jax.experimental.io_callback`` calls (a send
queues the bytes for the link's writer thread and returns at once; a receive blocks, with the
session's timeout, until the reader thread has the message). The ordering token keeps every
party's sends and receives in program order, which is the order the protocol code issued them
in, identical in all parties, so the pipelined links cannot deadlock. Measured on digits 8x8,
``ResNetSmall(num_filters=4)``, batch 4, three processes on 2 cores: 0.12 s per batch compiled
against 2.2-2.7 s op by op (``jit=False``), for a one-off compile of ~50 s (the op-by-op first
batch takes ~35 s of per-op compilation), so op-by-op execution is kept as an option only
(debugging, one or two batches).

What each party sees: the client its input, its shares and the output; the server its
weights and its shares; the CP neither (its program gets placeholders for both, and only
derives and deals randomness). Everything else is the masked messages of the protocols.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc._io import atomic_open, write_json
from jaxmpc.core.config import ProtocolConfig, require_x64
from jaxmpc.net.config import ModelConfig, NetConfig
from jaxmpc.net.pki import ROLE_NAMES
from jaxmpc.net.transport import NetError, Session
from jaxmpc.net.wire import WIRE_VERSION
from jaxmpc.core.parties import C_CP, C_S, CLIENT, LINKS, PARTIES, S_CP, SERVER, Party, owners
from jaxmpc.core.randomness import KEY_BYTES, PartyKeys, fresh_key_words, key_from_bytes, request_keys
from jaxmpc.core.runtime import Runtime, Transport

__all__ = ["run_party", "PartyError", "PreparedModel", "prepare_model", "model_fingerprint", "PartyProgram",
           "batch_keys", "session_keys", "save_variables_npz", "load_variables_file"]

_BATCH_TAG = 0x62617463  # "batc"


class PartyError(RuntimeError):
    """A party cannot run: bad model description, weights or input (before any network use)."""


# ----------------------------------------------------------------------------------------------
# model


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedModel:
    """A model as one party knows it.

    Attributes:
      model: the Flax module.
      variables: full variables: real (server) or placeholders (client, CP) for the private
        collections; the public ``block_sizes`` are concrete for everyone.
      traced: the :class:`jaxmpc.inference.api.TracedModel`.
      config: protocol settings.
      batch_shape: ``(batch, H, W, C)``.
      fingerprint: :func:`model_fingerprint`.
      description: a short human-readable summary (for error messages).
    """

    model: object
    variables: dict
    traced: object
    config: ProtocolConfig
    batch_shape: tuple
    fingerprint: str
    description: str

    def server_leaves(self):
        from jaxmpc.inference.api import PUBLIC_COLLECTIONS, _collection_of

        flat = jax.tree_util.tree_flatten_with_path(self.variables)[0]
        return [leaf for p, leaf in flat if _collection_of(p) not in PUBLIC_COLLECTIONS]


def model_fingerprint(traced, config: ProtocolConfig, batch_shape) -> str:
    """A hash of everything the three parties must agree on to run the same protocol.

    Covers the wire version, the model's jaxpr (operations, shapes, dtypes and the layer names
    that seed the randomness), its constants, the public Block-ReLU spec, the protocol
    configuration and the batch shape. It does not cover the server's weights.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(f"jaxmpc-net/{WIRE_VERSION}\n".encode())
    h.update(traced.fingerprint.encode())  # jaxpr, constants, public spec (inference.api.program_fingerprint)
    h.update(repr(sorted(dataclasses.asdict(config).items())).encode())
    h.update(repr(tuple(int(d) for d in batch_shape)).encode())
    return h.hexdigest()


def _flat_dict(tree) -> dict:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)] = leaf
    return out


def save_variables_npz(path: str | os.PathLike, variables) -> None:
    """Writes model variables to an ``.npz`` (keys ``collection/module/.../name``), atomically."""
    flat = {k: np.asarray(v) for k, v in _flat_dict(variables).items()}
    with atomic_open(path, "wb") as f:
        np.savez(f, **flat)


def load_variables_file(path: str | os.PathLike) -> dict:
    """Variables from a jaxmpc run folder (its latest checkpoint) or an ``.npz`` of
    :func:`save_variables_npz`."""
    path = os.fspath(path)
    if os.path.isdir(path):
        from jaxmpc.train import load_variables

        try:
            variables, _ = load_variables(path)
        except FileNotFoundError as e:
            raise PartyError(f"weights: {e}") from None
        return variables
    if not os.path.isfile(path):
        raise PartyError(f"weights: {path} does not exist (a jaxmpc run folder or an .npz)")
    try:
        with np.load(path, allow_pickle=False) as f:
            flat = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise PartyError(f"weights: cannot read {path}: {e}") from None
    out: dict = {}
    for k, v in flat.items():
        node = out
        parts = k.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def _build(mc: ModelConfig):
    from jaxmpc import nn as jnn

    ctor = getattr(jnn, mc.preset, None)
    if ctor is None or mc.preset.startswith("_") or not callable(ctor):
        raise PartyError(f"unknown model preset {mc.preset!r}; use a jaxmpc.nn preset such as 'ResNetSmall'")
    try:
        model = ctor(**mc.kwargs)
        template = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                                  jax.ShapeDtypeStruct((1,) + tuple(mc.input_shape), jnp.float32))
    except Exception as e:  # noqa: BLE001 - any failure to build the architecture
        raise PartyError(f"cannot build {mc.preset}({_kw(mc.kwargs)}) on input {list(mc.input_shape)}: "
                         f"{type(e).__name__}: {e}") from None
    return model, dict(template)


def _kw(kwargs) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))


def _public_sizes(mc: ModelConfig, template: dict):
    from jaxmpc import nn as jnn

    if "block_sizes" not in template:
        return template
    ones = jax.tree_util.tree_map(lambda s: np.ones(s.shape, np.int32), template["block_sizes"])
    variables = dict(template, block_sizes=ones)
    if mc.spec is None:
        return variables
    try:
        spec = jnn.load_spec(mc.spec, variables=variables, strict=False)
    except (OSError, ValueError) as e:
        raise PartyError(f"spec {mc.spec}: {e}") from None
    spec = getattr(spec, "layers", spec)
    out = jnn.apply_spec(variables, spec)
    out["block_sizes"] = jax.tree_util.tree_map(np.asarray, out["block_sizes"])
    return out


def _check_server_variables(loaded: dict, expected: dict, source: str, frac_bits: int) -> dict:
    """The loaded weights in the template's structure and dtypes, or a clear error."""
    from jaxmpc.core.ring import ENCODE_LIMIT

    got, want = _flat_dict({k: v for k, v in loaded.items() if k != "block_sizes"}), _flat_dict(
        {k: v for k, v in expected.items() if k != "block_sizes"})
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise PartyError(f"weights {source} do not fit the model: missing {missing[:3] or 'nothing'}, "
                         f"unexpected {extra[:3] or 'nothing'}")
    for k, s in want.items():
        if tuple(np.shape(got[k])) != tuple(s.shape):
            raise PartyError(f"weights {source}: {k} has shape {tuple(np.shape(got[k]))}, the model needs {s.shape}")
    out = {}
    for coll, tree in expected.items():
        if coll == "block_sizes":
            continue
        out[coll] = jax.tree_util.tree_map_with_path(
            lambda p, s, c=coll: np.asarray(got["/".join([c] + [str(getattr(k, "key", k)) for k in p])], s.dtype),
            tree)
    lim = ENCODE_LIMIT / 2.0**frac_bits
    for k, v in _flat_dict(out).items():
        a = np.asarray(v)
        if not np.all(np.isfinite(a)):
            raise PartyError(f"weights {source}: {k} contains NaN or infinite values")
        if a.size and np.issubdtype(a.dtype, np.floating) and np.max(np.abs(a)) > lim:
            raise PartyError(f"weights {source}: {k} exceeds the fixed-point range +-{lim:g}")
    return out


def prepare_model(mc: ModelConfig, role, *, weights: str | None = None) -> PreparedModel:
    """Builds and traces the model as ``role`` knows it (the server loads ``weights``).

    Raises:
      PartyError: an unknown preset, a bad spec, weights that do not fit the model, or
        weights whose Block-ReLU sizes contradict the configured spec.
    """
    from jaxmpc.inference.api import trace_model

    role = Party.parse(role)
    model, template = _build(mc)
    public = _public_sizes(mc, template)
    variables = dict(public)
    if role == SERVER:
        if weights is None:
            raise PartyError("the server needs --weights (a jaxmpc run folder or an .npz)")
        loaded = load_variables_file(weights)
        private = _check_server_variables(loaded, template, weights, mc.protocol.frac_bits)
        if "block_sizes" in loaded and "block_sizes" in public:
            mine = _flat_dict(public["block_sizes"])
            theirs = _flat_dict(loaded["block_sizes"])
            if set(mine) != set(theirs) or any(not np.array_equal(np.asarray(theirs[k]), mine[k]) for k in mine):
                raise PartyError(f"the Block-ReLU sizes stored with the weights {weights} differ from the configured "
                                 f"spec ({mc.spec or 'all ReLU'}); set [model] spec to the spec the model was "
                                 "finetuned with (e.g. <run>/spec.json)")
        variables.update(private)
    batch_shape = mc.batch_shape
    traced = trace_model(model, variables, batch_shape)
    fp = model_fingerprint(traced, mc.protocol, batch_shape)
    desc = (f"{mc.preset}({_kw(mc.kwargs)}), batch {list(batch_shape)}, spec "
            f"{os.path.basename(mc.spec) if mc.spec else 'all ReLU'}")
    return PreparedModel(model, variables, traced, mc.protocol, tuple(batch_shape), fp, desc)


# ----------------------------------------------------------------------------------------------
# keys


def session_keys(role, pair_secrets: dict) -> PartyKeys:
    """This party's :class:`~jaxmpc.core.randomness.PartyKeys`: the pairwise keys agreed with the peers
    (``{peer: 32 bytes}``, 256-bit ChaCha20 keys) and a fresh key of its own from OS entropy."""
    role = Party.parse(role)
    keys = {owners(role): jnp.asarray(fresh_key_words())}
    for peer, secret in pair_secrets.items():
        if len(bytes(secret)) != KEY_BYTES:
            raise NetError(f"pairwise key with {ROLE_NAMES[Party.parse(peer)]} has {len(secret)} bytes, "
                           f"expected {KEY_BYTES}")
        words = key_from_bytes(secret)
        keys[owners(role, peer)] = jnp.asarray(words)
    for ks in (C_S, C_CP, S_CP):
        if role in ks and ks not in keys:
            raise NetError(f"no pairwise key for {sorted(p.name for p in ks)}")
    return PartyKeys(keys)


def batch_keys(keys: PartyKeys, index: int) -> PartyKeys:
    """Keys for batch ``index``: ``ChaCha20_K`` of ``("batc", index)`` for every key ``K`` held (both holders
    of a key derive the same batch key; different batches never share randomness)."""
    ident = np.array([[_BATCH_TAG, int(index)]], np.uint32)
    return PartyKeys({s: request_keys(jnp.asarray(k, jnp.uint32)[None, :], ident)[0] for s, k in keys.keys.items()})


# ----------------------------------------------------------------------------------------------
# the per-party program


class _SessionTransport(Transport):
    """Moves the runtime's messages through a :class:`Session`, from inside jit (io_callback) or eagerly."""

    def __init__(self, session, jit: bool):
        self.session = session
        self.jit = jit
        self.tokens: list = []

    def _send_cb(self, dst, wire, value):
        self.session.send_array(dst, value, wire)
        return np.zeros((), np.int32)

    def send(self, dst, value, wire_dtype):
        wire = np.dtype(wire_dtype)
        if not self.jit:
            self.session.send_array(dst, np.asarray(value), wire)
            return
        from jax.experimental import io_callback

        tok = io_callback(functools.partial(self._send_cb, Party(dst), wire), jax.ShapeDtypeStruct((), jnp.int32),
                          jnp.asarray(value).astype(wire), ordered=True)
        self.tokens.append(tok)

    def recv(self, src, shape, dtype, wire_dtype):
        wire = np.dtype(wire_dtype)
        shape = tuple(int(d) for d in shape)
        if not self.jit:
            return jnp.asarray(self.session.recv_array(src, shape, wire)).astype(dtype)
        from jax.experimental import io_callback

        fn = functools.partial(self.session.recv_array, Party(src), shape, wire)
        return io_callback(fn, jax.ShapeDtypeStruct(shape, wire), ordered=True).astype(dtype)


class PartyProgram:
    """One role's secure forward pass, compiled once, run once per batch.

    Args:
      role: the party.
      prepared: the model as this party knows it.
      session: an open :class:`Session` (anything with ``send_array``/``recv_array``).
      jit: one compiled XLA program (default) or op-by-op execution.
      device: the JAX device to run on (default: the default device).
    """

    def __init__(self, role, prepared: PreparedModel, session, *, jit: bool = True, device=None):
        from jaxmpc.inference.api import _program
        from jaxmpc.inference.backends import SecureBackend

        self.role = Party.parse(role)
        self.prepared = prepared
        self.jit = jit
        self.device = device
        self.transport = _SessionTransport(session, jit)
        traced, config = prepared.traced, prepared.config
        self.x_struct = jax.ShapeDtypeStruct(prepared.batch_shape, jnp.uint64)
        self.s_structs = [jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype) for leaf in prepared.server_leaves()]
        self._compiled = None
        self.record = None  # SecureReport of one batch (from the trace)
        self.message_limits = None  # {peer: largest message it sends this party}, known once traced

        def body(rt, x_enc, server_leaves):
            return _program(SecureBackend(rt), traced, x_enc, server_leaves, config)[0]

        def core(keys, x_enc, server_leaves):
            from jaxmpc.inference.report import SecureReport
            from jaxmpc.simulate import StaticValue

            self.transport.tokens = []
            plan = Runtime.record(config, body, self.x_struct, self.s_structs)
            rt = Runtime(config, keys, role=self.role, transport=self.transport, plan=plan)
            outs = body(rt, self.x_struct if x_enc is None else x_enc,
                        self.s_structs if server_leaves is None else server_leaves)
            limits = {p: 0 for p in PARTIES if p != self.role}
            for m in rt.messages:
                if m.dst == self.role:
                    limits[m.src] = max(limits[m.src], m.nbytes)
            self.message_limits = limits
            layers = tuple((path, what) for path, what, _ in rt.annotations)
            report = SecureReport(rt.comm(), layers, tuple(rt.notes), batch=int(prepared.batch_shape[0]))
            done = functools.reduce(lambda a, b: a + b, self.transport.tokens, jnp.zeros((), jnp.int32))
            mine = tuple(outs) if self.role == CLIENT else ()
            return mine, done, StaticValue(report)

        self._core = core

    def _args(self, keys, x_enc=None, server_leaves=None):
        x = jnp.asarray(x_enc) if self.role == CLIENT else None
        s = [jnp.asarray(v) for v in server_leaves] if self.role == SERVER else None
        if self.device is not None:
            keys, x, s = jax.device_put((keys, x, s), self.device)
        return keys, x, s

    def compile(self, keys: PartyKeys, x_enc=None, server_leaves=None) -> float:
        """Traces and compiles (jit) or traces only (eager); returns the seconds it took."""
        t0 = time.perf_counter()
        if self.jit:
            args = self._args(keys, x_enc, server_leaves)
            self._compiled = jax.jit(self._core).lower(*args).compile()
        return time.perf_counter() - t0

    def run(self, keys: PartyKeys, x_enc=None, server_leaves=None):
        """One secure forward pass; returns the client's decoded outputs (``()`` for the others)."""
        args = self._args(keys, x_enc, server_leaves)
        if self.jit:
            if self._compiled is None:
                self.compile(keys, x_enc, server_leaves)
            outs, done, static = self._compiled(*args)
        else:
            outs, done, static = self._core(*args)
        jax.block_until_ready((outs, done))
        self.record = static.value
        return outs


# ----------------------------------------------------------------------------------------------
# running one role


def __getattr__(name: str):
    if name == "write_json_atomic":  # the old private helper: jaxmpc._io.write_json writes atomically
        warnings.warn("jaxmpc.net.party.write_json_atomic is deprecated; use jaxmpc._io.write_json",
                      DeprecationWarning, stacklevel=2)
        return write_json
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load_inputs(path: str, mc: ModelConfig, config: ProtocolConfig) -> np.ndarray:
    from jaxmpc.core.ring import encode

    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PartyError(f"input {path}: cannot read a .npy array: {e}") from None
    if x.ndim == len(mc.input_shape):
        x = x[None]
    if tuple(x.shape[1:]) != tuple(mc.input_shape) or x.shape[0] < 1:
        raise PartyError(f"input {path}: shape {list(x.shape)}, expected [N, {', '.join(map(str, mc.input_shape))}]")
    if not np.issubdtype(x.dtype, np.number):
        raise PartyError(f"input {path}: dtype {x.dtype} is not numeric")
    if not np.all(np.isfinite(x)):
        raise PartyError(f"input {path}: contains NaN or infinite values")
    try:
        encode(x, config.frac_bits)
    except (TypeError, ValueError) as e:
        raise PartyError(f"input {path}: {e}") from None
    return x.astype(np.float32)


def _link_names():
    return [f"{ROLE_NAMES[a]}->{ROLE_NAMES[b]}" for a, b in LINKS]


def run_party(role, cfg: NetConfig, *, weights: str | None = None, inputs: str | None = None,
              output: str | None = None, cert: str | None = None, key: str | None = None, jit: bool = True,
              device=None, log=None, session_factory=None) -> dict:
    """Runs one party of a networked secure inference to completion.

    Args:
      role: ``client``, ``server`` or ``cp``.
      cfg: the parsed ``parties.toml``.
      weights: server only: a jaxmpc run folder or an ``.npz`` of variables.
      inputs: client only: an ``.npy`` of images ``[N, H, W, C]``.
      output: where to write this party's result JSON (atomically, on success only).
      cert, key: override the configured certificate and key.
      jit: compile the party's program (default) or run it op by op.
      device: JAX device (in-process multi-party tests).
      log: ``callable(str)`` for progress lines (default: stderr).
      session_factory: tests only: builds the :class:`Session` (default ``Session.from_config``).

    Returns:
      the result dictionary (also written to ``output``): the role, timings, per-link counters
      next to the protocol's expected bytes and messages, and for the client the predictions
      and logits.

    Raises:
      PartyError: bad model, weights or input (nothing was sent).
      NetError: the network run failed (the message says where and why).
    """
    require_x64()
    role = Party.parse(role)
    name = ROLE_NAMES[role]
    log = log or (lambda msg: print(f"[{name}] {msg}", file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    mc = cfg.model
    if role == CLIENT and inputs is None:
        raise PartyError("the client needs --input (an .npy of images [N, H, W, C])")
    if role != SERVER and weights is not None:
        raise PartyError(f"only the server loads weights; the {name} must not be given --weights")
    if role != CLIENT and inputs is not None:
        raise PartyError(f"only the client holds the input; the {name} must not be given --input")
    x = _load_inputs(inputs, mc, mc.protocol) if role == CLIENT else None
    prepared = prepare_model(mc, role, weights=weights)
    log(f"model {prepared.description}, fingerprint {prepared.fingerprint[:16]}")
    hello = {"fingerprint": prepared.fingerprint, "model": prepared.description, "jax": jax.__version__}
    n_batches = None
    if role == CLIENT:
        n_batches = -(-x.shape[0] // mc.batch_size)
        hello.update(batches=n_batches, images=int(x.shape[0]))
    make = session_factory or (lambda: Session.from_config(role, cfg, cert=cert, key=key, log=log))
    session = make()
    try:
        t0 = time.perf_counter()
        hellos = session.open(hello)
        t_connect = time.perf_counter() - t0
        if role != CLIENT:
            n_batches = int(hellos[CLIENT].get("batches", 0))
            if n_batches < 1:
                raise NetError(f"the client announced {n_batches} batches")
        keys = session_keys(role, session.pair_secrets)
        program = PartyProgram(role, prepared, session, jit=jit, device=device)
        server_leaves = prepared.server_leaves() if role == SERVER else None
        x_enc0 = np.zeros(prepared.batch_shape, np.uint64) if role == CLIENT else None
        t_compile = program.compile(batch_keys(keys, 0), x_enc0, server_leaves)
        if program.message_limits is not None and hasattr(session, "set_message_limits"):
            # from now on a peer's frame larger than its largest protocol message is refused unread
            session.set_message_limits(program.message_limits)
        log(f"compiled in {t_compile:.1f} s; waiting for the peers")
        t0 = time.perf_counter()
        session.ready()
        t_wait = time.perf_counter() - t0
        logits, times = [], []
        from jaxmpc.core.ring import encode

        for b in range(n_batches):
            xb = None
            if role == CLIENT:
                xb = x[b * mc.batch_size:(b + 1) * mc.batch_size]
                if len(xb) < mc.batch_size:  # one compiled shape: pad the last batch
                    xb = np.concatenate([xb, np.zeros((mc.batch_size - len(xb),) + xb.shape[1:], xb.dtype)])
                xb = np.asarray(encode(xb, mc.protocol.frac_bits))
            t0 = time.perf_counter()
            outs = program.run(batch_keys(keys, b), xb, server_leaves)
            times.append(time.perf_counter() - t0)
            if role == CLIENT:
                logits.append(np.asarray(outs[0]))
            log(f"batch {b + 1}/{n_batches} done in {times[-1]:.3f} s")
        session.finish()
    except BaseException as e:
        err = session.error if session.error is not None else e
        # tell the peers why (ERROR frames), then close every link
        session.abort(err if isinstance(err, NetError) else NetError(f"{type(err).__name__}: {err}"))
        if isinstance(err, (NetError, PartyError)):
            raise err from None
        raise
    # accounting: what this party counted on each of its links against the protocol's record
    rec = program.record.comm
    expected_msgs = {}
    for t in rec.traffic:
        k = (t.src, t.dst)
        expected_msgs[k] = expected_msgs.get(k, 0) + t.messages
    counted = session.counters()
    links = {}
    all_match = True
    for (a, b), lname in zip(LINKS, _link_names()):
        if lname not in counted:
            continue
        c = dict(counted[lname])
        c["expected_payload_bytes"] = rec.link_bytes(a, b) * n_batches
        c["expected_messages"] = expected_msgs.get((a, b), 0) * n_batches
        c["match"] = (c["payload_bytes"] == c["expected_payload_bytes"] and c["messages"] == c["expected_messages"])
        all_match &= c["match"]
        links[lname] = c
    if not all_match:
        session.warnings.append("bytes or messages counted on the wire differ from the protocol record")
    steady = float(np.median(times)) if times else float("nan")
    result = {
        "role": name,
        "fingerprint": prepared.fingerprint,
        "model": prepared.description,
        "batch_size": mc.batch_size,
        "batches": n_batches,
        "execution": "jit" if jit else "eager",
        "links": links,
        "wire_matches_protocol": bool(all_match),
        "protocol_per_batch": {
            "total_bytes": rec.total_bytes, "online_bytes": rec.online_bytes, "rounds": rec.rounds,
            "messages": rec.messages,
            "links": {n: rec.link_bytes(a, b) for (a, b), n in zip(LINKS, _link_names())},
        },
        "timing": {"connect_s": t_connect, "compile_s": t_compile, "wait_for_peers_s": t_wait,
                   "batch_s": times, "median_batch_s": steady, "s_per_image": steady / mc.batch_size,
                   "total_s": time.perf_counter() - t_start},
        "network": dataclasses.asdict(cfg.network),
        "warnings": list(session.warnings),
    }
    if role == CLIENT:
        lg = np.concatenate(logits)[: x.shape[0]]
        result["images"] = int(x.shape[0])
        result["predictions"] = np.argmax(lg, axis=-1).tolist()
        result["logits"] = lg.tolist()
    if output:
        write_json(output, result)
    log(f"done: {n_batches} batches, {steady / mc.batch_size:.4f} s/image, wire bytes "
        f"{'match' if all_match else 'DO NOT match'} the protocol record")
    return result

