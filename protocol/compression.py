"""Frame compression: the codecs a session may negotiate, and bounded decompression.

Strategy. A codec is a name (what Hello lists and Welcome picks) with a one-shot compress
and a decompress that never produces more than the frame limit in force: a zstd frame must
declare its content size in its header, which is checked against the limit *before* any
output is allocated, and zstd itself refuses a frame whose content differs from what it
declared. So a decompression bomb (a few hundred bytes claiming, or producing, gigabytes)
costs nothing but the compressed bytes already buffered, and is a PROTOCOL_VIOLATION.

Compression is per frame, with no state carried from one frame to the next, so a Changes
frame shared by many sessions is compressed once (`PreparedFrame.compressed`).

PROTOCOL.md, "Compression":
    A compressed payload is exactly one zstd frame (RFC 8878) with Frame_Content_Size in
    its header, no dictionary, nothing after it; its decompressed size is bounded by the
    frame limit in force like any payload.
"""

from __future__ import annotations

from typing import Final

import zstandard

from protocol.errors import RemoteProtocolError

__all__ = [
    "CODECS",
    "MIN_COMPRESSED_PAYLOAD",
    "ZSTD",
    "ZSTD_LEVEL",
    "compress",
    "decompress",
    "pick_codec",
]

#: The one codec of protocol version 1. lz4 was measured too (docs/ARCHITECTURE.md,
#: "Compression"): 2-3x faster, but CRM frames shrink 1.24x with it against 1.9x with zstd,
#: and on a phone's link the bytes are what costs.
ZSTD: Final = "zstd"
CODECS: Final[tuple[str, ...]] = (ZSTD,)

#: zstd level 1: the same ratio as level 3 on CRM Changes frames (1.89 vs 1.91) at 1.5x
#: the speed (152 vs 103 MB/s on this machine), and the daemon compresses on its event loop.
ZSTD_LEVEL: Final = 1

#: Smaller payloads (acks, pings, checkpoints) gain a few bytes at best and cost a call.
MIN_COMPRESSED_PAYLOAD: Final = 512

#: The zstd frame magic number (RFC 8878, 3.1.1), little-endian on the wire.
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"

_compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
_decompressor = zstandard.ZstdDecompressor()


def pick_codec(offered: tuple[str, ...] | None, supported: tuple[str, ...]) -> str | None:
    """The first codec the device offered that we support, or None (no compression).

    PROTOCOL.md, "Compression": the server takes the device's order as its preference.
    """
    for name in offered or ():
        if name in supported:
            return name
    return None


def compress(codec: str, payload: bytes) -> bytes:
    """`payload` compressed with `codec` (one self-contained zstd frame)."""
    if codec != ZSTD:
        raise ValueError(f"unknown codec {codec!r}")
    data: bytes = _compressor.compress(payload)
    return data


def decompress(codec: str, data: bytes, limit: int) -> bytes:
    """The payload inside a compressed frame, or RemoteProtocolError(PROTOCOL_VIOLATION).

    Never allocates more than `limit` bytes of output: the declared content size is read
    from the zstd frame header and checked first.
    """
    if codec != ZSTD:
        raise ValueError(f"unknown codec {codec!r}")
    if data[:4] != _ZSTD_MAGIC:
        raise RemoteProtocolError("a compressed frame does not hold a zstd frame")
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        raise RemoteProtocolError("a compressed frame has an invalid zstd frame header") from None
    if size < 0:
        raise RemoteProtocolError("a compressed frame's zstd header does not declare its size")
    if size > limit:
        raise RemoteProtocolError(
            f"a compressed frame decompresses to {size} bytes, above the limit of {limit}"
        )
    try:
        payload: bytes = _decompressor.decompress(
            data, max_output_size=limit, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise RemoteProtocolError(f"a compressed frame does not decompress: {exc}") from None
    if len(payload) != size:  # zstd checks this itself; the limit must not rest on it alone
        raise RemoteProtocolError("a compressed frame's content differs from its declared size")
    return payload
