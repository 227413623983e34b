"""The relay: one process beside a server's workers that hands committed events to the
webhook endpoints and to NATS.

`loyalty serve` starts it and stops it. It is a process of its own, not a task in a worker,
so that delivery never shares an event loop with requests: in a worker, each round of sends
delayed that worker's commits (measured: S1 with a webhook and NATS fell from ~0.75x to
~0.6x of S1 without). Across servers, each consumer still runs in one relay at a time, the
holder of its lease (events/leases.py); the others wait to take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal

from loyalty import logs
from loyalty.config import Settings
from loyalty.db import Database, open_database
from loyalty.events.tail import Tail
from loyalty.webhooks.dispatcher import Dispatcher

log = logging.getLogger("loyalty.relay")

POOL_SIZE = 4
PARENT_CHECK_S = 1.0


async def run(settings: Settings) -> None:
    """Until SIGTERM or SIGINT, or until the server that started it is gone; the consumers
    then store how far they got and give their leases up."""
    db = await open_database(settings.database_url, POOL_SIZE)
    try:
        tail = Tail(db)  # the consumers' one reader of the newest events
        dispatcher = Dispatcher(db, tail, settings.webhook_retry_schedule_s)
        consumers = [asyncio.create_task(dispatcher.run())]
        consumers += _nats_publisher(db, tail, settings)
        # What exists now lives as long as the relay: out of the collector's walks (as in a
        # worker, app.py), which otherwise revisit it on every full collection.
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        stopped = asyncio.create_task(stop.wait())
        watch = asyncio.create_task(_until_orphaned(os.getppid()))
        await asyncio.wait([stopped, watch, *consumers], return_when=asyncio.FIRST_COMPLETED)
        for task in [stopped, watch, *consumers]:
            task.cancel()
        for task in consumers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await db.close()


def _nats_publisher(db: Database, tail: Tail, settings: Settings) -> list[asyncio.Task[None]]:
    if settings.nats_url is None:
        return []
    # Imported only when configured: without NATS, the NATS client is never loaded.
    from loyalty.events import nats_publisher

    publish = nats_publisher.run(
        db, tail, settings.nats_url, settings.nats_stream, settings.nats_subject_prefix
    )
    return [asyncio.create_task(publish)]


async def _until_orphaned(parent: int) -> None:
    """Returns once the server that started the relay has died without stopping it."""
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells of a parent's death
        await asyncio.sleep(PARENT_CHECK_S)
    log.warning("the server stopped without stopping its relay; the relay stops")


def main(settings: Settings) -> None:
    import logging.config

    import uvloop

    logging.config.dictConfig(logs.logging_config(settings.log_level))
    uvloop.run(run(settings))
