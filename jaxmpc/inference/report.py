"""Per-layer communication report of a secure forward pass."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import OrderedDict

from jaxmpc._io import atomic_write_text
from jaxmpc.core.comm import CommRecord
from jaxmpc.core.parties import LINKS

__all__ = ["LayerRow", "SecureReport", "SESSION_KINDS"]

SESSION_KINDS = ("weights",)  # message kinds sent once per session (see protocols.linear.bilinear_av)

_LINK_NAMES = tuple(f"{a.short}->{b.short}" for a, b in LINKS)


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """Communication of one layer (one Flax module path) of a secure forward pass."""

    layer: str
    ops: str
    drelus: int
    mults: int
    links: tuple  # bytes per ordered link, in jaxmpc.core.parties.LINKS order
    online_bytes: int
    total_bytes: int
    rounds: int  # online rounds this layer adds to the critical path (rows sum to the total)
    by_kind: tuple  # ((kind, bytes), ...)

    def link(self, name: str) -> int:
        return self.links[_LINK_NAMES.index(name)]


@dataclasses.dataclass(frozen=True)
class SecureReport:
    """What a secure forward pass cost, per layer and in total (static, hashable).

    Attributes:
      comm: the full :class:`~jaxmpc.core.comm.CommRecord` (every message, by scope and kind).
      layers: ``((layer path, op label), ...)`` in execution order.
      notes: protocol statistics ``((path, what, count), ...)`` (``"drelu"``, ``"mult"``).
      batch: number of images in the batch.
    """

    comm: CommRecord
    layers: tuple
    notes: tuple
    batch: int = 1

    # -- aggregation ----------------------------------------------------------------------------
    def _layer_of(self, path: tuple) -> str:
        best = ""
        for layer, _ in self.layers:
            parts = tuple(p for p in layer.split("/") if p)
            if path[: len(parts)] == parts and len(layer) > len(best):
                best = layer
        return best or "/".join(path[:1]) or "(top)"

    def rows(self) -> list[LayerRow]:
        ops: OrderedDict = OrderedDict()
        for layer, op in self.layers:
            ops.setdefault(layer, [])
            if op not in ops[layer]:
                ops[layer].append(op)
        traffic: dict = {}
        for t in self.comm.traffic:
            traffic.setdefault(self._layer_of(t.path), []).append(t)
        counts: dict = {}
        for path, what, n in self.notes:
            key = (self._layer_of(path), what)
            counts[key] = counts.get(key, 0) + n
        names = list(ops) + [k for k in traffic if k not in ops]
        out = []
        critical = 0  # online critical path so far: a layer's rounds are what it adds to it
        for name in names:
            rec = CommRecord(tuple(traffic.get(name, ())))
            last = max([t.last_arrival for t in rec.traffic if t.online], default=0)
            added = max(0, last - critical)
            critical = max(critical, last)
            out.append(
                LayerRow(
                    layer=name,
                    ops=",".join(ops.get(name, ["reveal" if name.startswith("reveal") else "?"])),
                    drelus=counts.get((name, "drelu"), 0),
                    mults=counts.get((name, "mult"), 0),
                    links=tuple(rec.link_bytes(a, b) for a, b in LINKS),
                    online_bytes=rec.online_bytes,
                    total_bytes=rec.total_bytes,
                    rounds=added,
                    by_kind=tuple((k, r.total_bytes) for k, r in rec.by_kind().items()),
                )
            )
        return out

    @property
    def drelus(self) -> int:
        return sum(n for _, what, n in self.notes if what == "drelu")

    @property
    def mults(self) -> int:
        return sum(n for _, what, n in self.notes if what == "mult")

    @property
    def total_bytes(self) -> int:
        return self.comm.total_bytes

    @property
    def online_bytes(self) -> int:
        return self.comm.online_bytes

    @property
    def session_bytes(self) -> int:
        """Bytes sent once per session and reused by every later inference: the server's masked
        weights (kind ``weights``, offline)."""
        return self.comm.select(kind=SESSION_KINDS).total_bytes

    @property
    def inference_bytes(self) -> int:
        """Bytes every call of this program sends again (all kinds but the per-session ones), for the
        whole batch."""
        return self.comm.select(exclude_kind=SESSION_KINDS).total_bytes

    @property
    def inference_bytes_per_image(self) -> float:
        return self.inference_bytes / max(self.batch, 1)

    @property
    def rounds(self) -> int:
        return self.comm.rounds

    def by_kind(self) -> dict:
        """Bytes by kind: ``linear`` (conv/dense), ``weights`` (the server's masked weights, sent once per
        session), ``drelu``, ``mult`` (ReLU/Block-ReLU products), ``reveal``."""
        return {k: r.total_bytes for k, r in self.comm.by_kind().items()}

    def totals(self) -> dict:
        return {
            "batch": self.batch,
            "drelus": self.drelus,
            "mults": self.mults,
            "total_bytes": self.total_bytes,
            "online_bytes": self.online_bytes,
            "offline_bytes": self.comm.offline_bytes,
            "rounds": self.rounds,
            "bytes_per_image": self.total_bytes / max(self.batch, 1),
            "session_bytes": self.session_bytes,
            "inference_bytes": self.inference_bytes,
            "inference_bytes_per_image": self.inference_bytes_per_image,
            "sent": self.comm.sent_per_party,
            "links": {f"{a.name.lower()}->{b.name.lower()}": v for (a, b), v in self.comm.links.items()},
            "by_kind": self.by_kind(),
        }

    # -- export ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "totals": self.totals(),
            "layers": [
                {
                    "layer": r.layer,
                    "ops": r.ops,
                    "drelus": r.drelus,
                    "mults": r.mults,
                    "links": dict(zip(_LINK_NAMES, r.links)),
                    "online_bytes": r.online_bytes,
                    "total_bytes": r.total_bytes,
                    "rounds": r.rounds,
                    "by_kind": dict(r.by_kind),
                }
                for r in self.rows()
            ],
        }

    def to_json(self, path: str | os.PathLike | None = None, **kw) -> str:
        """The report as JSON; written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=kw.pop("indent", 1), **kw)
        if path is not None:
            atomic_write_text(path, text, makedirs=True)
        return text

    def table(self, max_rows: int | None = None) -> str:
        """A readable per-layer table with totals (bytes in kB, per link, online rounds)."""

        def kb(v):
            return f"{v / 1e3:,.1f}"

        hdr = ["layer", "op", "DReLUs", "mults"] + list(_LINK_NAMES) + ["total kB", "online kB", "rounds"]
        lines = []
        rows = self.rows()
        shown = rows if max_rows is None else rows[:max_rows]
        for r in shown:
            lines.append([r.layer, r.ops, f"{r.drelus:,}", f"{r.mults:,}"] + [kb(v) for v in r.links]
                         + [kb(r.total_bytes), kb(r.online_bytes), str(r.rounds)])
        if max_rows is not None and len(rows) > max_rows:
            lines.append([f"... {len(rows) - max_rows} more layers"] + [""] * (len(hdr) - 1))
        tot_links = [kb(self.comm.link_bytes(a, b)) for a, b in LINKS]
        lines.append(["TOTAL", f"batch {self.batch}", f"{self.drelus:,}", f"{self.mults:,}"] + tot_links
                     + [kb(self.total_bytes), kb(self.online_bytes), str(self.rounds)])
        widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(hdr)]
        fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        out = [fmt(hdr), "  ".join("-" * w for w in widths)] + [fmt(r) for r in lines[:-1]]
        out += ["  ".join("-" * w for w in widths), fmt(lines[-1])]
        kinds = ", ".join(f"{k} {v / 1e6:,.3f} MB" for k, v in self.by_kind().items())
        out.append(f"by kind: {kinds}")
        out.append(f"per session (masked weights, once): {self.session_bytes / 1e6:,.3f} MB; per inference: "
                   f"{self.inference_bytes / 1e6:,.3f} MB for the batch of {self.batch}, "
                   f"{self.inference_bytes_per_image / 1e6:,.3f} MB per image")
        return "\n".join(out)

    def __str__(self):
        return (f"SecureReport({self.drelus:,} DReLUs, {self.total_bytes / 1e6:,.3f} MB "
                f"({self.online_bytes / 1e6:,.3f} MB online; {self.session_bytes / 1e6:,.3f} MB once per session, "
                f"{self.inference_bytes_per_image / 1e6:,.3f} MB per image per inference), {self.rounds} rounds, "
                f"batch {self.batch})")

    __repr__ = __str__
