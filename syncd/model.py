"""The client model: which entities an org syncs, their columns, and who gets what.

Strategy: the ingest role pushes the model as JSON; ``ClientModel.parse`` validates the whole
document in one pass and raises ``ModelError`` naming the JSON path of the first offence, so an
admin sees ``entities.account.columns.amount: unknown type 'money'`` rather than a traceback.
Everything downstream (provisioning, the feed, sessions) trusts a parsed model: names match
``IDENT_RE`` and may be quoted into SQL as identifiers, types are names in ``COLUMN_TYPES``
(the column-type registry, ``protocol.coltypes``).

Filters are parsed by ``syncd.filters`` against this model's schema while the model is parsed;
their errors get the profile and entity prefixed (``profiles.sales.entities.contact.filter.
related.via: unknown column``). Cross-entity rules live here: a ``related`` parent must be in
the same profile, and chains of related entities are acyclic and at most three deep.

Keys are single columns of type uuid, text or integer: every device table and every delete
message is keyed by one value, and those three types have one exact canonical text form, which
is how the change log records a key.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import orjson

from protocol.coltypes import COLUMN_TYPES, ColumnType
from syncd.filters import MAX_RELATED_DEPTH, FilterError, FilterNode, SchemaView, parse_filter
from syncd.filters.nodes import Related, walk
from syncd.filters.values import COMPARABLE_TYPES

__all__ = [
    "COLUMN_TYPES",
    "CONFLICT_POLICIES",
    "DEFAULT_PRIORITY",
    "IDENT_RE",
    "KEY_TYPES",
    "MAX_PROFILE_ENTITIES",
    "PRIORITIES",
    "AccessSpec",
    "ClientModel",
    "Column",
    "ConflictPolicy",
    "Entity",
    "MembershipSpec",
    "ModelError",
    "Profile",
]

# Lower-case so names never need case folding; a leading underscore is reserved for the
# system columns (_version, _txid); 48 characters leaves room for prefixes within
# PostgreSQL's 63-byte identifier limit (e.g. trigger and function names).
IDENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")

#: Types a key column may have (the registry's ``key`` entries: one exact text form each).
KEY_TYPES: frozenset[str] = frozenset(name for name, t in COLUMN_TYPES.items() if t.key)

ConflictPolicy = Literal["server_wins", "client_wins", "merge"]
CONFLICT_POLICIES: frozenset[str] = frozenset(("server_wins", "client_wins", "merge"))
#: Sync priorities, as PowerSync's: 0 is downloaded first, 3 last. A first sync sends the
#: entities of each priority before the next, with a checkpoint after each (PROTOCOL.md,
#: "Priorities"), so an app can open on what it needs most while the rest streams.
PRIORITIES: range = range(4)
#: An entity without a priority is downloaded last, after every entity given one.
DEFAULT_PRIORITY = 3


#: Entities one profile may give a device: a sync token keeps one bit per entity, and this
#: bound keeps the token within PROTOCOL.md's 1,024 bytes (syncd.server.sync_token).
MAX_PROFILE_ENTITIES = 1000


class ModelError(ValueError):
    """A client model document is invalid; ``path`` locates the offending JSON node."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class Column:
    """One column of an entity; ``type`` is the name of a registered column type."""

    name: str
    type: str
    #: The registry entry of ``type`` (``protocol.coltypes``), looked up once.
    kind: ColumnType = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", COLUMN_TYPES[self.type])


@dataclass(frozen=True, slots=True)
class Entity:
    """One synced table: its key, columns in wire order, writable columns, conflict policy."""

    name: str
    key: str
    columns: tuple[Column, ...]  # wire order, key included
    writable: frozenset[str] = frozenset()
    conflict: ConflictPolicy = "server_wins"
    priority: int = DEFAULT_PRIORITY
    """Download order of a first sync (0 first); not part of the schema: changing it
    re-downloads nothing."""

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def key_column(self) -> Column:
        return self.column(self.key)

    @property
    def key_index(self) -> int:
        """Position of the key in a wire row."""
        return [c.name for c in self.columns].index(self.key)

    def schema_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "columns": {c.name: c.type for c in self.columns},
        }
        if self.writable:
            # Canonical: writable in wire order, whatever order it was given in.
            out["writable"] = [c.name for c in self.columns if c.name in self.writable]
        out["conflict"] = self.conflict
        return out


