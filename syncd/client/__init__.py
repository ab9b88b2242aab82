"""The device client SDK: a local SQLite store of synced rows and offline edits.

`LocalDB` is the storage layer; the network session drives it with the server's model
summary, change batches, checkpoints and upload results.
"""

from syncd.client.errors import (
    AuthenticationRefused,
    ProtocolMismatch,
    ServerBusy,
    ServerError,
    SyncStateRefused,
    TokenExpired,
)
from syncd.client.localdb import DatabaseBindingError, InvalidEdit, LocalDB, UnknownEntity
from syncd.client.localschema import EntitySchema, EntitySchemaLike, InvalidSchema
from syncd.client.outbox import Binding, SyncError, Unsent, UploadBatch, UploadOp, UploadResult
from syncd.client.tls import ResumingContext, client_context

__all__ = [
    "AuthenticationRefused",
    "Binding",
    "DatabaseBindingError",
    "EntitySchema",
    "EntitySchemaLike",
    "InvalidEdit",
    "InvalidSchema",
    "LocalDB",
    "ProtocolMismatch",
    "ResumingContext",
    "ServerBusy",
    "ServerError",
    "SyncError",
    "SyncStateRefused",
    "TokenExpired",
    "UnknownEntity",
    "Unsent",
    "UploadBatch",
    "UploadOp",
    "UploadResult",
    "client_context",
]
