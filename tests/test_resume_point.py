"""Where a token says a device is, against the plan it follows now."""

from __future__ import annotations

import pytest

from syncd.server.resume import Resume
from syncd.server.sync_token import Progress, SyncToken, SyncTokenError, plan_digest
from syncd.store import Snapshot

THEN = {"account": "a1", "contact": "c1", "note": "n1", "task": "t1"}  # sorted: a, c, n, t
AT = Snapshot(100, 110)


def token(done: frozenset[int] | None, progress: Progress | None = None) -> SyncToken:
    return SyncToken(AT, plan_digest(THEN), done, progress)


def test_a_complete_token_moves_everything_incrementally() -> None:
    resume = Resume.from_token(token(None), THEN, THEN)
    assert (resume.since, resume.fresh, resume.unfinished) == (AT, (), {})


def test_a_cut_off_download_finishes_the_entity_in_progress_and_those_not_started() -> None:
    resume = Resume.from_token(token(frozenset({0}), Progress(1, "k-9")), THEN, THEN)
    assert resume.fresh == ()
    assert resume.unfinished == {"contact": "k-9", "note": None, "task": None}


def test_changed_and_new_entities_start_from_scratch_whatever_their_progress() -> None:
    now = {**THEN, "contact": "c2", "note": "n2", "visit": "v1"}
    resume = Resume.from_token(token(frozenset({0, 2}), Progress(1, 7)), THEN, now)
    assert resume.fresh == ("contact", "note", "visit")
    assert resume.unfinished == {"task": None}


def test_entities_dropped_from_the_plan_are_simply_not_followed() -> None:
    now = {"account": "a1", "task": "t1"}
    resume = Resume.from_token(token(frozenset({0, 1, 2})), THEN, now)
    assert (resume.fresh, resume.unfinished) == ((), {"task": None})


@pytest.mark.parametrize(
    ("done", "progress"), [(frozenset({4}), None), (frozenset({0}), Progress(9, "k"))]
)
def test_positions_outside_the_plan_are_refused(
    done: frozenset[int], progress: Progress | None
) -> None:
    with pytest.raises(SyncTokenError):
        Resume.from_token(token(done, progress), THEN, THEN)
