"""The bench's own bookkeeping: figures, ratios, the run document, HDR percentiles.

These need no server: they pin what a reader of bench/results/*.json relies on (a ratio is
the median figure over the median ceiling of the same run; a loaded run is flagged; one
document per run, even when `python -m bench` runs several benches).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import orjson
import pytest

from bench import record
from bench.latency import summarize


def test_ratio_is_median_over_median_ceiling_of_the_same_run() -> None:
    fig = record.Figure(
        "sync", "received", "rows/s", [300.0, 100.0, 200.0], ceiling_samples=[1000.0, 400.0, 800.0]
    )
    data = fig.as_dict()
    assert data["value"] == 200.0
    assert data["ceiling"] == 800.0
    assert data["ratio"] == pytest.approx(0.25)
    assert data["ratios"] == pytest.approx([0.3, 0.25, 0.25])
    assert (data["min"], data["max"], data["repeats"]) == (100.0, 300.0, 3)


def test_a_figure_without_ceiling_has_no_ratio() -> None:
    data = record.Figure("fanout", "p99", "ms", [5.0], higher_is_better=False).as_dict()
    assert data["ceiling"] is None
    assert data["ratio"] is None
    assert data["ratios"] == []


def test_a_run_above_the_core_count_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    run = record.Run(command=["python -m bench.codec"])
    cores = run.machine["cores"]
    monkeypatch.setattr(record, "load_average", lambda: [cores + 0.5, 1.0, 1.0])
    assert run.document()["loaded"] is True
    monkeypatch.setattr(record, "load_average", lambda: [cores - 0.5, 1.0, 1.0])
    run.load_before = [0.1, 0.1, 0.1]
    assert run.document()["loaded"] is False


def test_the_runner_writes_one_document_for_all_its_benches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(record.RESULTS_ENV, str(tmp_path))
    with record.runner(["python -m bench"]):
        for name in ("codec", "localdb"):
            with record.bench_run(name, []) as run:
                run.figure(f"{name} figure", "rows/s", [1.0, 2.0, 3.0])
    (path,) = tmp_path.glob("*.json")
    doc = orjson.loads(path.read_bytes())
    assert sorted(doc["benches"]) == ["codec", "localdb"]
    assert [f["bench"] for f in doc["figures"]] == ["codec", "localdb"]


def test_a_bench_alone_writes_its_own_document_even_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(record.RESULTS_ENV, str(tmp_path))

    def failing_bench() -> None:
        with record.bench_run("feed", ["--rows", "1"]) as run:
            run.figure("feed figure", "rows/s", [1.0])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing_bench()
    (path,) = tmp_path.glob("*-feed-*.json")
    doc = orjson.loads(path.read_bytes())
    assert doc["benches"]["feed"]["error"] == "RuntimeError: boom"
    assert doc["figures"][0]["name"] == "feed figure"


def test_percentiles_come_from_the_histogram() -> None:
    lat = summarize(float(ms) for ms in range(1, 1001))  # 1..1000 ms, uniform
    assert lat.count == 1000
    # HDR keeps 3 significant digits: each percentile within 0.1% of the exact one.
    for got, exact in ((lat.p50, 500), (lat.p90, 900), (lat.p99, 990), (lat.p999, 999)):
        assert got == pytest.approx(exact, rel=1e-3)
    assert lat.max == pytest.approx(1000, rel=1e-3)
    assert lat.mean == pytest.approx(statistics.mean(range(1, 1001)), rel=1e-3)
    assert lat.cdf[0][0] == 0.0
    assert lat.cdf[0][1] == pytest.approx(1.0, rel=1e-3)
    assert lat.cdf[-1][0] == 100.0


def test_negative_latencies_are_counted_not_lost() -> None:
    lat = summarize([-0.5, 2.0, 3.0])
    assert lat.count == 3
    assert lat.clamped == 1


def test_no_samples_give_a_zero_count() -> None:
    assert summarize([]).count == 0
