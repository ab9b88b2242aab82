"""Structured logs: one JSON object per line, context fields, and no secret ever printed."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from syncd.logs import configure_logging, log_context

JWT = (
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJ1c2VyLTEiLCJvcmciOiJhY21lIn0"
    ".MEUCIQDx3n0fakesignature_-abc"
)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    configure_logging("debug", out)
    yield out
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_each_line_is_json_with_the_standard_fields(stream: io.StringIO) -> None:
    logging.getLogger("syncd.session").info("device %s connected", "d-1", extra={"rows": 5})
    (line,) = lines(stream)
    assert line["level"] == "info"
    assert line["logger"] == "syncd.session"
    assert line["msg"] == "device d-1 connected"
    assert line["rows"] == 5
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    logged = datetime.fromisoformat(line["ts"])
    assert abs(datetime.now(UTC) - logged) < timedelta(minutes=1)


def test_level_filters_lower_records() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("warning", out)
        logging.getLogger("x").info("quiet")
        logging.getLogger("x").warning("loud")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert [line["msg"] for line in lines(out)] == ["loud"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud", io.StringIO())


def test_context_fields_apply_inside_the_block_only(stream: io.StringIO) -> None:
    log = logging.getLogger("syncd.session")
    with log_context(org="acme", session="s-9"):
        with log_context(device="dev-3"):
            log.info("inner")
        log.info("outer")
    log.info("after")
    inner, outer, after = lines(stream)
    assert (inner["org"], inner["session"], inner["device"]) == ("acme", "s-9", "dev-3")
    assert (outer["org"], outer["session"]) == ("acme", "s-9")
    assert "device" not in outer
    assert not {"org", "session", "device"} & after.keys()


async def test_context_follows_each_task_separately(stream: io.StringIO) -> None:
    log = logging.getLogger("syncd.session")
    both_inside = asyncio.Barrier(2)

    async def session(org: str) -> None:
        with log_context(org=org):
            await both_inside.wait()  # both contexts are live at the same time
            log.info("hello")

    async with asyncio.timeout(5):
        await asyncio.gather(session("acme"), session("globex"))
    ours = [line for line in lines(stream) if line["logger"] == "syncd.session"]
    assert sorted(line["org"] for line in ours) == ["acme", "globex"]


def test_secret_named_fields_are_masked(stream: io.StringIO) -> None:
    logging.getLogger("syncd").info(
        "auth",
        extra={
            "token": "abc",
            "db_password": "hunter2",
            "Authorization": "Bearer xyz",
            "client_secret": "s",
            "details": {"refresh_token": "r", "user": "u"},
            "user": "u-1",
        },
    )
    (line,) = lines(stream)
    assert line["token"] == "***"
    assert line["db_password"] == "***"
    assert line["Authorization"] == "***"
    assert line["client_secret"] == "***"
    assert line["details"] == {"refresh_token": "***", "user": "u"}
    assert line["user"] == "u-1"
    for secret in ("abc", "hunter2", "xyz"):
        assert secret not in stream.getvalue()


def test_jwts_and_dsn_passwords_inside_text_are_masked(stream: io.StringIO) -> None:
    log = logging.getLogger("syncd")
    log.warning("rejected token %s from device", JWT)
    log.info("connecting", extra={"dsn": "postgresql://syncd:hunter2@db/ctl", "note": JWT})
    log.info("libpq host=db password=hunter2 user=syncd")
    try:
        raise ValueError(f"bad header Bearer {JWT}")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    assert "eyJ" not in text
    assert "hunter2" not in text
    first, second, third, fourth = lines(stream)
    assert first["msg"] == "rejected token *** from device"
    assert second["dsn"] == "postgresql://syncd:***@db/ctl"
    assert third["msg"] == "libpq host=db password=*** user=syncd"
    assert "ValueError: bad header Bearer ***" in fourth["exc"]


def test_text_format_is_readable_and_redacted() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("info", out, fmt="text")
        with log_context(org="acme"):
            logging.getLogger("syncd").info("token %s", JWT, extra={"password": "p"})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    line = out.getvalue().strip()
    assert " info     syncd: token *** [org=acme password=***]" in line
