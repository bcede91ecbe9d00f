"""Correlated randomness: ChaCha20 against RFC 8439 (and OpenSSL), 256-bit keys, stable ids,
derivation, batched == single requests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.core.parties import C_CP, C_S, CLIENT
from jaxmpc.core.randomness import (KEY_BYTES, KEY_WORDS, PartyKeys, chacha20_block, chacha20_words, fresh_key_words,
                                    key_from_bytes, op_id, request_keys, simulation_keys, stream_words)
from jaxmpc.core.ring import RING64
from jaxmpc.core.runtime import Runtime
from jaxmpc.core.config import ProtocolConfig

RFC_KEY = np.frombuffer(bytes(range(32)), "<u4").astype(np.uint32)  # 00:01:02:..:1f


def _hex_words(text: str) -> list[int]:
    return [int(w, 16) for w in text.split()]


def test_chacha20_block_matches_rfc8439_2_3_2():
    """RFC 8439 §2.3.2: key 00..1f, counter 1, nonce 00:00:00:09:00:00:00:4a:00:00:00:00."""
    out = chacha20_block([jnp.uint32(k) for k in RFC_KEY], jnp.uint32(1),
                         (jnp.uint32(0x09000000), jnp.uint32(0x4A000000), jnp.uint32(0)))
    expected = _hex_words("""e4e7f110 15593bd1 1fdd0f50 c47120a3 c7f4d1c7 0368c033 9aaa2204 4e6cd4c3
                             466482d2 09aa9f07 05d7c214 a2028bd9 d19c12b5 b94e16de e883d0cb 4e3c50a2""")
    assert [int(v) for v in out] == expected


def test_chacha20_keystream_matches_rfc8439_2_4_2():
    """RFC 8439 §2.4.2: the first keystream block for counter 1, nonce 00..00:4a:00..00, key 00..1f
    (the block XORed into the plaintext "Ladies and Gentlemen ...")."""
    plain = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
             b"sunscreen would be it.")
    cipher_hex = ("6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab8f593dabcd62b3571"
                  "639d624e65152ab8f530c359f0861d807ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab77937365af9"
                  "0bbf74a35be6b40b8eedf2785e42874d")
    out = chacha20_block([jnp.uint32(k) for k in RFC_KEY], jnp.arange(1, 3, dtype=jnp.uint32),
                         (jnp.uint32(0), jnp.uint32(0x4A000000), jnp.uint32(0)))
    stream = np.stack([np.asarray(v) for v in out], axis=1).astype("<u4").tobytes()
    assert bytes(a ^ b for a, b in zip(plain, stream)).hex() == cipher_hex


def test_chacha20_words_equal_openssl_across_chunks():
    """The 64-bit word stream is ChaCha20's keystream read little endian (nonce 0, counter 0), also
    past the loop's chunk boundary and from a block offset; OpenSSL (``cryptography``) as oracle."""
    algorithms = pytest.importorskip("cryptography.hazmat.primitives.ciphers.algorithms")
    from cryptography.hazmat.primitives.ciphers import Cipher

    key = fresh_key_words()
    n = 8 * (1 << 14) + 8 * 300 + 5  # crosses a chunk of 2^14 blocks
    ks = Cipher(algorithms.ChaCha20(key.astype("<u4").tobytes(), bytes(16)), mode=None).encryptor().update(bytes(8 * n))
    ref = np.frombuffer(ks, "<u8")
    np.testing.assert_array_equal(np.asarray(chacha20_words(jnp.asarray(key), n)), ref)
    np.testing.assert_array_equal(np.asarray(chacha20_words(jnp.asarray(key), 40, first_word=8 * 9)), ref[72:112])
    with pytest.raises(ValueError, match="multiple of 8"):
        chacha20_words(jnp.asarray(key), 4, first_word=3)


