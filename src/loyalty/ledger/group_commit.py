"""Group commit: the adjustments waiting at the same moment in one worker share a transaction.

One consumer task takes whatever is queued (up to BATCH_MAX), runs it as one transaction and
one commit, and only then answers each waiting request with its own outcome. While a batch
is in the database the next one gathers, so under load the cost of a commit is shared by
many adjustments, and with a single request in flight nothing waits for company.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from loyalty.errors import DatabaseUnavailable, InvariantViolation
from loyalty.metrics import instruments as metrics

BATCH_MAX = 64
# A bulk of 1,000 weighs 1,000: a batch holds about two of them, or 64 small writes.
BATCH_WEIGHT_MAX = 2000
QUEUE_MAX = 4096

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


@dataclass(slots=True)
class _Waiting(Generic[Item, Outcome]):
    item: Item
    future: asyncio.Future[Outcome] = field(default_factory=asyncio.Future)


class GroupCommit(Generic[Item, Outcome]):
    """Runs `process(batch)` for batches of submitted items, in submission order.

    `process` returns one outcome per item (an item's own failure is an outcome, not an
    exception); if it raises, every item of that batch gets the exception.
    """

    def __init__(
        self,
        process: Callable[[list[Item]], Awaitable[list[Outcome]]],
        batch_max: int = BATCH_MAX,
        queue_max: int = QUEUE_MAX,
        weigh: Callable[[Item], int] | None = None,
        weight_max: int = BATCH_WEIGHT_MAX,
        name: str = "group-commit",
    ) -> None:
        self._process = process
        self._batch_max = batch_max
        self._weigh = weigh
        self._weight_max = weight_max
        self._queue: asyncio.Queue[_Waiting[Item, Outcome]] = asyncio.Queue(queue_max)
        # An item taken from the queue that did not fit in the last batch: the next one's first.
        self._carried: _Waiting[Item, Outcome] | None = None
        self._task: asyncio.Task[None] | None = None
        self._name = name
        # Set once per batch, not per command: what waits beyond the batch being taken.
        self._depth = metrics.queue_depth(name)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"group-commit-{self._name}")

    async def stop(self) -> None:
        """Finishes what is queued, then stops."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def submit(self, item: Item) -> Outcome:
        waiting: _Waiting[Item, Outcome] = _Waiting(item)
        try:
            self._queue.put_nowait(waiting)
        except asyncio.QueueFull:
            raise DatabaseUnavailable("The service is overloaded; try again shortly") from None
        # Shielded: a client that disconnects must not cancel a write already queued.
        return await asyncio.shield(waiting.future)

    def _weight(self, waiting: _Waiting[Item, Outcome]) -> int:
        return 1 if self._weigh is None else self._weigh(waiting.item)

    async def _run(self) -> None:
        while True:
            batch = [self._carried or await self._queue.get()]
            self._carried = None
            weight = self._weight(batch[0])
            while len(batch) < self._batch_max and not self._queue.empty():
                waiting = self._queue.get_nowait()
                weight += self._weight(waiting)
                if weight > self._weight_max:
                    self._carried = waiting
                    break
                batch.append(waiting)
            self._depth.set(self._queue.qsize())
            try:
                outcomes = await self._process([waiting.item for waiting in batch])
                if len(outcomes) != len(batch):
                    raise InvariantViolation("a batch returned the wrong number of outcomes")
                for waiting, outcome in zip(batch, outcomes, strict=True):
                    if not waiting.future.done():
                        waiting.future.set_result(outcome)
            except Exception as error:
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(error)
            finally:
                for _ in batch:
                    self._queue.task_done()
