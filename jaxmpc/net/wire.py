"""The wire format of networked jaxmpc parties: length-framed messages on a byte stream.

Every message is a fixed 20-byte header followed by its payload::

    offset  size  field
    0       4     magic  b"JXMP"
    4       1     wire protocol version (:data:`WIRE_VERSION`)
    5       1     frame type (:class:`FrameType`)
    6       1     flags (bit 0: payload zlib-compressed)
    7       1     reserved (0)
    8       4     sequence number of the frame on its link (uint32, big endian, from 0)
    12      8     payload length in bytes as sent (uint64, big endian)

A ``DATA`` payload is the raw little-endian bytes of one protocol message (an array in the
ring's wire dtype, :meth:`jaxmpc.core.ring.Ring.wire_dtype`); its shape and dtype are not sent
because both parties know them from the protocol (the same code runs on both sides), and the
receiver checks the length. Control frames (``HELLO``, ``KEY``, ``READY``, ``BYE``, ``ERROR``)
carry JSON or raw key bytes. Messages are never acknowledged: a link is a one-way pipeline.

The reference implementation framed ``np.save`` bytes with a 12-digit ASCII length and
acknowledged every frame (stop-and-wait, ``paper_reference.md`` §1.1); jaxmpc does neither.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import zlib
from collections.abc import Callable

__all__ = ["WIRE_VERSION", "MAGIC", "HEADER", "FrameType", "Frame", "WireError", "TruncatedFrame", "encode_frame",
           "read_frame", "FLAG_COMPRESSED", "MAX_PAYLOAD", "MAX_HANDSHAKE_PAYLOAD"]

#: Version of the wire format and of the handshake. Parties with different versions refuse to talk.
WIRE_VERSION = 2  # 2: 256-bit pairwise keys and the ChaCha20 PRG (1: 64-bit keys, Threefry)
MAGIC = b"JXMP"
HEADER = struct.Struct("!4sBBBxIQ")
FLAG_COMPRESSED = 1
#: Largest payload accepted by default (a corrupted or hostile length field must not make a party
#: allocate more than this; the handshake frames use a far smaller limit, ``read_frame(max_payload=)``).
MAX_PAYLOAD = 1 << 31
#: Limit for handshake frames (HELLO JSON, keys).
MAX_HANDSHAKE_PAYLOAD = 1 << 16


class FrameType(enum.IntEnum):
    HELLO = 1  # JSON: version, role, model fingerprint, ... (handshake)
    KEY = 2  # raw bytes: a pairwise key, sent by the lower-numbered party of the pair
    READY = 3  # empty: this party compiled its program and starts computing
    DATA = 4  # one protocol message
    BYE = 5  # empty: this party finished and sends nothing more on this link
    ERROR = 6  # UTF-8 text: this party aborts, and why


class WireError(ConnectionError):
    """A malformed frame, a frame from another protocol or version, or a broken stream."""


class TruncatedFrame(WireError):
    """The stream ended inside a frame."""


@dataclasses.dataclass(frozen=True)
class Frame:
    """A decoded frame.

    Attributes:
      type: the frame type.
      seq: sequence number on its link.
      payload: payload bytes, decompressed.
      wire_bytes: bytes the frame occupied on the stream (header + payload as sent).
    """

    type: FrameType
    seq: int
    payload: bytes
    wire_bytes: int


def encode_frame(ftype: FrameType, seq: int, payload: bytes = b"", *, compress: bool = False,
                 version: int = WIRE_VERSION) -> bytes:
    """Header + payload of one frame (payload compressed with zlib when ``compress`` and smaller)."""
    flags = 0
    if compress and payload:
        packed = zlib.compress(payload, 1)
        if len(packed) < len(payload):
            payload, flags = packed, FLAG_COMPRESSED
    return HEADER.pack(MAGIC, version, int(ftype), flags, seq & 0xFFFFFFFF, len(payload)) + payload


def _read_exact(sock, n: int, what: str, *, at_boundary: bool) -> bytes | None:
    """Reads exactly ``n`` bytes; ``None`` on a clean end of stream at a frame boundary."""
    # memory grows with the bytes that actually arrive, never with the announced length alone
    parts: list[bytes] = []
    got = 0
    while got < n:
        buf = bytearray(min(n - got, 1 << 20))
        k = sock.recv_into(memoryview(buf), len(buf))
        chunk = bytes(buf[:k])
        if not chunk:
            if got == 0 and at_boundary:
                return None
            raise TruncatedFrame(f"the stream ended inside {what} (got {got} of {n} bytes)")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_frame(sock, *, expect_seq: int | None = None, version: int = WIRE_VERSION,
               max_payload: int | Callable[[FrameType], int] = MAX_PAYLOAD) -> Frame | None:
    """Reads one frame from a socket-like object (``recv_into``); ``None`` at a clean end of stream.

    Args:
      sock: the stream.
      expect_seq: the sequence number the frame must carry (``None``: any).
      version: the wire version the frame must carry.
      max_payload: the largest payload accepted (as sent, and once decompressed), or a function
        of the frame type giving it, called once the header has arrived. It is checked from the
        header, before any of the payload is read.

    Raises:
      WireError: bad magic (not a jaxmpc peer), another wire version, unknown type, a payload
        over ``max_payload``, an out-of-order sequence number or undecodable compression.
      TruncatedFrame: the stream ended inside the frame.
    """
    head = _read_exact(sock, HEADER.size, "a frame header", at_boundary=True)
    if head is None:
        return None
    magic, got_version, ftype, flags, seq, length = HEADER.unpack(head)
    if magic != MAGIC:
        raise WireError(f"not a jaxmpc peer (bad frame magic {magic!r})")
    if got_version != version:
        raise WireError(f"the peer speaks jaxmpc wire protocol version {got_version}, this party speaks {version}")
    try:
        ftype = FrameType(ftype)
    except ValueError:
        raise WireError(f"unknown frame type {ftype}") from None
    if callable(max_payload):
        max_payload = max_payload(ftype)
    if length > max_payload:
        raise WireError(f"{ftype.name} frame payload of {length} bytes exceeds the limit ({max_payload})")
    if expect_seq is not None and seq != expect_seq & 0xFFFFFFFF:
        raise WireError(f"frame {seq} arrived where frame {expect_seq} was expected")
    payload = _read_exact(sock, length, f"the payload of frame {seq} ({ftype.name})", at_boundary=False) if length \
        else b""
    if flags & FLAG_COMPRESSED:
        try:
            d = zlib.decompressobj()
            out = d.decompress(payload, max_payload)
            if d.unconsumed_tail or not d.eof:
                raise zlib.error("incomplete or oversized stream")
            payload = out
        except zlib.error as e:
            raise WireError(f"frame {seq}: bad compressed payload ({e})") from None
    return Frame(ftype, seq, payload, HEADER.size + length)
