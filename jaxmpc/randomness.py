"""Correlated randomness from explicit, counter-based keys.

Every random tensor of a protocol is drawn from the key of the set of parties that must know it
(client-server, client-CP, server-CP, or one party alone) and a *stable operation id*: a 64-bit
hash of the protocol scope path, the tensor's name and its occurrence count in that scope. Two
parties running the same protocol code therefore derive identical tensors without talking, in
any order (random access, unlike the reference implementation's order-sensitive PCG64 streams
with hard-coded seeds, ``paper_reference.md`` §1.2), and a party that does not hold a key
cannot derive its tensors.

Construction (Threefry-2x32 as a PRF, Salmon et al., SC 2011, the generator behind
``jax.random``):

* request key ``k_r = Threefry_{K_S}(id_r)`` for key-set key ``K_S`` and 64-bit op id ``id_r``;
* word ``i`` of the request: ``Threefry_{k_r}(0, i)`` read as one ``uint64``.

Both steps are elementwise in the key, so all requests of a protocol stage are evaluated in
two vectorised Threefry calls (:func:`request_keys`, :func:`expand_words`) with per-element
keys; a single request gives exactly the same words. This matters for compile time: XLA-CPU
spends ~0.2 s compiling each separate Threefry call, which made a network of a few hundred
random tensors take minutes to compile.

Keys come from the caller (simulation: :func:`simulation_keys` derives the six key-set keys from
one ``jax.random`` key) or, for networked runs, from OS entropy agreed pairwise at start-up
(``jaxmpc.net``). Threefry is the counter-based PRF of JAX, not a vetted cryptographic PRG;
swap :func:`expand_words` for an AES-CTR or ChaCha implementation for production use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry2x32_p

from jaxmpc.parties import C_CP, C_S, CLIENT, CP, S_CP, SERVER, Party, owners

__all__ = ["PartyKeys", "simulation_keys", "op_id", "request_keys", "expand_words", "KEY_SETS", "fresh_key_words",
           "key_words"]

KEY_SETS = (C_S, C_CP, S_CP, owners(CLIENT), owners(SERVER), owners(CP))
U32 = jnp.uint32


def op_id(path: tuple[str, ...], name: str, count: int) -> tuple[int, int]:
    """Stable 64-bit id (two uint32 words) of the ``count``-th tensor ``name`` in scope ``path``."""
    text = "/".join(path) + "|" + name + "|" + str(count)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def key_words(key) -> jax.Array:
    """Two ``uint32`` Threefry key words from a ``jax.random`` key of any implementation."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.bits(key, (2,), U32)
    arr = jnp.asarray(key)
    if arr.dtype == U32 and arr.shape == (2,):
        return arr
    raise TypeError("expected a jax.random.key(...) or a uint32[2] key")


def fresh_key_words() -> np.ndarray:
    """Two ``uint32`` key words from OS entropy (never a fixed seed)."""
    return np.frombuffer(secrets.token_bytes(8), dtype=np.uint32).copy()


def request_keys(base: jax.Array, ids: np.ndarray) -> jax.Array:
    """Per-request keys ``Threefry_{base_r}(id_r)``: ``base`` ``[R, 2]`` uint32, ``ids`` ``[R, 2]``."""
    base = jnp.asarray(base, U32)
    ids = jnp.asarray(np.asarray(ids, np.uint32))
    y0, y1 = threefry2x32_p.bind(base[:, 0], base[:, 1], ids[:, 0], ids[:, 1])
    return jnp.stack([y0, y1], axis=1)


def expand_words(keys: jax.Array, sizes: tuple[int, ...]) -> jax.Array:
    """Concatenated ``uint64`` words of several requests: word ``i`` of request ``r`` is
    ``Threefry_{keys[r]}(0, i)``. ``sizes`` is static; each must be below 2^32."""
    total = int(sum(sizes))
    if total == 0:
        return jnp.zeros((0,), jnp.uint64)
    if max(sizes) >= 2**32:
        raise ValueError("a single random request may not exceed 2^32 words")
    keys = jnp.asarray(keys, U32)
    # built in-graph (iota/broadcast), not as numpy constants: a stage can hold 10^8 words
    counter = jnp.concatenate([lax.iota(U32, n) for n in sizes])
    k0 = jnp.concatenate([jnp.broadcast_to(keys[r, 0], (n,)) for r, n in enumerate(sizes)])
    k1 = jnp.concatenate([jnp.broadcast_to(keys[r, 1], (n,)) for r, n in enumerate(sizes)])
    y0, y1 = threefry2x32_p.bind(k0, k1, jnp.zeros((total,), U32), counter)
    return (y0.astype(jnp.uint64) << jnp.uint64(32)) | y1.astype(jnp.uint64)


@dataclasses.dataclass(frozen=True)
class PartyKeys:
    """The key-set keys one runtime holds (``uint32[2]`` Threefry key words each).

    A simulation holds all six; a networked party holds only the three sets it belongs to.
    Registered as a pytree (the keys are leaves), so it can be a jit argument.
    """

    keys: dict

    def __post_init__(self):
        for s in self.keys:
            if s not in KEY_SETS:
                raise ValueError(f"no key set {set(s)}; expected one of {[sorted(k) for k in KEY_SETS]}")

    def holds(self, key_set: frozenset) -> bool:
        return key_set in self.keys

    def get(self, key_set: frozenset):
        if key_set not in self.keys:
            names = ",".join(p.short for p in sorted(key_set))
            raise PermissionError(f"this runtime does not hold the key of {{{names}}}")
        return self.keys[key_set]

    def restrict(self, party: Party) -> "PartyKeys":
        """The keys that ``party`` holds (what a networked party would have)."""
        return PartyKeys({s: k for s, k in self.keys.items() if party in s})


def _flatten(pk: PartyKeys):
    order = tuple(s for s in KEY_SETS if s in pk.keys)
    return [pk.keys[s] for s in order], order


def _unflatten(order, leaves):
    return PartyKeys(dict(zip(order, leaves)))


jax.tree_util.register_pytree_node(PartyKeys, _flatten, _unflatten)


def simulation_keys(key) -> PartyKeys:
    """Derives the six key-set keys from one ``jax.random`` key (simulation only)."""
    base = key_words(key)
    ids = np.array([[0x6A786D70, i] for i in range(len(KEY_SETS))], np.uint32)  # "jxmp", i
    derived = request_keys(jnp.broadcast_to(base, (len(KEY_SETS), 2)), ids)
    return PartyKeys({s: derived[i] for i, s in enumerate(KEY_SETS)})
