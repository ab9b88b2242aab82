"""``syncctl``: the operator's command line for a running syncd, over its admin socket.

Strategy. Each subcommand maps its arguments to one admin request (see
``syncd/server/admin_wire.py`` for the wire format) and formats the result: readable text by
default, the raw result with ``--json`` for scripts. ``syncctl token`` prints only the token so
``TOKEN=$(syncctl token ...)`` works. Exit codes tell a script what went wrong without parsing
stderr: 0 done, 1 the daemon refused the command, 2 usage (bad arguments or input file),
3 the daemon could not be reached.

``AdminClient`` is the asyncio client side of the wire, shared with the tests and bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TextIO

import orjson

from syncd.server.admin_wire import (
    AdminError,
    FrameDecoder,
    FrameError,
    encode_request,
    parse_response,
)

__all__ = ["AdminClient", "DaemonUnreachable", "client_tls_context", "main", "run"]

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3

DEFAULT_SOCKET: Final = Path("var/admin.sock")  # the daemon's default data_dir is var/
SOCKET_ENV: Final = "SYNCD_ADMIN_SOCKET"
READ_CHUNK: Final = 64 * 1024


class DaemonUnreachable(Exception):
    """The admin endpoint could not be reached, or the connection broke mid-request."""


class AdminClient:
    """One admin connection; ``call`` sends a request and waits for its response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder()
        self._next_id = 1
        self._lock = asyncio.Lock()

    @classmethod
    async def open_unix(cls, path: Path | str) -> AdminClient:
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
        except OSError as exc:
            raise DaemonUnreachable(
                f"cannot reach syncd admin socket at {path}: is the daemon running? ({exc})"
            ) from None
        return cls(reader, writer)

    @classmethod
    async def open_tcp(cls, host: str, port: int, tls: ssl.SSLContext) -> AdminClient:
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        except (OSError, ssl.SSLError) as exc:
            raise DaemonUnreachable(
                f"cannot reach syncd admin endpoint at {host}:{port}: {exc}"
            ) from None
        return cls(reader, writer)

    async def call(self, command: str, args: dict[str, Any] | None = None) -> Any:
        """The command's result; AdminError if refused, DaemonUnreachable if the link broke."""
        async with self._lock:
            request_id, self._next_id = self._next_id, self._next_id + 1
            try:
                self._writer.write(encode_request(request_id, command, args or {}))
                await self._writer.drain()
                payload = await self._read_frame()
            except (ConnectionError, ssl.SSLError) as exc:
                raise DaemonUnreachable(f"connection to syncd lost: {exc}") from None
            return parse_response(payload, request_id)

    async def _read_frame(self) -> bytes:
        while (payload := self._decoder.next_frame()) is None:
            data = await self._reader.read(READ_CHUNK)
            if not data:
                raise DaemonUnreachable("syncd closed the admin connection without answering")
            self._decoder.feed(data)
        return payload

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def client_tls_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """TLS for the admin TCP endpoint: verify the daemon against ``ca``, present our cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


# -- the command line ----------------------------------------------------------------------

Formatter = Callable[[Any], str]
Build = Callable[[argparse.Namespace], tuple[str, dict[str, Any], Formatter]]


class UsageError(Exception):
    """The invocation cannot become a request (e.g. the model file is not JSON)."""


def _read_json(path: str) -> Any:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(header)] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _org_add(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    args: dict[str, Any] = {"name": ns.name}
    if ns.dsn:
        args["staging_dsn"] = ns.dsn
    return "org.add", args, lambda r: f"added org {r['name']}"


def _org_remove(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    # It drops a database: asked at a terminal, refused in a script without --yes.
    if not ns.yes:
        stdin: TextIO = ns.stdin
        if not stdin.isatty():
            raise UsageError(
                f"org remove drops org {ns.name!r} and its staging database: pass --yes to confirm"
            )
        print(
            f"remove org {ns.name!r}, end its sessions and drop its staging database? [y/N] ",
            end="",
            file=ns.stderr,
            flush=True,
        )
        if stdin.readline().strip().lower() not in ("y", "yes"):
            raise UsageError(f"org {ns.name!r} not removed")
    return "org.remove", {"name": ns.name}, lambda r: f"removed org {r['name']}"


def _org_list(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(orgs: list[dict[str, Any]]) -> str:
        if not orgs:
            return "no orgs"
        rows = [(o["name"], o["status"], o["model_version"], o["sessions"]) for o in orgs]
        return _table(("ORG", "STATUS", "MODEL", "SESSIONS"), rows)

    return "org.list", {}, fmt


def _model_put(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        if r.get("unchanged"):
            return f"org {r['org']}: model unchanged, version {r['version']} stays live"
        return f"org {r['org']}: model version {r['version']} is live ({r['fingerprint'][:12]})"

    return "model.put", {"org": ns.org, "model": _read_json(ns.file)}, fmt


def _model_get(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    args: dict[str, Any] = {"org": ns.org}
    if ns.version is not None:
        args["version"] = ns.version
    # The bare model, so `syncctl model get ... > m.json` round-trips through `model put`.
    return (
        "model.get",
        args,
        lambda r: orjson.dumps(r["model"], option=orjson.OPT_INDENT_2).decode(),
    )


def _profile_assign(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    args = {"org": ns.org, "user": ns.user, "profile": ns.profile}
    return "profile.assign", args, lambda r: f"{r['user']} -> {r['profile']} in org {r['org']}"


def _profile_unassign(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        done = "unassigned" if r["removed"] else "had no profile assigned"
        return f"{r['user']} {done} in org {r['org']}"

    return "profile.unassign", {"org": ns.org, "user": ns.user}, fmt


def _profile_list(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        lines = [f"profiles: {', '.join(r['profiles']) or '-'} (default: {r['default_profile']})"]
        rows = sorted(r["assignments"].items())
        lines.append(_table(("USER", "PROFILE"), rows) if rows else "no users assigned")
        return "\n".join(lines)

    return "profile.list", {"org": ns.org}, fmt


def _status(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        mode = " (dev mode)" if r["dev_mode"] else ""
        head = (
            f"instance {r['instance']}{mode}: {r['totals']['orgs']} orgs, "
            f"{r['totals']['sessions']} sessions"
        )
        rows = [
            (
                o["name"],
                o["status"],
                o["model_version"],
                (o["fingerprint"] or "")[:12] or None,
                ", ".join(f"{k}={v}" for k, v in sorted(o["sessions"].items())) or "0",
            )
            for o in r["orgs"]
        ]
        if not rows:
            return head
        return head + "\n" + _table(("ORG", "STATUS", "MODEL", "FINGERPRINT", "SESSIONS"), rows)

    return "status", {}, fmt


def _token(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    args: dict[str, Any] = {"org": ns.org, "user": ns.user, "roles": ns.role, "teams": ns.team}
    if ns.ttl is not None:
        args["ttl_seconds"] = ns.ttl
    return "token.mint", args, lambda r: str(r["token"])


def _token_key_list(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(keys: list[dict[str, Any]]) -> str:
        rows = [
            (k["id"], k["created_at"], k["retired_at"] or "", "yes" if k["seals"] else "")
            for k in keys
        ]
        return _table(("ID", "CREATED", "RETIRED", "SEALS NEW TOKENS"), rows)

    return "token-key.list", {}, fmt


def _token_key_rotate(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        return f"token key {r['id']} seals new sync tokens; older keys still open theirs"

    return "token-key.rotate", {}, fmt


def _token_key_retire(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        return f"token key {r['id']} retired: devices holding its tokens download anew"

    return "token-key.retire", {"id": ns.id}, fmt


def _ingest(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    changes = _read_json(ns.file)
    if isinstance(changes, dict) and "changes" in changes:
        changes = changes["changes"]

    def fmt(r: dict[str, Any]) -> str:
        return f"org {r['org']}: applied {r['upserts']} upserts and {r['deletes']} deletes"

    return "ingest.apply", {"org": ns.org, "changes": changes}, fmt


def _writeback_claim(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        entries = r["entries"]
        if not entries:
            return f"org {r['org']}: nothing to write back"
        rows = [
            (e["id"], e["entity"], e["key"], e["op"], e["version"], e["attempts"], e["last_error"])
            for e in entries
        ]
        return _table(("ID", "ENTITY", "KEY", "OP", "VERSION", "ATTEMPTS", "LAST ERROR"), rows)

    args = {"org": ns.org, "limit": ns.limit, "lease_seconds": ns.lease}
    return "writeback.claim", args, fmt


def _writeback_done(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        return f"org {r['org']}: {r['done']} entries done"

    return "writeback.done", {"org": ns.org, "ids": ns.ids}, fmt


def _writeback_fail(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        return f"org {r['org']}: {r['failed']} entries failed, retried after a backoff"

    return "writeback.fail", {"org": ns.org, "ids": ns.ids, "error": ns.error}, fmt


# -- the operator's commands (issue 11): sync errors, model history, diff, rollback, plan --


def _since(text: str) -> str:
    """``--since``: an ISO-8601 time (naive is UTC) or a duration back from now (30m, 2h, 7d)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        seconds = int(text[:-1]) * units[text[-1]]
        return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO-8601 time or a duration like 30m, 2h, 7d; got {text!r}"
        ) from None
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).isoformat()


