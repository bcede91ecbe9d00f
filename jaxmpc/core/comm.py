"""Communication records: what every protocol sends, on which link, in which round.

Protocols never count bytes by hand: the runtime (``jaxmpc.core.runtime``) logs each message when it
is sent -- sender, receiver, payload bytes (elements x wire bytes of the ring), whether it is
*online* (depends on a secret input) or *offline* (input-independent: preprocessing such as
Beaver triples and masked weights), the time it leaves and arrives in hops, the protocol scope
path and the kind (``linear``, ``drelu``, ``mult``, ``reveal`` ...). These are static facts of the
trace, so a :class:`CommRecord` is a hashable static value that survives ``jit``.

Rounds are the online critical path: every value carries the hop at which each party learns it
(``-1``: before the online phase); a message leaves when its sender knows its content and
arrives one hop later. ``CommRecord.rounds`` is the latest arrival.

The documented per-element costs of each protocol are in ``docs/protocols.md`` and in
:mod:`jaxmpc.protocols.costs`; ``tests/comm_test.py`` checks every op's record against them.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from collections.abc import Iterable

from jaxmpc.core.parties import LINKS, PARTIES, Party

__all__ = ["Message", "Traffic", "CommRecord"]


@dataclasses.dataclass(frozen=True)
class Message:
    """One logged message (one array sent from ``src`` to ``dst``)."""

    path: tuple[str, ...]
    kind: str
    src: Party
    dst: Party
    nbytes: int
    online: bool
    sent: int  # hop at which it leaves (-1 offline)
    arrives: int  # hop at which it is available to dst (-1 offline)


@dataclasses.dataclass(frozen=True)
class Traffic:
    """Messages aggregated by (scope path, kind, link, phase)."""

    path: tuple[str, ...]
    kind: str
    src: Party
    dst: Party
    online: bool
    nbytes: int
    messages: int
    first_sent: int
    last_arrival: int


def _aggregate(messages: Iterable[Message]) -> tuple[Traffic, ...]:
    acc: OrderedDict = OrderedDict()
    for m in messages:
        k = (m.path, m.kind, m.src, m.dst, m.online)
        if k in acc:
            t = acc[k]
            acc[k] = dataclasses.replace(
                t,
                nbytes=t.nbytes + m.nbytes,
                messages=t.messages + 1,
                first_sent=min(t.first_sent, m.sent),
                last_arrival=max(t.last_arrival, m.arrives),
            )
        else:
            acc[k] = Traffic(m.path, m.kind, m.src, m.dst, m.online, m.nbytes, 1, m.sent, m.arrives)
    return tuple(acc.values())


@dataclasses.dataclass(frozen=True)
class CommRecord:
    """Bytes per ordered party link and online rounds of a protocol run (static, hashable).

    Attributes:
      traffic: aggregated messages, in the order they were first sent.
    """

    traffic: tuple[Traffic, ...] = ()

    @classmethod
    def from_messages(cls, messages: Iterable[Message]) -> "CommRecord":
        return cls(_aggregate(messages))

    # -- totals ---------------------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.traffic)

    @property
    def online_bytes(self) -> int:
        return sum(t.nbytes for t in self.traffic if t.online)

    @property
    def offline_bytes(self) -> int:
        return sum(t.nbytes for t in self.traffic if not t.online)

    @property
    def messages(self) -> int:
        return sum(t.messages for t in self.traffic)

    @property
    def rounds(self) -> int:
        """Online rounds: hops on the critical path from the first online message to the last arrival."""
        online = [t for t in self.traffic if t.online]
        if not online:
            return 0
        start = max(0, min(t.first_sent for t in online))
        return max(t.last_arrival for t in online) - start

    def link_bytes(self, src, dst, *, online: bool | None = None) -> int:
        src, dst = Party.parse(src), Party.parse(dst)
        return sum(
            t.nbytes for t in self.traffic if t.src == src and t.dst == dst and (online is None or t.online == online)
        )

    @property
    def links(self) -> dict:
        """``{(sender, receiver): bytes}`` for all six ordered links (Party keys)."""
        return {(a, b): self.link_bytes(a, b) for a, b in LINKS}

    def bytes_sent(self, party) -> int:
        p = Party.parse(party)
        return sum(t.nbytes for t in self.traffic if t.src == p)

    def bytes_received(self, party) -> int:
        p = Party.parse(party)
        return sum(t.nbytes for t in self.traffic if t.dst == p)

    @property
    def sent_per_party(self) -> dict:
        return {p.name.lower(): self.bytes_sent(p) for p in PARTIES}

    # -- slicing --------------------------------------------------------------------------------
    def select(self, *, kind: str | Iterable[str] | None = None, exclude_kind: str | Iterable[str] | None = None,
               prefix: tuple[str, ...] | str | None = None, online: bool | None = None) -> "CommRecord":
        """The part of the record matching a kind (or kinds), a scope-path prefix and/or a phase."""
        kinds = {kind} if isinstance(kind, str) else (set(kind) if kind is not None else None)
        excl = {exclude_kind} if isinstance(exclude_kind, str) else set(exclude_kind or ())
        if isinstance(prefix, str):
            prefix = tuple(p for p in prefix.split("/") if p)
        out = []
        for t in self.traffic:
            if kinds is not None and t.kind not in kinds:
                continue
            if t.kind in excl:
                continue
            if prefix is not None and t.path[: len(prefix)] != prefix:
                continue
            if online is not None and t.online != online:
                continue
            out.append(t)
        return CommRecord(tuple(out))

    def kinds(self) -> list[str]:
        return list(OrderedDict.fromkeys(t.kind for t in self.traffic))

    def by_kind(self) -> "OrderedDict[str, CommRecord]":
        return OrderedDict((k, self.select(kind=k)) for k in self.kinds())

    def by_scope(self, depth: int = 1) -> "OrderedDict[tuple[str, ...], CommRecord]":
        """Groups by the first ``depth`` components of the scope path (e.g. per layer)."""
        groups: OrderedDict = OrderedDict()
        for t in self.traffic:
            groups.setdefault(t.path[:depth], []).append(t)
        return OrderedDict((k, CommRecord(tuple(v))) for k, v in groups.items())

    def __add__(self, other: "CommRecord") -> "CommRecord":
        """Union of two records of the *same* run (times are absolute)."""
        if not isinstance(other, CommRecord):
            return NotImplemented
        return CommRecord(self.traffic + other.traffic)

    def then(self, other: "CommRecord") -> "CommRecord":
        """Sequential composition of two separate runs: ``other`` starts when ``self`` ends."""
        shift = self.rounds
        moved = tuple(
            dataclasses.replace(t, first_sent=t.first_sent + shift, last_arrival=t.last_arrival + shift) if t.online else t
            for t in other.traffic
        )
        return CommRecord(self.traffic + moved)

    # -- export ---------------------------------------------------------------------------------
    def summary(self) -> dict:
        return {
            "total_bytes": self.total_bytes,
            "online_bytes": self.online_bytes,
            "offline_bytes": self.offline_bytes,
            "rounds": self.rounds,
            "messages": self.messages,
            "sent": self.sent_per_party,
            "links": {f"{a.name.lower()}->{b.name.lower()}": v for (a, b), v in self.links.items()},
            "by_kind": {k: r.total_bytes for k, r in self.by_kind().items()},
        }

    def to_dict(self) -> dict:
        d = self.summary()
        d["traffic"] = [
            {
                "path": "/".join(t.path),
                "kind": t.kind,
                "src": t.src.name.lower(),
                "dst": t.dst.name.lower(),
                "online": t.online,
                "bytes": t.nbytes,
                "messages": t.messages,
                "first_sent": t.first_sent,
                "last_arrival": t.last_arrival,
            }
            for t in self.traffic
        ]
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:
        s = self.summary()
        sent = ", ".join(f"{k} {v:,} B" for k, v in s["sent"].items())
        return f"CommRecord({s['total_bytes']:,} B total [{sent}], {s['rounds']} rounds, {s['messages']} messages)"

    __repr__ = __str__
