"""Codec throughput: protocol's Changes encode/decode against plain msgpack on the same rows.

Strategy: build 1,000-row batches of CRM-like primitive rows (uuid str, two texts,
numeric-as-str, timestamp int microseconds, owner and status ints, version int) once,
then time each path over the same batches and print rows/s, MB/s and the ratio to plain
msgpack. Ratios within one run are what matter (ARCHITECTURE.md, ceilings: run-to-run noise 15-50%).

Run: `python -m bench.codec [--batches N] [--repeat R]`.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections.abc import Callable

import msgpack

from protocol import Changes, Connection, Role, encode_changes
from protocol.wire import decode_payload

ROWS_PER_BATCH = 1000


def make_rows(count: int, seed: int = 7) -> list[tuple[object, ...]]:
    """Rows shaped like SELECT id::text, name, city, amount::text, ts_us, owner, status, version."""
    rnd = random.Random(seed)
    names = ["Acme Corp", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries"]
    cities = ["Berlin", "Lisbon", "Osaka", "Toronto", "Nairobi", "Lima"]
    return [
        (
            str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            f"{rnd.choice(names)} {i}",
            rnd.choice(cities),
            f"{rnd.randrange(0, 10**7)}.{rnd.randrange(100):02d}",
            1_700_000_000_000_000 + rnd.randrange(10**12),
            rnd.randrange(1, 5000),
            rnd.randrange(0, 5),
            1_000_000 + i,
        )
        for i in range(count)
    ]


def _time(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(batches: int, repeat: int) -> list[tuple[str, float, float, float]]:
    """(path, rows/s, MB/s, ratio to the plain msgpack baseline) for each path."""
    row_batches = [make_rows(ROWS_PER_BATCH, seed) for seed in range(batches)]
    plain = [msgpack.packb(rows) for rows in row_batches]
    frames = [encode_changes("account", rows, []).data for rows in row_batches]
    total_rows = batches * ROWS_PER_BATCH
    plain_bytes = sum(map(len, plain))
    frame_bytes = sum(map(len, frames))

    def pack_plain() -> None:
        for rows in row_batches:
            msgpack.packb(rows)

    def pack_changes() -> None:
        for rows in row_batches:
            encode_changes("account", rows, [])

    def unpack_plain() -> None:
        for data in plain:
            msgpack.unpackb(data)

    def decode_changes() -> None:
        for frame in frames:
            decode_payload(frame[4:])

    def connection_receive() -> None:
        conn = _live_device()
        for frame in frames:
            conn.receive_data(frame)
            event = conn.next_event()
            assert isinstance(event, Changes)

    results = []
    enc_base = _time(pack_plain, repeat)
    dec_base = _time(unpack_plain, repeat)
    for name, fn, size, base in (
        ("msgpack.packb (baseline)", pack_plain, plain_bytes, enc_base),
        ("encode_changes", pack_changes, frame_bytes, enc_base),
        ("msgpack.unpackb (baseline)", unpack_plain, plain_bytes, dec_base),
        ("decode Changes payload", decode_changes, frame_bytes, dec_base),
        ("Connection.next_event", connection_receive, frame_bytes, dec_base),
    ):
        elapsed = base if fn in (pack_plain, unpack_plain) else _time(fn, repeat)
        results.append((name, total_rows / elapsed, size / elapsed / 1e6, elapsed / base))
    return results


def _live_device() -> Connection:
    """A device connection past the handshake, so Changes are legal to receive."""
    from protocol import CaughtUp, Hello, ModelSummary, Welcome

    device, server = Connection(Role.DEVICE), Connection(Role.SERVER)
    server.receive_data(device.send(Hello((1,), "t", "org", "dev", "bench")))
    server.next_event()
    welcome = Welcome(1, "s", 4 << 20, ROWS_PER_BATCH, 30_000, 0, ModelSummary("fp", ()))
    device.receive_data(server.send(welcome))
    device.next_event()
    device.receive_data(server.send(CaughtUp(b"cp")))
    device.next_event()
    return device


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=50, help="1,000-row batches per pass")
    parser.add_argument("--repeat", type=int, default=5, help="passes; the best is reported")
    args = parser.parse_args(argv)
    rows = args.batches * ROWS_PER_BATCH
    print(f"{args.batches} batches x {ROWS_PER_BATCH} rows, best of {args.repeat} ({rows} rows)")
    print(f"{'path':<28} {'rows/s':>12} {'MB/s':>9} {'time vs baseline':>17}")
    for name, rows_per_s, mb_per_s, ratio in run(args.batches, args.repeat):
        print(f"{name:<28} {rows_per_s:>12,.0f} {mb_per_s:>9.1f} {ratio:>16.2f}x")


if __name__ == "__main__":
    main()
