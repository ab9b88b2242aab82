"""A small CRM model in the shape the server's model summary gives it, and row builders."""

from syncd.client import EntitySchema

ACCOUNT = EntitySchema(
    name="account",
    key="id",
    columns=[
        ("id", "uuid"),
        ("name", "text"),
        ("amount", "numeric"),
        ("owner_id", "integer"),
        ("active", "boolean"),
        ("photo", "bytes"),
    ],
    writable=["name", "amount", "active", "photo"],
)
CONTACT = EntitySchema(
    name="contact",
    key="id",
    columns=[("id", "uuid"), ("account_id", "uuid"), ("email", "text")],
    writable=["email"],
)
MODEL = [ACCOUNT, CONTACT]


def account(key: str, name: str, version: int, amount: str = "1.00") -> list[object]:
    """A server upsert row for `account`: wire order, then version."""
    return [key, name, amount, 7, True, None, version]


def stored(row: list[object]) -> tuple[object, ...]:
    """How `LocalDB.rows` returns a server row: booleans come back as SQLite integers."""
    return tuple(int(v) if isinstance(v, bool) else v for v in row)
