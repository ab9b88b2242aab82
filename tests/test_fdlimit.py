"""The descriptor limit is raised to the hard limit at start, and logged with what it allows."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from syncd.fdlimit import RESERVED_FDS, raise_fd_limit


@pytest.fixture
def restored_limit() -> Iterator[tuple[int, int]]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_the_soft_limit_is_raised_to_the_hard_one_and_logged(
    restored_limit: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, hard = restored_limit
    lowered = min(512, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    with caplog.at_level(logging.INFO, logger="syncd.fdlimit"):
        soft, now_hard = raise_fd_limit()
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
    assert now_hard == hard
    assert soft == (hard if hard != resource.RLIM_INFINITY else 1_048_576)
    (info,) = [r for r in caplog.records if r.getMessage() == "file descriptor limit"]
    assert info.__dict__["devices_at_most"] == soft - RESERVED_FDS
