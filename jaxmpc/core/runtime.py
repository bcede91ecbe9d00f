"""The runtime: who computes what, who sends what, and the randomness they share.

Protocols in jaxmpc are ordinary Python functions over :class:`Held` values -- arrays together
with the set of parties that know them. They touch data only through three runtime calls:

* ``rt.local(parties, fn, *args)`` -- ``parties`` each compute ``fn`` on values they hold. Reading a
  value the party does not hold raises :class:`SecurityError` (checked in every mode, so the
  simulator proves the protocol's data flow, not only its arithmetic).
* ``rt.send(src, dst, value, ring)`` -- a message; it is logged (bytes on the wire, hop) and the
  receiver learns the value one hop after the sender knew it.
* ``rt.random(key_set, ring, shape, name)`` -- correlated randomness from the key of ``key_set``
  (:mod:`jaxmpc.core.randomness`); only holders of that key can derive it.

The same protocol code runs in two modes:

* **simulation** (``role=None``): all three parties in one traced program; every value is a real
  array and ``send`` is free. ``jax.jit`` compiles the whole protocol into one XLA program.
* **party** (``role=CLIENT|SERVER|CP``): one party's process. Values the party does not hold are
  ``jax.ShapeDtypeStruct`` placeholders (their shapes are public), ``local`` steps of other parties
  are skipped, and ``send``/receive go through a transport (``jaxmpc.net``).

Because the record of messages is produced from static shapes while tracing, a simulated run
and a networked run of the same protocol log exactly the same messages.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc.core.comm import CommRecord, Message
from jaxmpc.core.config import ProtocolConfig
from jaxmpc.core.parties import PARTIES, Party
from jaxmpc.core.randomness import KEY_SETS, PartyKeys, op_id, request_keys, stream_parts, stream_words
from jaxmpc.core.ring import scheduled_after

__all__ = ["Held", "Runtime", "SecurityError", "Transport", "reshape_held", "slice_held"]

_CHUNK_TAG = 0x63686E6B  # "chnk": chunk keys of a chunked region


class SecurityError(PermissionError):
    """A party's local step tried to read data (a share, a key, a message) it does not hold."""


def _party_set(parties) -> tuple[Party, ...]:
    if isinstance(parties, (Party, int)) and not isinstance(parties, bool):
        return (Party(parties),)
    out = tuple(sorted({Party(p) for p in parties}))
    if not out:
        raise ValueError("at least one party must compute a local step")
    return out


# The parties whose local step is running (``Runtime.local``), or None outside local steps. Read
# by ``Held.value``: a local step cannot read another party's value through a closure either.
_LOCAL_READERS: contextvars.ContextVar = contextvars.ContextVar("jaxmpc_local_readers", default=None)


@dataclasses.dataclass(frozen=True, eq=False)
class Held:
    """A value and the hop at which each party knows it.

    Attributes:
      value: the array (or, in party mode where this party does not hold it, a
        ``jax.ShapeDtypeStruct`` placeholder). Inside a local step of parties ``P``
        (``rt.local(P, fn)``), reading the value of a ``Held`` that some party of ``P`` does not
        hold raises :class:`SecurityError` -- also through a closure of ``fn``.
      times: per party (indexed by ``Party``): the hop at which it knows the value, ``-1`` for
        input-independent values known before the online phase, ``None`` if it never does.
    """

    data: Any
    times: tuple

    @property
    def value(self):
        readers = _LOCAL_READERS.get()
        if readers is not None:
            for p in readers:
                if self.times[p] is None:
                    owners = ",".join(q.name for q in sorted(self.owners)) or "nobody"
                    raise SecurityError(f"{Party(p).name}'s local step read a value held only by {{{owners}}} "
                                        "(through a closure or a captured Held)")
        return self.data

    @property
    def owners(self) -> frozenset:
        return frozenset(Party(i) for i, t in enumerate(self.times) if t is not None)

    def time(self, party: Party) -> int:
        t = self.times[party]
        if t is None:
            raise SecurityError(f"{Party(party).name} does not hold this value")
        return t

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __repr__(self):
        who = ",".join(f"{Party(i).short}@{t}" for i, t in enumerate(self.times) if t is not None)
        return f"Held({self.dtype}{list(self.shape)} known to {who})"


