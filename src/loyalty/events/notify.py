"""Wakes this worker's outbox consumers as soon as one of its transactions commits events;
consumers in other workers and servers find them by polling."""

from __future__ import annotations

import asyncio
import contextlib

_waiters: list[asyncio.Event] = []


def subscribe() -> asyncio.Event:
    """An event set whenever this worker commits events; the consumer clears it."""
    waiter = asyncio.Event()
    _waiters.append(waiter)
    return waiter


def unsubscribe(waiter: asyncio.Event) -> None:
    with contextlib.suppress(ValueError):
        _waiters.remove(waiter)


def changed() -> None:
    for waiter in _waiters:
        waiter.set()


async def wait(waiter: asyncio.Event, timeout_s: float) -> None:
    """Until this worker commits events or `timeout_s` passes, whichever is first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(waiter.wait(), timeout_s)
    waiter.clear()
