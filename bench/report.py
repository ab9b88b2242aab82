"""`python -m bench.report RESULTS...`: one or more run documents -> Markdown and PNG plots.

Why. A run document (bench/record.py) holds every repeat of every figure; a reader wants
the medians with their spread, the ratios to the ceilings, the peers side by side, and
whether the machine was quiet when the figures were taken. The report puts the latest run's
figures in tables, flags every run whose load average was above its core count, and, given
several runs, shows how far each figure moved between them. The plots are drawn with
matplotlib's Agg backend (files only, no display):

* `rates.png`: rows/s of each path against the ceiling measured beside it, per phase;
* `latency_cdf.png`: the CDF of every latency (HDR histogram points);
* `memory.png`: memory per device against the number of devices (when the runs have it);
* `peers.png`: syncd and its peers side by side on the same rows;
* `spread.png`: each figure's ratio (or value) over every repeat of every run given.

    python -m bench.report bench/results/*.json [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import orjson

from bench.record import SCHEMA, results_dir

Doc = dict[str, Any]
Fig = dict[str, Any]


def load(paths: Sequence[Path]) -> list[Doc]:
    """Run documents in the order they were taken; a file that is not one is an error."""
    docs = []
    for path in paths:
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as e:
            raise SystemExit(f"bench.report: cannot read {path}: {e}") from e
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise SystemExit(f"bench.report: {path} is not a {SCHEMA} run document")
        doc["_path"] = str(path)
        docs.append(doc)
    return sorted(docs, key=lambda d: str(d["started_at"]))


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("rows/s", "ops/s") or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _ratio(fig: Fig, value: float | None) -> str:
    """Against a ceiling as a share; against a peer as a multiple (syncd / peer)."""
    if value is None:
        return "-"
    return f"{value:.2f}x" if fig.get("peer") == "syncd" else f"{value:.0%}"


def _cpu(fig: Fig) -> str:
    parts = [f"{k} {v:.0%}" for k, v in (fig.get("cpu") or {}).items() if v is not None]
    return ", ".join(parts) or "-"


def _key(fig: Fig) -> str:
    return f"{fig['bench']}: {fig['name']}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _loaded(doc: Doc) -> str:
    cores = doc["machine"].get("cores")
    if doc.get("loaded"):
        return f"**yes** (above {cores} cores: figures not comparable)"
    return "no"


def latest_figures(docs: Sequence[Doc]) -> list[Fig]:
    """Each bench's figures from the newest run that has that bench."""
    newest: dict[str, Doc] = {}
    for doc in docs:  # oldest first: later runs replace earlier ones
        for f in doc["figures"]:
            newest[f["bench"]] = doc
    return [f for bench, doc in newest.items() for f in doc["figures"] if f["bench"] == bench]


