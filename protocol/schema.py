"""The model summary a server sends in Welcome and ModelChanged.

Strategy: the device needs only enough of the client model to create its SQLite tables and
to lay out upsert rows: per entity its name, key column, ordered columns with wire types,
and which columns it may write. Filters never leave the server. Cross-field rules (key is a
column, writable columns exist, names unique) are checked here so a device can trust them.

PROTOCOL.md, "ModelSummary": column order is the order of values in every upsert row of
that entity, followed by the row version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.coltypes import COLUMN_TYPES
from protocol.validate import check_name, check_str, fail, to_tuple

__all__ = ["COLUMN_TYPES", "ColumnSchema", "EntitySchema", "ModelSummary"]

#: Fingerprints are short digests; the bound only stops a peer from using them as storage.
MAX_FINGERPRINT_LENGTH = 128


@dataclass(frozen=True, slots=True)
class ColumnSchema:
    """One column: its name and one of COLUMN_TYPES (``protocol.coltypes``)."""

    name: str
    type: str

    def __post_init__(self) -> None:
        check_name("ColumnSchema", "name", self.name)
        check_str("ColumnSchema", "type", self.type)
        if self.type not in COLUMN_TYPES:
            raise fail("ColumnSchema", "type", f"unknown column type {self.type!r}")


@dataclass(frozen=True, slots=True)
class EntitySchema:
    """One entity (table) as the device sees it."""

    name: str
    key: str
    columns: tuple[ColumnSchema, ...] = field(metadata={"nested": ColumnSchema, "many": True})
    writable: tuple[str, ...]

    def __post_init__(self) -> None:
        check_name("EntitySchema", "name", self.name)
        check_name("EntitySchema", "key", self.key)
        columns = to_tuple("EntitySchema", "columns", self.columns)
        writable = to_tuple("EntitySchema", "writable", self.writable)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "writable", writable)
        names: set[str] = set()
        for column in columns:
            if not isinstance(column, ColumnSchema):
                raise fail("EntitySchema", "columns", "expected ColumnSchema items")
            if column.name in names:
                raise fail("EntitySchema", "columns", f"duplicate column {column.name!r}")
            names.add(column.name)
        if self.key not in names:
            raise fail("EntitySchema", "key", f"{self.key!r} is not one of the columns")
        for name in writable:
            check_name("EntitySchema", "writable", name)
            if name not in names:
                raise fail("EntitySchema", "writable", f"{name!r} is not one of the columns")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """The device's view of its client model, identified by a fingerprint."""

    fingerprint: str
    entities: tuple[EntitySchema, ...] = field(metadata={"nested": EntitySchema, "many": True})

    def __post_init__(self) -> None:
        check_str("ModelSummary", "fingerprint", self.fingerprint, max_len=MAX_FINGERPRINT_LENGTH)
        entities = to_tuple("ModelSummary", "entities", self.entities)
        object.__setattr__(self, "entities", entities)
        names: set[str] = set()
        for entity in entities:
            if not isinstance(entity, EntitySchema):
                raise fail("ModelSummary", "entities", "expected EntitySchema items")
            if entity.name in names:
                raise fail("ModelSummary", "entities", f"duplicate entity {entity.name!r}")
            names.add(entity.name)

    def entity(self, name: str) -> EntitySchema | None:
        """The entity called `name`, or None."""
        for entity in self.entities:
            if entity.name == name:
                return entity
        return None
