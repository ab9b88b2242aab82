"""What compression makes of Changes frames of each row shape (issue 16: ">= 3x fewer wire
bytes per CRM row"), and what it would take to get more: `python -m bench.firstsync
--codecs` (no database, no daemon; the end-to-end figures are `--compression`).

Strategy. The rows of a shape (bench/shapes.py) in key order, as the feed sends them, cut
into Changes frames and compressed in this process, one frame at a time as the daemon does
(protocol/compression.py: one zstd frame per frame, no state carried between frames). Every
option is measured on the same rows; ratios are against the uncompressed frames of 1,000
rows (what the daemon sends by default). The options, in three groups:

* what the protocol allows today: zstd levels 1, 3 and 6 and lz4 per frame, frames of
  1,000 rows (`sync.batch_size`'s default) and of 10,000 (a bigger batch, same protocol);
  and xz -9 per frame (lzma, not a candidate: the strongest general codec at hand, to show
  where compressing these bytes frame by frame tops out);
* a dictionary: zstd -1 and -3 with a 110 KiB dictionary trained on another seed's rows of
  the same shape (what a dictionary per entity, sent in Welcome, would give; PROTOCOL.md
  says "no dictionary", so this is a protocol change);
* column-wise: each column of a frame packed as one msgpack array and compressed as its own
  zstd -1 frame (the layout of Parquet and Arrow: a column's values share their structure,
  so each gets its own entropy tables), at 1,000 and 10,000 rows; and typed, the uuid key
  as its 16 bytes instead of 36 characters and integer and timestamp columns as byte planes
  of 8-byte ints (both a new Changes layout). Both layouts decode back to the same values
  (`column_values`, tests/bench/test_shapes.py): a figure of a lossy layout would mean
  nothing.

Compress and decompress speeds are MB/s of uncompressed frame bytes, on one core.
"""

from __future__ import annotations

import lzma
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import zstandard

from bench import record
from bench.common import print_table
from bench.shapes import SHAPES, Shape, wire_values
from protocol import encode_changes
from protocol.framing import HEADER_SIZE

__all__ = ["DEFAULT_ROWS", "Option", "codecs", "key_ordered_rows", "measure_shape"]

#: Rows per shape: 200 frames of 1,000, enough that the ratio no longer moves with the count.
DEFAULT_ROWS: Final = 200_000
#: The daemon's default batch (`sync.batch_size`), then the larger batch measured.
FRAME_ROWS: Final = 1000
BIG_FRAME_ROWS: Final = 10_000
#: zstd's default dictionary size (`zstd --train`'s 110 KiB).
DICT_BYTES: Final = 112_640
#: The dictionary is trained on 100-row samples of another seed's rows: the server would
#: train it on the entity's staging rows, not on the frames it then sends.
DICT_SAMPLE_ROWS: Final = 100
DICT_SEED: Final = 2
#: Column types sent as 8-byte integers in the typed column-wise layout.
_INTEGERS: Final = frozenset({"integer", "timestamp"})
#: What an integer column's payload holds in the typed layout: byte planes, or msgpack (a
#: column with a NULL in this frame).
_PLANES, _MSGPACK = b"\x01", b"\x00"
#: The version the first loaded row gets (COPY stamps rows in order; key order scrambles it).
FIRST_VERSION: Final = 1_000_000


def key_ordered_rows(shape: Shape, count: int, seed: int = 1) -> list[tuple[Any, ...]]:
    """`count` rows of `shape` as the feed sends them, in key order (the daemon's order)."""
    rows = (tuple(wire_values(r, FIRST_VERSION + i)) for i, r in enumerate(shape.rows(count, seed)))
    return sorted(rows, key=lambda r: str(r[0]))


def changes_frames(rows: Sequence[tuple[Any, ...]], per_frame: int) -> list[bytes]:
    """Changes payloads (the bytes after the length prefix) of `per_frame` rows each."""
    return [
        encode_changes("account", rows[i : i + per_frame], []).data[HEADER_SIZE:]
        for i in range(0, len(rows), per_frame)
    ]


