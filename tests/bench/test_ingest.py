"""A tiny run of ``python -m bench.ingest`` as a user runs it, checked through the JSON
document it writes: the schema, the initial copy measured beside its COPY ceiling three
times, every live change received by the device, and write-back figures from three rounds.
Tiny sizes go through every phase (source slot, OrgSync, daemon, wire and SDK devices) in
well under a minute."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import record
from bench.common import DSN_ENV
from tests.bench.schema import REPO, check_schema

TINY = ["--rows", "600", "--rounds", "3", "--rate", "20", "--seconds", "0.5"]
TINY += ["--writeback-ops", "20"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, pg_dsn: str) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ingest")
    env = {
        **os.environ,
        record.RESULTS_ENV: str(tmp / "results"),
        "SYNCD_BENCH_PROGRESS": "0",
        DSN_ENV: pg_dsn,  # the tests' server (wal_level=logical): no initdb of its own
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.ingest", *TINY],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "results: " in done.stdout
    (path,) = Path(tmp / "results").glob("*-ingest-*.json")
    doc: dict[str, Any] = orjson.loads(path.read_bytes())
    return doc


def _figure(doc: dict[str, Any], phase: str) -> list[dict[str, Any]]:
    return [f for f in doc["figures"] if f["phase"] == phase]


def test_the_ingest_bench_writes_a_document_of_the_schema(run: dict[str, Any]) -> None:
    check_schema(run)
    assert run["benches"]["ingest"]["error"] is None
    assert {f["phase"] for f in run["figures"]} == {"initial copy", "live", "write-back"}


def test_the_initial_copy_repeats_beside_its_copy_ceiling(run: dict[str, Any]) -> None:
    (copy,) = _figure(run, "initial copy")
    assert copy["unit"] == "rows/s"
    assert copy["params"]["rows"] == 600
    assert len(copy["samples"]) == len(copy["ceiling_samples"]) == 3
    assert copy["ratio"] == pytest.approx(
        statistics.median(copy["samples"]) / statistics.median(copy["ceiling_samples"])
    )


def test_every_source_commit_reaches_the_device_and_write_back_is_measured(
    run: dict[str, Any],
) -> None:
    live = _figure(run, "live")
    assert sorted(f["name"].split(",")[0][-3:] for f in live) == ["p50", "p99"]
    for f in live:
        assert f["latency"]["count"] == f["params"]["expected"] == 30
        assert f["repeats"] == 3
    (writeback,) = _figure(run, "write-back")
    assert writeback["repeats"] == 3
    assert min(writeback["samples"]) > 0
