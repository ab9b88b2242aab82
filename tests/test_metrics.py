"""Metrics exposition and the ops HTTP endpoint, over a real loopback socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from syncd.metrics import CONTENT_TYPE, Metrics
from syncd.ops_http import start_ops_server


class Readiness:
    """A readiness callback the test flips, like the daemon's state would."""

    def __init__(self) -> None:
        self.state = (True, "ready")

    def __call__(self) -> tuple[bool, str]:
        return self.state


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
async def port(metrics: Metrics, readiness: Readiness) -> AsyncIterator[int]:
    server = await start_ops_server("127.0.0.1", 0, metrics, readiness, read_timeout=0.5)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes, parse status, headers and body."""
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        response = await reader.read()
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    return int(status_line.split(" ")[1]), headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n".encode()


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


async def test_metrics_endpoint_exposes_recorded_values(metrics: Metrics, port: int) -> None:
    metrics.sessions.labels(org="acme", state="live").set(3)
    metrics.sessions_opened.labels(org="acme").inc()
    metrics.rows_sent.labels(org="acme", entity="contact").inc(1000)
    metrics.bytes_sent.labels(org="acme").inc(4096)
    metrics.bytes_received.labels(org="acme").inc(128)
    metrics.batches_sent.labels(org="acme").inc()
    metrics.checkpoints_acked.labels(org="acme").inc()
    metrics.errors.labels(code="AUTH_EXPIRED").inc()
    metrics.admin_commands.labels(command="put_model", outcome="ok").inc()
    metrics.upload_ops.labels(org="acme", outcome="conflict").inc(2)
    metrics.db_pool_connections.labels(org="acme", state="in_use").set(4)
    metrics.commit_to_send_seconds.labels(org="acme").observe(0.003)
    metrics.handshake_seconds.observe(0.02)

    status, headers, body = await request(port, get("/metrics"))
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE
    found = samples(body)
    acme = ("org", "acme")
    assert found["syncd_sessions", frozenset({acme, ("state", "live")})] == 3
    assert found["syncd_sessions_opened_total", frozenset({acme})] == 1
    assert found["syncd_rows_sent_total", frozenset({acme, ("entity", "contact")})] == 1000
    assert found["syncd_bytes_sent_total", frozenset({acme})] == 4096
    assert found["syncd_bytes_received_total", frozenset({acme})] == 128
    assert found["syncd_batches_sent_total", frozenset({acme})] == 1
    assert found["syncd_checkpoints_acked_total", frozenset({acme})] == 1
    assert found["syncd_errors_total", frozenset({("code", "AUTH_EXPIRED")})] == 1
    admin = frozenset({("command", "put_model"), ("outcome", "ok")})
    assert found["syncd_admin_commands_total", admin] == 1
    assert found["syncd_upload_ops_total", frozenset({acme, ("outcome", "conflict")})] == 2
    assert found["syncd_db_pool_connections", frozenset({acme, ("state", "in_use")})] == 4
    assert found["syncd_commit_to_send_seconds_count", frozenset({acme})] == 1
    assert found["syncd_commit_to_send_seconds_bucket", frozenset({acme, ("le", "0.005")})] == 1
    assert found["syncd_commit_to_send_seconds_bucket", frozenset({acme, ("le", "0.001")})] == 0
    assert found["syncd_handshake_seconds_count", frozenset()] == 1


async def test_device_traffic_reaches_its_counters_at_each_scrape(
    metrics: Metrics, port: int
) -> None:
    """Sessions count their I/O as plain integers (``DeviceTraffic``); a scrape adds what
    was counted since the one before, so the counters read what was counted, no more, and
    an org forgotten starts again from nothing."""
    traffic = metrics.traffic("acme")
    assert metrics.traffic("acme") is traffic
    traffic.bytes_sent += 4096
    traffic.frames_sent += 2
    traffic.bytes_received += 128
    traffic.acks += 1
    acme = frozenset({("org", "acme")})
    _, _, body = await request(port, get("/metrics"))
    found = samples(body)
    assert found["syncd_bytes_sent_total", acme] == 4096
    assert found["syncd_batches_sent_total", acme] == 2
    assert found["syncd_bytes_received_total", acme] == 128
    assert found["syncd_checkpoints_acked_total", acme] == 1
    traffic.bytes_sent += 4
    traffic.acks += 2
    _, _, body = await request(port, get("/metrics"))
    _, _, body = await request(port, get("/metrics"))  # a scrape with nothing new adds nothing
    found = samples(body)
    assert found["syncd_bytes_sent_total", acme] == 4100
    assert found["syncd_checkpoints_acked_total", acme] == 3
    assert found["syncd_batches_sent_total", acme] == 2
    metrics.forget_org("acme")
    assert metrics.traffic("acme") is not traffic
    metrics.traffic("acme").acks += 1
    _, _, body = await request(port, get("/metrics"))
    found = samples(body)
    assert found["syncd_checkpoints_acked_total", acme] == 1
    assert ("syncd_bytes_sent_total", acme) not in found


def test_every_metric_is_prefixed_and_has_no_per_device_labels(metrics: Metrics) -> None:
    names = {family.name for family in metrics.registry.collect()}
    process = {name for name in names if name.startswith("process_")}
    assert {"process_cpu_seconds", "process_resident_memory_bytes"} <= process
    assert names - process == {
        "syncd_build",
        "syncd_control_database_up",
        "syncd_embedded_postgres_restarts",
        "syncd_jwks_fetches",
        "syncd_org_staging_up",
        "syncd_ready",
        "syncd_admin_commands",
        "syncd_batches_sent",
        "syncd_bytes_received",
        "syncd_bytes_sent",
        "syncd_checkpoints_acked",
        "syncd_commit_to_send_seconds",
        "syncd_db_pool_connections",
        "syncd_device_lag_seconds",
        "syncd_devices_connected",
        "syncd_errors",
        "syncd_first_sync_seconds",
        "syncd_frames_encoded",
        "syncd_gc_pause_seconds",
        "syncd_handshake_seconds",
        "syncd_live_drops",
        "syncd_refusals",
        "syncd_rows_sent",
        "syncd_sessions",
        "syncd_sessions_opened",
        "syncd_tls_handshakes",
        "syncd_upload_ops",
    }
    text = metrics.render().decode()
    for forbidden in ("device", "session_id", "user"):
        assert f'{forbidden}="' not in text


def test_two_instances_do_not_share_a_registry() -> None:
    first, second = Metrics(), Metrics()
    first.errors.labels(code="INTERNAL").inc()
    assert b'code="INTERNAL"' not in second.render()


def test_forget_org_removes_only_that_orgs_series(metrics: Metrics) -> None:
    for org in ("acme", "globex"):
        metrics.rows_sent.labels(org=org, entity="contact").inc()
        metrics.sessions.labels(org=org, state="live").set(1)
        metrics.commit_to_send_seconds.labels(org=org).observe(0.1)
    metrics.forget_org("acme")
    text = metrics.render().decode()
    assert 'org="acme"' not in text
    assert text.count('org="globex"') > 3


def test_forget_org_reaches_every_org_labelled_metric(metrics: Metrics) -> None:
    """A metric added later is forgotten too: nothing lists them by hand."""
    labelled = [
        m
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase) and "org" in m._labelnames
    ]
    assert len(labelled) >= 10
    for metric in labelled:
        child = metric.labels(**{name: "acme" for name in metric._labelnames})
        if isinstance(child, Histogram):
            child.observe(0.1)
        elif isinstance(child, Gauge):
            child.set(1)
        else:
            assert isinstance(child, Counter)
            child.inc()
    assert 'org="acme"' in metrics.render().decode()
    metrics.forget_org("acme")
    assert 'org="acme"' not in metrics.render().decode()


async def test_livez(port: int) -> None:
    status, _, body = await request(port, get("/livez"))
    assert (status, body) == (200, b"ok\n")


async def test_readyz_reports_the_callbacks_verdict(port: int, readiness: Readiness) -> None:
    status, _, body = await request(port, get("/readyz"))
    assert (status, body) == (200, b"ready\n")
    readiness.state = (False, "database unreachable")
    status, _, body = await request(port, get("/readyz?verbose=1"))
    assert (status, body) == (503, b"database unreachable\n")


async def test_readyz_when_the_callback_raises(metrics: Metrics) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    server = await start_ops_server("127.0.0.1", 0, metrics, broken)
    try:
        port = server.sockets[0].getsockname()[1]
        status, _, body = await request(port, get("/readyz"))
    finally:
        server.close()
        await server.wait_closed()
    assert (status, body) == (503, b"readiness check failed\n")


async def test_unknown_path_is_404(port: int) -> None:
    status, _, _ = await request(port, get("/admin"))
    assert status == 404


async def test_only_get_is_served(port: int) -> None:
    status, headers, _ = await request(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405
    assert headers["allow"] == "GET"


async def test_malformed_request_line_is_400(port: int) -> None:
    status, _, _ = await request(port, b"hello\r\n\r\n")
    assert status == 400


async def test_oversized_head_is_refused(port: int) -> None:
    raw = b"GET /metrics HTTP/1.1\r\nX-Padding: " + b"a" * 40_000 + b"\r\n\r\n"
    status, _, _ = await request(port, raw)
    assert status == 431


async def test_slow_client_is_timed_out(port: int) -> None:
    # The server's read timeout (0.5 s in this fixture) ends the wait, not the client.
    status, _, body = await request(port, b"GET /metrics HTTP/1.1\r\n")
    assert status == 408
    assert b"in time" in body


def test_gc_pauses_are_observed_per_generation_until_removed(metrics: Metrics) -> None:
    import gc

    from syncd.gc_pauses import GcPauses

    def full_collections() -> float:
        value = metrics.registry.get_sample_value(
            "syncd_gc_pause_seconds_count", {"generation": "2"}
        )
        return value or 0.0

    watcher = GcPauses(metrics.gc_pause_seconds)
    watcher.install()
    watcher.install()  # once only: a second install must not double-count
    try:
        gc.collect()
        assert full_collections() == 1
        gc.collect(0)
        assert metrics.registry.get_sample_value(
            "syncd_gc_pause_seconds_count", {"generation": "0"}
        )
    finally:
        watcher.remove()
    gc.collect()
    assert full_collections() == 1
