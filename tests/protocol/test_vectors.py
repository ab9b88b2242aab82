"""The committed golden vectors and PROTOCOL.md's hex examples against the code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from protocol import Connection, ErrorCode, RemoteProtocolError, Role
from protocol.vectors.generate import SAMPLES, VECTORS_PATH, json_form, wire_form
from protocol.wire import decode_payload, encode_frame, from_wire, to_wire

VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
SPEC = (Path(VECTORS_PATH).parent.parent / "PROTOCOL.md").read_text()


@pytest.mark.parametrize("vector", VECTORS["messages"], ids=lambda v: v["name"])
def test_vector_decodes_to_documented_message(vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["hex"])
    message = decode_payload(frame[4:])
    assert json_form(to_wire(message)) == vector["message"]
    assert message == SAMPLES[vector["name"]]


@pytest.mark.parametrize("vector", VECTORS["messages"], ids=lambda v: v["name"])
def test_documented_message_encodes_to_vector_bytes(vector: dict[str, Any]) -> None:
    assert encode_frame(from_wire(wire_form(vector["message"]))).hex() == vector["hex"]


def test_every_message_type_has_a_vector() -> None:
    from protocol.messages import MESSAGE_TYPES

    covered = {vector["message"]["type"] for vector in VECTORS["messages"]}
    assert covered == set(MESSAGE_TYPES)


@pytest.mark.parametrize("vector", VECTORS["errors"], ids=lambda v: v["name"])
def test_bad_frame_is_refused_with_code(vector: dict[str, str]) -> None:
    connection = Connection(Role(vector["role"]))
    connection.receive_data(bytes.fromhex(vector["hex"]))
    if vector.get("eof"):
        connection.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        connection.next_event()
    assert info.value.code is ErrorCode[vector["code"]]


_EXAMPLE = re.compile(r"<!-- vector: (\w+) -->\s*```\n(.*?)```", re.S)


def test_protocol_md_examples_are_the_vector_bytes() -> None:
    by_name = {vector["name"]: vector["hex"] for vector in VECTORS["messages"]}
    examples = _EXAMPLE.findall(SPEC)
    assert len(examples) >= 10
    for name, block in examples:
        hex_text = "".join(
            line.split("#")[0] for line in block.splitlines() if not line.startswith("//")
        )
        assert "".join(hex_text.split()) == by_name[name], name


def test_protocol_md_documents_every_error_code() -> None:
    for code in ErrorCode:
        assert re.search(rf"\|\s*{int(code)}\s*\|\s*`?{code.name}`?\s*\|", SPEC), code.name


def test_fuzz_entry_point_runs_briefly() -> None:
    from protocol.fuzz import main

    assert main(["--seconds", "0.5", "--seed", "1"]) == 0
