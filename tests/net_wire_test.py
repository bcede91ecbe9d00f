"""Framing of networked messages (``jaxmpc.net.wire``): round trips and every malformed-stream error."""

import io
import os
import struct

import pytest

from jaxmpc.net import wire
from jaxmpc.net.wire import FrameType, TruncatedFrame, WireError, encode_frame, read_frame


class FakeSocket:
    """``recv_into`` over a byte string, delivering at most ``chunk`` bytes per call."""

    def __init__(self, data: bytes, chunk: int = 7):
        self.buf = io.BytesIO(data)
        self.chunk = chunk

    def recv_into(self, view, n):
        data = self.buf.read(min(n, self.chunk))
        view[: len(data)] = data
        return len(data)


def test_frames_round_trip_in_order_across_partial_reads():
    payloads = [b"", b"x", os.urandom(1000), b"\0" * 5000]
    stream = b"".join(encode_frame(FrameType.DATA, i, p) for i, p in enumerate(payloads))
    stream += encode_frame(FrameType.BYE, len(payloads))
    sock = FakeSocket(stream, chunk=13)
    for i, p in enumerate(payloads):
        f = read_frame(sock, expect_seq=i)
        assert (f.type, f.seq, f.payload, f.wire_bytes) == (FrameType.DATA, i, p, wire.HEADER.size + len(p))
    assert read_frame(sock, expect_seq=len(payloads)).type == FrameType.BYE
    assert read_frame(sock) is None  # clean end of stream at a frame boundary


def test_header_layout_is_documented_20_bytes():
    frame = encode_frame(FrameType.DATA, 0x01020304, b"abc")
    assert wire.HEADER.size == 20
    assert frame[:4] == b"JXMP" and frame[4] == wire.WIRE_VERSION and frame[5] == FrameType.DATA
    assert frame[8:12] == bytes([1, 2, 3, 4]) and struct.unpack("!Q", frame[12:20])[0] == 3 and frame[20:] == b"abc"


def test_compression_only_when_it_helps_and_decodes_to_the_payload():
    zeros, noise = b"\0" * 10000, os.urandom(10000)
    fz = encode_frame(FrameType.DATA, 0, zeros, compress=True)
    fn = encode_frame(FrameType.DATA, 0, noise, compress=True)
    assert fz[6] & wire.FLAG_COMPRESSED and len(fz) < 200
    assert not fn[6] & wire.FLAG_COMPRESSED and len(fn) == 20 + len(noise)  # random shares do not compress
    f = read_frame(FakeSocket(fz, chunk=1 << 16))
    assert f.payload == zeros and f.wire_bytes == len(fz)


@pytest.mark.parametrize("cut", [3, 19, 20 + 50])
def test_stream_ending_inside_a_frame_is_truncation(cut):
    frame = encode_frame(FrameType.DATA, 0, os.urandom(100))
    with pytest.raises(TruncatedFrame, match="ended inside"):
        read_frame(FakeSocket(frame[:cut]))


def test_malformed_frames_raise_clear_errors():
    good = encode_frame(FrameType.DATA, 5, b"abcd")
    with pytest.raises(WireError, match="not a jaxmpc peer"):
        read_frame(FakeSocket(b"GET / HTTP/1.1\r\n\r\n" + b"\0" * 10))
    with pytest.raises(WireError, match=f"version 7, this party speaks {wire.WIRE_VERSION}"):
        read_frame(FakeSocket(encode_frame(FrameType.DATA, 0, b"", version=7)))
    with pytest.raises(WireError, match="frame 5 arrived where frame 4 was expected"):
        read_frame(FakeSocket(good), expect_seq=4)
    bad_type = wire.HEADER.pack(wire.MAGIC, wire.WIRE_VERSION, 99, 0, 0, 0)
    with pytest.raises(WireError, match="unknown frame type 99"):
        read_frame(FakeSocket(bad_type))
    huge = wire.HEADER.pack(wire.MAGIC, wire.WIRE_VERSION, FrameType.DATA, 0, 0, wire.MAX_PAYLOAD + 1)
    with pytest.raises(WireError, match="exceeds the limit"):
        read_frame(FakeSocket(huge))
    corrupt = wire.HEADER.pack(wire.MAGIC, wire.WIRE_VERSION, FrameType.DATA, wire.FLAG_COMPRESSED, 0, 4) + b"abcd"
    with pytest.raises(WireError, match="bad compressed payload"):
        read_frame(FakeSocket(corrupt))


def test_oversize_frame_is_refused_before_reading_its_payload():
    """A length field over the limit is refused from the header alone (no allocation of the
    announced size); the handshake limit is far smaller than the data limit."""
    big = wire.HEADER.pack(wire.MAGIC, wire.WIRE_VERSION, int(wire.FrameType.HELLO), 0, 0, wire.MAX_HANDSHAKE_PAYLOAD + 1)
    with pytest.raises(wire.WireError, match="exceeds the limit"):
        wire.read_frame(FakeSocket(big, 7), max_payload=wire.MAX_HANDSHAKE_PAYLOAD)
    huge = wire.HEADER.pack(wire.MAGIC, wire.WIRE_VERSION, int(wire.FrameType.HELLO), 0, 0, 1 << 40)
    with pytest.raises(wire.WireError, match="exceeds the limit"):
        wire.read_frame(FakeSocket(huge, 7))
    # an announced length the peer never sends ends as a truncated frame, not a huge buffer
    short = wire.HEADER.pack(wire.MAGIC, wire.WIRE_VERSION, int(wire.FrameType.HELLO), 0, 0, 1 << 30) + b"abc"
    with pytest.raises(wire.TruncatedFrame):
        wire.read_frame(FakeSocket(short, 7))
