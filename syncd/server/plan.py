"""What one device follows: its profile's entities, their compiled filters, its model summary.

Strategy: everything a session needs to know about "what may this user see" is computed once,
from the org's live client model and the verified token claims, into a `DevicePlan`. The plan
is immutable; a model change or profile reassignment produces a new plan, and comparing the
per-entity hashes of the old and new plans tells which entities must be re-downloaded.

Filters are bound here (``syncd.store.bound_filter.bind_filter``): claim values are coerced to
the compared columns' types and every entity's hash covers its bound filter's identity (the
tree and its values, parents' filters included). So membership that comes from token claims
(``user.teams``, ``user.roles``, ``claims.*``) is part of the hash: a refreshed token with
other teams re-downloads exactly the entities whose filters use them. Membership kept in
staging tables is data, not plan: it moves rows through the feed instead.

What the live hub shares is finer than a whole plan: each entity's bound filter becomes one or
more `Partition`s (``syncd.predicates.partition``: ``team in user.teams`` is one partition per
team, anything else one partition), keyed by the entity's schema and the partition's bound
filter only, so devices of different users, team sets or profiles that follow the same rows of
an entity share one read and one encoding of them per window (ARCHITECTURE.md decision 4). Hashes,
tokens and catch-up stay per entity: partitions are the live hub's business alone.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from protocol import CodedError, ColumnSchema, EntitySchema, ErrorCode, ModelSummary
from syncd.auth import Claims
from syncd.filters.nodes import FilterNode
from syncd.model import AccessSpec, ClientModel, Column, Entity, Profile
from syncd.predicates.partition import KeyPath, NodeOf, keyed_path, split_claim_list
from syncd.server.sync_token import plan_digest
from syncd.store import Subscription
from syncd.store.bound_filter import BindError, BoundFilter, bind_filter
from syncd.store.feed import time_relative

__all__ = ["DevicePlan", "Partition", "PlanError", "filter_params", "plan_for"]


class PlanError(CodedError):
    """The user may not sync: carries the wire code the session answers with."""


@dataclass(frozen=True)
class Partition:
    """Rows of one entity that devices of many plans may follow: what the live hub reads and
    encodes once per window. Equal ``key`` means equal rows in the same wire layout."""

    key: str
    subscription: Subscription
    column: Column | None = None
    """For a piece of a split filter: the rows are those whose ``column`` equals ``value``."""
    value: object = None
    keyed: KeyPath | None = None
    """For a filter keyed by one per-user value through other tables (a related parent's
    owner, a staging membership): how to ask which values a window touched (``value`` is
    this partition's)."""
    shape: str = ""
    """With ``keyed``: partitions of equal shape differ only by ``value`` (one question)."""

    @property
    def time_relative(self) -> bool:
        return time_relative(self.subscription)


@dataclass(frozen=True)
class DevicePlan:
    """What one device follows: the model version, its profile, the entities with their bound
    filters, and a hash per entity that changes exactly when the entity must be re-downloaded.
    """

    model_version: int
    profile: str
    summary: ModelSummary
    subscriptions: tuple[Subscription, ...]
    hashes: Mapping[str, str]
    partitions: tuple[Partition, ...] = ()
    """Every entity's rows as live partitions; their union per entity is its subscription."""
    digest: bytes = b""
    """``plan_digest(hashes)``: what a sync token names instead of the whole map."""
    order: tuple[str, ...] = ()
    """The entity names sorted: a token's done bitmap and progress index into this."""

    @property
    def group_key(self) -> tuple[tuple[str, str], ...]:
        """Equal keys mean equal rows for every entity."""
        return tuple(sorted(self.hashes.items()))

    def indexes(self, names: Iterable[str]) -> frozenset[int]:
        """Positions of `names` in ``order``, for a token's done bitmap."""
        position = {name: i for i, name in enumerate(self.order)}
        return frozenset(position[n] for n in names)

    def changed_entities(self, previous: Mapping[str, str]) -> tuple[str, ...]:
        """Entities of this plan that a device following `previous` must download anew."""
        return tuple(name for name, h in self.hashes.items() if previous.get(name) != h)


def filter_params(claims: Claims) -> dict[str, object]:
    """The values a filter may bind, named as filters refer to them (``user.id`` ...).

    Custom claims are offered as ``claims.<name>`` when they are a scalar or a list of
    scalars; anything else (objects) cannot be compared with a column and is left out.
    """
    params: dict[str, object] = {
        f"claims.{name}": value
        for name, value in claims.extra.items()
        if _scalar(value) or (isinstance(value, list) and all(_scalar(v) for v in value))
    }
    params.update(
        {
            "user.id": claims.subject,
            "user.roles": list(claims.roles),
            "user.teams": list(claims.teams),
            "user.business_unit": params.get("claims.business_unit"),
            "org": claims.org,
        }
    )
    return params


def _scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool) and value is not None


