"""Writes vectors.json: one frame per message type plus frames that must be refused.

Strategy: the sample messages below are the single source for the golden vectors, the
round-trip tests and the fuzzer's seed corpus. Regenerate with
`python -m protocol.vectors.generate` only when the protocol version changes; the tests
compare the code against the committed file, so a silent wire change fails CI.

JSON form of a message: its wire map, with every bin value written as {"bin": "<hex>"}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import zstandard

from protocol.compression import ZSTD, compress
from protocol.connection import encode_changes
from protocol.errors import ErrorCode
from protocol.framing import compressed_frame_header, frame_header
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
from protocol.wire import encode_frame, to_wire

VECTORS_PATH = Path(__file__).with_name("vectors.json")

ACCOUNT = EntitySchema(
    name="account",
    key="id",
    columns=(
        ColumnSchema("id", "uuid"),
        ColumnSchema("name", "text"),
        ColumnSchema("amount", "numeric"),
        ColumnSchema("updated", "timestamp"),
    ),
    writable=("name", "amount"),
)
MODEL = ModelSummary(fingerprint="m1", entities=(ACCOUNT,))
ROW_ID = "0b7e3c1a-9f2d-4c5e-8a61-3d2f1e0c9b8a"

#: One sample per message type, in session order.
SAMPLES: dict[str, Message] = {
    "hello": Hello((1,), "eyJ0eXAiOiJKV1QifQ.e30.sig", "acme", "dev-1", "2.3.0", None, None),
    "hello_reconnect": Hello((2, 1), "tok", "acme", "dev-1", "2.3.0", b"\x01\x02", "m1"),
    "hello_compression": Hello((1,), "tok", "acme", "dev-1", "2.3.0", None, None, ("zstd",)),
    "welcome": Welcome(1, "s-42", 4194304, 1000, 30000, 1767225600, MODEL, 90000, 20000, 4194304),
    "welcome_compression": Welcome(
        1, "s-42", 4194304, 1000, 30000, 1767225600, MODEL, 90000, 20000, 4194304, "zstd"
    ),
    "changes": Changes(
        "account",
        upserts=[[ROW_ID, "Acme", "12.50", 1767225600000000, 7]],
        deletes=["5c1d2e3f-0a1b-4c2d-9e3f-4a5b6c7d8e9f"],
    ),
    "checkpoint": Checkpoint(b"\x00\x01\xab"),
    "checkpoint_priority": Checkpoint(b"\x00\x01\xac", priority=0),
    "ack": Ack(b"\x00\x01\xab"),
    "caught_up": CaughtUp(b"\x00\x01\xab"),
    "upload": Upload(
        "6f1c2b3a-4d5e-4f60-8a9b-0c1d2e3f4a5b",
        (
            UploadOp("update", "account", ROW_ID, 7, {"name": "Acme Ltd"}),
            UploadOp("delete", "account", "5c1d2e3f-0a1b-4c2d-9e3f-4a5b6c7d8e9f", 3, None),
        ),
    ),
    "upload_result": UploadResult(
        "6f1c2b3a-4d5e-4f60-8a9b-0c1d2e3f4a5b",
        (
            OpResult("applied", version=8),
            OpResult("conflict", row=[ROW_ID, "Acme", "13.00", 1767225700000000, 9]),
            OpResult("rejected", code=ErrorCode.NOT_WRITABLE, reason="updated is read-only"),
        ),
    ),
    "ping": Ping(17),
    "pong": Pong(17),
    "refresh_token": RefreshToken("eyJ0eXAiOiJKV1QifQ.e30.sig2"),
    "token_expiring": TokenExpiring(1767229200),
    "token_refreshed": TokenRefreshed(1767232800),
    "resync": Resync(("account",), ErrorCode.CHECKPOINT_TOO_OLD, "change log truncated"),
    "resync_all": Resync(None, ErrorCode.CHECKPOINT_INVALID, "unknown checkpoint"),
    "model_changed": ModelChanged(MODEL, ("account",)),
    "going_away": GoingAway(5000, "draining"),
    "goodbye": Goodbye("user signed out"),
    "error": Error(ErrorCode.TOKEN_EXPIRED, "token expired", None),
    "error_retry": Error(ErrorCode.OVERLOADED, "org busy", 2000),
}


def _payload(hex_body: str) -> str:
    body = bytes.fromhex(hex_body)
    return (frame_header(len(body)) + body).hex()


def _pairs(*pairs: tuple[str, Any]) -> bytes:
    """A msgpack map written pair by pair, so a key may repeat (a dict cannot say that);
    a value that is bytes already is taken as an encoded msgpack object."""
    out = bytearray(msgpack.Packer().pack_map_header(len(pairs)))
    for key, value in pairs:
        out += msgpack.packb(key)
        out += value if isinstance(value, bytes) else msgpack.packb(value)
    return bytes(out)


def _framed(body: bytes) -> str:
    return (frame_header(len(body)) + body).hex()


#: Frames a fresh connection of `role` must refuse with `code`.
BAD_FRAMES: list[dict[str, str]] = [
    {"name": "length_prefix_4gib", "role": "server", "hex": "ffffffff", "code": "FRAME_TOO_LARGE"},
    {
        "name": "length_prefix_over_unauthenticated_limit",
        "role": "server",
        "hex": "00010001",
        "code": "FRAME_TOO_LARGE",
    },
    # map {"type": "pi"} then EOF in the middle of the declared payload
    {
        "name": "truncated_frame",
        "role": "server",
        "hex": "0000000a81a474797065a27069",
        "code": "PROTOCOL_VIOLATION",
        "eof": "true",
    },
    {"name": "not_a_map", "role": "server", "hex": _payload("01"), "code": "PROTOCOL_VIOLATION"},
    # {"type": "\xff"}: 0xff is never valid UTF-8
    {
        "name": "invalid_utf8",
        "role": "server",
        "hex": _payload("81a474797065a1ff"),
        "code": "PROTOCOL_VIOLATION",
    },
    # {"type": "ping", "nonce": ext 1 (fixext1 d4 01 00)}
    {
        "name": "extension_type",
        "role": "device",
        "hex": _payload("82a474797065a470696e67a56e6f6e6365d40100"),
        "code": "PROTOCOL_VIOLATION",
    },
    # {"type": "ping", "nonce": timestamp ext -1 (d6 ff + 4 bytes seconds)}
    {
        "name": "timestamp_extension",
        "role": "device",
        "hex": _payload("82a474797065a470696e67a56e6f6e6365d6ff00000000"),
        "code": "PROTOCOL_VIOLATION",
    },
    # {"type": "ping", "nonce": "1"}: str where int is required
    {
        "name": "wrong_field_type",
        "role": "device",
        "hex": _payload("82a474797065a470696e67a56e6f6e6365a131"),
        "code": "PROTOCOL_VIOLATION",
    },
    # {"type": "ping"}: nonce missing
    {
        "name": "missing_field",
        "role": "device",
        "hex": _payload("81a474797065a470696e67"),
        "code": "PROTOCOL_VIOLATION",
    },
    # {"type": "nope"}
    {
        "name": "unknown_type",
        "role": "server",
        "hex": _payload("81a474797065a46e6f7065"),
        "code": "PROTOCOL_VIOLATION",
    },
    # {bin "type": "ping", ...}: map keys must be str, not bin
    {
        "name": "bin_map_key",
        "role": "device",
        "hex": _payload("82c40474797065a470696e67a56e6f6e636501"),
        "code": "PROTOCOL_VIOLATION",
    },
    # array32 header claiming 2**32-1 elements inside a tiny frame
    {
        "name": "huge_array_header",
        "role": "server",
        "hex": _payload("ddffffffff"),
        "code": "PROTOCOL_VIOLATION",
    },
    # a valid Ack sent before Hello: illegal transition
    {
        "name": "ack_before_hello",
        "role": "server",
        "hex": encode_frame(Ack(b"\x01")).hex(),
        "code": "UNEXPECTED_MESSAGE",
    },
    # a valid Changes before Welcome
    {
        "name": "changes_before_welcome",
        "role": "device",
        "hex": encode_changes("account", [], []).data.hex(),
        "code": "UNEXPECTED_MESSAGE",
    },
    # {"type": "ping", "nonce": 1, "nonce": 2}: a key given twice, even with one type
    {
        "name": "duplicate_map_key",
        "role": "device",
        "hex": _framed(_pairs(("type", "ping"), ("nonce", 1), ("nonce", 2))),
        "code": "PROTOCOL_VIOLATION",
    },
    # a Hello naming two orgs: which one a decoder keeps must never be a question
    {
        "name": "duplicate_key_in_hello",
        "role": "server",
        "hex": _framed(
            _pairs(
                ("type", "hello"),
                ("versions", [1]),
                ("token", "t"),
                ("org", "acme"),
                ("org", "globex"),
                ("device_id", "d"),
                ("app_version", "1"),
            )
        ),
        "code": "PROTOCOL_VIOLATION",
    },
    # an Upload whose op sets column "name" twice, in a map nested three levels down
    {
        "name": "duplicate_key_in_nested_map",
        "role": "server",
        "hex": _framed(
            _pairs(
                ("type", "upload"),
                ("batch_id", "b"),
                (
                    "ops",
                    b"\x91"
                    + _pairs(
                        ("op", "update"),
                        ("entity", "account"),
                        ("key", 1),
                        ("base_version", 1),
                        ("values", _pairs(("name", "a"), ("name", "b"))),
                    ),
                ),
            )
        ),
        "code": "PROTOCOL_VIOLATION",
    },
    # a compressed-frame prefix (top bit set) on a connection that negotiated no codec: a
    # length above every limit, as it always was
    {
        "name": "compressed_without_negotiation",
        "role": "device",
        "hex": "80000010" + "00" * 16,
        "code": "FRAME_TOO_LARGE",
    },
    # Hello offering only version 9
    {
        "name": "unsupported_version",
        "role": "server",
        "hex": encode_frame(Hello((9,), "t", "acme", "d", "1", None, None)).hex(),
        "code": "UNSUPPORTED_VERSION",
    },
]


#: A Changes frame of 20 rows, compressed: what a device that negotiated zstd receives.
COMPRESSED_CHANGES = Changes(
    "account",
    upserts=[
        [f"0b7e3c1a-9f2d-4c5e-8a61-3d2f1e0c9b{i:02x}", f"Acme {i}", "12.50", 1767225600000000, 7]
        for i in range(20)
    ],
    deletes=[],
)


def _compressed(payload: bytes) -> str:
    body = compress(ZSTD, payload)
    return (compressed_frame_header(len(body)) + body).hex()


def _zstd_frames() -> list[dict[str, str]]:
    """Compressed frames a device must decode (`payload`) or refuse (`code`) after a
    handshake that negotiated zstd (hello_compression, then welcome_compression: frames of
    at most 4 MiB)."""
    payload = encode_frame(COMPRESSED_CHANGES)[4:]
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(payload)
    return [
        {"name": "changes_zstd", "hex": _compressed(payload), "payload": payload.hex()},
        # 5 MiB of zero bytes: a 175-byte frame that declares more than the 4 MiB limit
        {
            "name": "zstd_bomb_declared",
            "hex": _compressed(bytes(5 * 1024 * 1024)),
            "code": "PROTOCOL_VIOLATION",
        },
        # the same payload without Frame_Content_Size: its size could only be learnt by
        # decompressing it
        {
            "name": "zstd_without_content_size",
            "hex": (compressed_frame_header(len(unsized)) + unsized).hex(),
            "code": "PROTOCOL_VIOLATION",
        },
        # one zstd frame and then bytes that are not part of it
        {
            "name": "zstd_trailing_bytes",
            "hex": _compressed_raw(compress(ZSTD, payload) + b"\x00\x00"),
            "code": "PROTOCOL_VIOLATION",
        },
        # a compressed prefix whose payload is plain msgpack, not a zstd frame
        {
            "name": "zstd_not_a_zstd_frame",
            "hex": _compressed_raw(payload),
            "code": "PROTOCOL_VIOLATION",
        },
        # the compressed length itself above the limit: refused from the prefix alone
        {
            "name": "zstd_prefix_over_limit",
            "hex": compressed_frame_header(4 * 1024 * 1024 + 1).hex(),
            "code": "FRAME_TOO_LARGE",
        },
    ]


def _compressed_raw(body: bytes) -> str:
    return (compressed_frame_header(len(body)) + body).hex()


def json_form(value: Any) -> Any:
    """The JSON form of a wire value: bin becomes {"bin": hex}."""
    if isinstance(value, bytes):
        return {"bin": value.hex()}
    if isinstance(value, dict):
        return {key: json_form(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_form(item) for item in value]
    return value


def wire_form(value: Any) -> Any:
    """Inverse of json_form."""
    if isinstance(value, dict):
        if set(value) == {"bin"}:
            return bytes.fromhex(value["bin"])
        return {key: wire_form(item) for key, item in value.items()}
    if isinstance(value, list):
        return [wire_form(item) for item in value]
    return value


def build() -> dict[str, Any]:
    """The golden vectors document: every sample message, its frame in hex and its JSON form."""
    messages = [
        {"name": name, "hex": encode_frame(message).hex(), "message": json_form(to_wire(message))}
        for name, message in SAMPLES.items()
    ]
    return {
        "protocol_version": 1,
        "messages": messages,
        "errors": BAD_FRAMES,
        "compressed": _zstd_frames(),
    }


def main() -> None:
    """Rewrite ``vectors.json`` from the samples (run after a deliberate wire change only)."""
    VECTORS_PATH.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {VECTORS_PATH}")


if __name__ == "__main__":
    main()
