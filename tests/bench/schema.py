"""What every bench run document must hold, for the bench tests of each bench."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import record

REPO = Path(__file__).resolve().parents[2]


def check_schema(doc: dict[str, Any]) -> None:
    """Fail unless ``doc`` is a bench run document of ``record.SCHEMA`` with its figures."""
    assert doc["schema"] == record.SCHEMA
    machine = doc["machine"]
    for key in ("cores", "memory_bytes", "python", "openssl", "uvloop", "git_commit"):
        assert key in machine, key
    assert machine["cores"] >= 1
    assert machine["memory_bytes"] > 0
    assert len(doc["load_before"]) == 3
    assert len(doc["load_after"]) == 3
    assert isinstance(doc["loaded"], bool)
    assert doc["figures"], "a bench run that recorded no figure"
    for f in doc["figures"]:
        for key, kind in (("bench", str), ("name", str), ("unit", str), ("samples", list),
                          ("cpu", dict), ("params", dict), ("load", float)):  # fmt: skip
            assert isinstance(f[key], kind), (f["name"], key)
        assert f["samples"]
        assert all(isinstance(s, float) for s in f["samples"])
        assert (f["min"], f["max"]) == (min(f["samples"]), max(f["samples"]))
        if f["latency"] is not None:
            lat = f["latency"]
            assert lat["count"] > 0
            assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