def plan_for(
    model: ClientModel, model_version: int, assigned_profile: str | None, claims: Claims
) -> DevicePlan:
    """The plan for the token's user, or PlanError with the code to answer."""
    profile_name = assigned_profile or model.default_profile
    if profile_name is None:
        raise PlanError(ErrorCode.FORBIDDEN, "the user has no sync profile in this org")
    try:
        profile = model.profile(profile_name)
    except KeyError:
        raise PlanError(
            ErrorCode.FORBIDDEN, f"the user's profile {profile_name!r} is not in the model"
        ) from None
    if not profile.offline:
        raise PlanError(
            ErrorCode.NOT_ALLOWED_OFFLINE, f"profile {profile_name!r} may not go offline"
        )
    params = filter_params(claims)
    subscriptions: list[Subscription] = []
    hashes: dict[str, str] = {}
    partitions: list[Partition] = []
    for name, access in profile.entities:
        entity = model.entity(name)
        try:
            row_filter = bind_filter(model, profile, name, params, claims.subject)
        except BindError as exc:
            raise PlanError(
                ErrorCode.FORBIDDEN, f"entity {name!r}: filter cannot apply: {exc}"
            ) from None
        bound: Any = None if row_filter is None else row_filter.identity
        subscriptions.append(Subscription(entity, row_filter))
        hashes[name] = _digest([entity.schema_json(), access.filter, bound])
        partitions.extend(map(_shared, _partitions(entity, access, row_filter, _node_of(profile))))
    return DevicePlan(
        model_version,
        profile_name,
        _summary(model, profile),
        tuple(subscriptions),
        hashes,
        tuple(partitions),
        plan_digest(hashes),
        tuple(sorted(hashes)),
    )


def _node_of(profile: Profile) -> NodeOf:
    def node_of(name: str) -> FilterNode | None:
        access = profile.access(name)
        return None if access is None else access.node

    return node_of


def _partitions(
    entity: Entity, access: AccessSpec, row_filter: BoundFilter | None, node_of: NodeOf
) -> tuple[Partition, ...]:
    """The entity's partitions. Keys cover the schema (the wire layout) and the partition's
    own bound filter, not the profile's filter text: different profiles or users whose
    filters select the same rows share them."""
    schema = entity.schema_json()
    if row_filter is None:
        return (Partition(_digest([schema, None]), Subscription(entity)),)
    pieces = split_claim_list(access.node, row_filter.tree)
    if pieces is None:
        key = _digest([schema, row_filter.identity])
        sub = Subscription(entity, row_filter)
        path = keyed_path(node_of, row_filter.tree)
        if path is None:
            return (Partition(key, sub),)
        shape = _digest([schema, path.shape])
        return (Partition(key, sub, value=path.value, keyed=path, shape=shape),)
    out = []
    for piece in pieces:
        f = BoundFilter(piece.tree)
        key = _digest([schema, f.identity])
        out.append(Partition(key, Subscription(entity, f), piece.column, piece.value))
    return tuple(out)


#: Partitions by key, while some plan holds them: equal keys mean equal rows in the same
#: wire layout (the live hub already serves every member of a key from the first partition
#: it was given), so plans share one object per key instead of one each. A field worker's
#: team pieces are shared by the whole team: 0.5-1 KiB of each live device (issue 10).
_PARTITIONS: weakref.WeakValueDictionary[str, Partition] = weakref.WeakValueDictionary()


def _shared(partition: Partition) -> Partition:
    kept = _PARTITIONS.get(partition.key)
    if kept is None:
        _PARTITIONS[partition.key] = kept = partition
    return kept


#: The Welcome's model summary per (model, profile), shared by every session of the profile
#: (it depends on no claim): built per session, it was ~1 KiB of each idle device's memory
#: and a digest per connect. The model is kept in the value so its id cannot be reused.
_SUMMARIES: dict[tuple[int, str], tuple[ClientModel, ModelSummary]] = {}
#: A bound, not a policy: models are replaced on every model change.
_SUMMARIES_KEPT = 256


def _summary(model: ClientModel, profile: Profile) -> ModelSummary:
    key = (id(model), profile.name)
    kept = _SUMMARIES.get(key)
    if kept is not None and kept[0] is model:
        return kept[1]
    schemas = [_entity_schema(model.entity(name)) for name, _ in profile.entities]
    fingerprint = _digest([[s.name, s.key, [[c.name, c.type] for c in s.columns]] for s in schemas])
    summary = ModelSummary(fingerprint=fingerprint, entities=tuple(schemas))
    if len(_SUMMARIES) >= _SUMMARIES_KEPT:
        _SUMMARIES.clear()
    _SUMMARIES[key] = (model, summary)
    return summary


def _entity_schema(entity: Entity) -> EntitySchema:
    return EntitySchema(
        name=entity.name,
        key=entity.key,
        columns=tuple(ColumnSchema(c.name, c.type) for c in entity.columns),
        writable=tuple(c.name for c in entity.columns if c.name in entity.writable),
    )


def _digest(value: object) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