def column_frames(
    rows: Sequence[tuple[Any, ...]], per_frame: int, types: Sequence[str] | None = None
) -> list[list[bytes]]:
    """Each frame as one payload per column: a msgpack array of its values, or with `types`
    (the column types, then "integer" for the version) typed: the uuid key as its 16 bytes
    and each integer or timestamp column with no NULL as 8-byte big-endian ints in byte
    planes (every value's first byte, then every second byte, ...: the planes of the high
    bytes are nearly constant, which zstd sees; Blosc's shuffle)."""
    frames = []
    for i in range(0, len(rows), per_frame):
        columns = [list(c) for c in zip(*rows[i : i + per_frame], strict=True)]
        frame = []
        for n, values in enumerate(columns):
            kind = None if types is None else types[n]
            if kind == "uuid":
                frame.append(b"".join(uuid.UUID(v).bytes for v in values))
            elif kind in _INTEGERS and None not in values:
                packed = struct.pack(f">{len(values)}q", *values)
                frame.append(_PLANES + b"".join(packed[plane::8] for plane in range(8)))
            elif kind in _INTEGERS:
                frame.append(_MSGPACK + msgpack.packb(values))
            else:
                frame.append(msgpack.packb(values))
        frames.append(frame)
    return frames


def column_values(payload: bytes, kind: str | None, count: int) -> list[Any]:
    """The values of one column payload of `column_frames` (`kind` None: untyped)."""
    if kind == "uuid":
        return [str(uuid.UUID(bytes=payload[k : k + 16])) for k in range(0, len(payload), 16)]
    if kind in _INTEGERS and payload[:1] == _PLANES:
        planes = [payload[1 + p * count : 1 + (p + 1) * count] for p in range(8)]
        packed = bytes(b for value in zip(*planes, strict=True) for b in value)
        return list(struct.unpack(f">{count}q", packed))
    if kind in _INTEGERS:
        payload = payload[1:]
    return list(msgpack.unpackb(payload))


@dataclass(frozen=True)
class Option:
    """One way of sending the rows: its compressed bytes and its speeds."""

    name: str
    group: str
    packed: int
    compress_mb_s: float
    decompress_mb_s: float | None
    rows_per_frame: int
    #: For the column-wise layouts: compressed bytes of each column (with "_version").
    columns: dict[str, int] = field(default_factory=dict)


def _timed(pack: Callable[[bytes], bytes], payloads: Sequence[bytes]) -> tuple[list[bytes], float]:
    started = time.perf_counter()
    out = [pack(p) for p in payloads]
    return out, time.perf_counter() - started


def _option(
    name: str,
    group: str,
    payloads: Sequence[bytes],
    pack: Callable[[bytes], bytes],
    unpack: Callable[[bytes], bytes] | None,
    rows_per_frame: int,
) -> Option:
    raw = sum(map(len, payloads))
    packed, packing = _timed(pack, payloads)
    unpacking = None
    if unpack is not None:
        _, unpacking = _timed(unpack, packed)
    return Option(
        name,
        group,
        sum(map(len, packed)),
        raw / packing / 1e6,
        None if unpacking is None else raw / unpacking / 1e6,
        rows_per_frame,
    )


def _lz4() -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]] | None:
    try:
        import lz4.frame  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        return None
    return lz4.frame.compress, lz4.frame.decompress


