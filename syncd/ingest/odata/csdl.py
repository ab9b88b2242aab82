"""The CSDL ``$metadata`` document as the tables the OData source offers.

Strategy: parse the XML once (stdlib ElementTree: its expat refuses entity-expansion bombs
since Python 3.7.1 / expat 2.4), index every EntityType by qualified name (namespace and
alias), then walk the EntityContainer's EntitySets: each becomes one ``EntitySet`` with its
key property and its properties in document order. Turning an ``EntitySet`` into a
``TableSpec`` is separate (``table_spec``) because that is where the operator's selection
applies and where types are refused: a property whose Edm type has no column type
(``edm.EDM_TYPES``) is refused with the entity set and the property named, unless the
operator listed the columns to take (then unlisted properties are never looked at).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from syncd.ingest.odata.edm import EDM_TYPES
from syncd.ingest.source import ColumnSpec, SourceError, TableSpec

__all__ = ["EntitySet", "MetadataError", "Property", "TableMap", "parse_csdl", "table_spec"]

_EDMX = "{http://docs.oasis-open.org/odata/ns/edmx}"
_EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
#: The names the client model accepts (syncd.model.IDENT_RE).
_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
#: The key types of syncd (a key must have one exact text form).
_KEY_TYPES = frozenset({"uuid", "text", "integer"})


class MetadataError(SourceError):
    """The $metadata document is not CSDL we can read, or offers what syncd cannot carry."""


@dataclass(frozen=True, slots=True)
class Property:
    name: str
    type: str  # the Edm type name as written, e.g. "Edm.Guid"
    nullable: bool
    max_length: int | None


@dataclass(frozen=True, slots=True)
class EntitySet:
    name: str
    type_name: str  # qualified, e.g. "Microsoft.Dynamics.CRM.account"
    key: tuple[str, ...]
    properties: tuple[Property, ...]

    def prop(self, name: str) -> Property | None:
        for p in self.properties:
            if p.name == name:
                return p
        return None


@dataclass(frozen=True, slots=True)
class TableMap:
    """One table as syncd sees it, and the OData names behind its table and column names."""

    spec: TableSpec
    entity_set: str
    #: column name -> property name (they differ only for Dataverse's ``_x_value`` lookups)
    properties: Mapping[str, str]


def parse_csdl(document: str | bytes) -> dict[str, EntitySet]:
    """Entity set name -> its entity set, from a $metadata document."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise MetadataError(f"$metadata is not well-formed XML: {exc}") from None
    if root.tag != f"{_EDMX}Edmx":
        raise MetadataError(f"$metadata is not a CSDL document (root element {root.tag})")
    types: dict[str, ET.Element] = {}
    containers: list[ET.Element] = []
    for schema in root.iter(f"{_EDM}Schema"):
        prefixes = [schema.get("Namespace"), schema.get("Alias")]
        for et in schema.findall(f"{_EDM}EntityType"):
            for prefix in prefixes:
                if prefix:
                    types[f"{prefix}.{et.get('Name')}"] = et
        containers.extend(schema.findall(f"{_EDM}EntityContainer"))
    sets: dict[str, EntitySet] = {}
    for container in containers:
        for es in container.findall(f"{_EDM}EntitySet"):
            name, type_name = es.get("Name"), es.get("EntityType")
            if not name or not type_name:
                raise MetadataError("$metadata: an EntitySet without Name or EntityType")
            if type_name not in types:
                raise MetadataError(
                    f"$metadata: entity set {name!r} names entity type {type_name!r},"
                    " which the document does not define"
                )
            sets[name] = _entity_set(name, type_name, types)
    return sets


def _entity_set(name: str, type_name: str, types: Mapping[str, ET.Element]) -> EntitySet:
    """The set's entity type with the key and properties its BaseType chain contributes."""
    key: tuple[str, ...] = ()
    props: list[Property] = []
    chain: list[ET.Element] = []
    current: str | None = type_name
    while current is not None:
        if current not in types or len(chain) > 32:
            raise MetadataError(f"$metadata: entity type {current!r} is undefined or cyclic")
        chain.append(types[current])
        current = types[current].get("BaseType")
    for et in reversed(chain):  # base type first, as OData orders inherited properties
        key_el = et.find(f"{_EDM}Key")
        if key_el is not None:
            key = tuple(ref.get("Name") or "" for ref in key_el.findall(f"{_EDM}PropertyRef"))
        for p in et.findall(f"{_EDM}Property"):
            max_length = p.get("MaxLength")
            props.append(
                Property(
                    name=p.get("Name") or "",
                    type=p.get("Type") or "",
                    nullable=p.get("Nullable", "true") != "false",
                    max_length=int(max_length) if max_length and max_length.isdigit() else None,
                )
            )
    return EntitySet(name, type_name, key, tuple(props))


def table_spec(
    es: EntitySet, *, table: str | None = None, columns: Sequence[str] | None = None
) -> TableMap:
    """The table an entity set becomes.

    ``table`` names it (default: the entity type's own name, e.g. ``account`` for the set
    ``accounts``); ``columns`` lists the properties to take (default: all). Refused, with the
    entity set and property named: a key of more than one property, a key whose type cannot
    key a syncd entity, a property of a type with no syncd column type, a name the client
    model cannot take.
    """
    where = f"OData entity set {es.name!r} ({es.type_name})"
    if len(es.key) != 1:
        raise MetadataError(
            f"{where}: key {list(es.key)} has {len(es.key)} properties; syncd keys an entity"
            " by exactly one"
        )
    table_name = table or es.type_name.rpartition(".")[2].lower()
    if not _IDENT.fullmatch(table_name):
        raise MetadataError(
            f"{where}: table name {table_name!r} does not match {_IDENT.pattern}; name the"
            " table in the source configuration"
        )
    wanted = list(columns) if columns is not None else [p.name for p in es.properties]
    if es.key[0] not in wanted:
        wanted.insert(0, es.key[0])
    specs: list[ColumnSpec] = []
    names: dict[str, str] = {}
    for prop_name in wanted:
        p = es.prop(prop_name)
        if p is None:
            raise MetadataError(f"{where}: no property {prop_name!r} (configured in columns)")
        ctype = EDM_TYPES.get(p.type)
        if ctype is None:
            raise MetadataError(
                f"{where}: property {p.name!r} has type {p.type!r}, which syncd cannot carry"
                f" (it knows {', '.join(sorted(EDM_TYPES))}); list the columns to take in the"
                " source configuration to leave it out"
            )
        # Dataverse exposes lookups as _<name>_value; a client model name starts with a letter.
        column = p.name.lstrip("_").lower()
        if not _IDENT.fullmatch(column):
            raise MetadataError(
                f"{where}: property {p.name!r} gives column name {column!r}, which does not"
                f" match {_IDENT.pattern}"
            )
        if column in names:
            raise MetadataError(
                f"{where}: properties {names[column]!r} and {p.name!r} both become column"
                f" {column!r}"
            )
        names[column] = p.name
        specs.append(ColumnSpec(column, ctype))
    key_column = next(c for c, pn in names.items() if pn == es.key[0])
    key_type = next(c.type for c in specs if c.name == key_column)
    if key_type not in _KEY_TYPES:
        key_prop = es.prop(es.key[0])
        raise MetadataError(
            f"{where}: key property {es.key[0]!r} has type"
            f" {key_prop.type if key_prop else '?'!r} (a {key_type} column); a syncd key is"
            f" one of {sorted(_KEY_TYPES)}"
        )
    return TableMap(TableSpec(table_name, key_column, tuple(specs)), es.name, names)
