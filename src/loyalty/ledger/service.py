"""The ledger's hot paths in one worker process, adjustments and balance reads, each batched
over the database (group_commit.py, batch.py); and the history read."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import msgspec

from loyalty.auth import guard
from loyalty.auth.guard import TokenClaim
from loyalty.auth.scopes import LOYALTY_READ
from loyalty.db import Database, RetryableConflict, UniqueViolation
from loyalty.errors import DatabaseUnavailable, InvariantViolation, LoyaltyError
from loyalty.ledger import points, repository, schemas
from loyalty.ledger.audit import log_adjustment
from loyalty.ledger.batch import (
    AdjustCommand,
    AdjustOutcome,
    AdjustReply,
    Batch,
    customer_not_found,
)
from loyalty.ledger.group_commit import GroupCommit
from loyalty.ledger.repository import HistoryPage
from loyalty.ledger.schemas import Adjustment

# A batch that lost a race (a deadlock between workers, a key inserted meanwhile) is rerun.
BATCH_ATTEMPTS_MAX = 3
# When the connection fails during COMMIT, how long to keep asking whether it took effect.
COMMIT_CHECK_ATTEMPTS = 6
COMMIT_CHECK_PAUSE_S = 0.5

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class BalanceQuery:
    claim: TokenClaim
    customer_id: str


class Ledger:
    """Adjustments and balance reads of one worker, each through its own group commit."""

    def __init__(self, db: Database, allow_negative_balance: bool) -> None:
        self._db = db
        self._allow_negative = allow_negative_balance
        self._group: GroupCommit[AdjustCommand, AdjustOutcome] = GroupCommit(self._run_batch)
        # Balance reads batch the same way: one user query and one balance query for all the
        # reads waiting in the worker, instead of two round trips each.
        self._reads: GroupCommit[BalanceQuery, bytes | LoyaltyError] = GroupCommit(
            self._read_balances
        )

    def start(self) -> None:
        self._group.start()
        self._reads.start()

    async def stop(self) -> None:
        await self._group.stop()
        await self._reads.stop()

    async def balance(self, query: BalanceQuery) -> bytes:
        """The JSON body of GET /admin/loyalty/points/{customer_id}; the caller is confirmed
        in the same read, so a deleted or disabled user's token stops working at once."""
        outcome = await self._reads.submit(query)
        if isinstance(outcome, LoyaltyError):
            raise outcome
        return outcome

    async def _read_balances(self, queries: list[BalanceQuery]) -> list[bytes | LoyaltyError]:
        async with self._db.read() as conn:
            refusals = await guard.confirm(conn, [q.claim for q in queries], LOYALTY_READ)
            rows = await repository.find_balances(conn, sorted({q.customer_id for q in queries}))
        outcomes: list[bytes | LoyaltyError] = []
        for query in queries:
            refusal = refusals[query.claim.actor_id]
            row = rows.get(query.customer_id)
            if refusal is not None:
                outcomes.append(refusal)
            elif row is None:
                outcomes.append(customer_not_found(query.customer_id))
            else:
                outcomes.append(_encoder.encode(schemas.balance(row)))
        return outcomes

    async def adjust(self, command: AdjustCommand) -> AdjustReply:
        outcome = await self._group.submit(command)
        if isinstance(outcome, LoyaltyError):
            raise outcome
        if outcome.adjustment_id is not None:
            log_adjustment(
                outcome.adjustment_id,
                command.body.customer_id,
                points.render(command.body.delta_hundredths).decode(),
                command.claim.actor_id,
            )
        return outcome

    async def _run_batch(self, commands: list[AdjustCommand]) -> list[AdjustOutcome]:
        for attempt in range(1, BATCH_ATTEMPTS_MAX + 1):
            batch = Batch(commands, self._allow_negative)
            try:
                return await self._db.transact(batch.run)
            except (RetryableConflict, UniqueViolation):
                if attempt == BATCH_ATTEMPTS_MAX:
                    raise
            except DatabaseUnavailable:
                # Lost during COMMIT, the batch may or may not be durable: look before saying.
                first_id = batch.first_adjustment_id() if batch.finished is not None else None
                if first_id is not None and await self._was_committed(first_id):
                    return batch.finished or []
                raise
        raise InvariantViolation("a batch ran out of attempts without an outcome")

    async def _was_committed(self, adjustment_id: str) -> bool:
        """Whether an adjustment is in the ledger, asked again for a few seconds while the
        database is unreachable. A batch commits whole, so one id answers for all of it."""
        for _ in range(COMMIT_CHECK_ATTEMPTS):
            try:
                async with self._db.read() as conn:
                    return await repository.adjustment_exists(conn, adjustment_id)
            except DatabaseUnavailable:
                await asyncio.sleep(COMMIT_CHECK_PAUSE_S)
        return False


async def history(db: Database, query: HistoryPage) -> tuple[list[Adjustment], int]:
    """A page of a customer's adjustments, and how many the filters select in all."""
    async with db.read(snapshot=True) as conn:
        balance = await repository.find_balance(conn, query.customer_id)
        if balance is None:
            raise customer_not_found(query.customer_id)
        rows = await repository.page_adjustments(conn, query)
        if query.created_gte_ms is None and query.created_lte_ms is None:
            count = balance.last_seq  # the ledger's length, kept on the balance row
        else:
            count = await repository.count_adjustments(conn, query)
    return [schemas.adjustment(row) for row in rows], count