def _short_json(value: object, width: int = 40) -> str:
    if value is None:
        return "-"
    text = orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 3] + "..."


def _errors_list(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    args: dict[str, Any] = {"limit": ns.limit, "include_dismissed": ns.all}
    for name, value in (("org", ns.org), ("user", ns.user), ("since", ns.since)):
        if value is not None:
            args[name] = value

    def fmt(r: dict[str, Any]) -> str:
        errors = r["errors"]
        if not errors:
            return "no sync errors"
        rows = [
            (
                e["id"],
                e["at"][:19],
                e["org"],
                e["user"],
                e["device"],
                e["entity"],
                e["key"],
                e["op"],
                e["code"],
                _short_json(_without_key(e["values"], e["key"]), 60),
                e["reason"],
            )
            for e in errors
        ]
        header = ("ID", "AT", "ORG", "USER", "DEVICE", "ENTITY", "KEY", "OP", "CODE")
        return _table((*header, "VALUES", "REASON"), rows)

    return "errors.list", args, fmt


def _without_key(values: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    """An insert's values repeat its key, which the KEY column already shows."""
    if values is None:
        return None
    return {k: v for k, v in values.items() if str(v) != key}


def _errors_dismiss(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        line = f"dismissed {len(r['dismissed'])} sync errors"
        if r["not_open"]:
            line += f"; not open (unknown or dismissed already): {_ids(r['not_open'])}"
        return line

    return "errors.dismiss", {"ids": ns.ids}, fmt


def _ids(ids: Sequence[object]) -> str:
    return ", ".join(str(i) for i in ids)


def _model_history(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        if not r["versions"]:
            return f"org {r['org']} has no client model yet"
        rows = [
            (v["version"], v["created_at"][:19], v["fingerprint"][:12], "live" if v["live"] else "")
            for v in r["versions"]
        ]
        return _table(("VERSION", "CREATED", "FINGERPRINT", ""), rows)

    return "model.history", {"org": ns.org}, fmt


def diff_lines(diff: dict[str, Any]) -> list[str]:
    """A model diff (``syncd.server.model_diff``) as lines: + added, - removed, ~ changed."""
    lines = [f"+ entity {e}" for e in diff.get("entities_added", [])]
    lines += [f"- entity {e}" for e in diff.get("entities_removed", [])]
    for name, d in diff.get("entities", {}).items():
        parts = [f"+ column {c} ({t})" for c, t in d.get("columns_added", {}).items()]
        parts += [f"- column {c}" for c in d.get("columns_removed", [])]
        parts += [
            f"column {c}: {t['old']} -> {t['new']}" for c, t in d.get("columns_retyped", {}).items()
        ]
        parts += [
            f"{k}: {_short_json(v['old'])} -> {_short_json(v['new'])}"
            for k, v in d.items()
            if k not in ("columns_added", "columns_removed", "columns_retyped")
        ]
        lines.append(f"~ entity {name}: " + "; ".join(parts))
    lines += [f"+ profile {p}" for p in diff.get("profiles_added", [])]
    lines += [f"- profile {p}" for p in diff.get("profiles_removed", [])]
    for name, d in diff.get("profiles", {}).items():
        parts = [f"+ entity {e}" for e in d.get("entities_added", [])]
        parts += [f"- entity {e}" for e in d.get("entities_removed", [])]
        for k, v in d.items():
            if k not in ("entities_added", "entities_removed", "filters"):
                parts.append(f"{k}: {_short_json(v['old'])} -> {_short_json(v['new'])}")
        for e, f in d.get("filters", {}).items():
            parts.append(
                f"filter of {e}: {_short_json(f['old'], 60)} -> {_short_json(f['new'], 60)}"
            )
        lines.append(f"~ profile {name}: " + "; ".join(parts))
    listed = {"entities_added", "entities_removed", "entities", "profiles_added"}
    listed |= {"profiles_removed", "profiles"}
    for part, change in diff.items():
        if part not in listed:
            old, new = change["old"], change["new"]
            lines.append(f"~ {part}: {_short_json(old, 60)} -> {_short_json(new, 60)}")
    return lines or ["no difference"]


def _model_diff(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        head = f"org {r['org']}: model version {r['from']} -> {r['to']}"
        return "\n".join([head, *diff_lines(r["diff"])])

    return "model.diff", {"org": ns.org, "from": ns.a, "to": ns.b}, fmt


def _model_rollback(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        org, version, to = r["org"], r["version"], r["rolled_back_to"]
        if r["unchanged"]:
            return f"org {org}: the live model (version {version}) is version {to} already"
        return f"org {org}: model version {version} (= version {to}) is live"

    return "model.rollback", {"org": ns.org, "to": ns.to}, fmt


def _model_plan(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    def fmt(r: dict[str, Any]) -> str:
        live = r["live_version"]
        lines = [f"org {r['org']}: plan against live model version {live} (nothing applied)"]
        if r["unchanged"]:
            return lines[0] + "\nno difference: a push would be a no-op"
        lines += diff_lines(r["diff"])
        rows = [
            (
                g["profile"] or "(refused)",
                g["from_profile"] or "-",
                g["users"],
                g["devices"],
                ", ".join(f"{e} ({g['sizes'][e]})" for e in g["redownload"]) or "-",
                ", ".join(g["dropped"]) or "-",
                g["rows"],
                g["bytes"],
            )
            for g in r["profiles"]
        ]
        header = ("PROFILE", "FROM", "USERS", "DEVICES", "RE-DOWNLOAD (SIZED BY)", "DROPPED")
        lines += ["", _table((*header, "ROWS", "BYTES"), rows)]
        t = r["totals"]
        lines.append(
            f"touches {t['users']} users on {t['devices']} devices:"
            f" ~{t['rows']} rows, ~{t['bytes']} bytes to download"
        )
        lines.append(f"sizes: {r['sizes']}")
        return "\n".join(lines)

    return "model.plan", {"org": ns.org, "model": _read_json(ns.file)}, fmt


def _claim(text: str) -> tuple[str, Any]:
    """``--claim NAME=VALUE``: VALUE is JSON when it parses (7, true, ["a","b"]), else text."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
    return name, value


_TRUTH: Final = {True: "true", False: "false", None: "unknown"}


def trace_lines(step: dict[str, Any], depth: int = 1) -> list[str]:
    """A filter trace (``syncd.predicates.memory.Step``) as indented lines, one per node."""
    pad = "  " * depth
    node = step["node"]
    head = f"{_TRUTH[step['result']]:<8}{pad}"
    if node in ("and", "or", "not", "all"):
        lines = [head + node]
    elif node == "related":
        rel = step["related"]
        found = "found" if rel["found"] else "no such row"
        lines = [
            head
            + f"related {rel['entity']} via {step['column']} = {_short_json(rel['key'])}: {found}"
        ]
        if rel["trace"] is not None:
            lines += trace_lines(rel["trace"], depth + 2)
        elif rel["found"]:
            lines.append(f"{'true':<8}{pad}    ({rel['entity']}: every row)")
    else:
        operand = "" if "operand" not in step else " " + _short_json(step["operand"], 60)
        row = _short_json(step.get("row_value"))
        lines = [head + f"{step['column']} {step.get('op', node)}{operand}  (row: {row})"]
    for item in step.get("items", []):
        lines += trace_lines(item, depth + 1)
    return lines


def _explain(ns: argparse.Namespace) -> tuple[str, dict[str, Any], Formatter]:
    args: dict[str, Any] = {
        "org": ns.org,
        "user": ns.user,
        "entity": ns.entity,
        "key": ns.key,
        "roles": ns.role,
        "teams": ns.team,
        "claims": dict(ns.claim),
    }

    def fmt(r: dict[str, Any]) -> str:
        where = "is on" if r["on_devices"] else "is NOT on"
        lines = [
            f"{r['entity']} {r['key']} {where} user {r['user']}'s devices"
            f" ({r['known_devices']} known): {r['reason']}"
        ]
        if r["filter"] is not None:
            lines.append(f"filter: {orjson.dumps(r['filter']).decode()}")
        if r["row"] is not None:
            lines.append(f"row: {orjson.dumps(r['row']).decode()}")
        if r["trace"] is not None:
            lines += ["trace:", *trace_lines(r["trace"])]
        return "\n".join(lines)

    return "explain", args, fmt


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    """The ``syncctl`` parser: where the daemon is, then one subcommand per admin command."""
    parser = argparse.ArgumentParser(prog="syncctl", description="Administer a running syncd.")
    where = parser.add_argument_group("where the daemon is")
    where.add_argument(
        "--socket",
        type=Path,
        help=f"admin Unix socket (default: ${SOCKET_ENV} or {DEFAULT_SOCKET})",
    )
    where.add_argument("--tcp", type=_host_port, metavar="HOST:PORT", help="admin TCP endpoint")
    where.add_argument("--cert", type=Path, help="client certificate for --tcp")
    where.add_argument("--key", type=Path, help="client key for --tcp")
    where.add_argument("--ca", type=Path, help="CA that signed the daemon's certificate")
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    topics = parser.add_subparsers(dest="topic", required=True, metavar="COMMAND")

    org = topics.add_parser("org", help="add, remove and list orgs")
    org_cmds = org.add_subparsers(dest="action", required=True)
    p = org_cmds.add_parser("add", help="add an org")
    p.add_argument("name")
    p.add_argument("--dsn", help="the org's own staging database (default: on the control server)")
    p.set_defaults(build=_org_add)
    p = org_cmds.add_parser("remove", help="remove an org and drop its staging database")
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(build=_org_remove)
    org_cmds.add_parser("list", help="list orgs").set_defaults(build=_org_list)

    model = topics.add_parser("model", help="push or fetch an org's client model")
    model_cmds = model.add_subparsers(dest="action", required=True)
    p = model_cmds.add_parser("put", help="validate, provision and activate a client model")
    p.add_argument("--org", required=True)
    p.add_argument("file", help="the model JSON file ('-' for stdin)")
    p.set_defaults(build=_model_put)
    p = model_cmds.add_parser("get", help="print the live (or a given) model version")
    p.add_argument("--org", required=True)
    p.add_argument("--version", type=int)
    p.set_defaults(build=_model_get)
    p = model_cmds.add_parser("history", help="every stored version of the org's model")
    p.add_argument("--org", required=True)
    p.set_defaults(build=_model_history)
    p = model_cmds.add_parser("diff", help="what differs from version A to version B")
    p.add_argument("--org", required=True)
    p.add_argument("a", type=int, metavar="A")
    p.add_argument("b", type=int, metavar="B")
    p.set_defaults(build=_model_diff)
    p = model_cmds.add_parser("rollback", help="push a stored version again, as a new version")
    p.add_argument("--org", required=True)
    p.add_argument("--to", type=int, required=True, metavar="N")
    p.set_defaults(build=_model_rollback)
    p = model_cmds.add_parser("plan", help="what pushing FILE would change and cost (dry run)")
    p.add_argument("--org", required=True)
    p.add_argument("file", help="the model JSON file ('-' for stdin)")
    p.set_defaults(build=_model_plan)

    profile = topics.add_parser("profile", help="assign users to profiles")
    profile_cmds = profile.add_subparsers(dest="action", required=True)
    p = profile_cmds.add_parser("assign", help="give USER the profile PROFILE")
    p.add_argument("--org", required=True)
    p.add_argument("user")
    p.add_argument("profile")
    p.set_defaults(build=_profile_assign)
    p = profile_cmds.add_parser("unassign", help="return USER to the default profile")
    p.add_argument("--org", required=True)
    p.add_argument("user")
    p.set_defaults(build=_profile_unassign)
    p = profile_cmds.add_parser("list", help="profiles and assignments of an org")
    p.add_argument("--org", required=True)
    p.set_defaults(build=_profile_list)

    topics.add_parser("status", help="the daemon's orgs and sessions").set_defaults(build=_status)

    p = topics.add_parser("token", help="mint a device token (dev mode only); prints only it")
    p.add_argument("--org", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--ttl", type=int, metavar="SECONDS")
    p.add_argument("--role", action="append", default=[])
    p.add_argument("--team", action="append", default=[])
    p.set_defaults(build=_token)

    keys = topics.add_parser("token-key", help="list, rotate and retire the sync token keys")
    key_cmds = keys.add_subparsers(dest="action", required=True)
    key_cmds.add_parser("list", help="every key and which one seals").set_defaults(
        build=_token_key_list
    )
    key_cmds.add_parser("rotate", help="add a key that seals from now on").set_defaults(
        build=_token_key_rotate
    )
    p = key_cmds.add_parser("retire", help="stop accepting tokens sealed with key ID")
    p.add_argument("id", type=int)
    p.set_defaults(build=_token_key_retire)

    p = topics.add_parser("ingest", help="apply one changeset (JSON list of entity changes)")
    p.add_argument("--org", required=True)
    p.add_argument("file", help="the changes JSON file ('-' for stdin)")
    p.set_defaults(build=_ingest)

    wb = topics.add_parser("writeback", help="drain applied uploads toward the system of record")
    wb_cmds = wb.add_subparsers(dest="action", required=True)
    p = wb_cmds.add_parser("claim", help="lease due entries (pending, failed and due, expired)")
    p.add_argument("--org", required=True)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--lease", type=float, default=60, metavar="SECONDS")
    p.set_defaults(build=_writeback_claim)
    p = wb_cmds.add_parser("done", help="mark claimed entries written back")
    p.add_argument("--org", required=True)
    p.add_argument("ids", type=int, nargs="+")
    p.set_defaults(build=_writeback_done)
    p = wb_cmds.add_parser("fail", help="record an error; the entries are retried after a backoff")
    p.add_argument("--org", required=True)
    p.add_argument("--error", required=True)
    p.add_argument("ids", type=int, nargs="+")
    p.set_defaults(build=_writeback_fail)

    from syncd.ctl_devices import add_device_commands  # it uses this module's helpers

    add_device_commands(topics)

    errors = topics.add_parser("errors", help="upload ops the server refused or conflicted")
    _json_here(errors)
    errors.add_argument("--org")
    errors.add_argument("--user")
    errors.add_argument("--since", type=_since, help="ISO-8601 time, or back from now: 30m, 2h, 7d")
    errors.add_argument("--all", action="store_true", help="include dismissed errors")
    errors.add_argument("--limit", type=int, default=100, help="newest N (default 100, max 1000)")
    errors.set_defaults(build=_errors_list)
    p = topics.add_parser("explain", help="is a row on a user's devices, and why")
    p.add_argument("--org", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--entity", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--team", action="append", default=[], help="the token's teams claim")
    p.add_argument("--role", action="append", default=[], help="the token's roles claim")
    p.add_argument(
        "--claim",
        action="append",
        default=[],
        type=_claim,
        metavar="NAME=VALUE",
        help="a custom claim of the user's token (VALUE as JSON, else text)",
    )
    p.set_defaults(build=_explain)
    error_cmds = errors.add_subparsers(dest="action", required=False)
    p = error_cmds.add_parser("dismiss", help="mark sync errors settled")
    _json_here(p)
    p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.set_defaults(build=_errors_dismiss)
    return parser


def _json_here(parser: argparse.ArgumentParser) -> None:
    """``--json`` after the command too (``syncctl errors --json``); SUPPRESS keeps the global
    flag's value when it is not repeated here."""
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS)


async def _connect(ns: argparse.Namespace) -> AdminClient:
    if ns.tcp is not None:
        host, port = ns.tcp
        return await AdminClient.open_tcp(host, port, client_tls_context(ns.cert, ns.key, ns.ca))
    return await AdminClient.open_unix(ns.socket)


async def _call(ns: argparse.Namespace, command: str, args: dict[str, Any]) -> Any:
    client = await _connect(ns)
    async with client:
        return await client.call(command, args)


def run(argv: Sequence[str], stdout: TextIO, stderr: TextIO, stdin: TextIO | None = None) -> int:
    """Run one syncctl invocation, writing to the given streams; returns the exit code.

    ``stdin`` (default ``sys.stdin``) answers confirmations, only when it is a terminal."""
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if ns.tcp is not None and not (ns.cert and ns.key and ns.ca):
        print("syncctl: --tcp needs --cert, --key and --ca (mutual TLS)", file=stderr)
        return EXIT_USAGE
    if ns.socket is None:
        ns.socket = Path(os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET)
    ns.stdin, ns.stderr = (sys.stdin if stdin is None else stdin), stderr
    try:
        command, args, fmt = ns.build(ns)
        result = asyncio.run(_call(ns, command, args))
    except UsageError as exc:
        print(f"syncctl: {exc}", file=stderr)
        return EXIT_USAGE
    except DaemonUnreachable as exc:
        print(f"syncctl: {exc}", file=stderr)
        return EXIT_UNREACHABLE
    except FrameError as exc:
        print(f"syncctl: the daemon answered garbage: {exc.message}", file=stderr)
        return EXIT_UNREACHABLE
    except AdminError as exc:
        where = f" at {exc.path}" if exc.path else ""
        print(f"syncctl: {command} refused ({exc.code}){where}: {exc.message}", file=stderr)
        return EXIT_REFUSED
    except (OSError, ssl.SSLError) as exc:  # e.g. unreadable client certificate
        print(f"syncctl: {exc}", file=stderr)
        return EXIT_USAGE
    if ns.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode(), file=stdout)
    else:
        print(fmt(result), file=stdout)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """The ``syncctl`` command (exit 0 on success, 1 on a refused command, 2 on a usage error)."""
    return run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
