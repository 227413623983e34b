"""Adjusting balances and reading them: the rules of the ledger.

Adjustments go through group commit (group_commit.py): each batch is one transaction that
locks its customers' balance rows, then assigns each adjustment its sequence number, id and
created_at while holding those locks, so each customer's adjustments form one total order.
Every request in a batch gets its own outcome; one request's unknown customer, missing
scope, insufficient points or reused key never fails another.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import msgspec

from loyalty.auth import repository as users
from loyalty.auth.scopes import LOYALTY_READ, LOYALTY_WRITE, parse_scopes
from loyalty.db import Connection, Database, RetryableConflict, UniqueViolation
from loyalty.errors import (
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    IdempotencyMismatch,
    InvariantViolation,
    LoyaltyError,
    NotAllowed,
    NotFound,
    Unauthorized,
)
from loyalty.idempotency import repository as keys
from loyalty.idempotency.keys import IdempotencyClaim
from loyalty.ids import next_id_after
from loyalty.ledger import points, repository
from loyalty.ledger.group_commit import GroupCommit
from loyalty.ledger.points import BALANCE_MAX_HUNDREDTHS
from loyalty.ledger.schemas import AdjustBody, adjustment_json, balance_json
from loyalty.request_log import log_adjustment
from loyalty.timestamps import now_ms, render

HISTORY_IN_ADJUST = 20
# A batch that lost a race (a deadlock between workers, a key inserted meanwhile) is rerun.
BATCH_ATTEMPTS_MAX = 3
# When the connection fails during COMMIT, how long to keep asking whether it took effect.
COMMIT_CHECK_ATTEMPTS = 6
COMMIT_CHECK_PAUSE_S = 0.5
KEY_IN_FLIGHT = "A request with this Idempotency-Key is still being processed"
KEY_REUSED = "This Idempotency-Key was already used with a different request"

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class AdjustCommand:
    body: AdjustBody
    user_id: str
    include_history: bool
    claim: IdempotencyClaim | None = None


@dataclass(frozen=True, slots=True)
class AdjustReply:
    body: bytes  # the JSON response, exactly as first sent
    replayed: bool = False
    adjustment_id: str | None = None  # None for a replay: it recorded nothing


AdjustOutcome = AdjustReply | LoyaltyError


@dataclass(frozen=True, slots=True)
class BalanceQuery:
    user_id: str
    customer_id: str


def customer_not_found(customer_id: str) -> NotFound:
    return NotFound(f"Customer with id: {customer_id} was not found")


class Ledger:
    """The ledger's hot paths in one worker process, adjustments and balance reads, each
    batched over the database (group_commit.py)."""

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
        """The JSON body of GET /admin/loyalty/points/{customer_id}; the user is confirmed in
        the same read, so a deleted or disabled user's token stops working at once."""
        outcome = await self._reads.submit(query)
        if isinstance(outcome, LoyaltyError):
            raise outcome
        return outcome

    async def _read_balances(self, queries: list[BalanceQuery]) -> list[bytes | LoyaltyError]:
        async with self._db.read() as conn:
            scopes = await users.find_users_scopes(conn, sorted({q.user_id for q in queries}))
            rows = await repository.find_balances(conn, sorted({q.customer_id for q in queries}))
        outcomes: list[bytes | LoyaltyError] = []
        for query in queries:
            refusal = _user_refusal(scopes.get(query.user_id), LOYALTY_READ)
            row = rows.get(query.customer_id)
            if refusal is not None:
                outcomes.append(refusal)
            elif row is None:
                outcomes.append(customer_not_found(query.customer_id))
            else:
                body = balance_json(query.customer_id, row[1], row[2])
                outcomes.append(_encoder.encode(body))
        return outcomes

    async def adjust(self, command: AdjustCommand) -> AdjustReply:
        outcome = await self._group.submit(command)
        if isinstance(outcome, LoyaltyError):
            raise outcome
        if outcome.adjustment_id is not None:
            # Here, in the request's own task and after the commit: the line carries the
            # request's id and speaks only of what is durable.
            log_adjustment(
                outcome.adjustment_id,
                command.body.customer_id,
                points.render(command.body.delta_hundredths).decode(),
                command.user_id,
            )
        return outcome

    async def _run_batch(self, commands: list[AdjustCommand]) -> list[AdjustOutcome]:
        for attempt in range(1, BATCH_ATTEMPTS_MAX + 1):
            batch = _Batch(self._db.dialect, commands, self._allow_negative)
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


