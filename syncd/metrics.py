"""The daemon's Prometheus metrics, in one private registry.

Strategy: one `Metrics` object is built at startup and handed to the components that count
things; each metric is a plain prometheus_client attribute, so call sites read
`metrics.rows_sent.labels(org=o, entity=e).inc(n)`. A private `CollectorRegistry` (not the
global default) lets several daemons, and tests, live in one process without colliding.

Names follow Prometheus conventions: `syncd_` prefix, base units (seconds, bytes), `_total`
on counters (prometheus_client appends it). Labels are bounded sets only (org, entity,
state, error code name, command, outcome): never a device, session or user id, whose
cardinality grows with the fleet and would take the metrics server down first.

The registry also carries prometheus_client's `process_*` collector (CPU, memory, open file
descriptors, start time) and `syncd_build_info`, so dashboards can tell instances and
versions apart without another exporter.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

__all__ = ["CONTENT_TYPE", "DeviceTraffic", "Metrics"]

# Labels a sample carries that are not labels of the metric's children.
_SAMPLE_LABELS = frozenset({"le", "quantile"})

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

# Commit-to-send spans a NOTIFY wakeup (sub-millisecond, ARCHITECTURE.md, ceilings) up to a device
# catching up behind a long backlog, so buckets run from 1 ms to 1 minute.
_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
# How far behind devices are: from a live device acknowledging a checkpoint a few
# milliseconds after its snapshot to a phone coming back after a week offline (the default
# retention), so buckets run from 10 ms to 7 days.
_LAG_BUCKETS: Final = (
    0.01,
    0.05,
    0.1,
    0.5,
    1,
    5,
    30,
    60,
    300,
    900,
    3600,
    4 * 3600,
    12 * 3600,
    86400,
    3 * 86400,
    7 * 86400,
)
# A first download runs from a fraction of a second (a field worker's few hundred rows) to
# many minutes (a manager's whole org over a phone link).
_FIRST_SYNC_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# A TLS handshake costs ~1 ms of CPU here; the full protocol handshake adds a token check
# and a database lookup, and the configured timeout caps it at seconds.
_GC_BUCKETS: Final = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_HANDSHAKE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class DeviceTraffic:
    """One org's device I/O, counted as plain integers by its sessions and added to the
    labelled counters (``syncd_bytes_sent`` and its neighbours) before each scrape.

    A labelled counter's ``inc`` is three calls and a lock; the live fan-out counted four
    per device per change (bytes and frames written, bytes read, the Ack), a few percent of
    the daemon's CPU per delivery at 3,000 devices (issue 10). A scrape sees every count
    made before it, as with the counters themselves."""

    __slots__ = ("_flushed", "acks", "bytes_received", "bytes_sent", "frames_sent")

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.frames_sent = 0
        """Frames written (CHANGES, checkpoints and the rest): ``syncd_batches_sent``."""
        self.bytes_received = 0
        self.acks = 0
        self._flushed = (0, 0, 0, 0)

    def take(self) -> tuple[int, int, int, int]:
        """What was counted since the last call: bytes sent, frames sent, bytes received,
        acks."""
        now = (self.bytes_sent, self.frames_sent, self.bytes_received, self.acks)
        before, self._flushed = self._flushed, now
        return (now[0] - before[0], now[1] - before[1], now[2] - before[2], now[3] - before[3])


class Metrics:
    """Every metric the daemon exports, registered in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._refreshers: list[Callable[[], None]] = []
        self._traffic: dict[str, DeviceTraffic] = {}
        r = self.registry
        ProcessCollector(registry=r)
        Info("syncd_build", "The syncd version and Python running this instance.", registry=r).info(
            {"version": _version(), "python": platform.python_version()}
        )
        self.ready = Gauge(
            "syncd_ready",
            "1 while /readyz answers 200 (control database reachable, not starting or draining).",
            registry=r,
        )
        self.control_database_up = Gauge(
            "syncd_control_database_up",
            "1 when the last probe of the control database succeeded.",
            registry=r,
        )
        self.org_staging_up = Gauge(
            "syncd_org_staging_up",
            "1 when the last probe of the org's staging database succeeded; while 0 the org's"
            " new sessions are refused with OVERLOADED and a retry-after.",
            ["org"],
            registry=r,
        )
        self.embedded_restarts = Counter(
            "syncd_embedded_postgres_restarts",
            "Times the embedded PostgreSQL was found dead and started again.",
            registry=r,
        )
        self.jwks_fetches = Counter(
            "syncd_jwks_fetches",
            "Fetches of the JWKS URL, by outcome (ok, error); on error the keys held are kept.",
            ["outcome"],
            registry=r,
        )
        self.sessions = Gauge(
            "syncd_sessions",
            "Device sessions now open, by state: handshake (TLS done, no Welcome yet; org is"
            " empty until Hello names it), syncing, live. Sampled at each scrape.",
            ["org", "state"],
            registry=r,
        )
        self.tls_handshakes = Gauge(
            "syncd_tls_handshakes",
            "Device connections accepted and not yet through TLS, by state: running (at most"
            " sync.max_tls_handshakes) and waiting for a turn. Sampled at each scrape.",
            ["state"],
            registry=r,
        )
        self.sessions_opened = Counter(
            "syncd_sessions_opened",
            "Device sessions that completed the handshake.",
            ["org"],
            registry=r,
        )
        self.rows_sent = Counter(
            "syncd_rows_sent",
            "Rows sent to devices in CHANGES frames.",
            ["org", "entity"],
            registry=r,
        )
        self.bytes_sent = Counter(
            "syncd_bytes_sent", "Protocol bytes written to devices.", ["org"], registry=r
        )
        self.bytes_received = Counter(
            "syncd_bytes_received", "Protocol bytes read from devices.", ["org"], registry=r
        )
        self.batches_sent = Counter(
            "syncd_batches_sent", "CHANGES frames sent to devices.", ["org"], registry=r
        )
        self.frames_encoded = Counter(
            "syncd_frames_encoded",
            "CHANGES frames encoded (one encoding may serve many devices of a live group).",
            ["org"],
            registry=r,
        )
        self.checkpoints_acked = Counter(
            "syncd_checkpoints_acked", "Checkpoints acknowledged by devices.", ["org"], registry=r
        )
        self.errors = Counter(
            "syncd_errors",
            "ERROR frames sent to devices, by error code name.",
            ["code"],
            registry=r,
        )
        self.live_drops = Counter(
            "syncd_live_drops",
            "Devices dropped from their org's live group (a slow device whose queue filled, or"
            " the group's feed failing); each catches up from its last whole checkpoint.",
            ["org"],
            registry=r,
        )
        self.admin_commands = Counter(
            "syncd_admin_commands",
            "Admin socket commands handled.",
            ["command", "outcome"],
            registry=r,
        )
        self.upload_ops = Counter(
            "syncd_upload_ops",
            "Uploaded row operations, by outcome (applied, conflict, rejected, replayed).",
            ["org", "outcome"],
            registry=r,
        )
        self.db_pool_connections = Gauge(
            "syncd_db_pool_connections",
            "Connections in each org's staging pool, by state (in_use, idle).",
            ["org", "state"],
            registry=r,
        )
        self.commit_to_send_seconds = Histogram(
            "syncd_commit_to_send_seconds",
            "Time from a change's commit in staging to its frame being written to a device.",
            ["org"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.gc_pause_seconds = Histogram(
            "syncd_gc_pause_seconds",
            "How long each garbage collection stopped the daemon, by generation (2: full);"
            " nothing is sent to any device meanwhile.",
            ["generation"],
            buckets=_GC_BUCKETS,
            registry=r,
        )
        self.handshake_seconds = Histogram(
            "syncd_handshake_seconds",
            "Time from accepting a connection to the protocol handshake completing.",
            buckets=_HANDSHAKE_BUCKETS,
            registry=r,
        )

        self.device_lag_seconds = Histogram(
            "syncd_device_lag_seconds",
            "How far behind the org's head devices are, per org (never per device): at"
            " when=ack, from a checkpoint's snapshot to the device acknowledging it holds it;"
            " at when=reconnect, the age of the checkpoint a returning device resumes from.",
            ["org", "when"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.first_sync_seconds = Histogram(
            "syncd_first_sync_seconds",
            "From the Hello of a device holding nothing (or told to start over) to its"
            " acknowledgement of the first checkpoint that covers every entity, in one session.",
            ["org"],
            buckets=_FIRST_SYNC_BUCKETS,
            registry=r,
        )
        self.devices_connected = Gauge(
            "syncd_devices_connected",
            "Distinct devices with a session past Welcome on this instance. Sampled at each"
            " scrape.",
            ["org"],
            registry=r,
        )
        self.refusals = Counter(
            "syncd_refusals",
            "Sessions refused before Welcome (bad token, unknown org, revoked, overloaded, ...),"
            " by error code name.",
            ["code"],
            registry=r,
        )

    def traffic(self, org: str) -> DeviceTraffic:
        """The device I/O tally of `org`'s sessions (one object per org, kept until the org
        is forgotten)."""
        found = self._traffic.get(org)
        if found is None:
            found = self._traffic[org] = DeviceTraffic()
        return found

    def _flush_traffic(self) -> None:
        for org, traffic in self._traffic.items():
            sent, frames, received, acks = traffic.take()
            for counter, amount in (
                (self.bytes_sent, sent),
                (self.batches_sent, frames),
                (self.bytes_received, received),
                (self.checkpoints_acked, acks),
            ):
                if amount:
                    counter.labels(org=org).inc(amount)

    def forget_org(self, org: str) -> None:
        """Drop every series labelled with `org`, when an org is deprovisioned.

        Every metric attribute of this object is visited, so a new org-labelled metric is
        forgotten without being listed here. A sample's labels come in the metric's label
        order; ``le`` (histogram buckets) and ``quantile`` belong to the sample, not the child.
        """
        self._traffic.pop(org, None)
        for metric in vars(self).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            children = {
                tuple(v for k, v in sample.labels.items() if k not in _SAMPLE_LABELS)
                for family in metric.collect()
                for sample in family.samples
                if sample.labels.get("org") == org
            }
            for values in children:
                metric.remove(*values)

    def on_scrape(self, refresh: Callable[[], None]) -> None:
        """Run `refresh` on the event loop before each scrape: for gauges read from state
        that has no events to count (asyncpg pools), sampled exactly when asked."""
        self._refreshers.append(refresh)

    def refresh(self) -> None:
        self._flush_traffic()
        for refresh in self._refreshers:
            refresh()

    def render(self) -> bytes:
        """The text exposition of every metric, for `GET /metrics`."""
        return generate_latest(self.registry)


def _version() -> str:
    try:
        return version("syncd")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"
