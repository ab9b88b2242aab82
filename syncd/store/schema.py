"""DDL for an org's staging database: entity tables, versioning triggers, the change log.

Strategy (decision 1): the ingest role writes plain SQL and the database does the rest.
A BEFORE ROW trigger stamps ``_version`` (one per-org sequence) and ``_txid`` (the writing
transaction). Statement-level AFTER triggers with transition tables append one change-log row
per written row (set-based, so COPY of a million rows costs one INSERT ... SELECT, not a
million trigger calls) and NOTIFY ``syncd_changes`` once per statement that changed rows.

``seq`` is drawn from the same sequence while the writer holds the row lock, so for any one key
the order of ``seq`` is the commit order of its writers: that is what lets the feed pick "the
last change of a key in a window" correctly even though xids are not in commit order.

Evolution only adds: new tables, new columns, new indexes. A removed column or entity stays in
place and is ignored; changing the type of an existing column is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import asyncpg

from syncd.model import ClientModel, Column, Entity
from syncd.store.coltypes import SQL_COLUMN_TYPES
from syncd.store.sql import SQL_TYPES, ident

__all__ = ["NOTIFY_CHANNEL", "ProvisionError", "ensure_schema", "filter_columns"]

NOTIFY_CHANNEL = "syncd_changes"

_BASE = """
CREATE SEQUENCE IF NOT EXISTS _syncd_seq;
CREATE TABLE IF NOT EXISTS _syncd_changes (
    txid   xid8        NOT NULL,
    seq    bigint      NOT NULL,
    entity text        NOT NULL,
    key    text        NOT NULL,
    op     "char"      NOT NULL,
    old    jsonb,
    at     timestamptz NOT NULL DEFAULT now(),
    -- The device whose upload made the change (NULL for the ingest role and everyone
    -- else): a device holds the rows it wrote, so a window accounts for them (feed.py).
    origin text
);
-- Databases made before the column existed get it once; checked first, so that a model
-- push never takes ALTER TABLE's exclusive lock on the change log when it need not.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = '_syncd_changes'::regclass AND attname = 'origin') THEN
        ALTER TABLE _syncd_changes ADD COLUMN origin text;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS _syncd_changes_origin ON _syncd_changes (origin, entity, txid)
    WHERE origin IS NOT NULL;
CREATE INDEX IF NOT EXISTS _syncd_changes_uploads ON _syncd_changes (txid)
    WHERE origin IS NOT NULL;
CREATE INDEX IF NOT EXISTS _syncd_changes_window ON _syncd_changes (entity, txid, seq);
CREATE INDEX IF NOT EXISTS _syncd_changes_key ON _syncd_changes (entity, key, seq);
CREATE INDEX IF NOT EXISTS _syncd_changes_deletes ON _syncd_changes (entity, txid, seq)
    WHERE op = 'd';
CREATE TABLE IF NOT EXISTS _syncd_meta (
    id      int  PRIMARY KEY CHECK (id = 1),
    horizon xid8 NOT NULL
);
INSERT INTO _syncd_meta VALUES (1, '1') ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION _syncd_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW._version := nextval('_syncd_seq');
    NEW._txid := pg_current_xact_id();
    RETURN NEW;
END $$;
"""


# Uploads (syncd/store/uploads.py, writeback.py). ``_syncd_upload_batches`` makes a batch
# idempotent: it is written in the same transaction as the batch's rows, so a replay finds it
# exactly when the rows were committed. ``_syncd_writeback`` is the outbox the ingest role
# drains; a claim sets ``next_attempt_at`` to the lease end, so one partial index serves
# pending, failed-and-due and lease-expired rows alike. The (entity, key, version) index lets
# an upload recognise a row version written by the same device (see uploads.py).
_UPLOADS = """
CREATE TABLE IF NOT EXISTS _syncd_upload_batches (
    user_id    text        NOT NULL,
    batch_id   text        NOT NULL,
    device_id  text        NOT NULL,
    results    bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, batch_id)
);
CREATE TABLE IF NOT EXISTS _syncd_writeback (
    id              bigserial   PRIMARY KEY,
    entity          text        NOT NULL,
    key             text        NOT NULL,
    op              text        NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    "values"        jsonb,
    version         bigint      NOT NULL,
    base_version    bigint,
    user_id         text        NOT NULL,
    device_id       text        NOT NULL,
    batch_id        text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'claimed', 'done', 'failed')),
    attempts        int         NOT NULL DEFAULT 0,
    claimed_until   timestamptz,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS _syncd_writeback_due ON _syncd_writeback (next_attempt_at, id)
    WHERE status <> 'done';
