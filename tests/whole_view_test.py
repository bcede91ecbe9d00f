"""Whole-view tests (issue 11, item 2): no party's *joint* view depends on the other parties' secrets.

A party's view is everything it has at the end of a protocol, together: its own inputs (its
shares, or its plaintext operand), every random tensor derived from a key it holds (its own key
and the pairwise keys it shares), every message it receives or sends, and its output shares.
Each protocol runs ``T`` independent trials (fresh keys and a fresh uniform sharing of the input
per trial, via ``jax.vmap`` over the runtime) for two different secrets A and B; the party's two
samples of views must be indistinguishable to the statistics below. Operands that the party
holds in the clear (the server's weights for the server) are kept equal between A and B.

The view is read through the runtime only: messages from ``rt.messages`` / ``rt.transcript``
(cast to the wire type, i.e. exactly what the receiver gets over the network), random tensors by
recording ``Runtime.random*`` calls together with their key set. Nothing reads protocol locals.

Statistics (each known to have power: the positive controls at the end feed deliberately leaky
toy protocols through the same pipeline and assert that the statistic meant for them fires):

* **marginals**: every component of the view (every position of every tensor), two-sample
  chi-square of its value histogram (exact values when < 256, else three 32-bin views of the
  word: low bits, top bits of the ring, a multiplicative hash of all bits);
* **pairs**: sums and differences (in the common ring, else mod 2^64) and, in Z_67, ratios of
  pairs of components -- all pairs of the small tensors' components, and for large tensors
  (bit vectors of PrivateCompare etc.) position-aligned pairs of equal-shaped tensors and
  neighbouring positions, on a fixed subset of 16 positions per tensor. Two messages masked with
  one mask cancel here;
* **GF(2) relations**: every GF(2)-linear relation between the low bits of all components (plus a
  constant) that holds on every A trial must also hold on B and vice versa. This finds any
  Z_2^k-linear combination of own shares, own randomness and messages whose parity reveals the
  secret's (e.g. ``x_c + m + a = x``), however many terms it has (the secrets' parities differ);
* **the CP's ratio attack on PrivateCompare**: the CP divides its two received vectors
  elementwise in Z_67 and checks the ratio multiset against each candidate secret.

Protocols: DReLU at 64 and 16 compared bits, ReLU, MaxPool and Block ReLU (16 bits, 4 dropped),
ShareConvert and MSB (64 bits), Beaver multiplication, the server-weights linear layer (conv);
marked slow (``-m slow``): DReLU and ReLU with the textbook ``securenn`` MSB, Block ReLU at 64
bits, Beaver matmul, the shared-weights linear layer. Not covered: nonlinear relations between
three or more components other than the ratio attack, and pairs outside the position subsets.

False-positive rates (for a uniformly random seed; the seeds here are fixed, so the tests are
deterministic): each (protocol, party) battery is at most ``ALPHA = 1e-4`` -- marginals and pairs
are two Bonferroni families at ``ALPHA / 3`` each (chi-square approximation, bins with at least
10 counts), the GF(2) check below 1e-9 -- and the ratio attack at most ``ALPHA``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxmpc.core.config import ProtocolConfig
from jaxmpc.core.parties import C_CP, C_S, CLIENT, CP, PARTIES, SERVER
from jaxmpc.core.randomness import simulation_keys
from jaxmpc.core.ring import RING64, Z2k, ZOdd, Zp, ring_conv, ring_matmul
from jaxmpc.core.runtime import Held, Runtime
from jaxmpc.core.sharing import Shared
from jaxmpc.protocols import compare, linear, nonlinear

T = 2048  # trials per secret
ALPHA = 1e-4  # false-positive rate of one (protocol, party) battery, and of the ratio attack
P67 = 67
INV67 = np.array([0] + [pow(v, P67 - 2, P67) for v in range(1, P67)], np.int64)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)

# ------------------------------------------------------------------------------------------------
# capturing views


class ViewRuntime(Runtime):
    """A simulation runtime that also keeps every random tensor with its key set (tests only)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drawn = []
        self._depth = 0

    def _draw(self, ring, key_set, name, call):
        self._depth += 1
        try:
            held = call()
        finally:
            self._depth -= 1
        if self._depth == 0:  # the outermost random* call: record once, with the ring if known
            self.drawn.append((frozenset(key_set), ring, "/".join(self.path + (name,)), held))
        return held

    def random(self, key_set, ring, shape, name):
        return self._draw(ring, key_set, name, lambda: super(ViewRuntime, self).random(key_set, ring, shape, name))

    def random_bits(self, key_set, shape, name):
        return self._draw("bits", key_set, name, lambda: super(ViewRuntime, self).random_bits(key_set, shape, name))

    def random_with(self, key_set, n_words, convert, name):
        return self._draw(None, key_set, name,
                          lambda: super(ViewRuntime, self).random_with(key_set, n_words, convert, name))


class UnmaskedCompareRuntime(ViewRuntime):
    """A mutant for a positive control: inside PrivateCompare, every uniform Z_67 tensor from the
    client-server key (the additive mask ``u``) is zero -- the first, leaky implementation."""

    def random(self, key_set, ring, shape, name):
        held = super().random(key_set, ring, shape, name)
        if frozenset(key_set) == C_S and isinstance(ring, Zp) and "private_compare" in self.path:
            held = Held(jnp.zeros_like(held.value), held.times)
            self.drawn[-1] = self.drawn[-1][:3] + (held,)
        return held


