"""The ledger's own writes: due expirations and due pending points, found every
LOYALTY_SCHEDULER_INTERVAL_SECONDS by each worker and recorded through the ledger's batches.

Every worker of every server runs it; they cannot record anything twice, because each batch
looks again, under the customer's lock, at what is still due (a lot already expired is gone,
pending points already released are no longer pending).
"""

from __future__ import annotations

import asyncio
import logging
import random

from loyalty.db import Database
from loyalty.errors import LoyaltyError
from loyalty.ledger import repository
from loyalty.ledger.batch import ExpireCommand, SettlePendingCommand
from loyalty.ledger.group_commit import BATCH_MAX
from loyalty.ledger.service import Ledger
from loyalty.timestamps import now_ms

# Found per read; a round reads again while it finds a full read, up to READS_PER_ROUND.
DUE_PER_ROUND = 1000
READS_PER_ROUND = 20
_log = logging.getLogger("loyalty.scheduler")


async def run_periodically(db: Database, ledger: Ledger, interval_s: float) -> None:
    # Workers started together spread their rounds over the interval.
    await asyncio.sleep(random.uniform(0, interval_s))
    while True:
        try:
            await run_once(db, ledger)
        except (LoyaltyError, OSError) as error:
            _log.warning("scheduler round failed, retried next round: %s", error)
        await asyncio.sleep(interval_s)


async def run_once(db: Database, ledger: Ledger) -> int:
    """Records what is due now; how many customers and pending points it looked at."""
    handled = 0
    for _ in range(READS_PER_ROUND):
        at = now_ms()
        async with db.read() as conn:
            customers = await repository.customers_with_due_lots(conn, at, DUE_PER_ROUND)
            pending = await repository.due_pending(conn, at, DUE_PER_ROUND)
        chunks = [customers[i : i + BATCH_MAX] for i in range(0, len(customers), BATCH_MAX)]
        await asyncio.gather(
            *(ledger.submit(ExpireCommand(chunk)) for chunk in chunks),
            *(ledger.submit(SettlePendingCommand(pid, True, None)) for pid in pending),
        )
        handled += len(customers) + len(pending)
        if len(customers) < DUE_PER_ROUND and len(pending) < DUE_PER_ROUND:
            break
    return handled
