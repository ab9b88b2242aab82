"""Edm primitive types as syncd column types, and values between OData JSON and syncd's.

Strategy: one table, ``EDM_TYPES``, from an Edm type name to the name of the column type in
``protocol.coltypes.COLUMN_TYPES`` it becomes. Reading, an OData JSON value becomes the
Python value that the column type's ``from_json`` returns (the form the ingest role's
``Source`` interface hands rows in); writing, a Python value of the column type becomes the
OData JSON value (``to_odata``). A type missing from the table has no column type here, and
the metadata parser refuses it by name rather than guess a lossy form.

Exactness: the client asks for ``IEEE754Compatible=true`` so Edm.Decimal and Edm.Int64
arrive as JSON strings, and parses any JSON number that still arrives with
``parse_float=Decimal``, so a decimal never passes through a binary float.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

from protocol.coltypes import COLUMN_TYPES

__all__ = ["EDM_TYPES", "from_odata", "to_odata"]

#: Edm primitive type -> syncd column type name. Integers of every width are 64-bit
#: integers in syncd; Edm.Single and Edm.Double are floats. Edm.Binary is left out on
#: purpose: OData JSON spells it base64url, which syncd's bytes JSON form (base64) refuses,
#: and Dataverse's only binary properties are images, which do not belong on a phone's
#: offline copy. Edm.TimeOfDay, Edm.Duration, the geography/geometry types, enums and
#: complex types have no column type.
EDM_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "Edm.Guid": "uuid",
        "Edm.String": "text",
        "Edm.Byte": "integer",
        "Edm.SByte": "integer",
        "Edm.Int16": "integer",
        "Edm.Int32": "integer",
        "Edm.Int64": "integer",
        "Edm.Decimal": "numeric",
        "Edm.Single": "float",
        "Edm.Double": "float",
        "Edm.Boolean": "boolean",
        "Edm.DateTimeOffset": "timestamp",
        "Edm.Date": "date",
    }
)
assert set(EDM_TYPES.values()) <= set(COLUMN_TYPES), "EDM_TYPES names an unknown column type"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def from_odata(column_type: str, value: Any) -> Any:
    """An OData JSON value of a property as the Python value of its syncd column type.

    Raises ValueError, TypeError, ArithmeticError or OverflowError (as ``from_json`` does)
    when the value is not one.
    """
    if value is None:
        return None
    if column_type == "integer" and isinstance(value, str):
        value = int(value)  # Edm.Int64 under IEEE754Compatible
    elif column_type == "numeric" and isinstance(value, Decimal):
        value = str(value)  # from_json takes str, int or float; keep it exact
    elif column_type == "float" and isinstance(value, Decimal):
        value = float(value)
    return COLUMN_TYPES[column_type].from_json(value)


def to_odata(column_type: str, value: Any) -> Any:
    """A Python value of a syncd column type (as ``from_json`` returns it, or its wire form
    from a write-back entry) as the OData JSON value of the property."""
    if value is None:
        return None
    if column_type == "uuid":
        return str(uuid.UUID(str(value)))
    if column_type == "numeric":
        return str(Decimal(str(value)))  # a string under IEEE754Compatible
    if column_type == "timestamp":
        if isinstance(value, int) and not isinstance(value, bool):
            value = _EPOCH + timedelta(microseconds=value)  # the wire form
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise TypeError(f"expected a timestamp, got {type(value).__name__}")
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if column_type == "date":
        if isinstance(value, int) and not isinstance(value, bool):
            value = date(1970, 1, 1) + timedelta(days=value)  # the wire form
        if isinstance(value, str):
            value = date.fromisoformat(value)
        if not isinstance(value, date):
            raise TypeError(f"expected a date, got {type(value).__name__}")
        return value.isoformat()
    if column_type == "float":
        return float(value)
    return value
