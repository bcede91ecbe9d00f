"""Test helpers: runtimes, shared inputs, exact comparisons, an in-memory transport."""

from __future__ import annotations

import queue
import threading

import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc.core.config import ProtocolConfig
from jaxmpc.core.parties import CLIENT, PARTIES, Party
from jaxmpc.core.randomness import simulation_keys
from jaxmpc.core.ring import RING64
from jaxmpc.core.runtime import Runtime, Transport
from jaxmpc.core.sharing import Shared, share

EDGE_INTS = [0, 1, -1, 2, -2, 3, -3, 2**62, -(2**62), 2**63 - 2, -(2**63), 2**62 - 1, -(2**62) + 1, 4095, -4096]


def u64(values) -> np.ndarray:
    """Signed Python ints -> uint64 ring elements (two's complement)."""
    arr = np.array(values, dtype=object)
    return np.array([int(v) % 2**64 for v in arr.ravel()], dtype=np.uint64).reshape(arr.shape)


def signed(u) -> np.ndarray:
    return np.asarray(u, dtype=np.uint64).view(np.int64)


def sim_runtime(config: ProtocolConfig | None = None, key=0) -> Runtime:
    return Runtime(config or ProtocolConfig(), simulation_keys(jax.random.key(key)))


def shared(rt: Runtime, ring_values, *, ring=RING64, scale: int = 0, name: str = "x") -> Shared:
    """Shares ring values (uint64) from the client."""
    return share(rt, rt.input(CLIENT, jnp.asarray(ring_values, jnp.uint64)), CLIENT, ring=ring, scale=scale, name=name)


def opened(x: Shared):
    """Reconstructs a sharing in the clear (test-only: reads both shares)."""
    return x.ring.add(x.c.value, x.s.value)


def run_jitted(build, *args, config: ProtocolConfig | None = None, key=0):
    """Traces ``build(rt, *args) -> pytree`` inside jit with a fresh simulation runtime.

    Returns ``(outputs, CommRecord)``.
    """
    cfg = config or ProtocolConfig()
    from jaxmpc.simulate import StaticValue

    from jaxmpc.simulate import run_planned

    def f(k, *a):
        out, comm = run_planned(cfg, simulation_keys(k), build, *a)
        return out, StaticValue(comm)

    out, st = jax.jit(f)(jax.random.key(key), *args)
    return out, st.value


class QueueTransport(Transport):
    """In-memory transport between threads: one FIFO per ordered link (tests only)."""

    def __init__(self, role: Party, queues: dict, timeout: float = 60.0):
        self.role = role
        self.queues = queues
        self.timeout = timeout
        self.sent_bytes = {p: 0 for p in PARTIES}

    @staticmethod
    def make_queues():
        return {(a, b): queue.Queue() for a in PARTIES for b in PARTIES if a != b}

    def send(self, dst, value, wire_dtype):
        arr = np.asarray(value).astype(wire_dtype)
        self.sent_bytes[dst] += arr.nbytes
        self.queues[(self.role, dst)].put(arr)

    def recv(self, src, shape, dtype, wire_dtype):
        arr = self.queues[(src, self.role)].get(timeout=self.timeout)
        assert arr.dtype == wire_dtype and arr.shape == tuple(shape), (arr.dtype, wire_dtype, arr.shape, shape)
        return jnp.asarray(arr.astype(dtype))


def run_parties(program, inputs: dict, config: ProtocolConfig | None = None, key=0):
    """Runs ``program(rt, inputs_or_placeholders)`` once per party in threads (eager, party mode).

    ``inputs`` maps a party to the real inputs it holds; the others get placeholders built by
    ``program`` itself from ``rt.role``. Returns ``({party: result}, {party: Runtime})``.
    """
    cfg = config or ProtocolConfig()
    keys = simulation_keys(jax.random.key(key))
    queues = QueueTransport.make_queues()
    results, runtimes, errors = {}, {}, []

    def worker(p):
        try:
            rt = Runtime(cfg, keys.restrict(p), role=p, transport=QueueTransport(p, queues))
            runtimes[p] = rt
            results[p] = program(rt, inputs.get(p))
        except BaseException as e:  # noqa: BLE001 - reported to the test
            errors.append((p, e))

    threads = [threading.Thread(target=worker, args=(p,)) for p in PARTIES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0][1]
    return results, runtimes
