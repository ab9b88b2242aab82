"""$metadata becomes tables, keys and syncd column types; what syncd cannot carry is refused
with the entity set and the property named (read over HTTP from the stand-in service)."""

from __future__ import annotations

import pytest

from syncd.ingest.odata.csdl import MetadataError
from syncd.ingest.odata.service import EntitySetSpec, ODataService, PropertySpec
from syncd.ingest.odata.source import EntitySetConfig, ODataSource, ODataSourceConfig
from syncd.ingest.source import ColumnSpec, Source, SourceError, TableSpec
from tests.ingest.odata.support import ACCOUNTS, NOTES, TOKEN

pytestmark = pytest.mark.timeout(30)


def _fits_the_interface(source: ODataSource) -> Source:
    return source  # mypy checks ODataSource against the ingest role's Protocol here


async def test_entity_sets_become_tables_with_keys_and_column_types(
    source: ODataSource,
) -> None:
    tables = await source.describe()
    assert tables == [
        TableSpec(
            "account",
            "accountid",
            (
                ColumnSpec("accountid", "uuid"),
                ColumnSpec("name", "text"),
                ColumnSpec("numberofemployees", "integer"),
                ColumnSpec("versionnumber", "integer"),
                ColumnSpec("revenue", "numeric"),
                ColumnSpec("modifiedon", "timestamp"),
                ColumnSpec("lastvisit", "date"),
                ColumnSpec("donotemail", "boolean"),
            ),
        ),
        TableSpec("note", "noteid", (ColumnSpec("noteid", "integer"), ColumnSpec("body", "text"))),
    ]


async def _describe(sets: list[EntitySetSpec], configs: tuple[EntitySetConfig, ...]) -> None:
    svc = ODataService(sets, tokens=[TOKEN])
    await svc.start()
    src = ODataSource(ODataSourceConfig(svc.base_url, TOKEN, configs))
    try:
        await src.describe()
    finally:
        await src.close()
        await svc.close()


WITH_GEOGRAPHY = EntitySetSpec(
    "places",
    "place",
    "placeid",
    (
        PropertySpec("placeid", "Edm.Guid"),
        PropertySpec("label", "Edm.String"),
        PropertySpec("location", "Edm.GeographyPoint"),
    ),
)


async def test_a_type_syncd_cannot_carry_is_refused_naming_entity_and_property() -> None:
    with pytest.raises(MetadataError) as caught:
        await _describe([WITH_GEOGRAPHY], (EntitySetConfig("places"),))
    message = str(caught.value)
    assert "'places'" in message
    assert "'location'" in message
    assert "Edm.GeographyPoint" in message
    assert isinstance(caught.value, SourceError)  # the role shows it to the operator


async def test_listing_the_columns_leaves_such_a_property_out() -> None:
    svc = ODataService([WITH_GEOGRAPHY], tokens=[TOKEN])
    await svc.start()
    config = (EntitySetConfig("places", table="site", columns=("label",)),)
    src = ODataSource(ODataSourceConfig(svc.base_url, TOKEN, config))
    try:
        (table,) = await src.describe()
    finally:
        await src.close()
        await svc.close()
    assert table == TableSpec(
        "site", "placeid", (ColumnSpec("placeid", "uuid"), ColumnSpec("label", "text"))
    )


@pytest.mark.parametrize(
    ("spec", "config", "words"),
    [
        (
            EntitySetSpec(
                "prices",
                "price",
                "amount",
                (PropertySpec("amount", "Edm.Decimal"), PropertySpec("x", "Edm.String")),
            ),
            EntitySetConfig("prices"),
            ["'prices'", "'amount'", "numeric", "key"],
        ),
        (ACCOUNTS, EntitySetConfig("contacts"), ["'contacts'", "accounts"]),
        (ACCOUNTS, EntitySetConfig("accounts", columns=("nosuch",)), ["'nosuch'"]),
        (ACCOUNTS, EntitySetConfig("accounts", table="Bad-Name"), ["'Bad-Name'"]),
    ],
)
async def test_other_refusals_name_what_is_wrong(
    spec: EntitySetSpec, config: EntitySetConfig, words: list[str]
) -> None:
    with pytest.raises(MetadataError) as caught:
        await _describe([spec, NOTES], (config,))
    for word in words:
        assert word in str(caught.value)


def test_configuration_from_json_names_bad_fields() -> None:
    config = ODataSourceConfig.from_mapping(
        {
            "kind": "odata",
            "url": "https://example.invalid/api/data/v9.2",
            "token_env": "CRM_TOKEN",
            "entity_sets": {"accounts": {"table": "account", "columns": ["name"]}, "notes": {}},
            "page_size": 500,
        },
        env={"CRM_TOKEN": "abc"},
    )
    assert config.token == "abc"
    assert config.entity_sets == (
        EntitySetConfig("accounts", "account", ("name",)),
        EntitySetConfig("notes"),
    )
    with pytest.raises(SourceError, match="CRM_TOKEN"):
        ODataSourceConfig.from_mapping(
            {"url": "https://x", "token_env": "CRM_TOKEN", "entity_sets": {"a": {}}}, env={}
        )
    with pytest.raises(SourceError, match=r"entity_sets\.accounts"):
        ODataSourceConfig.from_mapping(
            {"url": "https://x", "token": "t", "entity_sets": {"accounts": {"where": 1}}}
        )
