"""The operator's admin commands: the sync error table, model history, diff, rollback, plan.

Strategy. These commands answer "what failed for whom" and "what will this model change
cost" (issue 11). They read the control database and staging and change nothing, except
``errors.dismiss`` (marks errors settled) and ``model.rollback``, which is a push of a stored
version through ``AdminService.model_put``, so it is validated, provisioned, persisted and
reloaded exactly like any push. ``AdminService`` registers the handlers of this class beside
its own; arguments are checked with the same helpers and refused with the same codes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import orjson

from syncd.auth import Claims
from syncd.model import ClientModel, ModelError
from syncd.server import admin as _admin  # the argument helpers (a cycle: resolved at call)
from syncd.server.admin_wire import AdminError, ErrorCode
from syncd.server.explain import explain_row
from syncd.server.model_diff import diff_models
from syncd.server.model_plan import reads_claims, transition_impact, transitions
from syncd.server.plan import PlanError, plan_for
from syncd.store.estimates import filtered_size, table_estimates

if TYPE_CHECKING:
    from syncd.server.admin import AdminService, Handler

__all__ = ["MAX_ERRORS_LISTED", "OperatorCommands"]

#: One response frame: a listing is for reading, so newest first and at most this many.
MAX_ERRORS_LISTED: Final = 1000
DEFAULT_ERRORS_LISTED: Final = 100
MAX_DISMISS: Final = 10_000

#: Counting what each user's filter selects is one statement per distinct bound filter;
#: past this many, the plan prices the remaining users with the whole table's estimate.
MAX_PLAN_COUNTS: Final = 200

SIZE_BASIS: Final = (
    "per entity, 'filter': the rows each user's own bound filter selects now, counted in"
    " staging (bytes: PostgreSQL's size of those rows); 'pg_class' or 'count': the whole"
    " staging table (PostgreSQL's estimate, or counted when never analyzed), an upper bound,"
    " used when the filter reads a token claim other than the user id, which the server does"
    " not keep; 'absent': the push creates the table"
)


class OperatorCommands:
    def __init__(self, service: AdminService) -> None:
        self._service = service

    def handlers(self) -> dict[str, Handler]:
        return {
            "errors.list": self.errors_list,
            "errors.dismiss": self.errors_dismiss,
            "model.history": self.model_history,
            "model.diff": self.model_diff,
            "model.rollback": self.model_rollback,
            "model.plan": self.model_plan,
            "explain": self.explain,
        }

    # -- the sync error table -------------------------------------------------------------

    async def errors_list(self, args: dict[str, Any]) -> dict[str, Any]:
        _admin._only(args, {"org", "user", "since", "include_dismissed", "limit"})
        org = _admin._opt_str(args, "org")
        if org is not None:
            await self._service._org(args)
        since = _admin._opt_str(args, "since")
        since_at = None
        if since is not None:
            try:
                since_at = datetime.fromisoformat(since)
            except ValueError:
                raise AdminError(
                    ErrorCode.BAD_REQUEST, "must be an ISO-8601 time with a zone", "since"
                ) from None
            if since_at.tzinfo is None:
                raise AdminError(ErrorCode.BAD_REQUEST, "the time needs a zone", "since")
        limit = _admin._opt_int(args, "limit")
        limit = DEFAULT_ERRORS_LISTED if limit is None else limit
        if not 1 <= limit <= MAX_ERRORS_LISTED:
            raise AdminError(ErrorCode.BAD_REQUEST, f"must be 1 to {MAX_ERRORS_LISTED}", "limit")
        dismissed = args.get("include_dismissed", False)
        if not isinstance(dismissed, bool):
            raise AdminError(ErrorCode.BAD_REQUEST, "must be true or false", "include_dismissed")
        table = self._service._control.sync_errors
        found = await table.find(
            org=org,
            user_id=_admin._opt_str(args, "user"),
            since=since_at,
            include_dismissed=dismissed,
            limit=limit,
        )
        return {
            "errors": [e.to_json() for e in found],
            "retention": {"rows_per_org": table.retain_rows, "days": table.retain_days},
        }

    async def errors_dismiss(self, args: dict[str, Any]) -> dict[str, Any]:
        _admin._only(args, {"ids"})
        ids = args.get("ids")
        if (
            not isinstance(ids, list)
            or not ids
            or len(ids) > MAX_DISMISS
            or not all(type(v) is int and 0 < v < 2**63 for v in ids)
        ):
            raise AdminError(
                ErrorCode.BAD_REQUEST, f"must be a list of 1 to {MAX_DISMISS} error ids", "ids"
            )
        done = await self._service._control.sync_errors.dismiss(ids)
        return {"dismissed": done, "not_open": sorted(set(ids) - set(done))}

    # -- model history, diff, rollback ----------------------------------------------------

    async def model_history(self, args: dict[str, Any]) -> dict[str, Any]:
        _admin._only(args, {"org"})
        record = await self._service._org(args)
        versions = await self._service._control.list_models(record.name)
        live = versions[-1][0] if versions else None
        return {
            "org": record.name,
            "versions": [
                {
                    "version": v,
                    "fingerprint": fingerprint,
                    "created_at": at.isoformat(),
                    "live": v == live,
                }
                for v, fingerprint, at in versions
            ],
        }

    async def _version(self, org: str, args: dict[str, Any], key: str) -> ClientModel:
        version = _admin._opt_int(args, key)
        if version is None:
            raise AdminError(ErrorCode.BAD_REQUEST, "a model version is required", key)
        stored = await self._service._control.get_model(org, version)
        if stored is None:
            raise AdminError(
                ErrorCode.NOT_FOUND, f"org {org!r} has no model version {version}", key
            )
        return stored.model

    async def model_diff(self, args: dict[str, Any]) -> dict[str, Any]:
        _admin._only(args, {"org", "from", "to"})
        record = await self._service._org(args)
        old = await self._version(record.name, args, "from")
        new = await self._version(record.name, args, "to")
        return {
            "org": record.name,
            "from": args["from"],
            "to": args["to"],
            "diff": diff_models(old, new),
        }

    async def model_rollback(self, args: dict[str, Any]) -> dict[str, Any]:
        """A new version equal to version ``to``, pushed like any model."""
        _admin._only(args, {"org", "to"})
        record = await self._service._org(args)
        target = await self._version(record.name, args, "to")
        result = await self._service.model_put({"org": record.name, "model": target.to_json()})
        return {**result, "rolled_back_to": args["to"]}

    # -- model plan -----------------------------------------------------------------------

    async def model_plan(self, args: dict[str, Any]) -> dict[str, Any]:
        """What pushing ``model`` would change and cost; nothing is applied."""
        _admin._only(args, {"org", "model"})
        record = await self._service._org(args)
        if "model" not in args:
            raise AdminError(ErrorCode.BAD_REQUEST, "missing argument 'model'", "model")
        try:
            new = ClientModel.parse(args["model"])
        except ModelError as exc:
            raise AdminError(ErrorCode.INVALID_MODEL, exc.message, exc.path) from None
        control = self._service._control
        stored = await control.get_model(record.name)
        old = None if stored is None else stored.model
        diff = diff_models(old, new)
        assignments = await control.list_assignments(record.name)
        device_counts = await control.device_users(record.name)
        groups = transitions(old, new, assignments, device_counts)
        runtime = self._service._registry.get(record.name)
        pool = None
        if runtime is not None and stored is not None:
            pool = await runtime.staging.pool()
        tables = await self._price(pool, new, groups, assignments, device_counts)
        for g in groups:
            del g["user_ids"]
        return {
            "org": record.name,
            "live_version": None if stored is None else stored.version,
            "unchanged": not diff,
            "diff": diff,
            "profiles": groups,
            "tables": tables,
            "totals": transition_impact(groups),
            "sizes": SIZE_BASIS,
            "applied": False,
        }

    async def _price(
        self,
        pool: asyncpg.Pool | None,
        new: ClientModel,
        groups: list[dict[str, Any]],
        assignments: dict[str, str],
        devices: dict[str, int],
    ) -> dict[str, dict[str, Any]]:
        """Fill each group's ``rows``, ``bytes`` and ``sizes`` (how each entity's figure was
        found); returns the staging tables' own figures."""
        wanted = sorted({e for g in groups for e in g["redownload"]})
        estimates = await table_estimates(pool, wanted) if pool is not None and wanted else {}
        counted: dict[str, tuple[int, int]] = {}  # bound filter identity -> rows, bytes
        for g in groups:
            g["rows"] = g["bytes"] = 0
            g["sizes"] = {}
            profile = None if g["profile"] is None else new.profile(g["profile"])
            for name in g["redownload"]:
                assert profile is not None
                table = estimates.get(name)
                if table is None:
                    g["sizes"][name] = "absent"  # not in staging yet: provisioned by the push
                    continue
                exact = pool is not None and not reads_claims(new, profile, name)
                for user in g["user_ids"]:
                    size = None
                    if exact and len(counted) < MAX_PLAN_COUNTS:
                        size = await self._count(pool, new, assignments, user, name, counted)
                    if size is None:
                        exact = False
                        size = (table.rows, table.bytes)
                    g["rows"] += size[0] * devices[user]
                    g["bytes"] += size[1] * devices[user]
                g["sizes"][name] = "filter" if exact else table.source
        return {
            name: {"rows": t.rows, "bytes": t.bytes, "source": t.source}
            for name, t in sorted(estimates.items())
        }

    async def _count(
        self,
        pool: asyncpg.Pool | None,
        model: ClientModel,
        assignments: dict[str, str],
        user: str,
        entity: str,
        counted: dict[str, tuple[int, int]],
    ) -> tuple[int, int] | None:
        """Rows and bytes ``user``'s own filter selects of ``entity`` under ``model``."""
        assert pool is not None
        claims = Claims(user, "", 2**62, (), (), {})
        try:
            plan = plan_for(model, 0, assignments.get(user), claims)
        except PlanError:
            return None
        (sub,) = [s for s in plan.subscriptions if s.entity.name == entity]
        identity = orjson.dumps([entity, None if sub.filter is None else plan.hashes[entity]])
        key = identity.decode()
        if key not in counted:
            try:
                counted[key] = await filtered_size(pool, sub.entity, sub.filter)
            except (asyncpg.UndefinedColumnError, asyncpg.UndefinedTableError):
                return None  # the new filter reads a column staging gets with the push
        return counted[key]

    # -- explain --------------------------------------------------------------------------

    async def explain(self, args: dict[str, Any]) -> dict[str, Any]:
        """Whether a row belongs on a user's devices, and the filter's evaluation on it."""
        _admin._only(args, {"org", "user", "entity", "key", "roles", "teams", "claims"})
        record = await self._service._org(args)
        user, name, key = (_admin._str(args, k) for k in ("user", "entity", "key"))
        model = self._service._live_model(record.name)
        try:
            entity = model.entity(name)
        except KeyError:
            raise AdminError(ErrorCode.NOT_FOUND, f"unknown entity {name!r}", "entity") from None
        extra = args.get("claims", {})
        if not isinstance(extra, dict) or not all(
            _claim_value(v) or (isinstance(v, list) and all(_claim_value(i) for i in v))
            for v in extra.values()
        ):
            raise AdminError(
                ErrorCode.BAD_REQUEST, "must map claim names to scalars or lists", "claims"
            )
        claims = Claims(
            subject=user,
            org=record.name,
            expires_at=2**62,
            roles=tuple(_admin._str_list(args, "roles")),
            teams=tuple(_admin._str_list(args, "teams")),
            extra=extra,
        )
        runtime = self._service._registry.get(record.name)
        assert runtime is not None  # _live_model checked both
        assert runtime.model is not None
        assigned = runtime.assignments.get(user)
        try:
            found = await explain_row(
                await runtime.staging.pool(),
                model,
                runtime.model.version,
                assigned,
                claims,
                entity,
                key,
                datetime.now(UTC),
            )
        except asyncpg.DataError:
            raise AdminError(
                ErrorCode.BAD_REQUEST, f"not a valid {entity.key_column.type} key", "key"
            ) from None
        devices = await self._service._control.device_users(record.name)
        return {
            "org": record.name,
            "user": user,
            "entity": name,
            "key": key,
            "model_version": runtime.model.version,
            "claims": {"roles": list(claims.roles), "teams": list(claims.teams), **extra},
            "known_devices": devices.get(user, 0),
            **found.to_json(),
        }


def _claim_value(value: object) -> bool:
    return isinstance(value, str | int | float | bool)