CREATE INDEX IF NOT EXISTS _syncd_writeback_key ON _syncd_writeback (entity, key, version);
"""


class ProvisionError(Exception):
    """The model cannot be applied to the existing staging tables."""


def _fn(kind: str, entity: Entity) -> str:
    return ident(f"_syncd_{kind}_{entity.name}")


def _log_functions(e: Entity) -> str:
    """The versioning and change-log triggers of one entity table.

    The UPDATE log joins the statement's old and new transition tables by key. A static
    statement in PL/pgSQL keeps the plan of its first call on the connection, and the
    planner's size of a transition table is fixed when the statement is parsed: a first
    call that updated one row left a nested-loop plan that every later call reused, so a
    bulk UPDATE of N rows cost N^2 (10,000 rows: 21 s instead of 0.19 s). ``EXECUTE`` parses
    the (constant) statement on every call, so the join is planned for the rows at hand:
    hash or merge joins, linear in N. INSERT and DELETE read one transition table without a
    join and keep their cached plans.
    """
    t, k = ident(e.name), ident(e.key)
    notify = f"""
    GET DIAGNOSTICS n_rows = ROW_COUNT;
    IF n_rows > 0 THEN PERFORM pg_notify('{NOTIFY_CHANNEL}', TG_TABLE_NAME); END IF;
    RETURN NULL;"""
    # ``syncd.origin`` is set (transaction-local) by an upload; read once per statement.
    head = (
        "RETURNS trigger LANGUAGE plpgsql AS $$ DECLARE n_rows bigint;"
        " origin text := nullif(current_setting('syncd.origin', true), ''); BEGIN"
    )
    return f"""
CREATE OR REPLACE FUNCTION {_fn("ins", e)}() {head}
    INSERT INTO _syncd_changes (txid, seq, entity, key, op, origin)
    SELECT pg_current_xact_id(), nextval('_syncd_seq'), TG_TABLE_NAME, n.{k}::text, 'u', origin
    FROM _new n;{notify}
END $$;
CREATE OR REPLACE FUNCTION {_fn("upd", e)}() {head}
    EXECUTE $q$
    INSERT INTO _syncd_changes (txid, seq, entity, key, op, old, origin)
    SELECT pg_current_xact_id(), nextval('_syncd_seq'), $1, n.{k}::text, 'u', to_jsonb(o), $2
    FROM _new n LEFT JOIN _old o ON o.{k} = n.{k}
    UNION ALL
    SELECT pg_current_xact_id(), nextval('_syncd_seq'), $1, o.{k}::text, 'd', to_jsonb(o), $2
    FROM _old o WHERE NOT EXISTS (SELECT 1 FROM _new n WHERE n.{k} = o.{k})
    $q$ USING TG_TABLE_NAME, origin;{notify}
END $$;
CREATE OR REPLACE FUNCTION {_fn("del", e)}() {head}
    INSERT INTO _syncd_changes (txid, seq, entity, key, op, old, origin)
    SELECT pg_current_xact_id(), nextval('_syncd_seq'), TG_TABLE_NAME, o.{k}::text, 'd',
           to_jsonb(o), origin
    FROM _old o;{notify}
END $$;
CREATE OR REPLACE TRIGGER _syncd_stamp BEFORE INSERT OR UPDATE ON {t}
    FOR EACH ROW EXECUTE FUNCTION _syncd_stamp();
CREATE OR REPLACE TRIGGER _syncd_log_ins AFTER INSERT ON {t}
    REFERENCING NEW TABLE AS _new FOR EACH STATEMENT EXECUTE FUNCTION {_fn("ins", e)}();
CREATE OR REPLACE TRIGGER _syncd_log_upd AFTER UPDATE ON {t}
    REFERENCING OLD TABLE AS _old NEW TABLE AS _new
    FOR EACH STATEMENT EXECUTE FUNCTION {_fn("upd", e)}();
CREATE OR REPLACE TRIGGER _syncd_log_del AFTER DELETE ON {t}
    REFERENCING OLD TABLE AS _old FOR EACH STATEMENT EXECUTE FUNCTION {_fn("del", e)}();