@dataclass(frozen=True, slots=True)
class AccessSpec:
    """What a profile gets of one entity: ``filter`` is the canonical filter JSON and
    ``node`` its parsed form; None means all rows."""

    filter: dict[str, Any] | None = None
    node: FilterNode | None = None

    @property
    def parents(self) -> tuple[str, ...]:
        """Entities whose selected rows this filter refers to (``related``)."""
        if self.node is None:
            return ()
        return tuple(dict.fromkeys(n.entity for n in walk(self.node) if isinstance(n, Related)))


@dataclass(frozen=True, slots=True)
class MembershipSpec:
    """A staging table listing, per user, the values (teams, units...) they belong to."""

    name: str
    entity: str
    user: str  # column holding the user id (the token's subject)
    value: str  # column holding the member value

    def to_json(self) -> dict[str, str]:
        return {"entity": self.entity, "user": self.user, "value": self.value}


@dataclass(frozen=True, slots=True)
class Profile:
    """Who may go offline and which entities (with which filters) their devices receive."""

    name: str
    offline: bool
    entities: tuple[tuple[str, AccessSpec], ...]  # in document order

    def access(self, entity: str) -> AccessSpec | None:
        for name, spec in self.entities:
            if name == entity:
                return spec
        return None


@dataclass(frozen=True, slots=True)
class ClientModel:
    """An org's whole client model, parsed and validated (``ClientModel.parse``); immutable."""

    entities: tuple[Entity, ...]
    profiles: tuple[Profile, ...]
    default_profile: str | None = None
    memberships: tuple[MembershipSpec, ...] = ()

    def membership(self, name: str) -> MembershipSpec:
        for m in self.memberships:
            if m.name == name:
                return m
        raise KeyError(name)

    def entity(self, name: str) -> Entity:
        for e in self.entities:
            if e.name == name:
                return e
        raise KeyError(name)

    def profile(self, name: str) -> Profile:
        for p in self.profiles:
            if p.name == name:
                return p
        raise KeyError(name)

    @classmethod
    def parse(cls, obj: object) -> ClientModel:
        return _parse_model(obj)

    @classmethod
    def from_json_bytes(cls, data: bytes | str) -> ClientModel:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise ModelError("", f"not JSON: {e}") from e
        return _parse_model(obj)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "entities": {e.name: _entity_json(e) for e in self.entities},
            "profiles": {
                p.name: {
                    "offline": p.offline,
                    "entities": {
                        name: ({} if spec.filter is None else {"filter": spec.filter})
                        for name, spec in p.entities
                    },
                }
                for p in self.profiles
            },
        }
        if self.default_profile is not None:
            out["default_profile"] = self.default_profile
        if self.memberships:
            out["memberships"] = {m.name: m.to_json() for m in self.memberships}
        return out

    @property
    def fingerprint(self) -> str:
        """sha256 hex of every entity schema of the org's model (what `syncctl org list`
        shows). Not Welcome's fingerprint, which covers only the entities of one device's
        profile, in its wire layout (``syncd.server.plan``)."""
        # Columns as [name, type] pairs: key sorting must not erase the wire order.
        schemas = {
            e.name: {**_entity_json(e), "columns": [[c.name, c.type] for c in e.columns]}
            for e in self.entities
        }
        return hashlib.sha256(orjson.dumps(schemas, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _entity_json(entity: Entity) -> dict[str, Any]:
    """The entity as the model document holds it: its schema, and its priority when it has
    one other than the default (so models written before priorities keep their form)."""
    out = entity.schema_json()
    if entity.priority != DEFAULT_PRIORITY:
        out["priority"] = entity.priority
    return out


def _parse_model(obj: object) -> ClientModel:
    root = _object(obj, "")
    _only_keys(root, "", {"entities", "profiles", "default_profile", "memberships"})
    entities_obj = _object(root.get("entities"), "entities")
    if not entities_obj:
        raise ModelError("entities", "at least one entity is required")
    entities = tuple(
        _parse_entity(name, spec, f"entities.{name}") for name, spec in entities_obj.items()
    )
    by_name = {e.name: e for e in entities}
    memberships = tuple(
        _parse_membership(name, spec, f"memberships.{name}", by_name)
        for name, spec in _object(root.get("memberships", {}), "memberships").items()
    )
    schema = SchemaView(
        columns={e.name: {c.name: c.type for c in e.columns} for e in entities},
        keys={e.name: e.key for e in entities},
        memberships={m.name: by_name[m.entity].column(m.value).type for m in memberships},
    )
    profiles_obj = _object(root.get("profiles", {}), "profiles")
    profiles = tuple(
        _parse_profile(name, spec, f"profiles.{name}", schema)
        for name, spec in profiles_obj.items()
    )
    default = root.get("default_profile")
    if default is not None and (not isinstance(default, str) or default not in profiles_obj):
        raise ModelError("default_profile", f"unknown profile {default!r}")
    return ClientModel(
        entities=entities, profiles=profiles, default_profile=default, memberships=memberships
    )


def _parse_entity(name: str, obj: object, path: str) -> Entity:
    _ident(name, path)
    spec = _object(obj, path)
    _only_keys(spec, path, {"key", "columns", "writable", "conflict", "priority"})
    cols_obj = _object(spec.get("columns"), f"{path}.columns")
    if not cols_obj:
        raise ModelError(f"{path}.columns", "at least one column is required")
    columns: list[Column] = []
    for cname, ctype in cols_obj.items():
        cpath = f"{path}.columns.{cname}"
        _ident(cname, cpath)
        if not isinstance(ctype, str) or ctype not in COLUMN_TYPES:
            raise ModelError(cpath, f"unknown type {ctype!r}")
        columns.append(Column(cname, ctype))
    key = spec.get("key")
    if not isinstance(key, str):
        raise ModelError(f"{path}.key", "exactly one key column name (a string) is required")
    if key not in cols_obj:
        raise ModelError(f"{path}.key", f"key {key!r} is not a declared column")
    if cols_obj[key] not in KEY_TYPES:
        raise ModelError(
            f"{path}.key", f"key type {cols_obj[key]!r} is not one of {sorted(KEY_TYPES)}"
        )
    writable_obj = spec.get("writable", [])
    if not isinstance(writable_obj, list):
        raise ModelError(f"{path}.writable", "must be a list of column names")
    writable: set[str] = set()
    for i, w in enumerate(writable_obj):
        if not isinstance(w, str) or w not in cols_obj:
            raise ModelError(f"{path}.writable[{i}]", f"unknown column {w!r}")
        if w in writable:
            raise ModelError(f"{path}.writable[{i}]", f"duplicate column {w!r}")
        writable.add(w)
    conflict = spec.get("conflict", "server_wins")
    if not isinstance(conflict, str) or conflict not in CONFLICT_POLICIES:
        raise ModelError(
            f"{path}.conflict", f"{conflict!r} is not one of {sorted(CONFLICT_POLICIES)}"
        )
    priority = spec.get("priority", DEFAULT_PRIORITY)
    if type(priority) is not int or priority not in PRIORITIES:
        raise ModelError(
            f"{path}.priority",
            f"{priority!r} is not a priority: an integer from {PRIORITIES.start} (first)"
            f" to {PRIORITIES.stop - 1} (last, the default)",
        )
    return Entity(
        name=name,
        key=key,
        columns=tuple(columns),
        writable=frozenset(writable),
        conflict=cast(ConflictPolicy, conflict),
        priority=priority,
    )


def _parse_membership(
    name: str, obj: object, path: str, entities: dict[str, Entity]
) -> MembershipSpec:
    _ident(name, path)
    spec = _object(obj, path)
    _only_keys(spec, path, {"entity", "user", "value"})
    ename = spec.get("entity")
    if not isinstance(ename, str) or ename not in entities:
        raise ModelError(f"{path}.entity", f"unknown entity {ename!r}")
    entity = entities[ename]
    cols = {c.name: c.type for c in entity.columns}
    for part in ("user", "value"):
        col = spec.get(part)
        if not isinstance(col, str) or col not in cols:
            raise ModelError(f"{path}.{part}", f"unknown column {col!r} of entity {ename!r}")
        if cols[col] not in COMPARABLE_TYPES:
            raise ModelError(f"{path}.{part}", f"a {cols[col]} column cannot be matched")
    return MembershipSpec(name, ename, spec["user"], spec["value"])


def _parse_profile(name: str, obj: object, path: str, schema: SchemaView) -> Profile:
    _ident(name, path)
    spec = _object(obj, path)
    _only_keys(spec, path, {"offline", "entities"})
    offline = spec.get("offline", False)
    if not isinstance(offline, bool):
        raise ModelError(f"{path}.offline", "must be true or false")
    ents_obj = _object(spec.get("entities", {}), f"{path}.entities")
    if len(ents_obj) > MAX_PROFILE_ENTITIES:
        raise ModelError(
            f"{path}.entities",
            f"{len(ents_obj)} entities; a profile may have at most {MAX_PROFILE_ENTITIES}"
            " (a device's sync token marks each one's progress)",
        )
    entities: list[tuple[str, AccessSpec]] = []
    for ename, access in ents_obj.items():
        epath = f"{path}.entities.{ename}"
        if ename not in schema.columns:
            raise ModelError(epath, f"unknown entity {ename!r}")
        access_obj = _object(access, epath)
        _only_keys(access_obj, epath, {"filter"})
        flt = access_obj.get("filter")
        if flt is None:
            entities.append((ename, AccessSpec()))
            continue
        if not isinstance(flt, dict):
            raise ModelError(f"{epath}.filter", "must be a JSON object")
        try:
            node = parse_filter(flt, ename, schema)
        except FilterError as exc:
            where = f"{epath}.filter" + (
                exc.path if exc.path.startswith("[") or not exc.path else f".{exc.path}"
            )
            raise ModelError(where, exc.message) from None
        entities.append((ename, AccessSpec(filter=node.to_json(), node=node)))
    _check_related(dict(entities), f"{path}.entities")
    return Profile(name=name, offline=offline, entities=tuple(entities))


def _check_related(access: dict[str, AccessSpec], path: str) -> None:
    """Parents are in the profile; chains are acyclic and at most MAX_RELATED_DEPTH deep."""
    for ename, spec in access.items():
        for parent in spec.parents:
            if parent not in access:
                raise ModelError(
                    f"{path}.{ename}.filter",
                    f"related entity {parent!r} is not synced by this profile",
                )

    def depth(ename: str, seen: tuple[str, ...]) -> int:
        if ename in seen:
            chain = " -> ".join((*seen, ename))
            raise ModelError(f"{path}.{seen[0]}.filter", f"related entities form a cycle: {chain}")
        parents = access[ename].parents
        return 0 if not parents else 1 + max(depth(p, (*seen, ename)) for p in parents)

    for ename in access:
        if depth(ename, ()) > MAX_RELATED_DEPTH:
            raise ModelError(
                f"{path}.{ename}.filter",
                f"related chain is deeper than {MAX_RELATED_DEPTH} levels",
            )


def _object(obj: object, path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ModelError(path, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _only_keys(obj: dict[str, Any], path: str, allowed: set[str]) -> None:
    for k in obj:
        if k not in allowed:
            where = f"{path}.{k}" if path else str(k)
            raise ModelError(where, f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _ident(name: object, path: str) -> None:
    if not isinstance(name, str) or not IDENT_RE.fullmatch(name):
        raise ModelError(path, f"invalid name {name!r}: must match {IDENT_RE.pattern}")