def markdown(docs: Sequence[Doc], plots: Sequence[str]) -> str:
    latest = docs[-1]
    m = latest["machine"]
    out = ["# syncd bench report", ""]
    out.append(
        f"{len(docs)} run(s); the tables show each bench's figures from the newest run that"
        " has it. A run whose 1-minute load average was above its core count before or after"
        " is flagged: other work shared the cores, so its figures are not comparable."
    )
    out.append("")
    out += ["## Runs", ""]
    out += _table(
        ["started", "command", "commit", "cores", "load before", "load after", "loaded",
         "seconds"],
        [[d["started_at"][:19], f"`{' '.join(d['command'])}`",
          (d["machine"].get("git_commit") or "?")[:10]
          + (" (dirty)" if d["machine"].get("git_dirty") else ""),
          d["machine"].get("cores"), " ".join(map(str, d["load_before"])),
          " ".join(map(str, d["load_after"])), _loaded(d), d["seconds"]] for d in docs],
    )  # fmt: skip
    out += [
        "",
        f"Machine (latest run): {m.get('cores')} cores, {m.get('memory_bytes', 0) / 2**30:.1f}"
        f" GiB, Python {m.get('python')}, PostgreSQL {m.get('postgresql') or '-'},"
        f" {m.get('openssl')}, uvloop {m.get('uvloop')}, asyncpg {m.get('asyncpg')},"
        f" node {m.get('node') or '-'}.",
        "",
    ]
    skipped = [s for d in docs for s in d.get("skipped", [])]
    if skipped:
        out += ["Skipped:", ""]
        out += [f"* {s['bench']}: {s['what']}: {s['reason']}" for s in skipped]
        out.append("")
    figures = latest_figures(docs)
    out += ["## Figures", ""]
    out.append(
        "Value is the median of the repeats; ratio is value / ceiling, both medians from the"
        " same run (for a peer comparison the ceiling is the peer); its range is each"
        " repeat against the ceiling measured beside it."
    )
    out.append("")
    out += _table(
        ["bench", "figure", "value", "unit", "min-max (repeats)", "ceiling", "ratio",
         "ratio min-max", "CPU", "load"],
        [[f["bench"], f["name"], _num(f["value"], f["unit"]), f["unit"],
          f"{_num(f['min'], f['unit'])}-{_num(f['max'], f['unit'])} ({f['repeats']})",
          _num(f["ceiling"], f["unit"]), _ratio(f, f["ratio"]),
          f"{_ratio(f, min(f['ratios']))}-{_ratio(f, max(f['ratios']))}"
          if f.get("ratios") else "-",
          _cpu(f), f.get("load")] for f in figures],
    )  # fmt: skip
    lat = [f for f in figures if f.get("latency")]
    if lat:
        out += ["", "## Latencies (HDR histogram, ms)", ""]
        out += _table(
            ["bench", "figure", "count", "p50", "p90", "p99", "p99.9", "max"],
            [[f["bench"], f["name"], f["latency"]["count"],
              *(f"{f['latency'][k]:.1f}" for k in ("p50", "p90", "p99", "p999", "max"))]
             for f in lat],
        )  # fmt: skip
    peers = [f for f in figures if f.get("peer") == "syncd" and f.get("ceiling")]
    if peers:
        out += ["", "## Peers (same rows, same run)", ""]
        out += _table(
            ["comparison", "peer rows/s", "syncd rows/s", "syncd / peer"],
            [[f["ceiling_name"], _num(f["ceiling"], "rows/s"), _num(f["value"], "rows/s"),
              f"{f['ratio']:.2f}x"] for f in peers],
        )  # fmt: skip
    held = [f for f in figures if f.get("phase") == "held live" and f["unit"] == "ms"]
    if held:
        out += ["", "### N devices held live", ""]
        out += _table(
            ["side, devices", "connected", "refused", "delivered", "p50 ms", "p99 ms",
             "server CPU", "first refusal"],
            [[f["name"], f["params"]["connected"], f["params"]["refused"],
              f"{f['params']['delivered']}/{f['params']['expected']}",
              f"{f['latency']['p50']:.1f}", f"{f['latency']['p99']:.1f}",
              _pct(f["params"].get("server_cpu")), f["params"].get("first_refusal") or "-"]
             for f in held],
        )  # fmt: skip
    if len(docs) > 1:
        out += ["", "## Run to run", ""]
        out.append(
            "Each figure's ratio to its ceiling (or its value when it has none) in each run,"
            " oldest first; loaded runs are marked *."
        )
        out.append("")
        series = _series(docs)
        heads = [f"run {i + 1}{'*' if d.get('loaded') else ''}" for i, d in enumerate(docs)]
        rows = []
        for key, values in series.items():
            present = [v for v in values if v is not None]
            if len(present) < 2:
                continue  # a figure of one run has no spread to show
            cells = ["-" if v is None else _fmt_series(v, key) for v in values]
            rows.append([key, *cells, *(_fmt_series(x, key) for x in
                         (min(present), statistics.median(present), max(present)))])  # fmt: skip
        out += _table(["figure", *heads, "min", "median", "max"], rows)
    if plots:
        out += ["", "## Plots", ""]
        out += [f"![{p}]({p})" for p in plots]
    out.append("")
    return "\n".join(out)


def _fmt_series(v: float, key: str) -> str:
    return f"{v:.0%}" if key.endswith("(ratio)") else _num(v)


def _series(docs: Sequence[Doc]) -> dict[str, list[float | None]]:
    """Per figure, its ratio (or value) in each run, None where a run lacks it."""
    series: dict[str, list[float | None]] = {}
    for i, doc in enumerate(docs):
        for f in doc["figures"]:
            ratio = f.get("ratio")
            key = _key(f) + (" (ratio)" if ratio is not None else f" ({f['unit']})")
            series.setdefault(key, [None] * len(docs))[i] = (
                ratio if ratio is not None else f["value"]
            )
    return series


# --- plots --------------------------------------------------------------------------------


