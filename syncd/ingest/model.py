"""The client model of an org: entities from the source's metadata, the rest from the operator.

Strategy. The source knows the tables, keys and column types; only the operator knows who may
go offline with what. So the model is derived, never written by hand: every table in scope
becomes an entity (key and columns as the source describes them, in the source's order), and
the operator's profiles file adds what metadata cannot say: per entity the writable columns
and the conflict policy, and the profiles with their filters and the default profile. The
result goes to ``model.put`` whole, so an inconsistent file (a writable column the source
lacks, a profile naming a table out of scope) is refused by syncd with the JSON path of the
problem. A new column or table at the source changes the derived model: a model change.

The profiles file::

    {"entities": {"account": {"writable": ["name"], "conflict": "server_wins"}},
     "profiles": {"field_sales": {"offline": true, "entities": {...}}},
     "default_profile": "field_sales"}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from syncd.ingest.source import TableSpec

__all__ = ["ProfilesError", "changed_tables", "check_profiles", "derive_model"]

_PROFILE_KEYS = {"entities", "profiles", "default_profile"}
_ENTITY_KEYS = {"writable", "conflict"}


class ProfilesError(ValueError):
    """The operator's profiles file is not of the documented shape."""


def check_profiles(doc: object) -> dict[str, Any]:
    """The profiles file as a dict, or ProfilesError naming the problem."""
    if not isinstance(doc, dict):
        raise ProfilesError("the profiles file must be a JSON object")
    unknown = sorted(set(doc) - _PROFILE_KEYS)
    if unknown:
        raise ProfilesError(f"unknown keys {unknown} (allowed: {sorted(_PROFILE_KEYS)})")
    if not isinstance(doc.get("profiles"), dict) or not doc["profiles"]:
        raise ProfilesError("'profiles' must be an object with at least one profile")
    entities = doc.get("entities", {})
    if not isinstance(entities, dict):
        raise ProfilesError("'entities' must be an object of entity name -> settings")
    for name, spec in entities.items():
        if not isinstance(spec, dict) or set(spec) - _ENTITY_KEYS:
            raise ProfilesError(
                f"entities.{name}: must be an object with only {sorted(_ENTITY_KEYS)}"
            )
    return doc


def derive_model(tables: Sequence[TableSpec], profiles: Mapping[str, Any]) -> dict[str, Any]:
    """The client model JSON for ``tables`` under the operator's ``profiles`` file."""
    overrides: Mapping[str, Mapping[str, Any]] = profiles.get("entities", {})
    entities: dict[str, Any] = {}
    for t in tables:
        entity: dict[str, Any] = {
            "key": t.key,
            "columns": {c.name: c.type for c in t.columns},
        }
        entity.update(overrides.get(t.name, {}))
        entities[t.name] = entity
    model: dict[str, Any] = {"entities": entities, "profiles": profiles["profiles"]}
    if "default_profile" in profiles:
        model["default_profile"] = profiles["default_profile"]
    return model


def changed_tables(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Entities of ``new`` that are new or have columns ``old`` lacks: their rows need a
    fresh copy (a column added at the source holds values the stream never carried)."""
    before = (old or {}).get("entities", {})
    out = []
    for name, entity in new["entities"].items():
        prior = before.get(name)
        if prior is None or set(entity["columns"]) - set(prior.get("columns", {})):
            out.append(name)
    return out
