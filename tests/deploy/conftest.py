"""The e2e fixtures (a short work directory, a control database per test), shared here."""

from tests.e2e.conftest import control_dsn, workdir

__all__ = ["control_dsn", "workdir"]
