"""A small CRM with teams, a business unit table and a related chain, for filter tests."""

from __future__ import annotations

import copy
from typing import Any

FIELD_MODEL: dict[str, Any] = {
    "entities": {
        "account": {
            "key": "id",
            "columns": {
                "id": "uuid",
                "name": "text",
                "owner_id": "integer",
                "team_id": "integer",
                "amount": "numeric",
                "score": "float",
                "active": "boolean",
                "modified_at": "timestamp",
                "due": "date",
                "extra": "json",
            },
        },
        "contact": {
            "key": "id",
            "columns": {"id": "integer", "account_id": "uuid", "email": "text"},
        },
        "task": {"key": "id", "columns": {"id": "integer", "contact_id": "integer"}},
        "team_member": {
            "key": "id",
            "columns": {"id": "integer", "user_id": "text", "team_id": "integer"},
        },
    },
    "memberships": {
        "teams": {"entity": "team_member", "user": "user_id", "value": "team_id"},
    },
    "profiles": {
        "sales": {
            "offline": True,
            "entities": {
                "account": {"filter": {"team": "team_id"}},
                "contact": {"filter": {"related": {"entity": "account", "via": "account_id"}}},
                "task": {"filter": {"related": {"entity": "contact", "via": "contact_id"}}},
            },
        },
        "owners": {"offline": True, "entities": {"account": {"filter": {"owner": "owner_id"}}}},
    },
    "default_profile": "sales",
}


def field_model() -> dict[str, Any]:
    return copy.deepcopy(FIELD_MODEL)


def with_filter(entity: str, flt: Any, profile: str = "sales") -> dict[str, Any]:
    d = field_model()
    d["profiles"][profile]["entities"][entity] = {"filter": flt}
    return d
