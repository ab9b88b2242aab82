"""What differs between two client models, as an operator reads it (no I/O).

Strategy. Both models are compared in their canonical JSON form (``ClientModel.to_json``:
shorthands expanded, writable columns in wire order), so two spellings of one model have no
difference and ``model put`` of an identical model is recognised as a no-op. The result is a
JSON-ready dict listing, per part of the model, what was added, removed or changed, with the
old and new values of each change; ``syncctl model diff`` and ``model plan`` print it.
"""

from __future__ import annotations

from typing import Any

from syncd.model import ClientModel

__all__ = ["diff_models", "is_empty"]


def _changed(old: Any, new: Any) -> dict[str, Any] | None:
    return None if old == new else {"old": old, "new": new}


def _entity_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ocols, ncols = old["columns"], new["columns"]
    added = [c for c in ncols if c not in ocols]
    removed = [c for c in ocols if c not in ncols]
    retyped = {
        c: {"old": ocols[c], "new": ncols[c]} for c in ncols if c in ocols and ocols[c] != ncols[c]
    }
    if added:
        out["columns_added"] = {c: ncols[c] for c in added}
    if removed:
        out["columns_removed"] = removed
    if retyped:
        out["columns_retyped"] = retyped
    # Every other part of the schema (key, writable, conflict, and any added later).
    for part in sorted((set(old) | set(new)) - {"columns"}):
        change = _changed(old.get(part), new.get(part))
        if change is not None:
            out[part] = change
    return out


def _profile_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in sorted((set(old) | set(new)) - {"entities"}):
        change = _changed(old.get(part), new.get(part))
        if change is not None:
            out[part] = change
    oents, nents = old["entities"], new["entities"]
    added = [e for e in nents if e not in oents]
    removed = [e for e in oents if e not in nents]
    if added:
        out["entities_added"] = added
    if removed:
        out["entities_removed"] = removed
    filters = {
        e: {"old": oents[e].get("filter"), "new": nents[e].get("filter")}
        for e in nents
        if e in oents and oents[e].get("filter") != nents[e].get("filter")
    }
    if filters:
        out["filters"] = filters
    return out


def diff_models(old: ClientModel | None, new: ClientModel) -> dict[str, Any]:
    """The differences from ``old`` (None: no model yet) to ``new``."""
    o = old.to_json() if old is not None else {"entities": {}, "profiles": {}}
    n = new.to_json()
    out: dict[str, Any] = {}
    oe, ne = o["entities"], n["entities"]
    if added := [e for e in ne if e not in oe]:
        out["entities_added"] = added
    if removed := [e for e in oe if e not in ne]:
        out["entities_removed"] = removed
    entities = {e: d for e in ne if e in oe and (d := _entity_diff(oe[e], ne[e]))}
    if entities:
        out["entities"] = entities
    op, np_ = o["profiles"], n["profiles"]
    if added := [p for p in np_ if p not in op]:
        out["profiles_added"] = added
    if removed := [p for p in op if p not in np_]:
        out["profiles_removed"] = removed
    profiles = {p: d for p in np_ if p in op and (d := _profile_diff(op[p], np_[p]))}
    if profiles:
        out["profiles"] = profiles
    for part in sorted((set(o) | set(n)) - {"entities", "profiles"}):
        change = _changed(o.get(part), n.get(part))
        if change is not None:
            out[part] = change
    return out


def is_empty(diff: dict[str, Any]) -> bool:
    return not diff