def test_keys_are_256_bits_from_os_entropy():
    a, b = fresh_key_words(), fresh_key_words()
    assert a.dtype == np.uint32 and a.shape == (KEY_WORDS,) and KEY_BYTES == 32
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(key_from_bytes(a.astype("<u4").tobytes()), a)
    with pytest.raises(ValueError, match="32"):
        key_from_bytes(bytes(8))
    with pytest.raises(TypeError):
        simulation_keys(jnp.zeros(2, jnp.uint32))


def test_derived_keys_depend_on_every_key_word_and_the_id():
    base = fresh_key_words()
    ids = np.array([[5, 6], [5, 7], [6, 6]], np.uint32)
    keys = np.asarray(request_keys(base, ids))
    assert keys.shape == (3, KEY_WORDS) and len({k.tobytes() for k in keys}) == 3
    for i in range(KEY_WORDS):  # flipping one bit of any key word changes the derived key
        flipped = base.copy()
        flipped[i] ^= np.uint32(1 << (i % 32))
        assert not np.array_equal(np.asarray(request_keys(flipped, ids[:1]))[0], keys[0])


def test_batched_streams_equal_single_streams():
    keys = request_keys(jnp.asarray(np.stack([fresh_key_words(), fresh_key_words(), fresh_key_words()])),
                        np.array([[5, 6], [7, 8], [9, 10]], np.uint32))
    sizes = (7, 1, 13)
    batched = np.asarray(stream_words(keys, sizes))
    parts = [np.asarray(stream_words(keys[i:i + 1], (n,))) for i, n in enumerate(sizes)]
    np.testing.assert_array_equal(batched, np.concatenate(parts))
    assert len(set(batched.tolist())) == len(batched)
    np.testing.assert_array_equal(parts[0], np.asarray(chacha20_words(keys[0], 7)))


def test_simulation_accepts_fresh_and_reproducible_root_keys():
    fresh = simulation_keys(jnp.asarray(fresh_key_words()))
    again = simulation_keys(jax.random.key(3))
    same = simulation_keys(jax.random.key(3))
    assert all(np.asarray(k).shape == (KEY_WORDS,) for k in fresh.keys.values())
    for s in again.keys:
        np.testing.assert_array_equal(np.asarray(again.keys[s]), np.asarray(same.keys[s]))
    assert len({np.asarray(k).tobytes() for k in fresh.keys.values()}) == 6
    assert isinstance(fresh.restrict(CLIENT), PartyKeys) and len(fresh.restrict(CLIENT).keys) == 3


def test_op_ids_are_stable_and_distinct():
    assert op_id(("a", "b"), "r", 0) == op_id(("a", "b"), "r", 0)
    ids = {op_id(("layer", str(i)), n, c) for i in range(50) for n in ("a", "b") for c in range(3)}
    assert len(ids) == 300


def test_planned_randomness_is_fresh_and_consistent():
    """A stage's requests get disjoint counter ranges; the same run gives the same tensors."""
    from jaxmpc.simulate import run_planned

    def body(rt, x):
        with rt.scope("stage1"):
            a = rt.random(C_S, RING64, (3, 4), "a")
            b = rt.random(C_S, RING64, (5,), "b")
            d = rt.random(C_CP, RING64, (5,), "b")
        with rt.scope("stage2"):
            c = rt.random(C_S, RING64, (2,), "a")
        return a.value, b.value, c.value, d.value

    keys = simulation_keys(jax.random.key(0))
    first, _ = run_planned(ProtocolConfig(), keys, body, jnp.zeros(1))
    again, _ = run_planned(ProtocolConfig(), keys, body, jnp.zeros(1))
    for p, q in zip(first, again):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
    words = np.concatenate([np.asarray(v).ravel() for v in first])
    assert len(set(words.tolist())) == words.size  # no reuse across requests, stages or key sets


def test_two_parties_derive_the_same_tensor():
    keys = simulation_keys(jax.random.key(1))

    def draw(party):
        rt = Runtime(ProtocolConfig(), keys.restrict(party))
        with rt.scope("x"):
            return np.asarray(rt.random(C_S, RING64, (4,), "r").value)

    np.testing.assert_array_equal(draw(CLIENT), draw(1))
