"""A tiny run of every bench, as a user runs it (`python -m bench.NAME`), checked through
the JSON document it writes: the schema a tool reads, ratios computed from the same run,
a peer skipped with a message when node is missing, and a report that renders PNGs.

The sizes are the smallest that still go through every phase (an embedded PostgreSQL, the
daemon in a subprocess, TLS devices, SQLite clients), so the whole module stays well under
a minute on 2 cores; the peers' full runs (npm, pouchdb-server) stay out of CI.
"""

from __future__ import annotations

import os
import shutil
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

TINY: dict[str, list[str]] = {
    name: argv.split()
    for name, argv in {
        "codec": "--batches 2 --repeat 3",
        "localdb": "--rows 2000 --rounds 3",
        "feed": "--rows 2000 --rounds 3",
        "upload": "--devices 1,2 --batches 2 --ops 10 --rounds 3",
        "sync": "--rows 2000 --devices 2 --device-rows 500 --sqlite-devices 2"
        " --live-devices 3 --rate 20 --seconds 0.25 --rounds 3",
        "fanout": "--devices 4 --teams 2 --changes 4 --rate 50 --rows 50 --rounds 3",
        # No node on PATH: pouchdb-server is skipped; direct PostgreSQL runs at a tiny size.
        "peers": "--only pouchdb,postgres --rows 500 --devices 3 --changes 3 --rate 20"
        " --poll 0.2 --live-rows 100",
        "firstsync": "--rows 3000 --shaped-rows 2000",
        # A variant of a bench is "bench:variant": the same module with other arguments.
        "firstsync:compression": "--compression --shape narrow,crm --rows 2000 --codec-rows 3000",
        "fleet": "--devices 20 --org-b-devices 4 --storm-devices 6 --storm-teams 2 --workers 2"
        " --probes 2 --rows 500 --fanout-changes 2 --fanout-all-changes 2 --single-changes 4"
        " --rate 20",
        "tls_resume": "--connections 8 --devices 2 --repeat 1",
    }.items()
}
RUN_DEADLINE_S = 100
CEILINGS = ("codec", "localdb", "feed", "sync")
Doc = dict[str, Any]


