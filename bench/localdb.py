"""How fast the device's SQLite store commits server batches, against SQLite's own floor.

Strategy: generate CRM rows already in wire encodings (what the msgpack decoder hands the
session), then time `LocalDB.apply_batch` on 1,000-row batches each with its checkpoint, in
three cases: fresh inserts, newer versions of rows already present (the upsert's update
branch), and an entity with pending local edits (the slow path that keeps edits on top).
The references are raw `executemany` INSERTs of the same batches into a plain table, and
into one with the same text primary key, with the same pragmas, one transaction per batch,
in the same run (median of a few interleaved rounds): the ratio is the figure to compare
across machines, since absolute rates vary 15-50% run to run here.

Run: `python -m bench.localdb [--rows N] [--batch N] [--rounds N]`.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import progress, record
from syncd.client import EntitySchema, LocalDB

CRM = EntitySchema(
    name="account",
    key="id",
    columns=[
        ("id", "uuid"),
        ("name", "text"),
        ("city", "text"),
        ("amount", "numeric"),
        ("updated_at", "timestamp"),
        ("owner_id", "integer"),
        ("status", "integer"),
    ],
    writable=["name", "city", "amount", "status"],
)


def crm_rows(count: int, version: int) -> list[list[Any]]:
    ids = [str(uuid.UUID(int=i * 2654435761 % (1 << 128), version=4)) for i in range(count)]
    return [
        [k, f"Account {i}", "Springfield", f"{i * 7 % 100000}.{i % 100:02d}",
         1_700_000_000_000_000 + i, i % 500, i % 4, version]
        for i, k in enumerate(ids)
    ]  # fmt: skip


def batches(rows: list[list[Any]], size: int) -> list[list[list[Any]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_localdb(
    path: Path, chunks: list[list[list[Any]]], newer: list[list[list[Any]]], pending: int
) -> tuple[float, float]:
    """Seconds to apply `chunks` (inserts) and then `newer` (updates) via LocalDB."""
    with LocalDB.open(path) as db:
        db.apply_schema([CRM], "bench")

        def apply(parts: Sequence[list[list[Any]]]) -> None:
            for n, part in enumerate(parts):
                db.apply_batch([("account", part, [])], n.to_bytes(8, "big"))

        inserted = timed(lambda: apply(chunks))
        for row in chunks[0][:pending]:
            db.update("account", row[0], {"name": "edited offline"})
        updated = timed(lambda: apply(newer))
        return inserted, updated


def bench_raw(path: Path, chunks: list[list[list[Any]]], keyed: bool) -> float:
    """Seconds for the same batches as plain executemany INSERTs, one transaction each."""
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=NORMAL")
        key = "TEXT PRIMARY KEY" if keyed else ""
        raw.execute(
            f"CREATE TABLE plain (id {key}, name, city, amount, updated_at, owner_id, status, v)"
        )
        sql = "INSERT INTO plain VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

        def run() -> None:
            for part in chunks:
                raw.execute("BEGIN")
                raw.executemany(sql, part)
                raw.execute("COMMIT")

        return timed(run)
    finally:
        raw.close()


def one_round(
    folder: Path, chunks: list[list[list[Any]]], newer: list[list[list[Any]]]
) -> list[float]:
    """Seconds per path, each on a fresh database file."""
    raw = bench_raw(folder / "raw.db", chunks, keyed=False)
    keyed = bench_raw(folder / "keyed.db", chunks, keyed=True)
    inserted, updated = bench_localdb(folder / "fast.db", chunks, newer, pending=0)
    _, under_edits = bench_localdb(folder / "slow.db", chunks, newer, pending=100)
    for name in ("raw", "keyed", "fast", "slow"):
        for suffix in ("db", "db-wal", "db-shm"):
            (folder / f"{name}.{suffix}").unlink(missing_ok=True)
    return [raw, keyed, inserted, updated, under_edits]


LABELS = [
    "raw executemany INSERT, plain table",
    "raw executemany INSERT, text primary key",
    "LocalDB.apply_batch, new rows",
    "LocalDB.apply_batch, newer versions (upsert update)",
    "LocalDB.apply_batch, newer versions, 100 rows edited",
]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rows = crm_rows(args.rows, version=1)
    chunks = batches(rows, args.batch)
    newer = batches([[*r[:-1], 2] for r in rows], args.batch)
    with record.bench_run("localdb", argv) as results:
        with (
            tempfile.TemporaryDirectory() as tmp,
            progress.bar("SQLite rounds", args.rounds, "rounds") as bar,
        ):
            rounds = []
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for _ in range(args.rounds):
                rounds.append(one_round(Path(tmp), chunks, newer))
                bar.advance()
            # SQLite runs in this thread: below 100% the process waited for a core or disk.
            cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        per_path = list(zip(*rounds, strict=True))
        medians = [statistics.median(times) for times in per_path]
        n = args.rows
        print(
            f"{n:,} CRM rows in {len(chunks):,} batches of {args.batch:,}, one commit per batch,"
            f" median of {args.rounds} rounds"
        )
        print(f"{'path':<54} {'rows/s':>10} {'vs raw':>7}")
        for label, seconds in zip(LABELS, medians, strict=True):
            print(f"{label:<54} {n / seconds:>10,.0f} {medians[0] / seconds:>7.2f}")
        raw = [n / t for t in per_path[0]]
        for label, times in zip(LABELS[1:], per_path[1:], strict=True):
            results.figure(
                label,
                "rows/s",
                [n / t for t in times],
                ceiling_samples=raw,
                ceiling_name=LABELS[0],
                cpu={"bench": cpu},
                params={"rows": n, "batch": args.batch},
                phase="localdb",
            )


if __name__ == "__main__":
    main()
