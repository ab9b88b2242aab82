"""The first-download budgets on their own: totals, per org, release, the retry spread."""

from __future__ import annotations

import functools

from syncd.server.admission import Admission


def test_budgets_in_all_and_per_org_and_release_is_idempotent() -> None:
    admission = Admission(max_total=3, max_per_org=2, retry_after_ms=1000, jitter=lambda: 0.5)
    a1, a2 = admission.try_start("a"), admission.try_start("a")
    assert a1 is not None
    assert a2 is not None
    assert admission.try_start("a") is None  # the org's budget
    b1 = admission.try_start("b")
    assert b1 is not None
    assert admission.try_start("c") is None  # the instance's budget
    a1.release()
    a1.release()  # a second release frees nothing more
    assert admission.running == 2
    assert admission.try_start("a") is not None
    assert admission.try_start("a") is None


def test_the_retry_delay_is_spread_between_once_and_twice_the_base() -> None:
    for jitter, expected in ((0.0, 1000), (0.5, 1500), (0.999, 1999)):
        fixed = functools.partial(float, jitter)
        admission = Admission(max_total=1, max_per_org=1, retry_after_ms=1000, jitter=fixed)
        assert admission.retry_after_ms() == expected