@dataclasses.dataclass(frozen=True)
class RandomPlan:
    """Every random request of a protocol run, grouped by stage (static, hashable).

    Attributes:
      stages: ``{stage: ((key_set, op_id, n_words), ...)}`` in request order.
      index: ``{op_id: stage}``.
    """

    stages: dict
    index: dict

    @classmethod
    def from_requests(cls, requests) -> "RandomPlan":
        stages: dict = {}
        index: dict = {}
        for stage, key_set, ident, n in requests:
            if ident in index:
                raise RuntimeError(f"duplicate random operation id {ident} (two tensors with the same name and scope)")
            stages.setdefault(stage, []).append((key_set, ident, n))
            index[ident] = stage
        return cls({k: tuple(v) for k, v in stages.items()}, index)

    @property
    def total_words(self) -> int:
        return sum(n for reqs in self.stages.values() for _, _, n in reqs)


class Transport:
    """What a party-mode runtime needs from the network (implemented in ``jaxmpc.net``)."""

    def send(self, dst: Party, value, wire_dtype) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def recv(self, src: Party, shape: tuple, dtype, wire_dtype):  # pragma: no cover - interface
        raise NotImplementedError


def _is_placeholder(v) -> bool:
    return isinstance(v, jax.ShapeDtypeStruct)


