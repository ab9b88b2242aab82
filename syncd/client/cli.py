"""`syncd-client`: sync a device's SQLite database with a syncd server, or show what it holds.

    syncd-client sync --server HOST:PORT --ca CA.pem --token TOKEN --db device.sqlite [--live]
                      [--reset]
    syncd-client show --db device.sqlite

The org defaults to the token's `org` claim, read without verification only to address the
server (the server verifies the token). Progress goes to stderr, the summary to stdout.

A database belongs to the (server, org, user) of its first sync; `sync` for anyone else
exits 4 and changes nothing. With `--reset` it starts the database over instead, after
writing its unsent edits and recorded errors to `<db>.unsent-<UTC time>.json` (named on
stderr). Exit codes: 0 synced, 1 the server refused, 2 bad arguments, 3 no connection,
4 the database belongs to another server, org or user.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sqlite3
import ssl
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import jwt
import uvloop

from syncd.client.localdb import DatabaseBindingError, LocalDB
from syncd.client.session import ServerError, SyncClient, SyncStats
from syncd.client.tls import client_context
from syncd.config import ConfigError, parse_host_port

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncd-client", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sync = sub.add_parser("sync", help="download (and with --live, follow) the user's data")
    sync.add_argument("--server", required=True, help="HOST:PORT of the sync endpoint")
    sync.add_argument("--ca", required=True, type=Path, help="CA certificate (PEM) to trust")
    sync.add_argument("--token", required=True, help="bearer token (JWT)")
    sync.add_argument("--db", required=True, type=Path, help="the device's SQLite file")
    sync.add_argument("--org", help="org name (default: the token's org claim)")
    sync.add_argument("--device-id", help="device id (default: generated once, kept in the db)")
    sync.add_argument("--live", action="store_true", help="stay connected for live changes")
    sync.add_argument("--quiet", action="store_true", help="no progress lines")
    sync.add_argument(
        "--reset",
        action="store_true",
        help="if the database belongs to another server/org/user, export its unsent edits"
        " to a JSON file beside it and start it over for this one",
    )
    show = sub.add_parser("show", help="row counts per entity and the sync state")
    show.add_argument("--db", required=True, type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``syncd-client`` command: sync a local SQLite database once, live, or show it."""
    args = _parser().parse_args(argv)
    if args.command == "show":
        return _show(args.db)
    return uvloop.run(_sync(args))


def _show(path: Path) -> int:
    if not path.exists():
        print(f"syncd-client: no database at {path}", file=sys.stderr)
        return 1
    db = LocalDB.open(path)
    try:
        for entity in db.entities():
            print(f"{entity:<24} {db.count(entity):>10} rows")
        bound = db.binding()
        print(f"belongs to: {bound.describe() if bound else 'nobody yet (never synced)'}")
        print(f"pending uploads: {db.pending_count()}; errors: {len(db.errors())}")
        print(f"checkpoint stored: {'yes' if db.checkpoint() else 'no'}")
    finally:
        db.close()
    return 0


async def _sync(args: argparse.Namespace) -> int:
    try:
        where = parse_host_port(args.server)
    except ConfigError as exc:
        print(f"syncd-client: --server: {exc}", file=sys.stderr)
        return 2
    org = args.org or _org_claim(args.token)
    if not org:
        print("syncd-client: --org is required (the token has no org claim)", file=sys.stderr)
        return 2
    try:
        context = client_context(args.ca)  # resumes its TLS session on reconnects
    except (OSError, ssl.SSLError) as exc:
        print(f"syncd-client: --ca {args.ca}: {exc}", file=sys.stderr)
        return 2
    try:
        db = LocalDB.open(args.db)
    except sqlite3.Error as exc:
        print(f"syncd-client: --db {args.db}: {exc}", file=sys.stderr)
        return 2
    progress = _Progress(quiet=args.quiet)
    client = SyncClient(
        db,
        host=where.host,
        port=where.port,
        ssl_context=context,
        token=args.token,
        org=org,
        device_id=args.device_id,
        on_progress=progress,
    )
    try:
        if client.binding is not None:
            try:
                db.check_binding(client.binding)
            except DatabaseBindingError as exc:
                if not args.reset:
                    print(f"syncd-client: --db {args.db}: {exc}", file=sys.stderr)
                    return 4
                try:
                    _start_over(db, args.db, exc)
                except OSError as failed:  # nothing was cleared
                    print(f"syncd-client: --reset: cannot export: {failed}", file=sys.stderr)
                    return 4
        if args.live:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await client.run_live(stop)
        else:
            await client.sync_once()
    except ServerError as exc:
        print(f"syncd-client: the server refused: {exc}", file=sys.stderr)
        return 1
    except DatabaseBindingError as exc:
        print(f"syncd-client: --db {args.db}: {exc}", file=sys.stderr)
        return 4
    except OSError as exc:  # ssl.SSLError included
        print(f"syncd-client: cannot sync with {args.server}: {exc}", file=sys.stderr)
        return 3
    finally:
        db.close()
    _summary(client.stats)
    return 0


def _start_over(db: LocalDB, path: Path, refused: DatabaseBindingError) -> None:
    """--reset: export what the database holds unsent, say so, then clear it."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    export = path.with_name(f"{path.name}.unsent-{stamp}.json")
    had_edits = db.pending_count() > 0 or bool(db.errors())
    unsent = db.start_over(export_to=export if had_edits else None)
    print(
        f"syncd-client: --reset: {path} held the data of {refused.bound.describe()}; starting"
        f" it over for {refused.wanted.describe()}",
        file=sys.stderr,
    )
    if had_edits:
        print(
            f"syncd-client: --reset: {len(unsent.edits)} unsent edit(s) and"
            f" {len(unsent.errors)} recorded error(s) exported to {export}",
            file=sys.stderr,
        )
    else:
        print("syncd-client: --reset: it had no unsent edits", file=sys.stderr)


def _org_claim(token: str) -> str | None:
    with contextlib.suppress(jwt.PyJWTError):
        claims = jwt.decode(token, options={"verify_signature": False})
        org = claims.get("org")
        return org if isinstance(org, str) else None
    return None


class _Progress:
    def __init__(self, *, quiet: bool) -> None:
        self._quiet = quiet
        self._last = 0.0

    def __call__(self, stats: SyncStats) -> None:
        now = time.monotonic()
        if self._quiet or now - self._last < 0.5:
            return
        self._last = now
        rate = stats.rows_applied / stats.elapsed if stats.elapsed else 0.0
        print(f"  {stats.rows_applied:>10,} rows  {rate:>10,.0f} rows/s", file=sys.stderr)


def _summary(stats: SyncStats) -> None:
    elapsed = stats.elapsed
    rate = stats.rows_applied / elapsed if elapsed else 0.0
    print(
        f"synced: {stats.rows_applied:,} rows upserted, {stats.deletes_applied:,} deleted, "
        f"{stats.checkpoints} checkpoints, {stats.bytes_received:,} bytes "
        f"in {elapsed:.2f}s ({rate:,.0f} rows/s)"
    )