"""


def _column_def(c: Column) -> str:
    return f"{ident(c.name)} {SQL_TYPES[c.type]}"


def filter_columns(model: ClientModel) -> dict[str, set[str]]:
    """Entity -> columns that profile filters compare; each gets a (column, key) index.

    The filter documents are walked for the columns they name (``"column"``, and the ``via``
    column of ``related``, so PostgreSQL can drive a related filter from the parent side), and
    every membership table's user column is added: filters look members up by user.
    """
    out: dict[str, set[str]] = {}

    def add(name: str, col: str) -> None:
        entity = model.entity(name)
        if (
            col in {c.name for c in entity.columns}
            and SQL_COLUMN_TYPES[entity.column(col).type].indexed
        ):
            out.setdefault(name, set()).add(col)

    for p in model.profiles:
        for name, spec in p.entities:
            if spec.filter is None:
                continue
            for col in _filter_columns(spec.filter):
                add(name, col)
    for m in model.memberships:
        add(m.entity, m.user)
    return out


def _filter_columns(spec: object) -> Iterable[str]:
    """Columns named anywhere in a filter document (any nesting), for indexing only."""
    if isinstance(spec, dict):
        col = spec.get("column")
        if isinstance(col, str):
            yield col
        related = spec.get("related")
        if isinstance(related, dict) and isinstance(related.get("via"), str):
            yield related["via"]
        for v in spec.values():
            yield from _filter_columns(v)
    elif isinstance(spec, list):
        for v in spec:
            yield from _filter_columns(v)


def _index_name(*parts: str) -> str:
    """A fixed-length name (identifiers are up to 63 bytes, and two of them would not fit)."""
    digest = hashlib.sha256(".".join(parts).encode()).hexdigest()[:20]
    return f"_syncd_ix_{digest}"


def _indexes(model: ClientModel) -> list[str]:
    """The feed's indexes on entity tables (see feed.py for the queries they serve).

    * (``_txid``, key): an incremental window is one ordered range scan of the rows written
      in it, paged by keyset;
    * (filter column, key): a filtered initial scan finds its page boundaries in one
      index-only pass and reads each page as one key range per filter value.
    """
    out = []
    for e in model.entities:
        t, k = ident(e.name), ident(e.key)
        name = ident(_index_name(e.name, "_txid", e.key))
        out.append(f"CREATE INDEX IF NOT EXISTS {name} ON {t} (_txid, {k})")
    for entity, cols in sorted(filter_columns(model).items()):
        t, k = ident(entity), ident(model.entity(entity).key)
        for col in sorted(cols - {model.entity(entity).key}):
            name = ident(_index_name(entity, col, model.entity(entity).key))
            out.append(f"CREATE INDEX IF NOT EXISTS {name} ON {t} ({ident(col)}, {k})")
    return out


async def ensure_schema(conn: asyncpg.Connection, model: ClientModel) -> None:
    """Create or evolve the staging schema for ``model`` in one transaction."""
    async with conn.transaction():
        # Two provisioners of the same org serialize here instead of racing on DDL.
        await conn.execute("SELECT pg_advisory_xact_lock(7469121)")
        await conn.execute(_BASE)
        await conn.execute(_UPLOADS)
        for e in model.entities:
            await _ensure_table(conn, e)
            await conn.execute(_log_functions(e))
        for ddl in _indexes(model):
            await conn.execute(ddl)


async def _ensure_table(conn: asyncpg.Connection, e: Entity) -> None:
    existing = await conn.fetch(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
        FROM pg_attribute a
        WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0 AND NOT a.attisdropped
        """,
        e.name,
    )
    if not existing:
        cols = ", ".join(_column_def(c) for c in e.columns)
        await conn.execute(
            f"CREATE TABLE {ident(e.name)} ({cols}, "
            "_version bigint NOT NULL, "
            "_txid xid8 NOT NULL DEFAULT pg_current_xact_id(), "
            f"PRIMARY KEY ({ident(e.key)}))"
        )
        return
    have = {r["attname"]: r["type"] for r in existing}
    pk = await conn.fetch(
        """
        SELECT a.attname FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = to_regclass(quote_ident($1)) AND i.indisprimary
        """,
        e.name,
    )
    if [r["attname"] for r in pk] != [e.key]:
        raise ProvisionError(
            f"entity {e.name}: key {e.key!r} differs from the existing primary key "
            f"{[r['attname'] for r in pk]}"
        )
    for c in e.columns:
        want = SQL_COLUMN_TYPES[c.type].formatted
        if c.name not in have:
            await conn.execute(f"ALTER TABLE {ident(e.name)} ADD COLUMN {_column_def(c)}")
        elif have[c.name] != want:
            raise ProvisionError(
                f"entities.{e.name}.columns.{c.name}: type change from {have[c.name]} "
                f"to {want} ({c.type}) is not supported"
            )