@dataclasses.dataclass
class Item:
    """One tensor of a run, ``value`` of shape ``[T, ...]``, seen by ``holders``."""

    kind: str  # "in" | "rand" | "msg" | "out"
    label: str
    ring: object  # Z2k | ZOdd | Zp | "bits" | None (unknown: compared mod 2^64)
    value: np.ndarray
    holders: frozenset
    src: object = None
    dst: object = None
    key_set: frozenset | None = None

    @property
    def modulus(self) -> int:
        """Modulus for sums and differences (0: wrap-around mod 2^64)."""
        r = self.ring
        if isinstance(r, Z2k):
            return 0 if r.bits == 64 else 2**r.bits
        if isinstance(r, ZOdd):
            return 2**r.bits - 1
        if isinstance(r, Zp):
            return r.p
        return 2 if r == "bits" else 0


@dataclasses.dataclass
class Capture:
    items: list
    lossy_wire: list  # messages whose simulated value does not fit the wire type

    def view(self, party) -> list:
        return [it for it in self.items if party in it.holders]


def _sh(rt, c, s, ring=RING64):
    return Shared(c, s, ring, 0, rt)


def _outs(y):
    """The output tensors of a protocol (shares, and a DealerBit's z and w), with rings."""
    out = [(y.c, y.ring), (y.s, y.ring)]
    for extra in ("z", "w"):
        h = getattr(y, extra, None)
        if h is not None:
            out.append((h, "bits"))
    return out


# XLA's backend optimisations only cost compile time here (each program runs twice)
_PROGRAMS: dict = {}


def capture(fn, config, inputs, seed, runtime=ViewRuntime) -> Capture:
    """Runs ``fn(rt, *helds) -> [(Held, ring)]`` for ``T`` independent trials (one jitted, vmapped
    program per protocol and input shapes).

    ``inputs``: ``[(party, ring, array[T, ...])]``, each held by ``party`` from the start.
    """
    keys = jax.random.split(jax.random.key(seed), T)
    arrays = [jnp.asarray(a) for _, _, a in inputs]
    sig = (fn, config, runtime, tuple((p, str(r), a.shape, str(a.dtype)) for (p, r, _), a in zip(inputs, arrays)))
    if sig not in _PROGRAMS:
        meta = {}

        def body(rt, *vals):
            helds = [rt.input(p, v) for (p, _, _), v in zip(inputs, vals)]
            return fn(rt, *helds)

        def one(key, *vals):
            abstract = [jax.ShapeDtypeStruct(jnp.shape(v), v.dtype) for v in vals]
            plan = runtime.record(config, lambda rt, *a: [h.value for h, _ in body(rt, *a)], *abstract)
            rt = runtime(config, simulation_keys(key), plan=plan)
            rt.transcript = []
            outs = body(rt, *vals)
            meta["msgs"] = [(m.src, m.dst, "/".join(m.path), ring) for m, (ring, _) in zip(rt.messages, rt.transcript)]
            meta["drawn"] = [(ks, ring, label) for ks, ring, label, _ in rt.drawn]
            meta["outs"] = [(h.times, ring) for h, ring in outs]
            return [v for _, v in rt.transcript], [h.value for *_, h in rt.drawn], [h.value for h, _ in outs]

        lowered = jax.jit(jax.vmap(one)).lower(keys, *arrays)
        # default XLA options: with ``xla_backend_optimization_level=0`` XLA:CPU once segfaulted
        # compiling one of these programs in a full ``-n 2`` run (2026-12-03); the saving was 12 s
        program = lowered.compile()
        _PROGRAMS[sig] = (program, meta)
    program, meta = _PROGRAMS[sig]
    msgs, drawn, outs = program(keys, *arrays)
    items, lossy = [], []
    for i, (p, ring, a) in enumerate(inputs):
        items.append(Item("in", f"{p.short}:input{i}", ring, np.asarray(a), frozenset([p])))
    for (ks, ring, label), v in zip(meta["drawn"], drawn):
        who = "".join(sorted(q.short for q in ks))
        items.append(Item("rand", f"rand[{who}]:{label}", ring, np.asarray(v), ks, key_set=ks))
    for (src, dst, path, ring), v in zip(meta["msgs"], msgs):
        v = np.asarray(v)
        wire = v.astype(ring.wire_dtype(config.compact_wire))  # what the receiver gets from the network
        if not np.array_equal(wire.astype(v.dtype), v):
            lossy.append(path)
        items.append(Item("msg", f"{src.short}->{dst.short}:{path}", ring, wire, frozenset([src, dst]), src, dst))
    for i, ((times, ring), v) in enumerate(zip(meta["outs"], outs)):
        who = frozenset(p for p in PARTIES if times[p] is not None)
        items.append(Item("out", f"out{i}", ring, np.asarray(v), who))
    return Capture(items, lossy)


# ------------------------------------------------------------------------------------------------
# the statistics


def _flat(items):
    """``[T, D]`` uint64 components, and per component: item index, position, modulus."""
    cols, owner, pos, mods = [], [], [], []
    for k, it in enumerate(items):
        v = it.value.reshape(it.value.shape[0], -1)
        v = v.astype(np.int64).astype(np.uint64) if v.dtype.kind == "i" else v.astype(np.uint64)
        cols.append(v)
        owner += [k] * v.shape[1]
        pos += list(range(v.shape[1]))
        mods += [it.modulus] * v.shape[1]
    return np.concatenate(cols, axis=1), np.array(owner), np.array(pos), np.array(mods, dtype=object)


