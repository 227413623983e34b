"""Adjusting balances and reading them: the rules of the ledger.

Every adjustment locks its customer's balance row, and assigns its sequence number, id and
created_at while holding that lock, so each customer's adjustments form one total order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from loyalty.db import Database, Row
from loyalty.errors import NotAllowed, NotFound
from loyalty.ids import next_id_after
from loyalty.ledger import points, repository
from loyalty.ledger.points import BALANCE_MAX_HUNDREDTHS
from loyalty.ledger.schemas import AdjustBody, adjustment_json, balance_json
from loyalty.timestamps import now_ms, render

HISTORY_IN_ADJUST = 20


@dataclass(frozen=True, slots=True)
class AdjustmentResult:
    id: str
    customer_id: str
    balance_after_hundredths: int
    created_at_ms: int
    history: list[Row] | None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "customer_id": self.customer_id,
            "balance_after": msgspec.Raw(points.render(self.balance_after_hundredths)),
            "updated_at": render(self.created_at_ms),
        }
        if self.history is not None:
            body["history"] = [adjustment_json(row) for row in self.history]
        return body


def customer_not_found(customer_id: str) -> NotFound:
    return NotFound(f"Customer with id: {customer_id} was not found")


async def adjust(
    db: Database,
    body: AdjustBody,
    actor: str | None,
    allow_negative_balance: bool,
    include_history: bool,
) -> AdjustmentResult:
    async with db.write() as conn:
        row = await repository.lock_balance(conn, body.customer_id)
        if row is None:
            raise customer_not_found(body.customer_id)
        balance = row["balance_hundredths"]
        balance_after = balance + body.delta_hundredths
        if body.delta_hundredths < 0 and balance_after < 0 and not allow_negative_balance:
            raise NotAllowed(
                f"Insufficient points: the current balance is {points.render(balance).decode()},"
                f" which cannot cover {points.render(body.delta_hundredths).decode()}"
            )
        if abs(balance_after) > BALANCE_MAX_HUNDREDTHS:
            raise NotAllowed(
                f"The balance would leave the supported range of ±"
                f"{points.render(BALANCE_MAX_HUNDREDTHS).decode()} points"
            )
        # Never before the previous adjustment, even if the clock stepped back.
        created_at_ms = max(now_ms(), row["updated_at_ms"] or 0)
        adjustment_id = next_id_after("adj", created_at_ms, row["last_adjustment_id"])
        await repository.append_adjustment(
            conn,
            adjustment_id,
            body.customer_id,
            row["last_seq"] + 1,
            body.delta_hundredths,
            balance_after,
            body.reason,
            created_at_ms,
            actor,
        )
        history = None
        if include_history:
            history = await repository.latest_adjustments(conn, body.customer_id, HISTORY_IN_ADJUST)
    return AdjustmentResult(adjustment_id, body.customer_id, balance_after, created_at_ms, history)


async def get_balance(db: Database, customer_id: str) -> dict[str, Any]:
    async with db.read() as conn:
        row = await repository.find_balance(conn, customer_id)
    if row is None:
        raise customer_not_found(customer_id)
    return balance_json(customer_id, row["balance_hundredths"], row["updated_at_ms"])


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
    return [adjustment_json(row) for row in rows], count