class Runtime:
    """Executes protocol steps for all parties (``role=None``) or for one party.

    A runtime is a trace-time object: create one per protocol run (per trace), never share it
    between runs. It holds the run's keys, its protocol configuration, the scope stack used for
    operation ids and reports, and the message log.

    Args:
      config: protocol parameters.
      keys: the keys this runtime holds (all six in simulation).
      role: ``None`` to simulate all three parties, else the one party this process plays.
      transport: party mode only: moves messages to and from the other parties.
      plan: optional :class:`RandomPlan` from :meth:`Runtime.record` (same protocol, same
        shapes): random words are then drawn per stage in one call. Values are identical with
        and without a plan; only the compiled program is smaller.
      stage_depth: scope depth that delimits randomness stages (1: each top-level scope).
      memory_budget: working-set bytes that one chunk of a large nonlinear protocol may use
        (:meth:`chunk_elements`, :meth:`chunked`); ``None``: no chunking.
    """

    def __init__(self, config: ProtocolConfig, keys: PartyKeys, role: Party | None = None,
                 transport: Transport | None = None, plan: "RandomPlan | None" = None, stage_depth: int = 1,
                 memory_budget: int | None = None):
        if not isinstance(config, ProtocolConfig):
            raise TypeError(f"config must be a ProtocolConfig, got {type(config).__name__}")
        self.config = config
        self.keys = keys
        self.role = None if role is None else Party.parse(role)
        if self.role is not None and transport is None:
            raise ValueError("a party-mode runtime needs a transport")
        self.transport = transport
        self.messages: list[Message] = []
        self.notes: list[tuple] = []
        self.annotations: list[tuple] = []
        self.transcript: list | None = None  # set to [] to keep (ring, value) of every message (tests)
        self.plan = plan
        self.stage_depth = stage_depth
        if memory_budget is not None and int(memory_budget) <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
        self.memory_budget = None if memory_budget is None else int(memory_budget)
        self._chunk: tuple | None = None  # (traced chunk index, region stage) inside a chunked body
        self._latest = None  # the last array a local step computed (orders stage draws, _draw_stage)
        self._stage_words: dict = {}
        self._recording: list | None = None
        self._path: list[str] = []
        self._kinds: list[str] = []
        self._counts: dict = {}

    # -- identity -----------------------------------------------------------------------------
    @property
    def simulated(self) -> bool:
        return self.role is None

    def holds(self, party: Party) -> bool:
        """Whether this runtime computes ``party``'s steps."""
        return self.role is None or self.role == party

    # -- scopes -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str, kind: str | None = None, *, absolute: bool = False):
        """Names a protocol (or layer) step: used in operation ids and communication reports.

        Args:
          name: scope name (``/`` separates nested names).
          kind: communication kind for messages sent inside (inherited when ``None``).
          absolute: replace the current path instead of extending it (e.g. to finish a layer's
            deferred work under the layer's own name).
        """
        parts = [p for p in str(name).split("/") if p]
        saved = list(self._path)
        if absolute:
            self._path[:] = parts
        else:
            self._path.extend(parts)
        self._kinds.append(kind if kind is not None else (self._kinds[-1] if self._kinds else "other"))
        try:
            yield self
        finally:
            self._path[:] = saved
            self._kinds.pop()

    def annotate(self, label: str, what: str) -> None:
        """Records which operation a layer (scope label) ran, for reports."""
        self.annotations.append((label, what, 0))

    def note(self, what: str, count: int) -> None:
        """Records a protocol statistic (e.g. ``"drelu"``, number of comparisons) in the current scope."""
        self.notes.append((self.path, what, int(count)))

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self._path)

    @property
    def kind(self) -> str:
        return self._kinds[-1] if self._kinds else "other"

    def _next_id(self, name: str) -> tuple[int, int]:
        k = (self.path, name)
        n = self._counts.get(k, 0)
        self._counts[k] = n + 1
        return op_id(self.path, name, n)

    # -- values -------------------------------------------------------------------------------
    def public(self, value) -> Held:
        """A value known to every party before the protocol starts (a constant)."""
        return Held(jnp.asarray(value), (-1, -1, -1))

    def input(self, party: Party, value, at: int = 0) -> Held:
        """A secret input of ``party``, known to it at hop ``at`` (0: the start of the online phase).

        In party mode, other parties pass a ``jax.ShapeDtypeStruct`` (the shape is public).
        """
        party = Party(party)
        times = tuple(at if p == party else None for p in PARTIES)
        if not self.holds(party):
            value = value if _is_placeholder(value) else jax.ShapeDtypeStruct(np.shape(value), jnp.asarray(value).dtype)
        return Held(value, times)

    def private(self, party: Party, value) -> Held:
        """An input-independent private value of ``party`` (e.g. the server's weights): hop -1."""
        return self.input(party, value, at=-1)

    def local(self, parties, fn: Callable, *args, **kwargs):
        """``parties`` each compute ``fn(*args, **kwargs)`` on values they hold.

        ``Held`` arguments must be held by every computing party; other arguments are public
        constants. Returns a ``Held`` (or a tuple of them, if ``fn`` returns a tuple) known to
        ``parties`` at the latest time any of them knew an input.

        Raises:
          SecurityError: if a computing party does not hold a ``Held`` argument.
        """
        ps = _party_set(parties)
        helds = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Held)]
        for p in ps:
            for h in helds:
                if h.times[p] is None:
                    owners = ",".join(q.name for q in sorted(h.owners))
                    raise SecurityError(
                        f"{p.name} cannot read a value held only by {{{owners}}} "
                        f"(in {'/'.join(self.path) or 'top level'}: {getattr(fn, '__name__', fn)})"
                    )
        times = [None, None, None]
        for p in ps:
            times[p] = max([h.times[p] for h in helds], default=-1)
        times = tuple(times)

        def unwrap(a):
            return a.data if isinstance(a, Held) else a

        vargs = [unwrap(a) for a in args]
        vkw = {k: unwrap(v) for k, v in kwargs.items()}
        if (self.simulated and self._latest is not None and helds and self._chunk is None
                and max(t for t in times if t is not None) < 0):
            # an input-independent (offline) step: scheduled after the latest online value, so that
            # XLA does not run every layer's offline work first and keep all its temporaries alive
            pos = [i for i, a in enumerate(args) if isinstance(a, Held) and isinstance(vargs[i], jax.Array)]
            if pos:
                tied = scheduled_after([vargs[i] for i in pos], self._latest)
                for i, v in zip(pos, tied):
                    vargs[i] = v
        token = _LOCAL_READERS.set(ps)
        try:
            if any(self.holds(p) for p in ps):
                out = fn(*vargs, **vkw)
            else:
                out = jax.eval_shape(lambda *a: fn(*a, **vkw), *vargs)
        finally:
            _LOCAL_READERS.reset(token)
        if max((t for t in times if t is not None), default=-1) >= 0:  # online data only
            for o in out if isinstance(out, tuple) else (out,):
                if isinstance(o, jax.Array) and not _is_placeholder(o):
                    self._latest = o
        if isinstance(out, tuple):
            return tuple(Held(o, times) for o in out)
        return Held(out, times)

    def send(self, src: Party, dst: Party, value: Held, ring) -> Held:
        """Sends ``value`` from ``src`` to ``dst``; returns it as known to both.

        The payload is ``value.size`` elements of ``ring.wire_dtype(config.compact_wire)``.
        """
        src, dst = Party(src), Party(dst)
        if src == dst:
            raise ValueError(f"{src.name} cannot send to itself")
        if not isinstance(value, Held):
            raise TypeError("send needs a Held value")
        t = value.times[src]
        if t is None:
            raise SecurityError(f"{src.name} cannot send a value it does not hold (in {'/'.join(self.path)})")
        wire = np.dtype(ring.wire_dtype(self.config.compact_wire))
        nbytes = value.size * wire.itemsize
        online = t >= 0
        arrives = t + 1 if online else -1
        self.messages.append(Message(self.path, self.kind, src, dst, nbytes, online, t, arrives))
        v = value.value
        if self.transcript is not None:
            self.transcript.append((ring, v))
        if not self.simulated:
            if self.role == src:
                self.transport.send(dst, v, wire)
            elif self.role == dst:
                v = self.transport.recv(src, tuple(value.shape), value.dtype, wire)
        times = list(value.times)
        times[dst] = arrives if times[dst] is None else min(times[dst], arrives)
        return Held(v, tuple(times))

    def random(self, key_set: frozenset, ring, shape, name: str) -> Held:
        """A uniformly random ring tensor known to the parties of ``key_set`` (derived, not sent)."""
        shape = tuple(int(d) for d in shape)
        n = int(np.prod(shape, dtype=np.int64))
        if hasattr(ring, "packed_words"):  # small fields: several elements per 64-bit word
            return self.random_with(key_set, ring.packed_words(n), lambda w: ring.from_packed_words(w, n).reshape(shape),
                                    name)
        return self.random_with(key_set, n, lambda w: ring.from_words(w).reshape(shape), name)

    def random_bits(self, key_set: frozenset, shape, name: str) -> Held:
        """Uniformly random ``uint64`` bits (0/1) known to the parties of ``key_set``."""
        shape = tuple(int(d) for d in shape)
        n = int(np.prod(shape, dtype=np.int64))
        return self.random_with(key_set, n, lambda w: (w & np.uint64(1)).reshape(shape), name)

    def random_with(self, key_set: frozenset, n_words: int, convert: Callable, name: str) -> Held:
        """``convert(words)`` for ``n_words`` uniform ``uint64`` words from the key of ``key_set``.

        The words are a PRF of the key and a stable operation id (:mod:`jaxmpc.core.randomness`).
        """
        key_set = frozenset(Party(p) for p in key_set)
        ident = self._next_id(name)
        times = tuple(-1 if p in key_set else None for p in PARTIES)
        if self._recording is not None:
            self._recording.append((self.stage, key_set, ident, int(n_words)))
            return Held(convert(jnp.zeros((n_words,), jnp.uint64)), times)
        if any(self.holds(p) for p in key_set):
            value = convert(self._words(key_set, ident, int(n_words)))
        else:
            value = jax.eval_shape(convert, jax.ShapeDtypeStruct((n_words,), jnp.uint64))
        return Held(value, times)

    @property
    def stage(self) -> tuple[str, ...]:
        """The randomness stage of the current scope: all its random words are drawn at once
        (inside a chunked region: the region, per chunk)."""
        if self._chunk is not None:
            return self._chunk[1]
        return self.path[: self.stage_depth]

    def _words(self, key_set: frozenset, ident: tuple[int, int], n: int):
        plan = self.plan
        if plan is not None and ident in plan.index:
            stage = plan.index[ident]
            if stage not in self._stage_words:
                self._stage_words[stage] = self._draw_stage(stage, plan.stages[stage])
            parts = self._stage_words[stage]
            if ident not in parts or parts[ident].shape[0] != n:
                raise RuntimeError("random plan does not match the protocol (changed between passes?)")
            # each request is served once: dropping served words (and a stage once all are served)
            # frees them in eager and party-mode runs, where nothing else would
            words = parts.pop(ident)
            if not parts:
                del self._stage_words[stage]
            return words
        keys = request_keys(self.keys.get(key_set)[None, :], np.array([ident], np.uint32))
        return stream_words(keys, (n,))

    def _draw_stage(self, stage: tuple, requests) -> dict:
        """All words of a stage this runtime may derive: one counter-mode stream per key set."""
        stage_id = op_id(stage, "#stage", 0)
        held = []  # (key set, its requests) for the key sets this runtime holds
        for ks in KEY_SETS:
            reqs = [(ident, n) for r_ks, ident, n in requests if r_ks == ks]
            if reqs and self.keys.holds(ks):
                held.append((ks, reqs))
        if not held:
            return {}
        # one derivation and one ChaCha20 loop for all key sets (the same words as one per set)
        base = jnp.stack([jnp.asarray(self.keys.get(ks)) for ks, _ in held])
        keys = request_keys(base, np.repeat(np.array([stage_id], np.uint32), len(held), axis=0))
        if self._latest is not None and self._chunk is None:
            # a scheduling edge: the stage's stream is generated after the data that precedes
            # its first use, not at the start of the program (where XLA may otherwise put every
            # stage's stream, keeping them all alive at once)
            keys = scheduled_after(keys, self._latest)
        if self._chunk is not None and stage == self._chunk[1]:  # one key per chunk of the region
            index = jnp.asarray(self._chunk[0], jnp.uint32)
            chunk_id = jnp.broadcast_to(jnp.stack([jnp.uint32(_CHUNK_TAG), index])[None, :], (len(held), 2))
            keys = request_keys(keys, chunk_id)
        # the stream is the output of ChaCha20's round loop: a buffer computed once, which
        # consumers slice (an elementwise PRF would be fused into, and recomputed by, each)
        streams = stream_parts(keys, tuple(sum(n for _, n in reqs) for _, reqs in held))
        out = {}
        for (_, reqs), words in zip(held, streams):
            off = 0
            for ident, n in reqs:
                out[ident] = words[off: off + n]
                off += n
        return out

    # -- chunked regions ----------------------------------------------------------------------
    def chunk_elements(self, bytes_per_element: int, minimum: int = 1024) -> int | None:
        """Elements per chunk of a protocol whose working set is ``bytes_per_element`` per element
        under this runtime's memory budget (``None``: unbounded, or a message transcript is kept)."""
        if self.memory_budget is None or self.transcript is not None or not self.simulated:
            return None
        return max(int(minimum), self.memory_budget // max(int(bytes_per_element), 1))

    def chunked(self, name: str, fn: Callable, inputs: tuple, chunk: int) -> tuple:
        """``fn(*inputs)`` evaluated in chunks of at most ``chunk`` elements along the leading axis.

        ``fn`` maps a tuple of :class:`Held` (leading axis = elements) to a tuple of ``Held``
        with the same leading axis, elementwise along it (a protocol on a flat batch of
        elements). The ``n`` elements run as ``c = ceil(n / chunk)`` equal chunks in one
        ``lax.map`` (XLA keeps one chunk's working set alive, not the layer's; one copy of the
        protocol's code), the last one padded with fewer than ``c`` zero elements whose results
        are dropped. Messages and notes must be linear in the elements (every per-element
        protocol's are); they are recorded for the ``n`` real elements, so the communication
        record equals the unchunked one. Each chunk draws its randomness from its own key (the
        region's stage key and the chunk index). Simulation only (in party mode the caller does
        not chunk: :meth:`chunk_elements`).
        """
        n = int(inputs[0].shape[0])
        chunk = int(chunk)
        if any(int(h.shape[0]) != n for h in inputs):
            raise ValueError("chunked: every input needs the same leading (element) axis")
        if n // chunk <= 1 or not self.simulated:
            return fn(*inputs)
        count = -(-n // chunk)
        size = -(-n // count)  # balanced chunks: count * size - n < count padding elements
        with self.scope(name):
            region = ("#chunked",) + self.path
            start_msg, start_note = len(self.messages), len(self.notes)
            out_meta: list = []

            def body(args):
                index, vals = args
                helds = tuple(Held(v, h.times) for v, h in zip(vals, inputs))
                saved, self._chunk = self._chunk, (index, region)
                saved_latest = self._latest
                stage_keys = set(self._stage_words)
                try:
                    with self.scope("map"):
                        outs = fn(*helds)
                finally:
                    self._chunk, self._latest = saved, saved_latest
                    for k in set(self._stage_words) - stage_keys:  # body tracers: never reuse outside
                        del self._stage_words[k]
                out_meta.append(tuple(o.times for o in outs))
                return tuple(o.value for o in outs)

            def split(v):
                v = jnp.pad(v, [(0, count * size - n)] + [(0, 0)] * (v.ndim - 1))
                return v.reshape((count, size) + tuple(v.shape[1:]))

            mapped = jax.lax.map(body, (jnp.arange(count, dtype=jnp.uint32), tuple(split(h.value) for h in inputs)))
            outs = tuple(Held(v.reshape((count * size,) + v.shape[2:])[:n], t) for v, t in zip(mapped, out_meta[-1]))
            body_msgs, body_notes = self.messages[start_msg:], self.notes[start_note:]
            del self.messages[start_msg:], self.notes[start_note:]

            def for_all(per_chunk: int, what: str) -> int:
                if (per_chunk * n) % size:
                    raise RuntimeError(f"chunked {name}: {what} is not linear in the elements "
                                       f"({per_chunk} for a chunk of {size}); it cannot run in chunks")
                return per_chunk * n // size

            # one record, as if unchunked: every message counted for the n elements, under the
            # caller's scope (the region's own scope names only separate the random streams)
            depth = len(self.path) - 1

            def unscoped(path):
                return path[:depth] + path[depth + 2:]

            for m in body_msgs:
                self.messages.append(dataclasses.replace(m, path=unscoped(m.path),
                                                         nbytes=for_all(m.nbytes, f"a message of {'/'.join(m.path)}")))
            for path, what, cnt in body_notes:
                self.notes.append((unscoped(path), what, for_all(cnt, f"the note {what!r}")))
        return outs

    @classmethod
    def record(cls, config: ProtocolConfig, body: Callable, *abstract_args, stage_depth: int = 1,
               memory_budget: int | None = None) -> "RandomPlan":
        """Traces ``body(rt, *args)`` abstractly (``jax.eval_shape``) and returns its random plan.

        The plan lists every random request by stage so that a second, real trace can draw each
        stage's words with one vectorised PRF call (see :mod:`jaxmpc.core.randomness`).
        """
        rec = cls(config, PartyKeys({}), stage_depth=stage_depth, memory_budget=memory_budget)
        rec._recording = []
        jax.eval_shape(lambda *a: body(rec, *a), *abstract_args)
        return RandomPlan.from_requests(rec._recording)

    # -- results ------------------------------------------------------------------------------
    def comm(self) -> CommRecord:
        """The communication record of everything sent so far."""
        return CommRecord.from_messages(self.messages)


def reshape_held(h: Held, shape) -> Held:
    """``h`` reshaped (a placeholder stays a placeholder of the new shape)."""
    shape = tuple(int(d) for d in shape)
    if _is_placeholder(h.value):
        return Held(jax.ShapeDtypeStruct(shape, h.value.dtype), h.times)
    return Held(h.value.reshape(shape), h.times)


def slice_held(h: Held, start: int, stop: int) -> Held:
    """Rows ``start:stop`` of ``h`` along its leading axis."""
    if _is_placeholder(h.value):
        return Held(jax.ShapeDtypeStruct((stop - start,) + tuple(h.shape[1:]), h.value.dtype), h.times)
    return Held(h.value[start:stop], h.times)

