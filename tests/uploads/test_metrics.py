"""Upload outcomes in the daemon's Prometheus metrics, read back as an operator scrapes them."""

from __future__ import annotations

import asyncio
import uuid

from protocol import Upload
from syncd.metrics import Metrics
from syncd.server.upload_batch import apply_upload_batch
from tests.uploads.conftest import BOUND_S, Org, ins, new_id, upd


def scraped(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "syncd_upload_ops_total", {"org": "acme", "outcome": outcome}
    )
    return 0.0 if value is None else value


async def test_ops_are_counted_by_outcome_and_replays_apart(org: Org) -> None:
    metrics = Metrics()
    device = org.device("u1")
    key = new_id()
    upload = Upload(
        batch_id=str(uuid.uuid4()),
        ops=(
            ins("account", key, name="a", owner="u1"),
            ins("account", new_id(), name="b", owner="u1"),
            ins("region", 1, name="read-only"),  # NOT_WRITABLE: rejected
            upd("account", new_id(), 1, name="gone"),  # no such row: conflict
        ),
    )
    async with asyncio.timeout(BOUND_S):
        for _ in range(2):  # the second send is a replay of the same batch id
            await apply_upload_batch(
                org.store, device.plan, "u1", device.device_id, upload, metrics=metrics, org="acme"
            )
    assert [scraped(metrics, o) for o in ("applied", "conflict", "rejected", "replayed")] == [
        2.0,
        1.0,
        1.0,
        4.0,
    ]
    assert b'syncd_upload_ops_total{org="acme",outcome="applied"} 2.0' in metrics.render()
