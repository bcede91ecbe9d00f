"""``jaxmpc.simulate``: run a secure function with all three parties in one jit-compiled program."""

from __future__ import annotations

import os

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc.core.comm import CommRecord
from jaxmpc.core.config import ProtocolConfig, require_x64
from jaxmpc.core.parties import CLIENT
from jaxmpc.core.randomness import KEY_WORDS, fresh_key_words, simulation_keys
from jaxmpc.core.ring import decode, encode
from jaxmpc.core.runtime import Runtime
from jaxmpc.core.sharing import Shared, reveal, share

__all__ = ["simulate", "check_key", "StaticValue", "run_planned", "memory_budget_bytes", "device_memory_bytes"]


class StaticValue:
    """A pytree with no leaves carrying a hashable value through ``jit`` (in its treedef)."""

    def __init__(self, value):
        self.value = value


jax.tree_util.register_pytree_node(StaticValue, lambda s: ((), s.value), lambda aux, _: StaticValue(aux))


def check_key(key, config: ProtocolConfig):
    """Validates a root key; ``None`` makes a fresh 256-bit one from OS entropy.

    Accepted: ``uint32[8]`` key words (256 bits, e.g. ``jaxmpc.core.randomness.fresh_key_words()``),
    a ``jax.random`` key or a legacy ``uint32[2]`` PRNGKey (reproducible experiments: only the
    ``jax.random`` seed's entropy).
    """
    if key is None:
        return jnp.asarray(fresh_key_words())
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
        return key
    arr = np.asarray(key) if not isinstance(key, jax.core.Tracer) else key
    if getattr(arr, "dtype", None) == np.uint32 and tuple(arr.shape) == (KEY_WORDS,):
        return jnp.asarray(arr)
    if getattr(arr, "dtype", None) == np.uint32 and tuple(arr.shape) == (2,):
        return jax.random.wrap_key_data(jnp.asarray(arr))
    raise TypeError(f"key must be uint32[{KEY_WORDS}] key words, a jax.random.key(...) or a legacy uint32[2] PRNGKey")


def _is_shared(v):
    return isinstance(v, Shared)


def _program(rt, encoded, fn):
    xs = [
        share(rt, rt.input(CLIENT, e), CLIENT, scale=rt.config.frac_bits, name=f"input{i}")
        for i, e in enumerate(encoded)
    ]
    out = fn(*xs)

    def open_leaf(v):
        if isinstance(v, Shared):
            if v.rt is not rt:
                raise ValueError("fn returned a Shared value from another runtime")
            return decode(reveal(v, CLIENT).value, v.scale)
        return v

    return jax.tree_util.tree_map(open_leaf, out, is_leaf=_is_shared)


def run_planned(config: ProtocolConfig, keys, body, *args, return_runtime: bool = False,
                memory_budget: int | None = None):
    """Runs ``body(rt, *args)`` in a simulation runtime with a random plan (two traces, see
    :meth:`Runtime.record`); returns ``(outputs, comm)`` (or ``(outputs, runtime)``). Call
    inside ``jax.jit``."""
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), args)
    plan = Runtime.record(config, body, *abstract, memory_budget=memory_budget)
    rt = Runtime(config, keys, plan=plan, memory_budget=memory_budget)
    out = body(rt, *args)
    return out, (rt if return_runtime else rt.comm())