def _width(mod) -> int:
    return 64 if mod == 0 else (int(mod) - 1).bit_length()


def _chi2_counts(ca, cb):
    """Two-sample chi-square p-values per row of equal-size count tables ``[P, bins]``."""
    tot = ca + cb
    keep = tot >= 10
    ra, rb = (ca * ~keep).sum(1), (cb * ~keep).sum(1)
    rest = (ra + rb) >= 10
    stat = np.where(keep, (ca - cb) ** 2 / np.maximum(tot, 1), 0.0).sum(1)
    stat = stat + np.where(rest, (ra - rb) ** 2 / np.maximum(ra + rb, 1), 0.0)
    dof = keep.sum(1) + rest - 1
    return np.where(dof >= 1, stats.chi2.sf(stat, np.maximum(dof, 1)), 1.0)


def _counts(bins, nb):
    n, p = bins.shape
    flat = (np.arange(p)[None, :] * nb + bins).ravel()
    return np.bincount(flat, minlength=p * nb).reshape(p, nb).astype(np.float64)


def _pvalues(a, b, widths):
    """p-values (and the column of each) of two samples ``[T, P]`` of uint64 columns."""
    out_p, out_col = [], []
    exact = np.maximum(a.max(0), b.max(0)) < 256
    for chunk in np.array_split(np.arange(a.shape[1]), max(1, a.shape[1] // 1024)):
        ex, hx = chunk[exact[chunk]], chunk[~exact[chunk]]
        if ex.size:
            out_p.append(_chi2_counts(_counts(a[:, ex].astype(np.int64), 256), _counts(b[:, ex].astype(np.int64), 256)))
            out_col.append(ex)
        if hx.size:
            shift = np.array([max(_width(w) - 5, 0) for w in widths[hx]], np.uint64)
            for f in (lambda v: v & np.uint64(31), lambda v: (v >> shift) & np.uint64(31),
                      lambda v: (v * GOLDEN) >> np.uint64(59)):
                ca, cb = (_counts(f(v[:, hx]).astype(np.int64), 32) for v in (a, b))
                out_p.append(_chi2_counts(ca, cb))
                out_col.append(hx)
    if not out_p:
        return np.ones(0), np.zeros(0, int)
    return np.concatenate(out_p), np.concatenate(out_col)


def _subset(n: int) -> np.ndarray:
    """A fixed subset of 16 positions of a large tensor (the same for every tensor of that size)."""
    return np.sort(np.random.default_rng(n).choice(n, size=min(n, 16), replace=False))


def _pair_index(items):
    sizes = [int(np.prod(it.value.shape[1:], dtype=np.int64)) for it in items]
    offs = np.concatenate([[0], np.cumsum(sizes)])
    pool = [offs[k] + j for k, n in enumerate(sizes) if n <= 8 for j in range(n)]
    pairs = list(itertools.combinations(pool, 2))
    large = {}
    for k, n in enumerate(sizes):
        if n > 8:
            large.setdefault(n, []).append(k)
    for n, group in large.items():
        sub = _subset(n)
        for i, j in itertools.combinations(group, 2):
            pairs += [(offs[i] + s, offs[j] + s) for s in sub]
        for i in group:
            pairs += [(offs[i] + s, offs[i] + s + 1) for s in sub if s + 1 < n]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _pair_ops(a, b, mod):
    """(name, values) of the pair statistics of columns ``a``, ``b`` (uint64) in Z_mod (0: 2^64)."""
    if mod == 0:
        return [("+", a + b), ("-", a - b)]
    m = np.uint64(mod)
    s = a + b
    add = np.where((s < a) | (s >= m), s - m, s)
    sub = np.where(a >= b, a - b, a - b + m)
    ops = [("+", add)] if mod == 2 else [("+", add), ("-", sub)]
    if mod == P67:
        ai, bi = a.astype(np.int64), b.astype(np.int64)
        ratio = np.where(bi == 0, np.where(ai == 0, P67 + 1, P67), ai * INV67[bi] % P67)
        ops.append(("/", ratio.astype(np.uint64)))
    return ops


def _gf2_kernel(bits):
    """Basis of the GF(2) relations ``sum_i alpha_i bit_i + alpha_D = 0`` holding on all rows of ``bits``."""
    n, d = bits.shape
    d1 = d + 1
    m = np.concatenate([bits, np.ones((n, 1), bool)], axis=1)
    assert n >= d1 + 40, f"view of {d} components too large for the GF(2) check with {n} trials"
    use = min(n, d1 + 128)  # enough rows that a chance relation survives with probability < 2^-40
    data = np.packbits(m[:use].T, axis=1)
    ident = np.packbits(np.eye(d1, dtype=bool), axis=1)
    nb = -(-data.shape[1] // 8) * 8
    ni = -(-ident.shape[1] // 8) * 8
    a8 = np.zeros((d1, nb + ni), np.uint8)
    a8[:, : data.shape[1]] = data
    a8[:, nb: nb + ident.shape[1]] = ident
    a64 = a8.view(np.uint64)  # same memory: bits are tested in bytes, rows are XORed in words
    pivoted = np.zeros(d1, bool)
    for bit in range(use):
        if bit % 64 == 0 and (pivoted.all() or not a8[~pivoted, :nb].any()):
            break
        has = (a8[:, bit >> 3] & np.uint8(0x80 >> (bit & 7))) != 0
        cand = np.flatnonzero(has & ~pivoted)
        if cand.size == 0:
            continue
        piv = cand[0]
        pivoted[piv] = True
        others = np.flatnonzero(has)
        others = others[others != piv]
        a64[others] ^= a64[piv]
    zero = ~a8[:, :nb].any(axis=1)
    return np.unpackbits(a8[zero, nb:], axis=1)[:, :d1].astype(bool)


def _gf2_violations(bits, kernel):
    """Fraction of rows of ``bits`` violating each relation of ``kernel``."""
    if kernel.shape[0] == 0:
        return np.zeros(0)
    m = np.concatenate([bits, np.ones((bits.shape[0], 1), bool)], axis=1).astype(np.float32)
    return (np.rint(m @ kernel.T.astype(np.float32)).astype(np.int64) % 2).mean(axis=0)


def _gf2_distinguishers(bits_a, bits_b):
    """Relations that hold on every trial of one sample and fail on more than 5% of the other.

    Under H0 a relation that holds on all T trials of A holds with probability 1 - eps, and the
    chance of then seeing > 5% failures in B is below 1e-9 for every eps (T = 2048)."""
    found = []
    for x, y in ((bits_a, bits_b), (bits_b, bits_a)):
        k = _gf2_kernel(x)
        k = k[_gf2_violations(x, k) == 0]
        bad = _gf2_violations(y, k) > 0.05
        found += [np.flatnonzero(r) for r in k[bad]]
    return found


@dataclasses.dataclass
class Result:
    marginal: tuple  # (min p, number of tests, description of the worst)
    pairs: tuple
    gf2: list  # descriptions of distinguishing relations

    def flags(self, level=ALPHA) -> dict:
        return {
            "marginal": self.marginal[0] < level / 3 / max(self.marginal[1], 1),
            "pairs": self.pairs[0] < level / 3 / max(self.pairs[1], 1),
            "gf2": bool(self.gf2),
        }

    @property
    def flagged(self) -> bool:
        return any(self.flags().values())

    def report(self) -> str:
        return f"marginal={self.marginal} pairs={self.pairs} gf2={self.gf2[:3]} flags={self.flags()}"


def battery(view_a, view_b) -> Result:
    """All statistics on two samples of one party's view (same items, in the same order)."""
    assert [it.label for it in view_a] == [it.label for it in view_b]
    a, owner, pos, mods = _flat(view_a)
    b, _, _, _ = _flat(view_b)
    name = lambda c: f"{view_a[owner[c]].label}[{pos[c]}]"  # noqa: E731

    p, col = _pvalues(a, b, mods)
    marginal = (float(p.min()), p.size, name(col[p.argmin()])) if p.size else (1.0, 0, "")

    pairs = _pair_index(view_a)
    pmods = np.array([mods[i] if mods[i] == mods[j] else 0 for i, j in pairs], dtype=object)
    best, n_tests = (1.0, ""), 0
    for mod in set(pmods.tolist()):
        sel = pairs[pmods == mod]
        ops_a = _pair_ops(a[:, sel[:, 0]], a[:, sel[:, 1]], mod)
        ops_b = _pair_ops(b[:, sel[:, 0]], b[:, sel[:, 1]], mod)
        for (op, va), (_, vb) in zip(ops_a, ops_b):
            p, col = _pvalues(va, vb, np.array([mod] * sel.shape[0], dtype=object))
            n_tests += p.size
            if p.size and p.min() < best[0]:
                i, j = sel[col[p.argmin()]]
                best = (float(p.min()), f"{name(i)} {op} {name(j)} (mod {mod or '2^64'})")
    pair_res = (best[0], n_tests, best[1])

    rel = _gf2_distinguishers((a & np.uint64(1)).astype(bool), (b & np.uint64(1)).astype(bool))
    gf2 = [" + ".join(name(c) if c < a.shape[1] else "1" for c in r) for r in rel]
    return Result(marginal, pair_res, gf2)


# ------------------------------------------------------------------------------------------------
# protocols, secrets and views


def _drelu(rt, xc, xs):
    return _outs(compare.drelu(_sh(rt, xc, xs)))


def _relu(rt, xc, xs):
    return _outs(nonlinear.relu(_sh(rt, xc, xs)))


def _maxpool(rt, xc, xs):
    return _outs(nonlinear.maxpool(_sh(rt, xc, xs), (2, 2), (2, 2)))


BLOCK_SIZES = np.array([(1, 2), (2, 2)], np.int32)


def _block_relu(rt, xc, xs):
    return _outs(nonlinear.block_relu(_sh(rt, xc, xs), BLOCK_SIZES))


def _share_convert(rt, xc, xs):
    return _outs(compare.share_convert(_sh(rt, xc, xs)))


def _msb(rt, xc, xs):
    return _outs(compare.msb(_sh(rt, xc, xs, ZOdd(64))))


def _mul(rt, xc, xs, yc, ys):
    return _outs(linear.mul_aa(_sh(rt, xc, xs), _sh(rt, yc, ys)))


def _matmul(rt, xc, xs, yc, ys):
    return _outs(linear.bilinear_aa(_sh(rt, xc, xs), _sh(rt, yc, ys), ring_matmul, name="matmul"))


def _conv_server_weights(rt, xc, xs, w):
    op = functools.partial(ring_conv, window_strides=(1, 1), padding="SAME", method="limbs")  # exact; fast under vmap
    return _outs(linear.bilinear_av(_sh(rt, xc, xs), w, op, scale=12))


def _enc(v):
    return np.round(np.asarray(v, np.float64) * 2**12).astype(np.int64)


# elementwise secrets (fixed-point integers, scale 12): the signs differ, and so does each
# element's parity (for the GF(2) statistic's positive control)
XA = _enc([-3.25, 0.5]) + np.array([1, 0])
XB = _enc([7.0, -0.01])


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    fn: object
    config: ProtocolConfig
    operands: tuple  # per operand: (kind: "shared" | "server" | "client", ring, secret A, secret B)


def _op(kind, a, b, ring=RING64):
    return (kind, ring, np.asarray(a, dtype=object), np.asarray(b, dtype=object))


CFG16 = ProtocolConfig(compare_bits=16)
CFG16_DROP = ProtocolConfig(compare_bits=16, lsb_drop_bits=4)
SPECS = {
    s.name: s
    for s in [
        Spec("drelu64", _drelu, ProtocolConfig(), (_op("shared", XA, XB),)),
        Spec("drelu16", _drelu, CFG16, (_op("shared", XA, XB),)),
        Spec("drelu64_securenn", _drelu, ProtocolConfig(nonlinear_protocol="securenn"), (_op("shared", XA, XB),)),
        Spec("relu64", _relu, ProtocolConfig(), (_op("shared", XA, XB),)),
        Spec("relu16_securenn", _relu, CFG16_DROP.replace(nonlinear_protocol="securenn"), (_op("shared", XA, XB),)),
        Spec("maxpool16", _maxpool, CFG16_DROP,
             (_op("shared", _enc([[-3.25, 0.5], [7.0, -0.01]]), _enc([[1.5, -2.0], [0.25, 3.0]])),)),
        Spec("block_relu16", _block_relu, CFG16_DROP,
             (_op("shared", _enc([[[-1.0, 2.0], [3.0, -0.5]], [[0.25, 1.0], [-4.0, -1.5]]]),
                  _enc([[[2.0, -3.0], [-1.0, 0.5]], [[1.5, -2.0], [0.75, 4.0]]])),)),
        Spec("block_relu64", _block_relu, ProtocolConfig(),
             (_op("shared", _enc([[[-1.0, 2.0], [3.0, -0.5]], [[0.25, 1.0], [-4.0, -1.5]]]),
                  _enc([[[2.0, -3.0], [-1.0, 0.5]], [[1.5, -2.0], [0.75, 4.0]]])),)),
        Spec("share_convert64", _share_convert, ProtocolConfig(), (_op("shared", [0, 2**64 - 1], [2**63, 12345]),)),
        Spec("msb64", _msb, ProtocolConfig(),
             (_op("shared", [0, 2**63 - 1], [2**63, 2**64 - 2], ZOdd(64)),)),
        Spec("beaver_mul", _mul, ProtocolConfig(), (_op("shared", XA, XB), _op("shared", [5, -7], [-2**40, 3]))),
        Spec("beaver_matmul", _matmul, ProtocolConfig(),
             (_op("shared", _enc([[1, -2, 3], [0, 0.5, -1]]), _enc([[-4, 1, 0], [2, 2, 2]])),
              _op("shared", _enc([[1, 0], [0, 1], [1, 1]]), _enc([[-1, 3], [0.25, 0], [7, -7]])))),
        Spec("conv_server_weights", _conv_server_weights, ProtocolConfig(),
             (_op("shared", _enc(np.arange(9).reshape(1, 3, 3, 1) - 4.0), _enc(np.ones((1, 3, 3, 1)) * 2.5)),
              _op("server", _enc(np.arange(8).reshape(2, 2, 1, 2) / 4 - 1), _enc(-np.ones((2, 2, 1, 2)))))),
        Spec("conv_shared_weights", _conv_server_weights, ProtocolConfig(linear_protocol="shared_weights"),
             (_op("shared", _enc(np.arange(9).reshape(1, 3, 3, 1) - 4.0), _enc(np.ones((1, 3, 3, 1)) * 2.5)),
              _op("server", _enc(np.arange(8).reshape(2, 2, 1, 2) / 4 - 1), _enc(-np.ones((2, 2, 1, 2)))))),
    ]
}
SLOW = {"block_relu64", "drelu64_securenn", "relu16_securenn", "beaver_matmul", "conv_shared_weights"}
PRIVATE = {"server": SERVER, "client": CLIENT}


def _modulus(ring) -> int:
    return 2**ring.bits - (1 if isinstance(ring, ZOdd) else 0)


def _inputs(spec, which, seed, party):
    """Input arrays for secret ``which`` ("A"/"B"): fresh uniform sharings per trial. Operands the
    party holds in the clear stay at A (its own input is not a secret to it)."""
    rng = np.random.default_rng(seed)
    out = []
    for kind, ring, sa, sb in spec.operands:
        own = party is not None and PRIVATE.get(kind) == party
        secret = sb if which == "B" and not own else sa
        mod = _modulus(ring)
        x = np.broadcast_to(np.asarray(secret, dtype=object) % mod, (T,) + secret.shape)
        if kind == "shared":
            xc = rng.integers(0, 2**64, x.shape, dtype=np.uint64).astype(object) % mod
            xs = (x - xc) % mod
            out += [(CLIENT, ring, xc.astype(np.uint64)), (SERVER, ring, xs.astype(np.uint64))]
        else:
            out.append((PRIVATE[kind], ring, x.astype(np.uint64)))
    return out


@functools.lru_cache(maxsize=None)
def _capture(name, which, party_fixed, runtime=ViewRuntime):
    spec = SPECS[name]
    variant = 0 if which == "A" else 1000 + (0 if party_fixed is None else 1 + int(party_fixed))
    seed = sum(map(ord, name)) * 7 + variant
    return capture(spec.fn, spec.config, _inputs(spec, which, seed, party_fixed), seed, runtime)


def views(name, party):
    """The party's views for secrets A and B (operands it holds in the clear kept at A)."""
    spec = SPECS[name]
    fixed = party if any(PRIVATE.get(k) == party for k, *_ in spec.operands) else None
    return _capture(name, "A", None).view(party), _capture(name, "B", fixed).view(party)


# ------------------------------------------------------------------------------------------------
# whole-view tests of the real protocols


CASES = [pytest.param(n, p, id=f"{n}-{p.name.lower()}", marks=[pytest.mark.slow] if n in SLOW else [])
         for n in SPECS for p in PARTIES]


@pytest.mark.parametrize("name,party", CASES)
def test_whole_view_is_independent_of_the_secret(name, party):
    """The party's joint view for secret A and for secret B: no marginal histogram, no pair
    statistic (sum, difference, Z_67 ratio) and no GF(2)-linear relation of low bits tells them
    apart. False-positive rate <= ALPHA = 1e-4 per case (Bonferroni; see the module docstring)."""
    va, vb = views(name, party)
    assert va, "every party has a view (at least its randomness)"
    res = battery(va, vb)
    assert not res.flagged, f"{name}, {party.name}: {res.report()}"


def test_simulated_messages_are_what_the_wire_carries():
    """Every message value in simulation fits its wire type (so the simulated view is the real one)."""
    for name in SPECS:
        if name not in SLOW:
            assert _capture(name, "A", None).lossy_wire == [], name


# ------------------------------------------------------------------------------------------------
# the CP's ratio attack on PrivateCompare


def _c_vectors(xb, q, beta, j, m):
    """Party ``j``'s unmasked PrivateCompare vectors (SecureNN Alg. 1), LSB first, ``[N, m]``."""
    qb = ((q[:, None] >> np.arange(m, dtype=np.uint64)) & np.uint64(1)).astype(np.int64)
    xs = np.where(qb == 1, (P67 - xb) % P67, xb)
    w = (xs + j * qb) % P67
    above = (np.cumsum(w[:, ::-1], axis=1)[:, ::-1] - w) % P67
    term = (j * qb + P67 - xb) % P67
    term = np.where(beta[:, None] == 1, (P67 - term) % P67, term)
    return (term + j + above) % P67


def _ratio_multiset(dc, ds):
    """Sorted elementwise ``dc / ds`` in Z_67 (``ds = 0`` coded as 67, or 68 if ``dc = 0`` too):
    invariant under a common multiplier per position and any common permutation."""
    r = np.where(ds == 0, np.where(dc == 0, P67 + 1, P67), dc * INV67[ds] % P67)
    return np.sort(r, axis=-1)


def _pc_material(cap, m):
    """What the CP knows about the two PrivateCompares of a DReLU (from its view only), per element."""
    cp = cap.view(CP)
    msgs = [it for it in cp if it.kind == "msg"]
    at = [it for it in msgs if it.dst == CP and isinstance(it.ring, Z2k)]
    d = [it for it in msgs if it.dst == CP and isinstance(it.ring, Zp)]
    xb_s = [it for it in msgs if it.src == CP and it.dst == SERVER and isinstance(it.ring, Zp)]
    xb_c = [it for it in cp if it.kind == "rand" and it.key_set == C_CP and isinstance(it.ring, Zp)
            and it.value.shape[-1] == m]
    assert len(at) == 2 and len(d) == 4 and len(xb_s) == 2 and len(xb_c) == 2, "DReLU's message structure changed"
    assert [it.src for it in d] == [CLIENT, SERVER, CLIENT, SERVER]
    flat = lambda it: it.value.reshape(-1, m).astype(np.int64)  # noqa: E731
    x_sc = (at[0].value.ravel().astype(object) + at[1].value.ravel().astype(object)) % 2**m
    # ShareConvert's comparison: the CP reconstructed x_sc and knows its bits; the client's bit
    # shares are the CP's xb_s subtracted from them. MSB's comparison: client shares from the C-CP key.
    bits_sc = ((np.array(x_sc, np.uint64)[:, None] >> np.arange(m, dtype=np.uint64)) & np.uint64(1)).astype(np.int64)
    xb2_c, xb2_s = flat(xb_c[1]), flat(xb_s[1])
    bits_msb = (xb2_c + xb2_s) % P67
    assert set(np.unique(bits_msb)) <= {0, 1}
    x_msb = (bits_msb.astype(np.uint64) << np.arange(m, dtype=np.uint64)).sum(axis=1)
    return dict(
        x_sc=x_sc, x_msb=x_msb.astype(object),
        pcs=[((bits_sc - flat(xb_s[0])) % P67, flat(xb_s[0]), flat(d[0]), flat(d[1])),
             (xb2_c, xb2_s, flat(d[2]), flat(d[3]))],
    )


def _candidate_r(secret, mat, m):
    """The comparison inputs ``r`` of both PrivateCompares if the DReLU input were ``secret``."""
    L, L1 = 2**m, 2**m - 1
    n = len(mat["x_sc"])
    v = np.array([(int(s) + 2 ** (m - 1)) % L for s in np.resize(secret, n)], dtype=object)
    r_sc = (mat["x_sc"] - v) % L
    r1 = (r_sc - 1) % L  # ShareConvert compares x > r - 1
    r2 = (2 * (v % L1) + mat["x_msb"]) % L1  # MSB opens r = 2y + x
    return [np.array(r1, np.uint64), np.array(r2, np.uint64)], np.array(r_sc == 0, bool)


def _matches(xb_c, xb_s, d_c, d_s, r, m):
    """Per element: does the ratio multiset of the received vectors match candidate r (either beta)?"""
    got = _ratio_multiset(d_c, d_s)
    mask = np.uint64(2**m - 1) if m < 64 else np.uint64(2**64 - 1)
    hit = np.zeros(len(r), bool)
    for beta in (0, 1):
        b = np.full(len(r), beta)
        q = (r + np.uint64(beta)) & mask
        want = _ratio_multiset(_c_vectors(xb_c, q, b, 0, m), _c_vectors(xb_s, q, b, 1, m))
        hit |= np.all(want == got, axis=1)
    return hit


def _true_betas(cap, m):
    """The two PrivateCompares' beta (C-S bits: ShareConvert's eta'', MSB's beta) -- test-only truth."""
    bits = [it for it in cap.items if it.kind == "rand" and it.key_set == C_S and it.ring == "bits"]
    assert len(bits) == 2
    return [it.value.reshape(-1).astype(np.int64) for it in bits]


def _leaky_pc(mat, r, betas, m, rng):
    """The old, unmasked PrivateCompare: the CP receives pi(s c^c) and pi(s c^s) (same s, same pi)."""
    out = dict(mat, pcs=[])
    for (xb_c, xb_s, _, _), rr, beta in zip(mat["pcs"], r, betas):
        mask = np.uint64(2**m - 1) if m < 64 else np.uint64(2**64 - 1)
        q = (rr + beta.astype(np.uint64)) & mask
        cc, cs = _c_vectors(xb_c, q, beta, 0, m), _c_vectors(xb_s, q, beta, 1, m)
        s = rng.integers(1, P67, cc.shape)
        rot = (np.arange(m)[None, :] + rng.integers(0, m, (cc.shape[0], 1))) % m
        d_c, d_s = (np.take_along_axis(s * c % P67, rot, 1) for c in (cc, cs))
        out["pcs"].append((xb_c, xb_s, d_c, d_s))
    return out


def ratio_attack(mat_a, mat_b, secret_a, secret_b, m):
    """The CP's attack on its views of secrets A and B: for each PrivateCompare and each candidate
    secret, how often the candidate verifies on the A views and on the B views.

    Returns the smallest one-sided binomial p-value that a candidate verifies more often on its own
    secret's views than on the other's (exact conditional test, two PCs x two candidates), and the
    rate at which the true secret verifies."""
    p_min, true_rate = 1.0, 0.0
    for k in range(2):
        counts = {}
        for tag, mat in (("A", mat_a), ("B", mat_b)):
            for cand, secret in (("A", secret_a), ("B", secret_b)):
                r, gt = _candidate_r(secret, mat, m)
                xb_c, xb_s, d_c, d_s = mat["pcs"][k]
                hit = _matches(xb_c, xb_s, d_c, d_s, r[k], m) & ~gt
                counts[(cand, tag)] = int(hit.sum())
                if cand == tag:
                    true_rate = max(true_rate, hit.mean())
        for cand, other in (("A", "B"), ("B", "A")):
            own, oth = counts[(cand, cand)], counts[(cand, other)]
            if own + oth:
                p_min = min(p_min, stats.binom.sf(own - 1, own + oth, 0.5))
    return p_min, true_rate


@pytest.mark.parametrize("m", [64, 16])
def test_cp_ratio_attack_on_private_compare_fails(m):
    """Regression test for issue 11's leak. The CP divides the two vectors it receives in each
    PrivateCompare of a DReLU elementwise in Z_67 (cancelling the common multiplier s) and checks
    the sorted ratios against those implied by a candidate secret (its x and bit shares are known
    to it). On the real protocol no candidate verifies more often for its own secret than for the
    other (binomial test, false-positive rate <= ALPHA), and the true secret practically never
    verifies; on the old unmasked vectors built from the same run, every true secret verifies.

    Also checks that the attacker's model of the vectors is the protocol's: its vectors contain a
    zero exactly where the protocol's masked sums do (so the negative result is not vacuous)."""
    name = f"drelu{m}"
    cap_a, cap_b = _capture(name, "A", None), _capture(name, "B", None)
    mat_a, mat_b = _pc_material(cap_a, m), _pc_material(cap_b, m)
    # the model of the attack is right: true (r, beta) give vectors with a zero iff the real sums have one
    for cap, mat, secret in ((cap_a, mat_a, XA), (cap_b, mat_b, XB)):
        r, gt = _candidate_r(secret, mat, m)
        for (xb_c, xb_s, d_c, d_s), rr, beta in zip(mat["pcs"], r, _true_betas(cap, m)):
            mask = np.uint64(2**m - 1) if m < 64 else np.uint64(2**64 - 1)
            q = (rr + beta.astype(np.uint64)) & mask
            model = np.any((_c_vectors(xb_c, q, beta, 0, m) + _c_vectors(xb_s, q, beta, 1, m)) % P67 == 0, axis=1)
            real = np.any((d_c + d_s) % P67 == 0, axis=1)
            assert np.array_equal(model[~gt], real[~gt])
            assert 0.4 < real.mean() < 0.6  # the CP's output bit is a fair coin
    p, rate = ratio_attack(mat_a, mat_b, XA, XB, m)
    assert p >= ALPHA / 4 and rate < 0.01, (p, rate)
    # positive control: the same attack on the old, unmasked PrivateCompare of the same runs
    rng = np.random.default_rng(m)
    leak_a = _leaky_pc(mat_a, _candidate_r(XA, mat_a, m)[0], _true_betas(cap_a, m), m, rng)
    leak_b = _leaky_pc(mat_b, _candidate_r(XB, mat_b, m)[0], _true_betas(cap_b, m), m, rng)
    p, rate = ratio_attack(leak_a, leak_b, XA, XB, m)
    assert p < 1e-100 and rate > 0.99, (p, rate)


def test_ratio_attack_recovers_the_secret_from_the_unmasked_protocol_code():
    """Positive control in the real code: the same DReLU (16 compared bits) with PrivateCompare's
    additive mask zeroed by the runtime (the first implementation). Every true secret verifies and
    the binomial test fires, as on the numpy model of the old protocol above."""
    m = 16
    mats = [_pc_material(_capture("drelu16", w, None, UnmaskedCompareRuntime), m) for w in "AB"]
    p, rate = ratio_attack(*mats, XA, XB, m)
    assert p < 1e-100 and rate > 0.99, (p, rate)


# ------------------------------------------------------------------------------------------------
# positive controls: leaky toy protocols, each caught by the statistic meant for it


def _toy_short_mask(rt, x):
    """Leaky: the client sends the server its private value masked with only 16 random bits."""
    a = rt.random(C_CP, Z2k(16), x.shape, "a")
    m = rt.local(CLIENT, lambda v, a: v + a, x, a)
    rt.send(CLIENT, SERVER, m, RING64)
    return []


def _toy_one_mask_two_messages(rt, xc, xs):
    """Leaky: the client and the server send the CP their shares masked by one common r (+r, -r)."""
    r = rt.random(C_S, RING64, xc.shape, "r")
    rt.send(CLIENT, CP, rt.local(CLIENT, lambda a, r: a + r, xc, r), RING64)
    rt.send(SERVER, CP, rt.local(SERVER, lambda a, r: a - r, xs, r), RING64)
    return []


def _toy_share_masked_by_known_key(rt, xc, xs):
    """Leaky: the server sends the client its share masked by client-server randomness (x = x_c + m + a)."""
    a = rt.random(C_S, RING64, xs.shape, "a")
    rt.send(SERVER, CLIENT, rt.local(SERVER, lambda s, a: s - a, xs, a), RING64)
    return []


TOYS = {
    "short_mask": Spec("short_mask", _toy_short_mask, ProtocolConfig(), (_op("client", XA, XB),)),
    "one_mask": Spec("one_mask", _toy_one_mask_two_messages, ProtocolConfig(), (_op("shared", XA, XB),)),
    "known_key": Spec("known_key", _toy_share_masked_by_known_key, ProtocolConfig(), (_op("shared", XA, XB),)),
}


@functools.lru_cache(maxsize=None)
def _toy_captures(name):
    spec = TOYS[name]
    return [capture(spec.fn, spec.config, _inputs(spec, w, 11 + i, None), 11 + i) for i, w in enumerate("AB")]


def _toy_views(name, party):
    a, b = _toy_captures(name)
    return a.view(party), b.view(party)


def test_marginal_statistic_detects_a_short_mask():
    """Positive control of the marginal histograms: a value masked with 16 random bits only."""
    res = battery(*_toy_views("short_mask", SERVER))
    assert res.flags()["marginal"], res.report()


def test_pair_statistic_detects_two_messages_with_one_mask():
    """Positive control of the pair statistics: each message alone is uniform (the marginals see
    nothing), their sum is the secret."""
    res = battery(*_toy_views("one_mask", CP))
    assert not res.flags()["marginal"] and res.flags()["pairs"], res.report()


def test_gf2_statistic_detects_a_share_masked_with_a_key_the_receiver_holds():
    """Positive control of the GF(2) relations: the secret is a sum of three view components
    (own share, message, own randomness), which no marginal or pair statistic sees."""
    res = battery(*_toy_views("known_key", CLIENT))
    f = res.flags()
    assert not f["marginal"] and not f["pairs"] and f["gf2"], res.report()


def test_the_statistics_do_not_flag_a_secure_toy():
    """Negative control of the toy pipeline: the same toy with a proper mask (r from the C-CP key
    for the client, unknown to the server) is not flagged."""
    res = battery(*_toy_views("known_key", SERVER))
    assert not res.flagged, res.report()