def _user_refusal(scopes: str | None, scope: str) -> LoyaltyError | None:
    """Why a user whose stored scopes are `scopes` (None: no such enabled user) may not act."""
    if scopes is None:
        return Unauthorized()
    if scope not in parse_scopes(scopes):
        return Forbidden(f"Missing required scope: {scope}")
    return None


@dataclass(slots=True)
class _Tip:
    """A customer's balance row as the batch changes it."""

    balance: int
    seq: int
    last_id: str | None
    updated_at_ms: int | None
    touched: bool = False


@dataclass(slots=True)
class _Applied:
    index: int
    id: str
    customer_id: str
    seq: int
    balance_after: int
    created_at_ms: int


@dataclass(slots=True)
class _Batch:
    dialect: str
    commands: list[AdjustCommand]
    allow_negative: bool
    conn: Connection = field(init=False)
    outcomes: list[AdjustOutcome | None] = field(default_factory=list)
    finished: list[AdjustOutcome] | None = None  # every outcome, once only COMMIT is left

    async def run(self, conn: Connection) -> list[AdjustOutcome]:
        self.conn = conn
        self.outcomes = [None] * len(self.commands)
        await self._check_users()
        await self._check_keys()
        applied = await self._apply()
        await self._reply(applied)
        self.finished = [outcome for outcome in self.outcomes if outcome is not None]
        return self.finished

    def first_adjustment_id(self) -> str | None:
        for outcome in self.outcomes:
            if isinstance(outcome, AdjustReply) and outcome.adjustment_id is not None:
                return outcome.adjustment_id
        return None

    def _pending(self) -> list[int]:
        return [i for i, outcome in enumerate(self.outcomes) if outcome is None]

    async def _check_users(self) -> None:
        """Users are checked in the transaction: a deleted user's token stops working at once."""
        user_ids = sorted({command.user_id for command in self.commands})
        scopes = await users.find_users_scopes(self.conn, user_ids)
        for i, command in enumerate(self.commands):
            self.outcomes[i] = _user_refusal(scopes.get(command.user_id), LOYALTY_WRITE)

    async def _check_keys(self) -> None:
        keyed: dict[tuple[str, str], int] = {}
        for i in self._pending():
            claim = self.commands[i].claim
            if claim is None:
                continue
            name = (self.commands[i].user_id, claim.key)
            if name in keyed:  # the same key twice in one batch: the first is in flight
                self.outcomes[i] = Conflict(KEY_IN_FLIGHT)
            else:
                keyed[name] = i
        if not keyed:
            return
        if self.dialect == "postgresql":
            # Another worker's or server's transaction holding the key's lock is in flight.
            lock_names = {f"{user}\x1f{key}": (user, key) for user, key in keyed}
            held = await keys.try_lock_keys(self.conn, sorted(lock_names))
            for lock_name, name in lock_names.items():
                if lock_name not in held:
                    self.outcomes[keyed.pop(name)] = Conflict(KEY_IN_FLIGHT)
        by_user: dict[str, list[str]] = {}
        for user, key in keyed:
            by_user.setdefault(user, []).append(key)
        for user, user_keys in by_user.items():
            for row in await keys.find_keys(self.conn, user, user_keys):
                i = keyed[(user, row["key"])]
                claim = self.commands[i].claim
                if claim is not None and row["request_hash"] == claim.request_hash:
                    self.outcomes[i] = AdjustReply(bytes(row["response"]), replayed=True)
                else:
                    self.outcomes[i] = IdempotencyMismatch(KEY_REUSED)

    async def _apply(self) -> list[_Applied]:
        pending = self._pending()
        customer_ids = sorted({self.commands[i].body.customer_id for i in pending})
        if not customer_ids:
            return []
        tips = {
            row["customer_id"]: _Tip(
                row["balance_hundredths"],
                row["last_seq"],
                row["last_adjustment_id"],
                row["updated_at_ms"],
            )
            for row in await repository.lock_balances(self.conn, customer_ids)
        }
        # Taken while holding the locks, so no later adjustment of these customers can
        # carry an earlier time.
        now = now_ms()
        applied: list[_Applied] = []
        ledger_rows: list[tuple[object, ...]] = []
        for i in pending:
            command = self.commands[i]
            body = command.body
            tip = tips.get(body.customer_id)
            if tip is None:
                self.outcomes[i] = customer_not_found(body.customer_id)
                continue
            refusal = self._refusal(tip.balance, body.delta_hundredths)
            if refusal is not None:
                self.outcomes[i] = refusal
                continue
            # Never before the previous adjustment, even if the clock stepped back.
            created_at_ms = max(now, tip.updated_at_ms or 0)
            adjustment_id = next_id_after("adj", created_at_ms, tip.last_id)
            tip.balance += body.delta_hundredths
            tip.seq += 1
            tip.last_id = adjustment_id
            tip.updated_at_ms = created_at_ms
            tip.touched = True
            applied.append(
                _Applied(i, adjustment_id, body.customer_id, tip.seq, tip.balance, created_at_ms)
            )
            ledger_rows.append(
                (
                    adjustment_id,
                    body.customer_id,
                    tip.seq,
                    body.delta_hundredths,
                    tip.balance,
                    body.reason,
                    created_at_ms,
                    command.user_id,
                )
            )
        if applied:
            await repository.update_balances(
                self.conn,
                [
                    (customer_id, tip.balance, tip.seq, tip.last_id, tip.updated_at_ms)
                    for customer_id, tip in tips.items()
                    if tip.touched and tip.last_id is not None and tip.updated_at_ms is not None
                ],
            )
            await repository.insert_adjustments(self.conn, ledger_rows)
        return applied

    def _refusal(self, balance: int, delta: int) -> NotAllowed | None:
        after = balance + delta
        if delta < 0 and after < 0 and not self.allow_negative:
            return NotAllowed(
                f"Insufficient points: the current balance is {points.render(balance).decode()},"
                f" which cannot cover {points.render(delta).decode()}"
            )
        if abs(after) > BALANCE_MAX_HUNDREDTHS:
            return NotAllowed(
                "The balance would leave the supported range of ±"
                f"{points.render(BALANCE_MAX_HUNDREDTHS).decode()} points"
            )
        return None

    async def _reply(self, applied: list[_Applied]) -> None:
        histories = await repository.latest_adjustments_many(
            self.conn,
            self.dialect,
            [
                (adjustment.customer_id, adjustment.seq)
                for adjustment in applied
                if self.commands[adjustment.index].include_history
            ],
            HISTORY_IN_ADJUST,
        )
        key_rows = []
        for adjustment in applied:
            command = self.commands[adjustment.index]
            response: dict[str, Any] = {
                "id": adjustment.id,
                "customer_id": adjustment.customer_id,
                "balance_after": msgspec.Raw(points.render(adjustment.balance_after)),
                "updated_at": render(adjustment.created_at_ms),
            }
            if command.include_history:
                rows = histories[(adjustment.customer_id, adjustment.seq)]
                response["history"] = [adjustment_json(row) for row in rows]
            body = _encoder.encode(response)
            self.outcomes[adjustment.index] = AdjustReply(body, adjustment_id=adjustment.id)
            if command.claim is not None:
                key_rows.append(
                    (
                        command.user_id,
                        command.claim.key,
                        command.claim.request_hash,
                        200,
                        body,
                        adjustment.created_at_ms,
                    )
                )
        if key_rows:
            await keys.insert_keys(self.conn, key_rows)


async def history(
    db: Database,
    customer_id: str,
    newest_first: bool,
    created_gte_ms: int | None,
    created_lte_ms: int | None,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    async with db.read(snapshot=True) as conn:
        balance = await repository.find_balance(conn, customer_id)
        if balance is None:
            raise customer_not_found(customer_id)
        rows = await repository.page_adjustments(
            conn, customer_id, newest_first, created_gte_ms, created_lte_ms, limit, offset
        )
        if created_gte_ms is None and created_lte_ms is None:
            count = balance["last_seq"]  # the ledger's length, kept on the balance row
        else:
            count = await repository.count_adjustments(
                conn, customer_id, created_gte_ms, created_lte_ms
            )
    return [adjustment_json(row, with_actor=True) for row in rows], count
