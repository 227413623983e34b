"""The ledger of one worker process: every write goes through one group commit (batch.py)
and balance reads through another; the other reads are plain snapshot queries."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
from dataclasses import dataclass

import msgspec

from loyalty.auth import guard
from loyalty.auth.guard import TokenClaim
from loyalty.auth.scopes import LOYALTY_READ
from loyalty.db import Database, RetryableConflict, UniqueViolation
from loyalty.errors import (
    DatabaseUnavailable,
    FieldError,
    InvalidData,
    InvariantViolation,
    LoyaltyError,
)
from loyalty.events import notify
from loyalty.ids import ID_PATTERN
from loyalty.ledger import points, repository, schemas
from loyalty.ledger.audit import log_adjustment
from loyalty.ledger.batch import (
    Batch,
    Command,
    Outcome,
    Reply,
    adjustment_not_found,
    customer_not_found,
    pending_not_found,
    weight,
)
from loyalty.ledger.group_commit import GroupCommit
from loyalty.ledger.repository import HistoryPage, LedgerQuery
from loyalty.ledger.schemas import Adjustment
from loyalty.metrics import instruments as metrics
from loyalty.timestamps import render, render_optional

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
    """Writes and balance reads of one worker, each through its own group commit."""

    def __init__(
        self, db: Database, allow_negative_balance: bool, expire_after_ms: int | None = None
    ) -> None:
        self._db = db
        self._allow_negative = allow_negative_balance
        self._expire_after_ms = expire_after_ms
        self._group: GroupCommit[Command, Outcome] = GroupCommit(
            self._run_batch, weigh=weight, name="writes"
        )
        # Balance reads batch the same way: one user query and one balance query for all the
        # reads waiting in the worker, instead of two round trips each.
        self._reads: GroupCommit[BalanceQuery, bytes | LoyaltyError] = GroupCommit(
            self._read_balances, name="reads"
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

    async def submit(self, command: Command) -> Reply:
        """Runs a write in the next batch; its reply, or its refusal raised."""
        outcome = await self._group.submit(command)
        if isinstance(outcome, LoyaltyError):
            raise outcome
        for row in outcome.recorded:
            log_adjustment(
                row.id,
                row.customer_id,
                points.render(row.delta_hundredths).decode(),
                row.created_by,
            )
        return outcome

    async def _run_batch(self, commands: list[Command]) -> list[Outcome]:
        for attempt in range(1, BATCH_ATTEMPTS_MAX + 1):
            batch = Batch(commands, self._allow_negative, self._expire_after_ms)
            try:
                outcomes = await self._db.transact(batch.run)
                if batch.events_recorded:
                    notify.changed()
            except (RetryableConflict, UniqueViolation):
                if attempt == BATCH_ATTEMPTS_MAX:
                    raise
            except DatabaseUnavailable:
                # Lost during COMMIT, the batch may or may not be durable: look before saying.
                first_id = batch.first_adjustment_id() if batch.finished is not None else None
                if first_id is not None and await self._was_committed(first_id):
                    metrics.batch_committed(len(commands), [row.type for row in batch.rows])
                    return batch.finished or []
                raise
            else:
                # Counted once committed: a batch rolled back and rerun records nothing twice.
                metrics.batch_committed(len(commands), [row.type for row in batch.rows])
                return outcomes
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


async def balance_as_of(db: Database, customer_id: str, at_ms: int) -> schemas.Balance:
    async with db.read(snapshot=True) as conn:
        if await repository.find_balance(conn, customer_id) is None:
            raise customer_not_found(customer_id)
        found = await repository.balance_as_of(conn, customer_id, at_ms)
    hundredths, updated_at_ms = found if found is not None else (0, None)
    return schemas.Balance(
        customer_id,
        msgspec.Raw(points.render(hundredths)),
        render_optional(updated_at_ms),
        as_of=render(at_ms),
    )


async def adjustment(db: Database, adjustment_id: str) -> schemas.AdjustmentDetail:
    if not ID_PATTERN.fullmatch(adjustment_id) or not adjustment_id.startswith("adj_"):
        raise adjustment_not_found(adjustment_id)
    async with db.read(snapshot=True) as conn:
        row = (await repository.find_adjustments(conn, [adjustment_id])).get(adjustment_id)
        if row is None:
            raise adjustment_not_found(adjustment_id)
        reversed_total = (await repository.reversed_totals(conn, [adjustment_id]))[adjustment_id]
    return schemas.adjustment_detail(row, abs(reversed_total))


async def ledger_page(db: Database, query: LedgerQuery) -> schemas.LedgerPage:
    """A page of every customer's adjustments, newest first, and the cursor of the next."""
    async with db.read(snapshot=True) as conn:
        rows = await repository.page_ledger(conn, dataclasses.replace(query, limit=query.limit + 1))
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    cursor = encode_cursor(rows[-1].id) if more else None
    return schemas.LedgerPage([schemas.adjustment(row) for row in rows], cursor)


def encode_cursor(adjustment_id: str) -> str:
    return base64.urlsafe_b64encode(adjustment_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor continues after; a 400 for anything this service did not make."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        adjustment_id = base64.urlsafe_b64decode(padded.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        adjustment_id = ""
    if not ID_PATTERN.fullmatch(adjustment_id) or not adjustment_id.startswith("adj_"):
        message = "cursor is not valid: pass the next_cursor of the previous page"
        raise InvalidData(message, [FieldError("cursor", message)])
    return adjustment_id


async def expirations(
    db: Database, customer_id: str, limit: int, offset: int
) -> schemas.ExpirationPage:
    async with db.read(snapshot=True) as conn:
        if await repository.find_balance(conn, customer_id) is None:
            raise customer_not_found(customer_id)
        rows, count = await repository.page_lots(conn, customer_id, limit, offset)
    return schemas.ExpirationPage([schemas.expiration(row) for row in rows], count, offset, limit)


async def pending(db: Database, pending_id: str) -> schemas.PendingEnvelope:
    async with db.read() as conn:
        row = (await repository.find_pending(conn, [pending_id])).get(pending_id)
    if row is None:
        raise pending_not_found(pending_id)
    return schemas.PendingEnvelope(schemas.pending(row))


async def pending_page(
    db: Database, customer_id: str, status: str | None, limit: int, offset: int
) -> schemas.PendingPage:
    async with db.read(snapshot=True) as conn:
        if await repository.find_balance(conn, customer_id) is None:
            raise customer_not_found(customer_id)
        rows, count = await repository.page_pending(conn, customer_id, status, limit, offset)
    return schemas.PendingPage([schemas.pending(row) for row in rows], count, offset, limit)
