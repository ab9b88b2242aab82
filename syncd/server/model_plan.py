"""What a model push would cost, computed before it is made (``syncctl model plan``).

Strategy. A device re-downloads an entity when the entity's plan hash changes
(``DevicePlan.changed_entities``, ``syncd.server.plan``): the hash covers the entity's schema
(columns, key, writable, conflict), its canonical filter and its bound filter, whose identity
covers the filters of the related parents up the chain and the values bound from claims.
Pushing a model changes no claim, so for any one user the hash changes exactly when one of
these does: the entity's schema, its filter, or, up the related chain, a parent's filter or
the type of a column that filter reads (claims and literals are coerced to it), or the type
of a membership's user column the chain uses. ``refetch_key`` is that list, claim values
left out, so it needs no token; a test checks its predictions against what real devices
download after the push.

Per user, the old plan is the user's profile in the live model and the new one the profile
the new model gives them (an assignment, else the new default): an entity of the new profile
is downloaded anew when its key differs from the old profile's (or it had none), an entity
only in the old profile is dropped from the device, and a user whose new profile is missing
or may not go offline is refused at the next Hello. Users are those of the org's known
devices (the control database's ``devices``). Sizes come from staging
(``syncd.store.estimates``): for an entity whose filter binds nothing but the user id,
memberships and literals, the rows each user's own bound filter selects, counted; for a
filter that reads another token claim (which the server does not keep), and past a bound on
the number of counts, the whole table's estimate, an upper bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from syncd.filters.nodes import walk
from syncd.model import ClientModel, Profile

__all__ = [
    "UNCLAIMED_PARAMS",
    "profile_for",
    "reads_claims",
    "refetch_key",
    "transition_impact",
    "transitions",
]


def profile_for(model: ClientModel, assigned: str | None) -> Profile | None:
    """The profile a user syncs with under ``model``; None when they may not sync."""
    name = assigned or model.default_profile
    if name is None:
        return None
    try:
        profile = model.profile(name)
    except KeyError:
        return None
    return profile if profile.offline else None


def _chain_key(model: ClientModel, profile: Profile, entity: str) -> list[Any]:
    """What the bound filter of ``entity`` covers beyond the entity's own schema, minus the
    values of claims: its filter, its columns' types, memberships' user types, parents (as
    each node ``reads`` them, so a new kind of filter needs nothing here)."""
    access = profile.access(entity)
    if access is None or access.node is None:
        return [entity, None]
    e = model.entity(entity)
    parts: list[Any] = []
    for n in walk(access.node):
        reads = n.reads()
        if reads.column is None:
            continue  # and, or, not, all: nothing of their own
        if reads.parent is not None:
            parts.append(["related", reads.column, _chain_key(model, profile, reads.parent)])
        elif reads.membership is not None:
            spec = model.membership(reads.membership)
            user_type = model.entity(spec.entity).column(spec.user).type
            parts.append([reads.column, e.column(reads.column).type, spec.name, user_type])
        else:
            parts.append([reads.column, e.column(reads.column).type])
    return [entity, access.filter, parts]


def refetch_key(model: ClientModel, profile: Profile, entity: str) -> list[Any]:
    """Equal for two (model, profile) pairs exactly when a device keeps ``entity``."""
    access = profile.access(entity)
    schema = model.entity(entity).schema_json()
    return [schema, None if access is None else access.filter, _chain_key(model, profile, entity)]


def transitions(
    old: ClientModel | None,
    new: ClientModel,
    assignments: Mapping[str, str],
    device_users: Mapping[str, int],
) -> list[dict[str, Any]]:
    """Per (old profile, new profile) pair: what its devices download anew or drop, and how
    many users and devices that is; every profile of the new model is listed."""
    groups: dict[tuple[str | None, str | None], list[str]] = {}
    for user in device_users:
        assigned = assignments.get(user)
        before = profile_for(old, assigned) if old is not None else None
        after = profile_for(new, assigned)
        pair = (None if before is None else before.name, None if after is None else after.name)
        groups.setdefault(pair, []).append(user)
    for p in new.profiles:
        if p.offline:
            same = old is not None and profile_for(old, p.name) is not None
            groups.setdefault((p.name if same else None, p.name), [])
    out = []
    for (before_name, after_name), users in sorted(groups.items(), key=lambda kv: str(kv[0])):
        before = None if before_name is None or old is None else old.profile(before_name)
        after = None if after_name is None else new.profile(after_name)
        refetch: list[str] = []
        dropped: list[str] = []
        if after is not None:
            for name, _access in after.entities:
                if (
                    before is None
                    or old is None
                    or before.access(name) is None
                    or refetch_key(old, before, name) != refetch_key(new, after, name)
                ):
                    refetch.append(name)
        if before is not None:
            kept = {n for n, _ in after.entities} if after is not None else set()
            dropped = [n for n, _ in before.entities if n not in kept]
        out.append(
            {
                "from_profile": before_name,
                "profile": after_name,
                "refused": after is None,
                "redownload": refetch,
                "dropped": dropped,
                "users": len(users),
                "devices": sum(device_users[u] for u in users),
                "user_ids": users,
            }
        )
    return out


def reads_claims(model: ClientModel, profile: Profile, entity: str) -> bool:
    """Whether the entity's filter, up its related chain, binds a token claim other than the
    user id (the server keeps no tokens, so such a filter cannot be bound for a count)."""
    access = profile.access(entity)
    if access is None or access.node is None:
        return False
    for n in walk(access.node):
        reads = n.reads()
        if reads.param is not None and reads.param not in UNCLAIMED_PARAMS:
            return True
        if reads.parent is not None and reads_claims(model, profile, reads.parent):
            return True
    return False


#: Parameters a filter may bind that the server knows without the user's token.
UNCLAIMED_PARAMS: frozenset[str] = frozenset(("user.id", "org"))


def transition_impact(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The totals over every device: users and devices touched, rows and bytes to send."""
    touched = [g for g in groups if g["redownload"] or g["dropped"] or g["refused"]]
    return {
        "users": sum(g["users"] for g in touched),
        "devices": sum(g["devices"] for g in touched),
        "rows": sum(g["rows"] for g in groups),
        "bytes": sum(g["bytes"] for g in groups),
    }
