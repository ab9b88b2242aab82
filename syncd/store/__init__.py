"""The staging store: the only package that speaks SQL (control DB, org staging DBs, feed)."""

from syncd.store.control import (
    CONFIG_CHANNEL,
    TOKEN_KEYS_CHANGED,
    ControlStore,
    OrgRecord,
    StoredModel,
    TokenKey,
)
from syncd.store.embedded import EmbeddedPostgres, EmbeddedPostgresError
from syncd.store.feed import ChangeBatch, FilterTerm, RowFilter, RowPredicate, Subscription
from syncd.store.ingest import Changeset, apply_changeset, bulk_load
from syncd.store.listen import Listener
from syncd.store.org_stores import OrgStores
from syncd.store.schema import NOTIFY_CHANNEL, ProvisionError
from syncd.store.snapshot import CheckpointAhead, CheckpointError, ResyncRequired, Snapshot
from syncd.store.staging import ChangeStream, StagingStore, StoreClosed

__all__ = [
    "CONFIG_CHANNEL",
    "NOTIFY_CHANNEL",
    "TOKEN_KEYS_CHANGED",
    "ChangeBatch",
    "ChangeStream",
    "Changeset",
    "CheckpointAhead",
    "CheckpointError",
    "ControlStore",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "FilterTerm",
    "Listener",
    "OrgRecord",
    "OrgStores",
    "ProvisionError",
    "ResyncRequired",
    "RowFilter",
    "RowPredicate",
    "Snapshot",
    "StagingStore",
    "StoreClosed",
    "StoredModel",
    "Subscription",
    "TokenKey",
    "apply_changeset",
    "bulk_load",
]
