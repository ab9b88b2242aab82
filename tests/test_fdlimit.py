"""The descriptor limit is raised to the hard limit at start, and what it allows is known."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from syncd.fdlimit import RESERVED_FDS, device_capacity, raise_fd_limit


@pytest.fixture
def restored_limit() -> Iterator[tuple[int, int]]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_the_soft_limit_is_raised_to_the_hard_one(restored_limit: tuple[int, int]) -> None:
    _, hard = restored_limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, hard), hard))
    assert device_capacity() == max(min(512, hard) - RESERVED_FDS, 0)
    soft, now_hard = raise_fd_limit()
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
    assert now_hard == hard
    assert soft == (hard if hard != resource.RLIM_INFINITY else 1_048_576)
    assert device_capacity() == soft - RESERVED_FDS
