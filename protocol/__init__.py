"""The syncd wire protocol as a sans-IO package: bytes in, typed messages out, and back.

Layers, bottom up: `framing` (length prefix and limits), `codec` (strict msgpack), `coltypes`
(the column-type registry), `messages`/`schema` (validated frozen dataclasses), `wire` (message
<-> map), `state` (the transition table of both roles) and `connection` (the object the daemon,
the client and bench wrap). The specification is PROTOCOL.md beside this file. Nothing here
does I/O.
"""

from protocol.coltypes import COLUMN_TYPES, ColumnType
from protocol.connection import (
    NEED_DATA,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Connection,
    ConnectionClosed,
    NeedData,
    PreparedFrame,
    encode_changes,
    encode_changes_within,
    error_frame_for,
    negotiate,
    prepare,
)
from protocol.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from protocol.framing import (
    ABSOLUTE_MAX_FRAME_SIZE,
    DEFAULT_MAX_FRAME_SIZE,
    MAX_UNAUTHENTICATED_FRAME_SIZE,
)
from protocol.messages import (
    Ack,
    CaughtUp,
    Changes,
    Checkpoint,
    Error,
    GoingAway,
    Goodbye,
    Hello,
    Message,
    ModelChanged,
    OpResult,
    Ping,
    Pong,
    RefreshToken,
    Resync,
    TokenExpiring,
    TokenRefreshed,
    Upload,
    UploadOp,
    UploadResult,
    Welcome,
)
from protocol.schema import ColumnSchema, EntitySchema, ModelSummary
from protocol.state import Role, State
from protocol.validate import Value

__all__ = [
    "ABSOLUTE_MAX_FRAME_SIZE",
    "COLUMN_TYPES",
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_UNAUTHENTICATED_FRAME_SIZE",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Ack",
    "CaughtUp",
    "Changes",
    "Checkpoint",
    "ColumnSchema",
    "ColumnType",
    "Connection",
    "ConnectionClosed",
    "EntitySchema",
    "Error",
    "ErrorCode",
    "GoingAway",
    "Goodbye",
    "Hello",
    "LocalProtocolError",
    "Message",
    "ModelChanged",
    "ModelSummary",
    "NeedData",
    "OpResult",
    "Ping",
    "Pong",
    "PreparedFrame",
    "ProtocolError",
    "RefreshToken",
    "RemoteProtocolError",
    "Resync",
    "Role",
    "State",
    "TokenExpiring",
    "TokenRefreshed",
    "Upload",
    "UploadOp",
    "UploadResult",
    "Value",
    "Welcome",
    "encode_changes",
    "encode_changes_within",
    "error_frame_for",
    "negotiate",
    "prepare",
]
