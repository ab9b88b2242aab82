"""Many callers' statements answered by one: the group commit, for reads and writes alike.

Why (issue 10): a reconnect storm brings thousands of sessions through the same few
questions at once (the staging database's snapshot and horizon, which tables were written
after a checkpoint, the plan a token names, the session's own record), and each was its own
round trip through a pool: acquire, statement, release, a wakeup. Asked together they cost
one statement per round.

Rule. An item waits for the first round that *starts after it was submitted*: items that
arrive while a round runs wait for the next one, which takes all of them. So an answer is
never older than its question (a snapshot read for a caller was taken after the caller
asked, a horizon read after a window's last page is read after it), which is what lets a
caller treat a shared answer as its own. One round runs at a time per ``GroupCall``; the
first round of a burst starts on the loop's next step, so every caller made ready by the
same step joins it.

Failures. With ``isolate=True`` a round that raises is retried item by item, so one bad
item (an org removed meanwhile) fails its own caller only; with ``isolate=False`` (shared
questions, where every item would fail alike) each caller gets the round's exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCall"]

T = TypeVar("T")
R = TypeVar("R")

Round = Callable[[Sequence[T]], Awaitable[Sequence[R]]]
"""Answers a round's items, one result per item in the same order."""


class GroupCall(Generic[T, R]):
    """``await group(item)`` is answered by a round that started after it (module docstring)."""

    def __init__(self, answer: Round[T, R], *, name: str, isolate: bool = True) -> None:
        self._answer = answer
        self._name = name
        self._isolate = isolate
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._rounds: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[R] = loop.create_future()
        if self._rounds is not None and self._rounds.get_loop() is not loop:
            # A loop that is gone (one per test) took its round and its callers with it.
            self._rounds, self._pending = None, []
        self._pending.append((item, done))
        if self._rounds is None or self._rounds.done():
            self._rounds = asyncio.create_task(self._run(), name=self._name)
        return await done

    async def drain(self) -> None:
        """Wait until every item submitted so far has its answer (shutdown: the last
        session records are written before the daemon goes)."""
        while self._rounds is not None and not self._rounds.done():
            await asyncio.shield(self._rounds)

    async def _run(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._round(batch)
                batch = []
        finally:  # cancelled (the loop is closing): nobody is left waiting forever
            for _, done in (*batch, *self._pending):
                done.cancel()
            self._pending = []

    async def _round(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._answer([item for item, _ in batch])
        except Exception as exc:
            if not self._isolate or len(batch) == 1:
                for _, done in batch:
                    _fail(done, exc)
                return
            for item, done in batch:
                try:
                    (result,) = await self._answer([item])
                except Exception as one:
                    _fail(done, one)
                else:
                    _resolve(done, result)
            return
        if len(results) != len(batch):
            error = RuntimeError(f"{self._name}: {len(results)} answers for {len(batch)} items")
            for _, done in batch:
                _fail(done, error)
            return
        for (_, done), result in zip(batch, results, strict=True):
            _resolve(done, result)


def _resolve(done: asyncio.Future[R], result: R) -> None:
    if not done.done():  # its caller may have given up (cancelled) meanwhile
        done.set_result(result)


def _fail(done: asyncio.Future[R], exc: BaseException) -> None:
    if not done.done():
        done.set_exception(exc)
