"""Correlated randomness: 256-bit keys, the ChaCha20 PRG and per-operation derivation.

Every random tensor of a protocol is drawn from the key of the set of parties that must know it
(client-server, client-CP, server-CP, or one party alone) and a *stable operation id*: a 64-bit
hash of the protocol scope path, the tensor's name and its occurrence count in that scope. Two
parties running the same protocol code therefore derive identical tensors without talking, in
any order (random access, unlike the reference implementation's order-sensitive PCG64 streams
with hard-coded seeds, ``paper_reference.md`` §1.2), and a party that does not hold a key
cannot derive its tensors.

Construction: ChaCha20 (Bernstein 2008; RFC 8439), 256-bit keys, in pure 32-bit
add/xor/rotate ``jax.numpy`` code (:func:`chacha20_block`, checked against RFC 8439's test
vectors in ``tests/randomness_test.py``):

* **derivation** (:func:`request_keys`): ``K' = ChaCha20_K(counter 0, nonce (id_0, id_1, tag))``,
  its first 8 output words -- the ChaCha20 block function used as a PRF from a 96-bit input to a
  256-bit key;
* **streams** (:func:`stream_words`): word ``i`` of the stream of key ``K'`` is the ``i``-th
  little-endian 64-bit word of ChaCha20's keystream under ``K'`` (nonce 0, block counter from 0);
* a *stage* (a top-level protocol scope, e.g. one layer) draws all its words at once: for each
  key set ``S`` the stage key is ``K_S'`` derived from the 64-bit hash of the stage path, and the
  stage's requests for ``S`` take consecutive ranges of its stream in request order (fixed by the
  protocol code, identical for every party); without a plan every request is its own stage,
  keyed by its op id. A chunked layer (``Runtime.chunked``) derives one stage key per chunk.

Keys: networked parties agree 256-bit pairwise keys from OS entropy (``jaxmpc.net``) and
draw their own with :func:`fresh_key_words`; a simulation derives the six key-set keys from one
root key (:func:`simulation_keys`): by default 256 fresh bits from OS entropy, or, for a
reproducible experiment, a ``jax.random`` key (whose entropy is only that of the ``jax.random``
seed -- fine for tests, never for deployment).

XLA notes (measured on XLA:CPU; ``BENCHMARKS.md``): the 20 rounds run as a 10-iteration loop of
double rounds over the 16 state lanes. Unrolled, XLA computes each of the 16 output lanes in its
own fusion and so recomputes the whole block per lane (and a stacked output 16 times). The loop
materialises the state after each double round (~16 ns per 64-bit word on one core, compile
under a second) and makes the stream a buffer that consumers read, instead of a PRF that XLA
fuses into every consumer and recomputes there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmpc.core.parties import C_CP, C_S, CLIENT, CP, S_CP, SERVER, Party, owners

__all__ = ["PartyKeys", "simulation_keys", "op_id", "request_keys", "stream_words", "stream_parts", "KEY_SETS", "KEY_WORDS",
           "KEY_BYTES", "fresh_key_words", "key_words", "key_from_bytes", "chacha20_block", "chacha20_words"]

KEY_SETS = (C_S, C_CP, S_CP, owners(CLIENT), owners(SERVER), owners(CP))
KEY_WORDS = 8  # 256-bit ChaCha20 keys, as eight uint32 words (little endian)
KEY_BYTES = 4 * KEY_WORDS
U32 = jnp.uint32
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
_COLUMNS = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))
_DIAGONALS = ((0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))
_TAG_DERIVE = 0x6B657973  # "keys": the nonce word of key derivation
_TAG_SIM = 0x6A786D70  # "jxmp": the six simulation keys
_BLOCKS_PER_CHUNK = 1 << 14  # ChaCha blocks per loop iteration of a long stream (16 lanes x 64 KiB)


def op_id(path: tuple[str, ...], name: str, count: int) -> tuple[int, int]:
    """Stable 64-bit id (two uint32 words) of the ``count``-th tensor ``name`` in scope ``path``."""
    text = "/".join(path) + "|" + name + "|" + str(count)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def fresh_key_words() -> np.ndarray:
    """A 256-bit key (eight ``uint32`` words) from OS entropy (``secrets``; never a fixed seed)."""
    return key_from_bytes(secrets.token_bytes(KEY_BYTES))


def key_from_bytes(data: bytes) -> np.ndarray:
    """The eight little-endian ``uint32`` key words of a 32-byte key."""
    data = bytes(data)
    if len(data) != KEY_BYTES:
        raise ValueError(f"a key has {KEY_BYTES} bytes (256 bits), got {len(data)}")
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def key_words(key) -> jax.Array:
    """The eight ``uint32`` root-key words of a simulation key.

    Accepts ``uint32[8]`` key words (e.g. :func:`fresh_key_words`) or a ``jax.random`` key (its
    bits are expanded to 256; reproducible, with the entropy of the ``jax.random`` seed only).
    """
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.bits(key, (KEY_WORDS,), U32)
    arr = jnp.asarray(key)
    if arr.dtype == U32 and arr.shape == (KEY_WORDS,):
        return arr
    raise TypeError(f"expected a jax.random.key(...) or uint32[{KEY_WORDS}] key words, got {arr.dtype}{list(arr.shape)}")


# ----------------------------------------------------------------------------------------------
# ChaCha20 (RFC 8439)


def _rotl(v, r: int):
    return (v << U32(r)) | (v >> U32(32 - r))


def _quarter_round(a, b, c, d):
    """RFC 8439 §2.1."""
    a = a + b
    d = _rotl(d ^ a, 16)
    c = c + d
    b = _rotl(b ^ c, 12)
    a = a + b
    d = _rotl(d ^ a, 8)
    c = c + d
    b = _rotl(b ^ c, 7)
    return a, b, c, d


def _double_round(x):
    x = list(x)
    for groups in (_COLUMNS, _DIAGONALS):
        for g in groups:
            out = _quarter_round(*(x[i] for i in g))
            for i, v in zip(g, out):
                x[i] = v
    return tuple(x)


def _double_round_step(_, x):
    # one module-level function (not a new lambda per call): JAX reuses the loop body's trace for
    # every stream of the same block count (61 streams in a secure ResNet18)
    return _double_round(x)


def chacha20_block(key, counter, nonce) -> tuple:
    """The ChaCha20 block function (RFC 8439 §2.3), elementwise: 16 ``uint32`` output words.

    Args:
      key: eight ``uint32`` words (scalars or arrays broadcastable with ``counter``).
      counter: ``uint32`` block counter(s), e.g. an iota.
      nonce: three ``uint32`` words (scalars or arrays).

    Returns:
      a tuple of 16 ``uint32`` arrays of ``counter``'s broadcast shape: the serialised block's
      words (RFC 8439 §2.3.2 lists them for its test key).
    """
    counter = jnp.asarray(counter, U32)
    shape = jnp.broadcast_shapes(counter.shape, *(jnp.shape(k) for k in key), *(jnp.shape(v) for v in nonce))
    words = [jnp.full(shape, c, U32) for c in _SIGMA] + [jnp.broadcast_to(jnp.asarray(k, U32), shape) for k in key]
    words += [jnp.broadcast_to(counter, shape)] + [jnp.broadcast_to(jnp.asarray(v, U32), shape) for v in nonce]
    init = tuple(words)
    x = lax.fori_loop(0, 10, _double_round_step, init)
    return tuple(a + b for a, b in zip(x, init))


def _keystream_words(lanes, n_blocks: int):
    """``uint64[8 * n_blocks]``: the little-endian 64-bit words of ``n_blocks`` keystream blocks,
    block ``g`` under ``lanes(g) = (key words, block counter)`` (nonce 0), converted inside the
    loop (no 32-bit copy); long streams run as a loop over chunks of blocks."""
    zero = U32(0)

    def run(start, n):
        key, counter = lanes(start + lax.iota(U32, n))
        out = chacha20_block(key, counter, (zero, zero, zero))
        words = [(out[2 * j + 1].astype(jnp.uint64) << jnp.uint64(32)) | out[2 * j].astype(jnp.uint64)
                 for j in range(8)]
        return jnp.stack(words, axis=1).reshape(8 * n)

    if n_blocks <= _BLOCKS_PER_CHUNK:
        return run(U32(0), n_blocks)
    n_chunks = -(-n_blocks // _BLOCKS_PER_CHUNK)
    starts = U32(_BLOCKS_PER_CHUNK) * jnp.arange(n_chunks, dtype=U32)
    out = lax.map(lambda st: run(st, _BLOCKS_PER_CHUNK), starts)
    return out.reshape(n_chunks * _BLOCKS_PER_CHUNK * 8)[: 8 * n_blocks]


def chacha20_words(key, n_words: int, first_word: int = 0) -> jax.Array:
    """``uint64[n_words]``: words ``first_word ..`` of ChaCha20's keystream under ``key`` (nonce 0),
    each eight keystream bytes read little endian. ``first_word`` must be a multiple of 8 (a
    block boundary); a stream may have at most ``2^35`` words (the 32-bit block counter)."""
    if first_word % 8:
        raise ValueError("first_word must be a multiple of 8 (a ChaCha20 block boundary)")
    if first_word + n_words > 8 * 2**32:
        raise ValueError("a ChaCha20 stream has at most 2^35 64-bit words; use smaller stages")
    if n_words == 0:
        return jnp.zeros((0,), jnp.uint64)
    key = [jnp.asarray(key, U32)[i] for i in range(KEY_WORDS)]
    n_blocks = -(-n_words // 8)
    first = U32(first_word // 8)
    return _keystream_words(lambda g: (key, first + g), n_blocks)[:n_words]


def request_keys(base, ids) -> jax.Array:
    """Derived keys ``[R, 8]``: row ``r`` is the first half of ``ChaCha20_{base_r}(0, (id_r, tag))``.

    Args:
      base: ``uint32[R, 8]`` (or ``[8]``, broadcast) parent keys.
      ids: ``uint32[R, 2]`` 64-bit ids (static numpy or traced).
    """
    ids = jnp.asarray(ids, U32)
    base = jnp.broadcast_to(jnp.asarray(base, U32), (ids.shape[0], KEY_WORDS))
    out = chacha20_block([base[:, i] for i in range(KEY_WORDS)], U32(0),
                         (ids[:, 0], ids[:, 1], jnp.full(ids.shape[:1], _TAG_DERIVE, U32)))
    return jnp.stack(out[:KEY_WORDS], axis=1)


def stream_words(keys, sizes: tuple[int, ...]) -> jax.Array:
    """Concatenated streams: ``sizes[s]`` ``uint64`` words of the keystream of ``keys[s]``."""
    parts = [p for p in stream_parts(keys, sizes) if p.shape[0]]
    if not parts:
        return jnp.zeros((0,), jnp.uint64)
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def stream_parts(keys, sizes: tuple[int, ...]) -> list:
    """``[uint64[sizes[s]]]``: the first ``sizes[s]`` words of the keystream of ``keys[s]``.

    All streams run in one ChaCha20 loop over their blocks laid end to end (block ``g`` picks its
    stream's key and counter with a few selects): the same words as one :func:`chacha20_words`
    per key, in one loop instead of one per key (a stage draws for up to six key sets, and every
    loop is compiled code of its own); the parts are slices of the loop's output buffer.
    """
    keys = jnp.asarray(keys, U32)
    sizes = [int(n) for n in sizes]
    live = [(s, n) for s, n in enumerate(sizes) if n]
    empty = jnp.zeros((0,), jnp.uint64)
    if len(live) <= 1:
        return [chacha20_words(keys[s], n) if n else empty for s, n in enumerate(sizes)]
    for _, n in live:
        if n > 8 * 2**32:
            raise ValueError("a ChaCha20 stream has at most 2^35 64-bit words; use smaller stages")
    offsets = np.cumsum([0] + [-(-n // 8) for _, n in live])  # first block of each stream
    if offsets[-1] >= 2**32:
        raise ValueError("streams of one call have at most 2^32 ChaCha20 blocks in all; use smaller stages")
    rows = [[keys[s, i] for i in range(KEY_WORDS)] for s, _ in live]

    def lanes(g):
        key, first = list(rows[0]), U32(0)
        for j in range(1, len(live)):
            later = g >= U32(offsets[j])
            key = [jnp.where(later, new, old) for new, old in zip(rows[j], key)]
            first = jnp.where(later, U32(offsets[j]), first)
        return key, g - first

    words = _keystream_words(lanes, int(offsets[-1]))
    parts = [empty] * len(sizes)
    for j, (s, n) in enumerate(live):
        parts[s] = words[8 * int(offsets[j]): 8 * int(offsets[j]) + n]
    return parts


@dataclasses.dataclass(frozen=True)
class PartyKeys:
    """The key-set keys one runtime holds (``uint32[8]``: 256-bit ChaCha20 keys).

    A simulation holds all six; a networked party holds only the three sets it belongs to.
    Registered as a pytree (the keys are leaves), so it can be a jit argument.
    """

    keys: dict

    def __post_init__(self):
        for s, k in self.keys.items():
            if s not in KEY_SETS:
                raise ValueError(f"no key set {set(s)}; expected one of {[sorted(k) for k in KEY_SETS]}")
            shape = getattr(k, "shape", None)  # pytree unflattening may pass placeholders
            if shape is not None and tuple(shape) != (KEY_WORDS,):
                raise ValueError(f"a key is uint32[{KEY_WORDS}] (256 bits), got shape {tuple(shape)}")

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
    """Derives the six key-set keys from one root key (simulation only; see :func:`key_words`)."""
    base = key_words(key)
    ids = np.array([[_TAG_SIM, i] for i in range(len(KEY_SETS))], np.uint32)
    derived = request_keys(base, ids)
    return PartyKeys({s: derived[i] for i, s in enumerate(KEY_SETS)})