_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def device_memory_bytes(device=None) -> int:
    """The memory of ``device`` (default: JAX's first device): an accelerator's allocator limit, or
    the host's physical memory for a CPU."""
    device = device or jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def memory_budget_bytes(budget="auto") -> int | None:
    """Bytes of a working-set budget: ``"auto"`` (an eighth of the device's memory, see
    :func:`device_memory_bytes`), a positive integer of bytes, a string such as ``"4GiB"`` or
    ``"512MB"``, or ``None`` (no budget: every protocol runs on its whole input at once)."""
    if budget is None:
        return None
    if isinstance(budget, str):
        text = budget.strip().lower().replace(" ", "")
        if text == "auto":
            return max(device_memory_bytes() // 8, 64 * 2**20)
        num = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(num):] or "b"
        try:
            value = float(num)
        except ValueError:
            value = float("nan")
        if unit not in _UNITS or not np.isfinite(value) or value <= 0:
            raise ValueError(f"memory_budget {budget!r}: expected e.g. '4GiB', '512MB', a byte count, 'auto' or None")
        return int(value * _UNITS[unit])
    if isinstance(budget, (bool, float)) or not isinstance(budget, (int, np.integer)) or budget <= 0:
        raise ValueError(f"memory_budget must be a positive byte count, a string like '4GiB', 'auto' or None, "
                         f"got {budget!r}")
    return int(budget)


def _simulate_core(key, encoded, *, fn, config, memory_budget=None):
    out, comm = run_planned(config, simulation_keys(key), lambda rt, e: _program(rt, e, fn), encoded,
                            memory_budget=memory_budget)
    return out, StaticValue(comm)


_simulate_jit = jax.jit(_simulate_core, static_argnames=("fn", "config", "memory_budget"))


def simulate(fn: Callable, *inputs, config: ProtocolConfig | None = None, key=None, jit: bool = True,
             memory_budget="auto"):
    """Runs ``fn`` securely on secret-shared ``inputs`` with the three parties simulated.

    Each input (a real array, the client's secret) is encoded in fixed point and shared between
    client and server; ``fn`` receives :class:`~jaxmpc.core.sharing.Shared` values and must combine
    them with :mod:`jaxmpc.ops` (or the protocols in ``jaxmpc.protocols``); the ``Shared``
    leaves of its result are revealed to the client and decoded.

    Args:
      fn: function of the shared inputs, returning a ``Shared`` or a pytree of them.
      *inputs: real arrays (finite, ``|x| * 2^frac_bits <= 2^62``).
      config: protocol parameters (default ``ProtocolConfig()``).
      key: root key of all correlated randomness: ``None`` (default) draws 256 bits from OS
        entropy; ``uint32[8]`` key words, or a ``jax.random`` key for reproducible experiments.
      jit: compile the whole protocol with ``jax.jit`` (default). Traces once per
        ``(fn, config, input shapes, memory budget)``.
      memory_budget: working set of one chunk of a large DReLU (:func:`memory_budget_bytes`):
        ``"auto"`` (default), bytes, ``"4GiB"``, or ``None`` for no chunking. Outputs and the
        communication record do not depend on it.

    Returns:
      ``(outputs, comm)``: the revealed outputs (float64) and the :class:`~jaxmpc.core.comm.CommRecord`
      of the run, which includes revealing the outputs (kind ``"reveal"``, 8 bytes per element
      from the server to the client).

    Raises:
      RuntimeError: if 64-bit mode is off.
      TypeError / ValueError: for a bad config, key or input (NaN, inf, out of range), before
        anything is traced.
    """
    require_x64()
    config = ProtocolConfig() if config is None else config
    if not isinstance(config, ProtocolConfig):
        raise TypeError(f"config must be a jaxmpc.ProtocolConfig, got {type(config).__name__}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not inputs:
        raise ValueError("simulate needs at least one input")
    encoded = []
    for i, x in enumerate(inputs):
        if isinstance(x, jax.core.Tracer):
            raise TypeError(f"input {i} is a tracer: call simulate outside of jax transformations")
        try:
            encoded.append(jnp.asarray(encode(x, config.frac_bits)))
        except (TypeError, ValueError) as e:
            raise type(e)(f"input {i}: {e}") from None
    key = check_key(key, config)
    budget = memory_budget_bytes(memory_budget)
    if jit:
        out, static = _simulate_jit(key, tuple(encoded), fn=fn, config=config, memory_budget=budget)
    else:
        out, static = _simulate_core(key, tuple(encoded), fn=fn, config=config, memory_budget=budget)
    record: CommRecord = static.value
    return out, record
