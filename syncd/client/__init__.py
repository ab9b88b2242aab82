"""The device client SDK: a local SQLite store of synced rows and offline edits.

`LocalDB` is the storage layer; the network session drives it with the server's model
summary, change batches, checkpoints and upload results.
"""

from syncd.client.localdb import InvalidEdit, LocalDB, UnknownEntity
from syncd.client.localschema import EntitySchema, EntitySchemaLike, InvalidSchema
from syncd.client.outbox import SyncError, UploadBatch, UploadOp, UploadResult

__all__ = [
    "EntitySchema",
    "EntitySchemaLike",
    "InvalidEdit",
    "InvalidSchema",
    "LocalDB",
    "SyncError",
    "UnknownEntity",
    "UploadBatch",
    "UploadOp",
    "UploadResult",
]
