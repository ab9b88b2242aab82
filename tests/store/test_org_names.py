"""Org names: new ones are DNS labels; names stored before that rule keep their database."""

from __future__ import annotations

import pytest

from syncd.store.sql import database_name, ident, org_name_problem


@pytest.mark.parametrize("name", ["demo", "acme-eu", "1st", "a", "x" * 40, "xn--bcher-kva"])
def test_dns_labels_are_org_names(name: str) -> None:
    assert org_name_problem(name) is None
    assert ident(database_name(name)) == f'"syncd_org_{name}"'


@pytest.mark.parametrize("name", ["a_b", "A", "-a", "a-", "a.b", "x" * 41, "", "é"])
def test_other_names_are_refused_for_new_orgs(name: str) -> None:
    assert org_name_problem(name) is not None


def test_an_org_stored_with_an_underscore_keeps_its_database() -> None:
    assert database_name("acme_eu") == "syncd_org_acme_eu"


@pytest.mark.parametrize("name", ['a"b', "a;b", "A", "", "x" * 41])
def test_database_names_never_carry_quoting(name: str) -> None:
    with pytest.raises(ValueError, match="invalid org name"):
        database_name(name)
