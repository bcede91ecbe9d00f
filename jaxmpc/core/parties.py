"""The three parties and the sets of parties that share keys.

Semi-honest 3-party setting of SecureNN (Wagh, Gupta & Chandran, PETS 2019) as used by the
paper: the client (owner of the input) and the server (owner of the model) hold 2-out-of-2
additive shares; the crypto provider (CP) deals correlated randomness and helps with
comparisons but never holds a share of a secret.
"""

from __future__ import annotations

import enum

__all__ = ["Party", "CLIENT", "SERVER", "CP", "PARTIES", "LINKS", "owners", "C_S", "C_CP", "S_CP", "ALL"]


class Party(enum.IntEnum):
    CLIENT = 0
    SERVER = 1
    CP = 2

    @property
    def short(self) -> str:
        return ("C", "S", "CP")[self]

    @classmethod
    def parse(cls, name: "str | int | Party") -> "Party":
        """Accepts ``Party``, 0/1/2, or a name: client|server|cp (case-insensitive)."""
        if isinstance(name, Party):
            return name
        if isinstance(name, int) and not isinstance(name, bool) and 0 <= name <= 2:
            return cls(name)
        if isinstance(name, str):
            key = name.strip().lower()
            table = {"client": cls.CLIENT, "c": cls.CLIENT, "server": cls.SERVER, "s": cls.SERVER,
                     "cp": cls.CP, "crypto_provider": cls.CP, "dealer": cls.CP}
            if key in table:
                return table[key]
        raise ValueError(f"unknown party {name!r}; expected client, server or cp")


CLIENT, SERVER, CP = Party.CLIENT, Party.SERVER, Party.CP
PARTIES = (CLIENT, SERVER, CP)
LINKS = tuple((a, b) for a in PARTIES for b in PARTIES if a != b)  # ordered (sender, receiver)


def owners(*parties: Party) -> frozenset:
    return frozenset(Party(p) for p in parties)


C_S = owners(CLIENT, SERVER)
C_CP = owners(CLIENT, CP)
S_CP = owners(SERVER, CP)
ALL = owners(CLIENT, SERVER, CP)
