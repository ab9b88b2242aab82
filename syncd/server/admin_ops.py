"""The operator's admin commands: the sync error table, model history, diff, rollback, plan.

Strategy. These commands answer "what failed for whom" and "what will this model change
cost" (issue 11). They read the control database and staging and change nothing, except
``errors.dismiss`` (marks errors settled) and ``model.rollback``, which is a push of a stored
version through ``AdminService.model_put``, so it is validated, provisioned, persisted and
reloaded exactly like any push. ``AdminService`` registers the handlers of this class beside
its own; arguments are checked with the same helpers and refused with the same codes.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from syncd.model import ClientModel, ModelError
from syncd.server import admin as _admin  # the argument helpers (a cycle: resolved at call)
from syncd.server.admin_wire import AdminError, ErrorCode
from syncd.server.model_diff import diff_models
from syncd.server.model_plan import transition_impact, transitions
from syncd.store.estimates import table_estimates

if TYPE_CHECKING:
    from syncd.server.admin import AdminService, Handler

__all__ = ["MAX_ERRORS_LISTED", "OperatorCommands"]

#: One response frame: a listing is for reading, so newest first and at most this many.
MAX_ERRORS_LISTED: Final = 1000
DEFAULT_ERRORS_LISTED: Final = 100
MAX_DISMISS: Final = 10_000

SIZE_BASIS: Final = (
    "rows and bytes of the whole staging table per device (pg_class estimate, or an exact"
    " count for a table never analyzed): an upper bound for filtered entities"
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
        groups = transitions(
            old,
            new,
            await control.list_assignments(record.name),
            await control.device_users(record.name),
        )
        sizes = {}
        runtime = self._service._registry.get(record.name)
        wanted = sorted({e for g in groups for e in g["redownload"]})
        if runtime is not None and stored is not None and wanted:
            sizes = await table_estimates(await runtime.staging.pool(), wanted)
        totals = transition_impact(groups, sizes)
        return {
            "org": record.name,
            "live_version": None if stored is None else stored.version,
            "unchanged": not diff,
            "diff": diff,
            "profiles": groups,
            "tables": {
                name: {"rows": s.rows, "bytes": s.bytes, "source": s.source}
                for name, s in sorted(sizes.items())
            },
            "totals": totals,
            "sizes": SIZE_BASIS,
            "applied": False,
        }
