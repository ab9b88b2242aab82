"""Latency percentiles from an HDR histogram, for every latency a bench reports.

Why a library: percentiles computed by hand from a sorted list (`lat[int(n * 0.99)]`) were
each bench's own approximation, and p99.9 of a few thousand samples needs a rule everyone
applies the same way. HdrHistogram (the `hdrhistogram` package) records values with 3
significant digits over 1 microsecond to an hour, so p50/p90/p99/p99.9/max and the count
mean the same thing in every bench, and the histogram also gives the CDF the report plots.

Values come in milliseconds and are recorded in microseconds. A bench whose devices share
an event loop with the writer can see a change "arrive" before the writer's COMMIT returned
(a negative latency): such values are recorded as 0 and counted in `clamped`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from hdrh.histogram import HdrHistogram

LOWEST_US: Final = 1
HIGHEST_US: Final = 3_600 * 1_000_000
SIGNIFICANT: Final = 3
# Points of the CDF kept in the JSON: enough to draw the tail, small enough to read.
CDF_PERCENTILES: Final = (
    0.0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97, 98, 99, 99.5, 99.9, 99.99, 100.0,
)  # fmt: skip


@dataclass(frozen=True)
class Latency:
    """Summary of one latency distribution, in milliseconds."""

    count: int
    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    mean: float
    clamped: int = 0
    cdf: list[tuple[float, float]] = field(default_factory=list)
    """(percentile, milliseconds) points, for plots."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cells(self) -> list[str]:
        """p50, p90, p99, p99.9, max as table cells."""
        return [f"{v:.1f}" for v in (self.p50, self.p90, self.p99, self.p999, self.max)]


CELL_HEADERS: Final = ["p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"]


def summarize(values_ms: Iterable[float]) -> Latency:
    """Percentiles of `values_ms` (an empty input gives count 0 and zeros)."""
    hist = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT)
    clamped = 0
    for ms in values_ms:
        us = round(ms * 1000)
        if us < LOWEST_US:
            clamped += us < 0
            us = LOWEST_US
        hist.record_value(min(us, HIGHEST_US))
    count = int(hist.get_total_count())
    if count == 0:
        return Latency(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def at(percentile: float) -> float:
        return float(hist.get_value_at_percentile(percentile)) / 1000

    # Percentile 0 is the histogram's lowest bucket, not the smallest value recorded.
    lowest = float(hist.get_min_value()) / 1000
    return Latency(
        count=count,
        p50=at(50),
        p90=at(90),
        p99=at(99),
        p999=at(99.9),
        max=float(hist.get_max_value()) / 1000,
        mean=float(hist.get_mean_value()) / 1000,
        clamped=clamped,
        cdf=[(float(p), at(p) if p else lowest) for p in CDF_PERCENTILES],
    )
