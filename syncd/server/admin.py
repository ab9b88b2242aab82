"""The admin commands: validate whole, persist, then apply in memory.

Strategy (ARCHITECTURE.md decision 6). Every command that changes configuration validates its whole
input first, writes the control database, and only then calls ``registry.reload(org)``, which
rebuilds the org's in-memory state from the control database exactly as a NOTIFY from another
instance would. So an acknowledged command survives a restart, and this instance and its peers
apply it by the same path. A model is provisioned in staging before it is stored: a model
the staging tables cannot take (a column type change) is refused while the previous model
stays live. Mutations of one org run under a per-org lock so two admins pushing models at
once cannot interleave provisioning and versioning.

Handlers raise ``AdminError`` for refusals; anything else is a bug, logged and answered
``internal``. Each command is counted in ``metrics.admin_commands`` by outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import InvalidOperation
from pathlib import Path
from typing import Any, Final, Protocol

import asyncpg
import orjson

from syncd.auth import mint_token
from syncd.metrics import Metrics
from syncd.model import ClientModel, Column, Entity, ModelError
from syncd.server.admin_devices import DeviceCommands
from syncd.server.admin_ops import OperatorCommands
from syncd.server.admin_wire import AdminError, ErrorCode, Request, error_response, ok_response
from syncd.server.devices import DeviceControl
from syncd.server.orgs import OrgRegistry, OrgRuntime
from syncd.store import Changeset, OrgRecord, ProvisionError, apply_changeset, writeback
from syncd.store.sql import org_name_problem

__all__ = ["AdminService", "SessionInfo", "json_to_db"]

_log = logging.getLogger(__name__)

# A dev token outliving a working day is a token someone forgot about.
MAX_TOKEN_TTL: Final = 7 * 24 * 3600
# Write-back claims: a claim is one statement and one response frame, so its size is bounded
# like an upload batch; a lease longer than a day is a worker someone forgot about.
DEFAULT_CLAIM_LIMIT: Final = 100
MAX_CLAIM_LIMIT: Final = 10_000
DEFAULT_LEASE_SECONDS: Final = 60
MAX_LEASE_SECONDS: Final = 24 * 3600


class SessionInfo(Protocol):
    """What the admin service reads of a device session (``DeviceSession`` fits)."""

    @property
    def org(self) -> OrgRuntime | None: ...

    @property
    def state(self) -> str: ...


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class AdminService:
    """The admin commands (org, model, profile, token-key, ingest, write-back, status), by name.

    ``handle`` validates a request's arguments, runs its command and answers with the
    result or an AdminError naming the offending argument. Changes are persisted in the
    control database before they are acknowledged (ARCHITECTURE.md decision 6).
    """

    def __init__(
        self,
        *,
        registry: OrgRegistry,
        metrics: Metrics,
        token_issuer: str,
        token_audience: str,
        instance: str,
        dev_token_key: Path | None = None,
        sessions: Callable[[], Iterable[SessionInfo]] = lambda: (),
        devices: DeviceControl | None = None,
    ) -> None:
        self._registry = registry
        self._control = registry.control
        self._stores = registry.stores
        self._metrics = metrics
        self._issuer = token_issuer
        self._audience = token_audience
        self._instance = instance
        self._dev_token_key = dev_token_key
        self._sessions = sessions
        self._org_locks: dict[str, asyncio.Lock] = {}
        self._handlers: dict[str, Handler] = {
            "org.add": self.org_add,
            "org.remove": self.org_remove,
            "org.list": self.org_list,
            "model.put": self.model_put,
            "model.get": self.model_get,
            "profile.assign": self.profile_assign,
            "profile.unassign": self.profile_unassign,
            "profile.list": self.profile_list,
            "status": self.status,
            "token-key.list": self.token_key_list,
            "token-key.rotate": self.token_key_rotate,
            "token-key.retire": self.token_key_retire,
            "token.mint": self.token_mint,
            "ingest.apply": self.ingest_apply,
            "writeback.claim": self.writeback_claim,
            "writeback.done": self.writeback_done,
            "writeback.fail": self.writeback_fail,
        }
        if devices is not None:  # the fleet view (issue 11): devices, kick, revoke
            self._handlers.update(DeviceCommands(self, devices).handlers())
        # The operator's commands (issue 11): sync errors, model history, diff, rollback, plan.
        self._handlers.update(OperatorCommands(self).handlers())

    @property
    def commands(self) -> list[str]:
        return sorted(self._handlers)

    async def handle(self, request: Request) -> dict[str, Any]:
        """Run one request and return the response object (never raises for a refusal)."""
        handler = self._handlers.get(request.command)
        label = request.command if handler is not None else "unknown"
        try:
            if handler is None:
                raise AdminError(
                    ErrorCode.UNKNOWN_COMMAND,
                    f"unknown command {request.command!r} (known: {', '.join(self.commands)})",
                )
            result = await handler(request.args)
        except AdminError as exc:
            self._metrics.admin_commands.labels(label, exc.code.value).inc()
            _log_command(request, exc.code.value, None, exc.message)
            return error_response(request.id, exc)
        except Exception:
            # The command's one line, with the traceback: outcome "internal" is our bug.
            _log.exception(
                "admin command", extra={**_command_fields(request), "outcome": "internal"}
            )
            self._metrics.admin_commands.labels(label, "internal").inc()
            error = AdminError(ErrorCode.INTERNAL, "internal error (see the daemon log)")
            return error_response(request.id, error)
        self._metrics.admin_commands.labels(label, "ok").inc()
        _log_command(request, "ok", result)
        return ok_response(request.id, result)

    def _lock(self, org: str) -> asyncio.Lock:
        return self._org_locks.setdefault(org, asyncio.Lock())

    async def _org(self, args: Mapping[str, Any], key: str = "org") -> OrgRecord:
        name = _str(args, key)
        record = await self._control.get_org(name)
        if record is None:
            raise AdminError(ErrorCode.UNKNOWN_ORG, f"no org named {name!r}", key)
        return record

    def _live_model(self, org: str) -> ClientModel:
        runtime = self._registry.get(org)
        if runtime is None or runtime.model is None:
            raise AdminError(ErrorCode.NOT_FOUND, f"org {org!r} has no client model yet", "org")
        return runtime.model.model

    def _session_states(self) -> dict[str, Counter[str]]:
        by_org: dict[str, Counter[str]] = {}
        for session in self._sessions():
            if session.org is not None:
                by_org.setdefault(session.org.name, Counter())[session.state] += 1
        return by_org

    # -- orgs -----------------------------------------------------------------------------

    async def org_add(self, args: dict[str, Any]) -> dict[str, Any]:
        _only(args, {"name", "staging_dsn"})
        name = _str(args, "name")
        problem = org_name_problem(name)
        if problem is not None:
            raise AdminError(ErrorCode.BAD_REQUEST, f"invalid org name {name!r}: {problem}", "name")
        dsn = _opt_str(args, "staging_dsn")
        async with self._lock(name):
            if await self._control.get_org(name) is not None:
                raise AdminError(ErrorCode.CONFLICT, f"org {name!r} exists already", "name")
            try:
                record = await self._control.add_org(name, dsn)
            except asyncpg.UniqueViolationError:
                raise AdminError(ErrorCode.CONFLICT, f"org {name!r} exists already") from None
            await self._registry.reload(name)
        return {"name": record.name, "status": record.status}

    async def org_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        _only(args, {"name"})
        record = await self._org(args, "name")
        async with self._lock(record.name):
            await self._control.remove_org(record.name)
            await self._registry.reload(record.name)
            await self._stores.deprovision(record.name, record.staging_dsn)
        return {"name": record.name, "removed": True}

    async def org_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        _only(args, set())
        states = self._session_states()
        out = []
        for record in await self._control.list_orgs():
            runtime = self._registry.get(record.name)
            model = runtime.model if runtime is not None else None
            out.append(
                {
                    "name": record.name,
                    "status": record.status,
                    "loaded": runtime is not None,
                    "model_version": model.version if model is not None else None,
                    "sessions": sum(states.get(record.name, Counter()).values()),
                }
            )
        return out

    # -- models ---------------------------------------------------------------------------

    async def model_put(self, args: dict[str, Any]) -> dict[str, Any]:
        _only(args, {"org", "model"})
        record = await self._org(args)
        if "model" not in args:
            raise AdminError(ErrorCode.BAD_REQUEST, "missing argument 'model'", "model")
        try:
            model = ClientModel.parse(args["model"])
        except ModelError as exc:
            raise AdminError(ErrorCode.INVALID_MODEL, exc.message, exc.path) from None
        async with self._lock(record.name):
            live = await self._control.get_model(record.name)
            if live is not None and live.model.to_json() == model.to_json():
                # The same model again changes nothing: no new version, no reload.
                return {
                    "org": record.name,
                    "version": live.version,
                    "fingerprint": model.fingerprint,
                    "unchanged": True,
                }
            try:
                await self._stores.provision(record.name, model, record.staging_dsn)
            except ProvisionError as exc:
                path, _, message = str(exc).partition(": ")
                if not path.startswith("entities."):
                    path, message = "", str(exc)
                raise AdminError(ErrorCode.INVALID_MODEL, message, path or None) from None
            try:
                version = await self._control.put_model(record.name, model)
            except KeyError:
                raise AdminError(
                    ErrorCode.UNKNOWN_ORG, f"org {record.name!r} was removed"
                ) from None
            await self._registry.reload(record.name)
        return {
            "org": record.name,
            "version": version,
            "fingerprint": model.fingerprint,
            "unchanged": False,
        }

    async def model_get(self, args: dict[str, Any]) -> dict[str, Any]:
        _only(args, {"org", "version"})
        record = await self._org(args)
        version = _opt_int(args, "version")
        stored = await self._control.get_model(record.name, version)
        if stored is None:
            if version is None:
                raise AdminError(
                    ErrorCode.NOT_FOUND, f"org {record.name!r} has no client model yet", "org"
                )
            raise AdminError(
                ErrorCode.NOT_FOUND,
                f"org {record.name!r} has no model version {version}",
                "version",
            )
        return {
            "org": record.name,
            "version": stored.version,
            "fingerprint": stored.model.fingerprint,
            "created_at": stored.created_at.isoformat(),
            "model": stored.model.to_json(),
        }

    # -- profiles -------------------------------------------------------------------------

    async def profile_assign(self, args: dict[str, Any]) -> dict[str, Any]:
        _only(args, {"org", "user", "profile"})
        record = await self._org(args)
        user, profile = _str(args, "user"), _str(args, "profile")
        model = self._live_model(record.name)
        if profile not in {p.name for p in model.profiles}:
            known = ", ".join(p.name for p in model.profiles) or "none"
            raise AdminError(
                ErrorCode.NOT_FOUND,
                f"profile {profile!r} is not in the live model (profiles: {known})",
                "profile",
            )
        async with self._lock(record.name):
            await self._control.assign_profile(record.name, user, profile)
            await self._registry.reload(record.name)
        return {"org": record.name, "user": user, "profile": profile}

    async def profile_unassign(self, args: dict[str, Any]) -> dict[str, Any]:
        _only(args, {"org", "user"})
        record = await self._org(args)
        user = _str(args, "user")
        async with self._lock(record.name):
            had = await self._control.get_profile(record.name, user)
            await self._control.unassign_profile(record.name, user)
            await self._registry.reload(record.name)
        return {"org": record.name, "user": user, "removed": had is not None}

    async def profile_list(self, args: dict[str, Any]) -> dict[str, Any]:
        _only(args, {"org"})
        record = await self._org(args)
        runtime = self._registry.get(record.name)
        model = runtime.model.model if runtime is not None and runtime.model else None
        return {
            "org": record.name,
            "profiles": [p.name for p in model.profiles] if model is not None else [],
            "default_profile": model.default_profile if model is not None else None,
            "assignments": await self._control.list_assignments(record.name),
        }

    # -- sync token keys ------------------------------------------------------------------

    async def token_key_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        _only(args, set())
        keys = await self._control.token_keys()
        sealing = max((k.id for k in keys if k.retired_at is None), default=None)
        return [
            {
                "id": k.id,
                "created_at": k.created_at.isoformat(),
                "retired_at": None if k.retired_at is None else k.retired_at.isoformat(),
                "seals": k.id == sealing,
            }
            for k in keys
        ]

    async def token_key_rotate(self, args: dict[str, Any]) -> dict[str, Any]:
        """A new key seals tokens from now on; older tokens stay valid until retired."""
        _only(args, set())
        key = await self._control.rotate_token_key()
        await self._registry.tokens.reload_keys()
        return {"id": key.id, "created_at": key.created_at.isoformat()}

    async def token_key_retire(self, args: dict[str, Any]) -> dict[str, Any]:
        """Tokens sealed with the key stop working: their devices download anew."""
        _only(args, {"id"})
        key_id = _opt_int(args, "id")
        if key_id is None:
            raise AdminError(ErrorCode.BAD_REQUEST, "required", "id")
        try:
            await self._control.retire_token_key(key_id)
        except KeyError:
            raise AdminError(
                ErrorCode.NOT_FOUND, f"no unretired token key {key_id}", "id"
            ) from None
        except ValueError as exc:
            raise AdminError(ErrorCode.CONFLICT, str(exc), "id") from None
        await self._registry.tokens.reload_keys()
        return {"id": key_id, "retired": True}

    # -- status ---------------------------------------------------------------------------

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        _only(args, set())
        states = self._session_states()
        orgs = []
        for runtime in sorted(self._registry.all(), key=lambda r: r.name):
            model = runtime.model
            orgs.append(
                {
                    "name": runtime.name,
                    "status": runtime.record.status,
                    "model_version": model.version if model is not None else None,
                    "fingerprint": model.model.fingerprint if model is not None else None,
                    "assignments": len(runtime.assignments),
                    "sessions": dict(states.get(runtime.name, Counter())),
                }
            )
        return {
            "instance": self._instance,
            "dev_mode": self._dev_token_key is not None,
            "orgs": orgs,
            "totals": {
                "orgs": len(orgs),
                "sessions": sum(sum(c.values()) for c in states.values()),
            },
        }

    # -- tokens ---------------------------------------------------------------------------

    async def token_mint(self, args: dict[str, Any]) -> dict[str, Any]:
        _only(args, {"org", "user", "ttl_seconds", "roles", "teams"})
        if self._dev_token_key is None:
            raise AdminError(
                ErrorCode.FORBIDDEN, "token minting is only available in dev mode (syncd dev)"
            )
        record = await self._org(args)
        user = _str(args, "user")
        ttl = _opt_int(args, "ttl_seconds")
        ttl = 3600 if ttl is None else ttl
        if not 0 < ttl <= MAX_TOKEN_TTL:
            raise AdminError(
                ErrorCode.BAD_REQUEST, f"must be between 1 and {MAX_TOKEN_TTL}", "ttl_seconds"
            )
        key = await asyncio.to_thread(self._dev_token_key.read_bytes)
        token = mint_token(
            key,
            issuer=self._issuer,
            audience=self._audience,
            org=record.name,
            user=user,
            ttl_seconds=ttl,
            roles=_str_list(args, "roles"),
            teams=_str_list(args, "teams"),
        )
        return {"token": token, "expires_in": ttl}

    # -- ingest ---------------------------------------------------------------------------

    async def ingest_apply(self, args: dict[str, Any]) -> dict[str, Any]:
        _only(args, {"org", "changes"})
        record = await self._org(args)
        model = self._live_model(record.name)
        changes = args.get("changes")
        if not isinstance(changes, list):
            raise AdminError(ErrorCode.BAD_REQUEST, "must be a list", "changes")
        upserts_of: dict[str, list[Mapping[str, Any]]] = {}
        deletes_of: dict[str, list[Any]] = {}
        counts = {"upserts": 0, "deletes": 0}
        for i, change in enumerate(changes):
            path = f"changes[{i}]"
            if not isinstance(change, dict):
                raise AdminError(ErrorCode.BAD_REQUEST, "must be an object", path)
            _only(change, {"entity", "upserts", "deletes"}, path)
            name = _str(change, "entity", path)
            try:
                entity = model.entity(name)
            except KeyError:
                raise AdminError(
                    ErrorCode.NOT_FOUND, f"unknown entity {name!r}", f"{path}.entity"
                ) from None
            upserts = [
                _row(entity, row, f"{path}.upserts[{j}]")
                for j, row in enumerate(_list(change, "upserts", path))
            ]
            key = entity.key_column
            deletes = [
                json_to_db(key, k, f"{path}.deletes[{j}]")
                for j, k in enumerate(_list(change, "deletes", path))
            ]
            if upserts:
                upserts_of.setdefault(name, []).extend(upserts)
            if deletes:
                deletes_of.setdefault(name, []).extend(deletes)
            counts["upserts"] += len(upserts)
            counts["deletes"] += len(deletes)
        changeset = Changeset(upserts=upserts_of, deletes=deletes_of)
        runtime = self._registry.get(record.name)
        if runtime is None:
            raise AdminError(ErrorCode.UNKNOWN_ORG, f"org {record.name!r} is not loaded")
        try:
            await apply_changeset(await runtime.staging.pool(), model, changeset)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise AdminError(ErrorCode.BAD_REQUEST, f"rejected by staging: {exc}") from None
        return {"org": record.name, **counts}

    # -- write-back -----------------------------------------------------------------------
    # The ingest role drains applied uploads through these three commands when it reaches
    # syncd only through the admin socket (syncd/store/writeback.py holds the semantics:
    # leases, retries with backoff). Ids and limits are validated here; the SQL binds them.

    async def _staging_pool(self, args: Mapping[str, Any]) -> tuple[str, asyncpg.Pool]:
        record = await self._org(args)
        runtime = self._registry.get(record.name)
        if runtime is None:
            raise AdminError(ErrorCode.UNKNOWN_ORG, f"org {record.name!r} is not loaded", "org")
        return record.name, await runtime.staging.pool()

    async def writeback_claim(self, args: dict[str, Any]) -> dict[str, Any]:
        _only(args, {"org", "limit", "lease_seconds"})
        limit = _opt_int(args, "limit")
        limit = DEFAULT_CLAIM_LIMIT if limit is None else limit
        if not 1 <= limit <= MAX_CLAIM_LIMIT:
            raise AdminError(ErrorCode.BAD_REQUEST, f"must be 1 to {MAX_CLAIM_LIMIT}", "limit")
        lease = args.get("lease_seconds", DEFAULT_LEASE_SECONDS)
        if (
            not isinstance(lease, int | float)
            or isinstance(lease, bool)
            or not 0 < lease <= MAX_LEASE_SECONDS
        ):
            raise AdminError(
                ErrorCode.BAD_REQUEST,
                f"must be a number of seconds above 0 and at most {MAX_LEASE_SECONDS}",
                "lease_seconds",
            )
        org, pool = await self._staging_pool(args)
        entries = await writeback.claim(pool, limit, float(lease))
        return {
            "org": org,
            "entries": [
                {
                    "id": e.id,
                    "entity": e.entity,
                    "key": e.key,
                    "op": e.op,
                    "values": e.values,
                    "version": e.version,
                    "user_id": e.user_id,
                    "device_id": e.device_id,
                    "batch_id": e.batch_id,
                    "attempts": e.attempts,
                    "last_error": e.last_error,
                }
                for e in entries
            ],
        }

    async def writeback_done(self, args: dict[str, Any]) -> dict[str, Any]:
        _only(args, {"org", "ids"})
        ids = _id_list(args)
        org, pool = await self._staging_pool(args)
        return {"org": org, "done": await writeback.mark_done(pool, ids)}

    async def writeback_fail(self, args: dict[str, Any]) -> dict[str, Any]:
        _only(args, {"org", "ids", "error"})
        ids = _id_list(args)
        error = _str(args, "error")
        org, pool = await self._staging_pool(args)
        return {"org": org, "failed": await writeback.mark_failed(pool, ids, error)}


# -- the log line of each command ----------------------------------------------------------

#: Commands that change nothing are logged at debug: monitoring polls them.
_READ_ONLY: Final = frozenset(
    {"org.list", "model.get", "profile.list", "status", "token-key.list", "devices.list"}
)


def _command_fields(request: Request) -> dict[str, Any]:
    """The command and the org it names (never its other arguments: a DSN, a token)."""
    args = request.args
    org = args.get("org", args.get("name")) if isinstance(args, dict) else None
    return {"command": request.command, "org": org if isinstance(org, str) else None}


def _log_command(request: Request, outcome: str, result: Any, message: str | None = None) -> None:
    """One line per admin command: command, org, outcome, and what it changed in a word
    (the model version a push made live, the entries a write-back claim leased)."""
    fields = _command_fields(request)
    fields["outcome"] = outcome
    if message is not None:
        fields["reason"] = message
    if isinstance(result, dict):
        if "version" in result:
            fields["model_version"] = result["version"]
        if isinstance(result.get("entries"), list):
            fields["claimed"] = len(result["entries"])
        for key in ("upserts", "deletes", "done", "failed"):
            if isinstance(result.get(key), int):
                fields[key] = result[key]
    quiet = request.command in _READ_ONLY or fields.get("claimed") == 0  # a poll that found none
    level = logging.DEBUG if quiet and outcome == "ok" else logging.INFO
    _log.log(level, "admin command", extra=fields)


# -- argument helpers -----------------------------------------------------------------------


def _id_list(args: Mapping[str, Any]) -> list[int]:
    value = args.get("ids")
    if (
        not isinstance(value, list)
        or not value
        or len(value) > MAX_CLAIM_LIMIT
        or not all(type(v) is int and 0 < v < 2**63 for v in value)
    ):
        raise AdminError(
            ErrorCode.BAD_REQUEST,
            f"must be a list of 1 to {MAX_CLAIM_LIMIT} write-back entry ids",
            "ids",
        )
    return value


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _only(args: Mapping[str, Any], allowed: set[str], path: str = "") -> None:
    for key in args:
        if key not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            raise AdminError(
                ErrorCode.BAD_REQUEST, f"unknown argument (allowed: {listed})", _where(path, key)
            )


def _str(args: Mapping[str, Any], key: str, path: str = "") -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise AdminError(ErrorCode.BAD_REQUEST, "a non-empty string is required", _where(path, key))
    return value


def _opt_str(args: Mapping[str, Any], key: str) -> str | None:
    return None if args.get(key) is None else _str(args, key)


def _opt_int(args: Mapping[str, Any], key: str) -> int | None:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise AdminError(ErrorCode.BAD_REQUEST, "must be an integer", key)
    return value


def _str_list(args: Mapping[str, Any], key: str) -> list[str]:
    value = args.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AdminError(ErrorCode.BAD_REQUEST, "must be a list of strings", key)
    return value


def _list(args: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = args.get(key, [])
    if not isinstance(value, list):
        raise AdminError(ErrorCode.BAD_REQUEST, "must be a list", _where(path, key))
    return value


def _row(entity: Entity, row: object, path: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise AdminError(ErrorCode.BAD_REQUEST, "must be an object of column values", path)
    out: dict[str, Any] = {}
    for name, value in row.items():
        try:
            column = entity.column(name)
        except KeyError:
            raise AdminError(
                ErrorCode.BAD_REQUEST, f"unknown column of {entity.name}", f"{path}.{name}"
            ) from None
        out[name] = json_to_db(column, value, f"{path}.{name}")
    if entity.key not in out or out[entity.key] is None:
        raise AdminError(ErrorCode.BAD_REQUEST, f"key column {entity.key!r} is required", path)
    return out


def json_to_db(column: Column, value: Any, path: str) -> Any:
    """A JSON value as the Python value asyncpg encodes for ``column`` (None stays None).

    uuid: canonical string; numeric: decimal string or number; timestamp: ISO-8601 (naive means
    UTC) or integer microseconds since the epoch; date: ISO date or integer days since the
    epoch; bytes: base64; json: any JSON value (each type's ``from_json`` in
    ``protocol.coltypes``).
    """
    if value is None:
        return None
    try:
        return column.kind.from_json(value)
    except (ValueError, TypeError, InvalidOperation, OverflowError):
        # The converter's own exception text (Python's parsers) means nothing to the ingest
        # role; say what the column takes instead.
        shown = orjson.dumps(value).decode()
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise AdminError(
            ErrorCode.BAD_REQUEST,
            f"not a valid {column.type} value: {shown} (expected {column.kind.expected})",
            path,
        ) from None