def measure_shape(shape: Shape, count: int) -> tuple[int, list[Option]]:
    """(uncompressed bytes of the default frames, every option) on `count` rows of `shape`."""
    rows = key_ordered_rows(shape, count)
    frames = changes_frames(rows, FRAME_ROWS)
    big = changes_frames(rows, BIG_FRAME_ROWS)
    plain = zstandard.ZstdDecompressor()
    today, proposed = "as is", "change"
    options: list[Option] = []
    for level in (1, 3, 6):
        zstd = zstandard.ZstdCompressor(level=level)
        options.append(
            _option(f"zstd -{level}", today, frames, zstd.compress, plain.decompress, FRAME_ROWS)
        )
    lz4 = _lz4()
    if lz4 is None:
        record.current().skip("lz4", "the lz4 package is not installed (pip install lz4)")
    else:
        options.append(_option("lz4", today, frames, *lz4, FRAME_ROWS))
    zstd1 = zstandard.ZstdCompressor(level=1)
    options.append(
        _option(
            f"zstd -1, frames of {BIG_FRAME_ROWS:,} rows",
            today,
            big,
            zstd1.compress,
            plain.decompress,
            BIG_FRAME_ROWS,
        )
    )
    options.append(
        _option(
            "xz -9 (lzma; a reference, not a candidate)",
            today,
            frames,
            lambda p: lzma.compress(p, preset=9),
            lzma.decompress,
            FRAME_ROWS,
        )
    )
    samples: list[bytes | bytearray | memoryview[int]] = [
        *changes_frames(key_ordered_rows(shape, max(count // 2, 5000), DICT_SEED), 100)
    ]
    trained = zstandard.train_dictionary(DICT_BYTES, samples)
    with_dict = zstandard.ZstdDecompressor(dict_data=trained)
    for level in (1, 3):
        zstd = zstandard.ZstdCompressor(level=level, dict_data=trained)
        options.append(
            _option(
                f"zstd -{level} + 110 KiB dictionary per entity",
                proposed,
                frames,
                zstd.compress,
                with_dict.decompress,
                FRAME_ROWS,
            )
        )
    types = [*shape.columns.values(), "integer"]
    names = [*shape.columns, "_version"]
    for per_frame in (FRAME_ROWS, BIG_FRAME_ROWS):
        for typed in (False, True):
            columns = column_frames(rows, per_frame, types if typed else None)
            started = time.perf_counter()
            packed = [[zstd1.compress(c) for c in frame] for frame in columns]
            packing = time.perf_counter() - started
            started = time.perf_counter()
            for frame in packed:
                for c in frame:
                    plain.decompress(c)
            unpacking = time.perf_counter() - started
            raw = sum(len(c) for frame in columns for c in frame)
            layout = ", typed (key as 16 bytes, integers in byte planes)" if typed else ""
            by_column = dict.fromkeys(names, 0)
            for frame in packed:
                for column, c in zip(names, frame, strict=True):
                    by_column[column] += len(c)
            options.append(
                Option(
                    f"zstd -1 per column, frames of {per_frame:,} rows{layout}",
                    proposed,
                    sum(len(c) for frame in packed for c in frame),
                    raw / packing / 1e6,
                    raw / unpacking / 1e6,
                    per_frame,
                    by_column,
                )
            )
    return sum(map(len, frames)), options


def codecs(shape_names: Sequence[str], count: int = DEFAULT_ROWS) -> None:
    """Print and record every option on every shape named."""
    run = record.current()
    for name in shape_names:
        raw, options = measure_shape(SHAPES[name], count)
        table: list[list[object]] = [["none", "as is", f"{raw / count:.1f}", "1.00", "", ""]]
        for o in options:
            params = {"shape": name, "rows": count, "rows_per_frame": o.rows_per_frame}
            run.figure(f"codec {o.name}, {name}: ratio", "x", [raw / o.packed], params=params)
            run.figure(
                f"codec {o.name}, {name}: compress MB/s", "MB/s", [o.compress_mb_s], params=params
            )
            table.append(
                [
                    o.name,
                    o.group,
                    f"{o.packed / count:.1f}",
                    f"{raw / o.packed:.2f}",
                    f"{o.compress_mb_s:,.0f}",
                    "" if o.decompress_mb_s is None else f"{o.decompress_mb_s:,.0f}",
                ]
            )
        print(
            f"\n{name} rows ({count:,}, key order), Changes frames of {FRAME_ROWS:,} rows"
            f" unless said, load {record.load_average()[0]:.2f}"
        )
        print_table(
            ["codec", "protocol", "bytes/row", "ratio", "compress MB/s", "decompress MB/s"], table
        )
        # Where the bytes go, column by column: what a layout would have to shrink.
        for o in options:
            if o.columns and o.rows_per_frame == FRAME_ROWS:
                spread = ", ".join(f"{c} {n / count:.1f}" for c, n in o.columns.items())
                print(f"bytes/row per column, {o.name}: {spread}")