def plot_rates(figures: Sequence[Fig], path: Path) -> bool:
    figs = [f for f in figures if f["unit"] == "rows/s" and f.get("ceiling") and not f.get("peer")]
    if not figs:
        return False
    height = max(3.0, 0.45 * len(figs) + 1.5)
    fig, ax = plt.subplots(figsize=(11, height))
    labels = [
        f"{f['bench']}{'' if f.get('phase') in (None, f['bench']) else '/' + f['phase']}: "
        f"{f['name']}"
        for f in figs
    ]
    ys = range(len(figs))
    ax.barh([y + 0.2 for y in ys], [f["ceiling"] for f in figs], height=0.4, color="#bbbbbb",
            label="ceiling (same run)")  # fmt: skip
    ax.barh([y - 0.2 for y in ys], [f["value"] for f in figs], height=0.4, color="#2b6cb0",
            label="measured (median)")  # fmt: skip
    for y, f in zip(ys, figs, strict=True):
        ax.text(f["value"], y - 0.2, f" {f['ratio']:.0%}", va="center", fontsize=8)
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("rows/s (log scale)")
    ax.set_title("rows/s against the ceiling measured in the same run")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_latency(figures: Sequence[Fig], path: Path) -> bool:
    figs = [f for f in figures if f.get("latency") and f["latency"].get("cdf")]
    if not figs:
        return False
    fig, ax = plt.subplots(figsize=(13, 6))
    for f in figs:
        points = f["latency"]["cdf"]
        ax.plot([max(ms, 0.001) for _, ms in points], [p for p, _ in points],
                marker=".", label=f"{f['bench']}: {f['name']}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("ms (log scale)")
    ax.set_ylabel("percentile")
    ax.set_ylim(0, 100.5)
    ax.set_title("latency CDFs (HDR histogram)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_memory(figures: Sequence[Fig], path: Path) -> bool:
    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for f in figures:
        if f["unit"] == "KiB" and "devices" in f.get("params", {}):
            lines[f"{f['bench']}: {f['name'].split(', memory')[0]}"].append(
                (int(f["params"]["devices"]), float(f["value"]))
            )
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(9, 5))
    for label, points in sorted(lines.items()):
        points.sort()
        ax.plot([d for d, _ in points], [kib for _, kib in points], marker="o", label=label)
    ax.set_xlabel("devices held")
    ax.set_ylabel("KiB per device")
    ax.set_yscale("log")
    ax.set_title("memory per device against devices")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_peers(figures: Sequence[Fig], path: Path) -> bool:
    pairs = [f for f in figures if f.get("peer") == "syncd" and f.get("ceiling")]
    if not pairs:
        return False
    fig, ax = plt.subplots(figsize=(9, 1.2 * len(pairs) + 1.5))
    ys = range(len(pairs))
    ax.barh([y + 0.2 for y in ys], [f["ceiling"] for f in pairs], height=0.4, color="#dd8452",
            label="peer")  # fmt: skip
    ax.barh([y - 0.2 for y in ys], [f["value"] for f in pairs], height=0.4, color="#2b6cb0",
            label="syncd")  # fmt: skip
    for y, f in zip(ys, pairs, strict=True):
        ax.text(f["value"], y - 0.2, f" {f['ratio']:.2f}x", va="center", fontsize=8)
    ax.set_yticks(list(ys), [f"{f['phase']}: {f['ceiling_name'].split(': ', 1)[-1]}"
                             for f in pairs], fontsize=8)  # fmt: skip
    ax.invert_yaxis()
    ax.set_xlabel("rows/s to one device, same rows")
    ax.set_title("syncd and its peers side by side")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_spread(docs: Sequence[Doc], path: Path) -> bool:
    """Every repeat's ratio (figures with a ceiling), one column per figure, a colour per run."""
    keys: list[str] = []
    for doc in docs:
        for f in doc["figures"]:
            if f.get("ratios") and _key(f) not in keys:
                keys.append(_key(f))
    if not keys:
        return False
    fig, ax = plt.subplots(figsize=(11, max(3.0, 0.4 * len(keys) + 1.5)))
    for i, doc in enumerate(docs):
        mark = " (loaded)" if doc.get("loaded") else ""
        xs: list[float] = []
        ys: list[float] = []
        for f in doc["figures"]:
            if f.get("ratios"):
                for r in f["ratios"]:
                    xs.append(r)
                    ys.append(keys.index(_key(f)) + (i - len(docs) / 2) * 0.08)
        ax.scatter(xs, ys, s=14, label=f"run {i + 1} {doc['started_at'][:16]}{mark}")
    ax.set_yticks(range(len(keys)), keys, fontsize=7)
    ax.invert_yaxis()
    # Log scale: ratios to ceilings sit near 1, ratios to peers (syncd / peer) far above it.
    ax.set_xscale("log")
    ax.axvline(1.0, color="#888888", linewidth=0.8)
    ax.set_xlabel("ratio to the ceiling (or syncd / peer), each repeat, log scale")
    ax.set_title("spread: every repeat of every run")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def render(docs: Sequence[Doc], out: Path) -> Path:
    """Write report.md and its PNGs into `out`; returns the Markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    latest = latest_figures(docs)
    drawn = {
        "rates.png": plot_rates(latest, out / "rates.png"),
        "latency_cdf.png": plot_latency(latest, out / "latency_cdf.png"),
        "memory.png": plot_memory(latest, out / "memory.png"),
        "peers.png": plot_peers(latest, out / "peers.png"),
        "spread.png": plot_spread(docs, out / "spread.png"),
    }
    plots = [name for name, done in drawn.items() if done]
    report = out / "report.md"
    report.write_text(markdown(docs, plots))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("results", nargs="*", type=Path, help="run documents (JSON)")
    parser.add_argument("--out", type=Path, help="directory for report.md and the PNGs")
    parser.add_argument("--latest", action="store_true", help="the newest document only")
    args = parser.parse_args(argv)
    paths: list[Path] = list(args.results)
    if not paths:
        found = sorted(results_dir().glob("*.json"))
        if not found:
            parser.error(f"no run documents given and none in {results_dir()}")
        paths = found[-1:] if args.latest else found
    docs = load(paths)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or results_dir() / f"report-{stamp}"
    report = render(docs, out)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