def _path_without_node(tmp: Path) -> str:
    """A PATH with git (for the commit) but neither node nor npm."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    git = shutil.which("git")
    if git:
        (bin_dir / "git").symlink_to(git)
    return str(bin_dir)


def _bench(name: str) -> str:
    """The bench module a TINY entry runs ("firstsync:compression" runs bench.firstsync)."""
    return name.split(":", 1)[0]


class Runs:
    """Each bench run once per module (as a user runs it), its document and output kept."""

    def __init__(self, tmp: pytest.TempPathFactory, dsn: str) -> None:
        self._tmp = tmp
        self._dsn = dsn
        self._done: dict[str, tuple[Doc, str]] = {}

    def __call__(self, name: str) -> tuple[Doc, str]:
        if name not in self._done:
            self._done[name] = self._run(name)
        return self._done[name]

    def _run(self, name: str) -> tuple[Doc, str]:
        tmp = self._tmp.mktemp(name)
        env = {
            **os.environ,
            record.RESULTS_ENV: str(tmp / "results"),
            "SYNCD_BENCH_PROGRESS": "0",
            # The tests' own server: a tiny run should not pay an initdb per bench.
            DSN_ENV: self._dsn,
            "PATH": _path_without_node(tmp),
        }
        bench = _bench(name)
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{bench}", *TINY[name]],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_DEADLINE_S,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (path,) = (tmp / "results").glob(f"*-{bench}-*.json")
        return orjson.loads(path.read_bytes()), done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, pg_dsn: str) -> Runs:
    return Runs(tmp_path_factory, pg_dsn)


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_bench_writes_a_document_of_the_schema(runs: Runs, name: str) -> None:
    doc, out = runs(name)
    check_schema(doc)
    assert doc["benches"][_bench(name)]["error"] is None
    assert all(f["bench"] == _bench(name) for f in doc["figures"])
    assert "results: " in out


@pytest.mark.parametrize("name", CEILINGS)
def test_ratios_come_from_the_same_run_and_repeat_beside_the_ceiling(runs: Runs, name: str) -> None:
    doc, _ = runs(name)
    with_ceiling = [f for f in doc["figures"] if f["ceiling_samples"]]
    assert with_ceiling
    for f in with_ceiling:
        value = statistics.median(f["samples"])
        ceiling = statistics.median(f["ceiling_samples"])
        assert f["ratio"] == pytest.approx(value / ceiling)
        # Every repeat was measured beside its own ceiling, at least 3 times.
        assert len(f["ceiling_samples"]) == len(f["samples"]) == len(f["ratios"])
        assert f["repeats"] >= 3


def test_sync_records_live_percentiles_over_three_rounds(runs: Runs) -> None:
    doc, _ = runs("sync")
    (live,) = [f for f in doc["figures"] if f["phase"] == "live" and f["unit"] == "ms"]
    assert live["latency"]["count"] == live["params"]["expected"]
    assert live["repeats"] == 3


@pytest.mark.parametrize("name", ["fanout", "upload"])
def test_figures_without_ceiling_still_repeat_three_times(runs: Runs, name: str) -> None:
    doc, _ = runs(name)
    assert all(f["repeats"] == 3 for f in doc["figures"])


def test_fleet_connects_every_device_and_delivers_every_change(runs: Runs) -> None:
    doc, out = runs("fleet")
    figures = {f["name"]: f for f in doc["figures"]}
    connected = figures["live devices connected"]
    # 20 + 4 in two device processes, and 2 probes in a third (the one-device changes).
    assert connected["value"] == connected["params"]["asked"] == 26
    fanouts = [f for f in doc["figures"] if f["phase"] == "fanout"]
    assert len(fanouts) == 2
    for f in fanouts:
        assert f["params"]["delivered"] == f["params"]["expected"] > 0
    singles = [f for f in doc["figures"] if f["phase"] == "one-device"]
    assert [f["params"]["lost"] for f in singles] == [0, 0]
    storm = figures["reconnect storm, all caught up"]
    # Every handshake of the storm resumed: the restarted daemon has the same ticket key file.
    assert storm["params"] == {
        "devices": 26,
        "busy": storm["params"]["busy"],
        "failed": 0,
        "tls_resumed": 1.0,
    }
    # Every figure of the table is printed beside its same-run ceiling.
    for line in ("bare TLS", "daemon RSS per live device", "handshakes/s during that storm"):
        assert line in out


def test_tls_resume_resumes_every_offered_session_across_a_restart(runs: Runs) -> None:
    doc, out = runs("tls_resume")
    resumed = {
        (f["params"]["tickets"], f["params"]["mode"]): f["params"]["resumed"]
        for f in doc["figures"]
        if f["unit"] == "us"
    }
    assert resumed == {
        (tickets, mode): 0.0 if mode == "full" else 1.0
        for tickets in (1, 2)
        for mode in ("full", "resumed", "after restart")
    }
    assert "server us/handshake" in out


def test_a_missing_node_skips_pouchdb_with_a_message(runs: Runs) -> None:
    doc, out = runs("peers")
    (skipped,) = doc["skipped"]
    assert skipped["what"] == "pouchdb-server"
    assert "node" in skipped["reason"]
    assert "PATH" in skipped["reason"]
    assert f"skipped pouchdb-server: {skipped['reason']}" in out
    # The direct PostgreSQL peer still ran beside syncd on the same devices.
    sides = {f["peer"] for f in doc["figures"] if f["phase"] == "held live"}
    assert sides == {"postgresql", "syncd"}


def test_the_report_renders_markdown_and_png(runs: Runs, tmp_path: Path) -> None:
    doc, _ = runs("sync")
    source = tmp_path / "run.json"
    source.write_bytes(orjson.dumps(doc))
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "bench.report", str(source), str(source), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = (out / "report.md").read_text()
    assert "received, 1 wire device" in text
    assert "## Run to run" in text
    for png in ("rates.png", "latency_cdf.png", "spread.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"]({png})" in text


def test_the_report_refuses_a_file_that_is_not_a_run(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"hello": 1}')
    done = subprocess.run(
        [sys.executable, "-m", "bench.report", str(bogus), "--out", str(tmp_path / "r")],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert f"{bogus} is not a {record.SCHEMA} run document" in done.stderr


def test_firstsync_measures_the_device_alone_beside_raw_sqlite(runs: Runs) -> None:
    """The SDK fed by bench.replay commits every row, and the figure sits beside raw SQLite."""
    doc, out = runs("firstsync")
    figures = {f["name"]: f for f in doc["figures"]}
    alone = figures["committed rows/s, device alone (replayed stream)"]
    assert alone["ceiling_name"] == "raw SQLite, default WAL"
    # Three replays, each beside its own raw SQLite run, and the ratio of their medians.
    assert len(alone["samples"]) == len(alone["ceiling_samples"]) == 3
    assert min(alone["samples"]) > 0
    assert alone["ratio"] == pytest.approx(
        statistics.median(alone["samples"]) / statistics.median(alone["ceiling_samples"])
    )
    assert figures["device CPU s per 1M rows, device alone"]["samples"][0] > 0
    assert "committed by the SDK, device alone" in out


def test_firstsync_compression_measures_both_row_shapes_end_to_end(runs: Runs) -> None:
    """Each shape's downloads with and without zstd, in one run: fewer wire bytes with zstd,
    the daemon's CPU per million rows recorded for both, and the codec micro-measure."""
    doc, out = runs("firstsync:compression")
    by_shape: dict[str, dict[str, Any]] = {}
    for f in doc["figures"]:
        if f["name"].startswith("compression: "):
            by_shape.setdefault(f["params"]["shape"], {})[f["name"]] = f
    assert set(by_shape) == {"narrow", "crm"}
    plain_bytes = {}
    for shape, figures in by_shape.items():
        wire = figures["compression: wire bytes/row, zstd"]
        assert wire["ceiling_name"] == "no compression"
        assert len(wire["samples"]) == len(wire["ceiling_samples"]) == 3
        # zstd sends fewer bytes than no compression, every round.
        assert all(z < n for z, n in zip(wire["samples"], wire["ceiling_samples"], strict=True))
        plain_bytes[shape] = statistics.median(wire["ceiling_samples"])
        cpu = figures["compression: daemon CPU s per 1M rows, zstd"]
        assert len(cpu["samples"]) == len(cpu["ceiling_samples"]) == 3
        received = figures["compression: received rows/s, zstd"]
        assert received["ceiling_name"] == "asyncpg streaming"
        assert min(received["samples"]) > 0
        assert f"{shape}: zstd sends " in out
    # The crm rows are the wider ones on the wire, as bench/shapes.py says.
    assert plain_bytes["crm"] > 1.4 * plain_bytes["narrow"]
    codecs = {
        (f["params"]["shape"], f["name"]) for f in doc["figures"] if f["name"].startswith("codec ")
    }
    for shape in ("narrow", "crm"):
        assert (shape, f"codec zstd -1, {shape}: ratio") in codecs
        assert (shape, f"codec zstd -1 + 110 KiB dictionary per entity, {shape}: ratio") in codecs
        assert (shape, f"codec zstd -1 per column, frames of 1,000 rows, {shape}: ratio") in codecs


def test_firstsync_times_the_shaped_link_with_and_without_compression(runs: Runs) -> None:
    """Through the shaper, the SDK's download with zstd and without, each beside its floor:
    without compression more bytes cross the link, so its floor is the higher one."""
    doc, out = runs("firstsync")
    figures = {f["name"]: f for f in doc["figures"]}
    zstd, plain = figures["shaped: total seconds"], figures["shaped: total seconds, no compression"]
    for f in (zstd, plain):
        assert f["ceiling_name"] == "bytes / bandwidth"
        assert f["samples"][0] >= f["ceiling_samples"][0] > 0
    assert plain["ceiling_samples"][0] > 1.3 * zstd["ceiling_samples"][0]
    assert "without compression" in out
