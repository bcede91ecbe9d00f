"""Correlated randomness from explicit, counter-based keys.

Every random tensor of a protocol is drawn from the key of the set of parties that must know it
(client-server, client-CP, server-CP, or one party alone), folded with a *stable operation id*:
a 64-bit hash of the protocol scope path, the tensor's name and its occurrence count in that
scope. Two parties running the same protocol code therefore derive identical tensors without
talking, in any order (random access, unlike the reference implementation's order-sensitive
PCG64 streams with hard-coded seeds, ``paper_reference.md`` §1.2), and a party that does not hold
a key cannot derive its tensors.

Keys come from the caller (simulation: :func:`simulation_keys` splits one ``jax.random`` key)
or, for networked runs, from OS entropy agreed pairwise at start-up (``jaxmpc.net``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets

import jax
import jax.numpy as jnp
import numpy as np

from jaxmpc.parties import C_CP, C_S, CLIENT, CP, S_CP, SERVER, Party, owners

__all__ = ["PartyKeys", "simulation_keys", "op_id", "fold_op", "KEY_SETS", "fresh_key"]

KEY_SETS = (C_S, C_CP, S_CP, owners(CLIENT), owners(SERVER), owners(CP))


def op_id(path: tuple[str, ...], name: str, count: int) -> tuple[int, int]:
    """Stable 64-bit id (two uint32 words) of the ``count``-th tensor ``name`` in scope ``path``."""
    text = "/".join(path) + "|" + name + "|" + str(count)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def fold_op(key, ident: tuple[int, int]):
    """Folds a 64-bit operation id into a key."""
    key = jax.random.fold_in(key, jnp.uint32(ident[0]))
    return jax.random.fold_in(key, jnp.uint32(ident[1]))


@dataclasses.dataclass(frozen=True)
class PartyKeys:
    """The keys one runtime holds, indexed by the set of parties that share each key.

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
    order = [s for s in KEY_SETS if s in pk.keys]
    return [pk.keys[s] for s in order], tuple(order)


def _unflatten(order, leaves):
    return PartyKeys(dict(zip(order, leaves)))


jax.tree_util.register_pytree_node(PartyKeys, _flatten, _unflatten)


def simulation_keys(key) -> PartyKeys:
    """Derives all six keys from one ``jax.random`` key (simulation only)."""
    out = {}
    for i, s in enumerate(KEY_SETS):
        out[s] = jax.random.fold_in(key, i)
    return PartyKeys(out)


def fresh_key(impl: str | None = None):
    """A new ``jax.random`` key whose every key word comes from OS entropy (never a fixed seed)."""
    template = jax.random.key_data(jax.random.key(0, impl=impl) if impl else jax.random.key(0))
    words = np.frombuffer(secrets.token_bytes(4 * template.size), dtype=np.uint32).reshape(template.shape)
    return jax.random.wrap_key_data(jnp.asarray(words), impl=impl) if impl else jax.random.wrap_key_data(jnp.asarray(words))
