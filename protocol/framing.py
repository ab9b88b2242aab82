"""Length-prefixed framing: a receive buffer that yields whole payloads, and the header.

Strategy (as wsproto's frame_protocol): bytes accumulate in one bytearray; `next_payload`
returns a complete payload or None, meaning "I need more data" (never an exception for
that). The limit is checked against the 4-byte length prefix *before* any payload byte is
buffered beyond what the peer already sent, so a hostile prefix of 4 GiB costs nothing.

PROTOCOL.md, "Framing":
    Each frame is a 4-byte unsigned big-endian payload length N followed by N bytes that
    hold exactly one msgpack object. A receiver closes the connection with
    FRAME_TOO_LARGE as soon as it reads a length above the limit in force.

PROTOCOL.md, "Compression": once a codec is negotiated, a prefix with its top bit set
(COMPRESSED_FLAG) carries in its other 31 bits the length of a compressed payload. Both that
length and the decompressed size are bounded by the limit in force; the second is checked
before any output is allocated (`protocol.compression.decompress`).
"""

from __future__ import annotations

import struct

from protocol.compression import decompress
from protocol.errors import ErrorCode, RemoteProtocolError

__all__ = [
    "ABSOLUTE_MAX_FRAME_SIZE",
    "COMPRESSED_FLAG",
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "MAX_UNAUTHENTICATED_FRAME_SIZE",
    "FrameDecoder",
    "compressed_frame_header",
    "frame_header",
]

#: Bytes in the length prefix. Four bytes cover any frame size we would ever accept.
HEADER_SIZE = 4

#: Limit before the handshake completes. A Hello with a large JWT (Azure AD tokens with many
#: groups reach ~8-12 KiB) fits comfortably; an unauthenticated peer can make the server
#: buffer at most this much per connection, so 10k half-open connections cost <= 640 MiB.
MAX_UNAUTHENTICATED_FRAME_SIZE = 64 * 1024

#: Default negotiated limit, announced in Welcome. A 1,000-row Changes batch of CRM rows is
#: ~150 KiB; 4 MiB leaves room for wide rows and text columns while bounding per-session
#: memory at a few frames.
DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024

#: Largest value a server may announce. Beyond 64 MiB one frame monopolises a 2-core
#: daemon's event loop for too long and a phone's memory for too much.
ABSOLUTE_MAX_FRAME_SIZE = 64 * 1024 * 1024

#: Top bit of the length prefix: the payload is compressed with the negotiated codec. No
#: limit comes near 2**31, so the bit is free; without a negotiated codec a prefix with it
#: set is just a length above every limit (FRAME_TOO_LARGE), as it always was.
COMPRESSED_FLAG = 0x8000_0000

_HEADER = struct.Struct(">I")


def frame_header(payload_size: int) -> bytes:
    """The 4-byte big-endian length prefix for a payload of this size."""
    return _HEADER.pack(payload_size)


def compressed_frame_header(compressed_size: int) -> bytes:
    """The length prefix of a compressed payload of this size (COMPRESSED_FLAG set)."""
    return _HEADER.pack(COMPRESSED_FLAG | compressed_size)


class FrameDecoder:
    """Accumulates received bytes and cuts them into payloads, enforcing a size limit."""

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        #: The negotiated codec once the handshake chose one: only then does
        #: COMPRESSED_FLAG mean a compressed payload.
        self.codec: str | None = None
        self._buffer = bytearray()
        self._eof = False

    @property
    def eof(self) -> bool:
        """True once the peer closed its side (receive_data(b"") was called)."""
        return self._eof

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as payloads."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Append received bytes; an empty `data` marks end of stream."""
        if self._eof:
            if data:
                raise RuntimeError("received data after EOF")
            return
        if not data:
            self._eof = True
            return
        self._buffer += data

    def next_payload(self) -> bytes | None:
        """One complete payload, or None when more bytes are needed.

        Raises RemoteProtocolError(FRAME_TOO_LARGE) on an oversized prefix and
        RemoteProtocolError(PROTOCOL_VIOLATION) when the stream ended inside a frame.
        """
        buffer = self._buffer
        if len(buffer) < HEADER_SIZE:
            if self._eof and buffer:
                raise RemoteProtocolError("connection closed inside a frame header")
            return None
        (size,) = _HEADER.unpack_from(buffer)
        compressed = self.codec is not None and size & COMPRESSED_FLAG
        if compressed:
            size &= ~COMPRESSED_FLAG
        if size > self.max_frame_size:
            raise RemoteProtocolError(
                f"frame of {size} bytes exceeds the limit of {self.max_frame_size}",
                ErrorCode.FRAME_TOO_LARGE,
            )
        end = HEADER_SIZE + size
        if len(buffer) < end:
            if self._eof:
                raise RemoteProtocolError(
                    f"connection closed after {len(buffer) - HEADER_SIZE} of {size} payload bytes"
                )
            return None
        payload = bytes(buffer[HEADER_SIZE:end])
        del buffer[:end]
        if compressed:
            assert self.codec is not None
            return decompress(self.codec, payload, self.max_frame_size)
        return payload
