"""One batch of adjustments: the requests waiting in a worker at one moment, applied in one
transaction (group_commit.py runs it), each request getting its own outcome.

The batch confirms its callers, claims their idempotency keys, locks its customers' balance
rows in customer_id order, then applies each adjustment in arrival order: its sequence
number, id and created_at are taken while the customer's row is locked, so each customer's
adjustments form one total order. One request's unknown customer, missing scope,
insufficient points or reused key never fails another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from loyalty.auth import guard
from loyalty.auth.guard import TokenClaim
from loyalty.auth.scopes import LOYALTY_WRITE
from loyalty.db import Connection
from loyalty.errors import LoyaltyError, NotAllowed, NotFound
from loyalty.idempotency import policy
from loyalty.idempotency.policy import KeyedRequest, Replay
from loyalty.ids import next_id_after
from loyalty.ledger import points, repository
from loyalty.ledger.points import BALANCE_MAX_HUNDREDTHS
from loyalty.ledger.repository import AdjustmentRow, BalanceRow
from loyalty.ledger.schemas import HISTORY_IN_ADJUST, AdjustBody, AdjustResponse, seed_adjustment
from loyalty.timestamps import now_ms, render

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class AdjustCommand:
    body: AdjustBody
    claim: TokenClaim
    include_history: bool
    keyed: KeyedRequest | None = None


@dataclass(frozen=True, slots=True)
class AdjustReply:
    body: bytes  # the JSON response, exactly as first sent
    status: int = 200
    replayed: bool = False
    adjustment_id: str | None = None  # None for a replay: it recorded nothing


AdjustOutcome = AdjustReply | LoyaltyError


def customer_not_found(customer_id: str) -> NotFound:
    return NotFound(f"Customer with id: {customer_id} was not found")


@dataclass(slots=True)
class _Tip:
    """A customer's balance row as the batch changes it."""

    balance: int
    seq: int
    last_id: str | None
    updated_at_ms: int | None
    touched: bool = False


@dataclass(slots=True)
class Batch:
    commands: list[AdjustCommand]
    allow_negative: bool
    conn: Connection = field(init=False)
    outcomes: list[AdjustOutcome | None] = field(default_factory=list)
    finished: list[AdjustOutcome] | None = None  # every outcome, once only COMMIT is left

    async def run(self, conn: Connection) -> list[AdjustOutcome]:
        self.conn = conn
        self.outcomes = [None] * len(self.commands)
        await self._confirm_callers()
        await self._claim_keys()
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

    async def _confirm_callers(self) -> None:
        """In the transaction: a deleted, disabled or narrowed user is refused at once."""
        claims = [command.claim for command in self.commands]
        refusals = await guard.confirm(self.conn, claims, LOYALTY_WRITE)
        for i, command in enumerate(self.commands):
            self.outcomes[i] = refusals[command.claim.actor_id]

    async def _claim_keys(self) -> None:
        pending = [i for i in self._pending() if self.commands[i].keyed is not None]
        if not pending:
            return
        decisions = await policy.claim(self.conn, [self.commands[i].keyed for i in pending])
        for i, decision in zip(pending, decisions, strict=True):
            if isinstance(decision, Replay):
                self.outcomes[i] = AdjustReply(decision.body, decision.status, replayed=True)
            elif decision is not None:
                self.outcomes[i] = decision

    async def _apply(self) -> list[tuple[int, AdjustmentRow]]:
        """Applies the pending adjustments; returns each recorded one with its request's
        index."""
        pending = self._pending()
        customer_ids = sorted({self.commands[i].body.customer_id for i in pending})
        if not customer_ids:
            return []
        tips = {
            row.customer_id: _Tip(
                row.balance_hundredths, row.last_seq, row.last_adjustment_id, row.updated_at_ms
            )
            for row in await repository.lock_balances(self.conn, customer_ids)
        }
        # Taken while holding the locks, so no later adjustment of these customers can
        # carry an earlier time.
        now = now_ms()
        applied: list[tuple[int, AdjustmentRow]] = []
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
            row = AdjustmentRow(
                adjustment_id,
                body.customer_id,
                tip.seq,
                body.delta_hundredths,
                tip.balance,
                body.reason,
                created_at_ms,
                command.claim.actor_id,
            )
            applied.append((i, row))
        if applied:
            await repository.update_balances(
                self.conn,
                [
                    BalanceRow(customer_id, tip.balance, tip.seq, tip.last_id, tip.updated_at_ms)
                    for customer_id, tip in tips.items()
                    if tip.touched
                ],
            )
            await repository.insert_adjustments(self.conn, [row for _, row in applied])
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

    async def _reply(self, applied: list[tuple[int, AdjustmentRow]]) -> None:
        histories = await repository.latest_adjustments_many(
            self.conn,
            [(row.customer_id, row.seq) for i, row in applied if self.commands[i].include_history],
            HISTORY_IN_ADJUST,
        )
        kept: list[tuple[KeyedRequest, int, bytes]] = []
        for i, row in applied:
            command = self.commands[i]
            response = AdjustResponse(
                row.id,
                row.customer_id,
                msgspec.Raw(points.render(row.balance_after_hundredths)),
                render(row.created_at_ms),
            )
            if command.include_history:
                rows = histories[(row.customer_id, row.seq)]
                response.history = [seed_adjustment(item) for item in rows]
            body = _encoder.encode(response)
            self.outcomes[i] = AdjustReply(body, adjustment_id=row.id)
            if command.keyed is not None:
                kept.append((command.keyed, 200, body))
        await policy.remember(self.conn, kept, now_ms())
