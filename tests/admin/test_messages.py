"""The exact refusals an admin reads: org names (DNS labels), missing models, bad values.

Through the real admin socket, and through syncctl for what a person types.
"""

from __future__ import annotations

from typing import Any

import pytest

from syncd.ctl import AdminClient
from syncd.server.admin_wire import AdminError, ErrorCode
from tests.admin.conftest import AdminStack
from tests.conftest import CRM_MODEL, unique_name
from tests.support.ctl import syncctl

DNS_LABEL = (
    "an org name is a DNS label (devices reach it as <org>.<domain> by TLS SNI):"
    " lowercase letters, digits and '-' only"
)


async def refused(client: AdminClient, command: str, args: dict[str, Any]) -> AdminError:
    with pytest.raises(AdminError) as info:
        await client.call(command, args)
    return info.value


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a_b", f"{DNS_LABEL}, not '_'"),
        ("Acme", f"{DNS_LABEL}, not 'A'"),
        ("acme.eu", f"{DNS_LABEL}, not '.'"),
        ("-acme", "an org name cannot start or end with '-' (it is a DNS label)"),
        ("acme-", "an org name cannot start or end with '-' (it is a DNS label)"),
        ("a" * 41, "an org name has at most 40 characters, this one 41"),
    ],
)
async def test_org_add_names_the_problem_with_the_name(
    client: AdminClient, name: str, problem: str
) -> None:
    err = await refused(client, "org.add", {"name": name})
    assert (err.code, err.path, err.message) == (
        ErrorCode.BAD_REQUEST,
        "name",
        f"invalid org name {name!r}: {problem}",
    )
    assert await client.call("org.list") == []


async def test_org_add_of_an_empty_name(client: AdminClient) -> None:
    err = await refused(client, "org.add", {"name": ""})
    assert (err.code, err.path, err.message) == (
        ErrorCode.BAD_REQUEST,
        "name",
        "a non-empty string is required",
    )


@pytest.mark.parametrize("name", ["acme-eu", "1st-org", "a", "x" * 40, "xn--bcher-kva"])
async def test_dns_label_names_are_accepted_and_work(
    admin: AdminStack, client: AdminClient, name: str
) -> None:
    assert await client.call("org.add", {"name": name}) == {"name": name, "status": "active"}
    result = await client.call("model.put", {"org": name, "model": CRM_MODEL})
    assert result["version"] == 1  # its staging database (named after it) exists and took it
    await client.call("org.remove", {"name": name})


async def test_syncctl_org_add_refuses_an_underscore(admin: AdminStack) -> None:
    code, out, err = await syncctl("--socket", str(admin.socket), "org", "add", "a_b")
    assert (code, out) == (1, "")
    assert err == (
        f"syncctl: org.add refused (bad_request) at name: invalid org name 'a_b': {DNS_LABEL},"
        " not '_'\n"
    )


async def test_model_get_without_a_model_says_so(client: AdminClient) -> None:
    org = unique_name("org")
    await client.call("org.add", {"name": org})
    err = await refused(client, "model.get", {"org": org})
    assert (err.code, err.path, err.message) == (
        ErrorCode.NOT_FOUND,
        "org",
        f"org {org!r} has no client model yet",
    )


async def test_model_get_of_a_missing_version_names_it(client: AdminClient) -> None:
    org = unique_name("org")
    await client.call("org.add", {"name": org})
    await client.call("model.put", {"org": org, "model": CRM_MODEL})
    err = await refused(client, "model.get", {"org": org, "version": 9})
    assert (err.code, err.path, err.message) == (
        ErrorCode.NOT_FOUND,
        "version",
        f"org {org!r} has no model version 9",
    )


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("id", "not-a-uuid", 'not a valid uuid value: "not-a-uuid" (expected a UUID string)'),
        (
            "amount",
            "12,5",
            'not a valid numeric value: "12,5" (expected a finite decimal number,'
            " or a string holding one)",
        ),
        (
            "modified_at",
            "yesterday",
            'not a valid timestamp value: "yesterday" (expected an ISO-8601 string or integer'
            " microseconds since 1970-01-01 UTC)",
        ),
        ("status", "3", 'not a valid integer value: "3" (expected a 64-bit integer)'),
    ],
)
async def test_ingest_value_refusals_say_what_the_column_takes(
    client: AdminClient, column: str, value: Any, message: str
) -> None:
    org = unique_name("org")
    await client.call("org.add", {"name": org})
    await client.call("model.put", {"org": org, "model": CRM_MODEL})
    row = {"id": "0b7e3c1a-9f2d-4c5e-8a61-3d2f1e0c9b8a", column: value}
    changes = [{"entity": "account", "upserts": [row]}]
    err = await refused(client, "ingest.apply", {"org": org, "changes": changes})
    assert (err.code, err.path, err.message) == (
        ErrorCode.BAD_REQUEST,
        f"changes[0].upserts[0].{column}",
        message,
    )
