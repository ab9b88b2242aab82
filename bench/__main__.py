"""`python -m bench`: every bench, one after the other, sized for a 2-core machine.

Strategy: each bench module keeps its own `main()` and command line; this runner only
chooses arguments. The quick sizes finish in a few minutes together and keep the ratios
meaningful (each bench compares against a ceiling measured in the same run); `--full` passes
the issue's sizes (1M rows, 100 devices x 100k rows), which takes tens of minutes. Benches
run one at a time so none steals the others' cores, and a failing bench does not stop the
rest: the runner reports it and exits non-zero at the end. All benches of one run write
into one JSON document (bench/record.py) whose path is printed at the end.

    python -m bench [--full] [--only NAME,...]   (codec localdb feed upload sync fanout
                                               peers ingest firstsync fleet tls_resume)
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Final

from bench import record

BENCHES: Final = (
    "codec",
    "localdb",
    "feed",
    "upload",
    "sync",
    "fanout",
    "peers",
    "ingest",
    "firstsync",
    "fleet",
    "tls_resume",
)
QUICK: Final[dict[str, list[str]]] = {
    "codec": ["--batches", "20", "--repeat", "3"],
    "localdb": ["--rows", "50000", "--rounds", "3"],
    "feed": ["--rows", "200000"],
    "upload": ["--devices", "1,10", "--batches", "5"],
    "sync": [],
    "fanout": ["--devices", "200", "--changes", "50"],
    "peers": ["--rows", "20000", "--devices", "10,50,100,200", "--changes", "20"],
    "ingest": [],
    "firstsync": ["--rows", "200000", "--shaped-rows", "50000"],
    "fleet": ["--devices", "2000", "--storm-devices", "1000"],
    "tls_resume": ["--connections", "600"],
}
FULL: Final[dict[str, list[str]]] = {
    "codec": [],
    "localdb": [],
    "feed": ["--rows", "1000000"],
    "upload": [],
    "sync": ["--full"],
    "fanout": [],
    "peers": ["--rows", "200000", "--devices", "10,100,200,400,800"],
    "ingest": ["--rows", "1000000"],
    "firstsync": [],  # 1M and 3M rows, then 200k through the shaped link
    "fleet": [],  # 10,000 devices of org A, 5,000 fresh ones storming
    "tls_resume": [],
}


def _run(name: str, argv: list[str]) -> None:
    """Import late, so a bench that does not import (work in progress) fails alone."""
    module = importlib.import_module(f"bench.{name}")
    main: Callable[[list[str]], object] = module.main
    main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's sizes (tens of minutes)")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHES]
    if unknown:
        parser.error(f"unknown bench {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    sizes = FULL if args.full else QUICK
    failed: list[str] = []
    with record.runner(["python -m bench", *(argv if argv is not None else sys.argv[1:])]):
        for name in chosen:
            if not _one(name, sizes[name]):
                failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _one(name: str, argv: list[str]) -> bool:
    """Run one bench; False when it raised (reported, and the next bench still runs)."""
    command = " ".join(["python -m bench." + name, *argv])
    print(f"\n=== {name}: {command}", flush=True)
    started = time.perf_counter()
    try:
        _run(name, list(argv))
    except Exception:
        traceback.print_exc()
        return False
    finally:
        print(f"=== {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return True


if __name__ == "__main__":
    sys.exit(main())
