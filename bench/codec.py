"""Codec throughput: protocol's Changes encode/decode against plain msgpack on the same rows.

Strategy: build 1,000-row batches of CRM-like primitive rows (uuid str, two texts,
numeric-as-str, timestamp int microseconds, owner and status ints, version int) once,
then time each path over the same batches, alternating with plain msgpack, and print
median rows/s, MB/s and the ratio to plain msgpack. Ratios within one run are what matter
(ARCHITECTURE.md, ceilings: run-to-run noise 15-50%).

Run: `python -m bench.codec [--batches N] [--repeat R]`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from bench import record
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


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass(frozen=True)
class Timed:
    """One timed path: rows/s of each repeat, beside the baseline timed right before it."""

    name: str
    baseline: str
    rows_per_s: list[float]
    baseline_rows_per_s: list[float]
    mb_per_s: float
    cpu: float
    """This process's share of a core over the path and its baseline."""

    @property
    def time_vs_baseline(self) -> float:
        """Median time of this path over the baseline's (1.0 = as fast as plain msgpack)."""
        return statistics.median(self.baseline_rows_per_s) / statistics.median(self.rows_per_s)


def run(batches: int, repeat: int) -> list[Timed]:
    """Each path `repeat` times, alternating with its plain msgpack baseline."""
    row_batches = [make_rows(ROWS_PER_BATCH, seed) for seed in range(batches)]
    plain = [msgpack.packb(rows) for rows in row_batches]
    frames = [encode_changes("account", rows, []).data for rows in row_batches]
    total_rows = batches * ROWS_PER_BATCH
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
    for name, fn, base_name, base in (
        ("encode_changes", pack_changes, "msgpack.packb", pack_plain),
        ("decode Changes payload", decode_changes, "msgpack.unpackb", unpack_plain),
        ("Connection.next_event", connection_receive, "msgpack.unpackb", unpack_plain),
    ):
        mine: list[float] = []
        theirs: list[float] = []
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            theirs.append(_time(base))
            mine.append(_time(fn))
        # One thread, CPU-bound: below 100% the process waited for a core (other work).
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        rows_s = [total_rows / t for t in mine]
        mb_s = frame_bytes / statistics.median(mine) / 1e6
        results.append(Timed(name, base_name, rows_s, [total_rows / t for t in theirs], mb_s, cpu))
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
    parser.add_argument("--repeat", type=int, default=5, help="passes; medians are reported")
    args = parser.parse_args(argv)
    rows = args.batches * ROWS_PER_BATCH
    with record.bench_run("codec", argv) as results:
        print(
            f"{args.batches} batches x {ROWS_PER_BATCH} rows, median of {args.repeat}"
            f" alternating with the baseline ({rows} rows)"
        )
        print(f"{'path':<24} {'rows/s':>12} {'MB/s':>9} {'baseline rows/s':>16} {'time vs it':>11}")
        for p in run(args.batches, args.repeat):
            base = statistics.median(p.baseline_rows_per_s)
            print(
                f"{p.name:<24} {statistics.median(p.rows_per_s):>12,.0f} {p.mb_per_s:>9.1f}"
                f" {base:>16,.0f} {p.time_vs_baseline:>10.2f}x"
            )
            results.figure(
                p.name,
                "rows/s",
                p.rows_per_s,
                ceiling_samples=p.baseline_rows_per_s,
                ceiling_name=f"{p.baseline} (baseline)",
                cpu={"bench": p.cpu},
                params={"rows": rows, "mb_per_s": p.mb_per_s},
                phase="codec",
            )


if __name__ == "__main__":
    main()
