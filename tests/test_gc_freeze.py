"""When the daemon freezes the collector's objects, and that ended sessions' cycles still go.

A user of ``syncd serve`` checks two things: after a wave of new sessions their objects are
out of the full collections (frozen), and garbage in reference cycles that was frozen with
them (an ended session's) is freed once enough sessions have ended, not kept forever.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from syncd.gc_freeze import FreezeAfterWaves


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test process keeps a normal collector


def test_a_wave_of_sessions_freezes_and_churn_frees_the_frozen_cycles() -> None:
    live = [0]
    waves = FreezeAfterWaves(lambda: live[0], wave_min=10, wave_share=0.1, churn_share=0.5)
    for _ in range(9):
        waves.opened()
    live[0] = 9
    assert waves.step() is None  # not yet a wave
    waves.opened()
    live[0] = 10
    garbage = Cycle()
    gone = weakref.ref(garbage)
    del garbage  # unreachable, but only a collection can free a cycle
    assert waves.step() == "froze"
    assert gc.get_freeze_count() > 0
    gc.collect()
    assert gone() is not None  # frozen: full collections no longer walk it
    for _ in range(4):
        waves.ended()
    assert waves.step() is None  # below the churn that pays a collection
    for _ in range(6):
        waves.ended()
    assert waves.step() == "collected"
    assert gone() is None
    assert gc.get_freeze_count() > 0  # and what is live is frozen again


def test_the_wave_scales_with_the_live_sessions() -> None:
    live = [10_000]
    waves = FreezeAfterWaves(lambda: live[0], wave_min=500, wave_share=0.1)
    for _ in range(600):
        waves.opened()
    assert waves.step() is None  # 600 new beside 10,000 live is not a tenth
    for _ in range(400):
        waves.opened()
    assert waves.step() == "froze"
