"""The CRM model most tests sync (accounts and notes) and rows for it.

``CRM_MODEL`` gives field sales their own accounts (an owner filter); ``CRM`` gives every
device all rows, for tests about the sync contract rather than filters. Both share the same
entities, so rows from ``accounts``/``notes`` fit either.
"""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

CRM_ENTITIES: dict[str, Any] = {
    "account": {
        "key": "id",
        "columns": {
            "id": "uuid",
            "name": "text",
            "owner_id": "integer",
            "amount": "numeric",
            "modified_at": "timestamp",
            "status": "integer",
        },
        "writable": ["name", "status"],
    },
    "note": {"key": "id", "columns": {"id": "integer", "body": "text", "day": "date"}},
}

CRM_MODEL: dict[str, Any] = {
    "entities": copy.deepcopy(CRM_ENTITIES),
    "profiles": {
        "field_sales": {
            "offline": True,
            "entities": {
                "account": {"filter": {"column": "owner_id", "op": "=", "param": "user.id"}},
                "note": {},
            },
        }
    },
    "default_profile": "field_sales",
}

CRM: dict[str, Any] = {
    "entities": copy.deepcopy(CRM_ENTITIES),
    "profiles": {
        "field_sales": {"offline": True, "entities": {"account": {}, "note": {}}},
        "office": {"offline": False, "entities": {"account": {}}},
    },
    "default_profile": "field_sales",
}


def accounts(n: int, owner: int = 1, start: int = 0) -> list[dict[str, object]]:
    """``n`` accounts keyed 1.. (offset by ``start``), owners cycling through three users."""
    return [
        {
            "id": uuid.UUID(int=start + i + 1),
            "name": f"Account {start + i}",
            "owner_id": owner + (i % 3),
            "amount": Decimal(f"{i}.25"),
            "modified_at": datetime(2026, 1, 1, 12, 0, i % 60, tzinfo=UTC),
            "status": i % 4,
        }
        for i in range(n)
    ]


def notes(n: int) -> list[dict[str, object]]:
    """``n`` notes keyed 0..n-1."""
    return [{"id": i, "body": f"note {i}", "day": date(2026, 1, 1 + i % 28)} for i in range(n)]


def with_task_entity(model: dict[str, Any] | None = None) -> dict[str, Any]:
    """``CRM`` (or ``model``) with a third entity, ``task``, in the field profile."""
    evolved = copy.deepcopy(CRM if model is None else model)
    evolved["entities"]["task"] = {"key": "id", "columns": {"id": "integer", "title": "text"}}
    evolved["profiles"]["field_sales"]["entities"]["task"] = {}
    return evolved
