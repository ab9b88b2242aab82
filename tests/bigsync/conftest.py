"""Fixtures of the big-sync tests: the e2e suite's real daemon, over the session's
embedded PostgreSQL (tests/conftest.py)."""

from tests.e2e.conftest import control_dsn, running, workdir

__all__ = ["control_dsn", "running", "workdir"]
