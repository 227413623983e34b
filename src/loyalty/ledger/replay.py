"""The checks of `loyalty verify` that replay each customer's ledger in order: the hash chain
(invariant 8) and the expiring lots (invariant 7). Never commits.

The replay follows the service's rules (accounts.py): a credit with expires_at opens a lot;
a debit spends the soonest-expiring lots first; before each adjustment, the lots due by its
created_at expire, each taking what is left of it but never more than the balance (nothing,
and no row, when that is zero). What is left must match the loyalty_lots table and the
balance row's next expiration.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec

from loyalty import timestamps
from loyalty.db import Connection
from loyalty.ledger import chain
from loyalty.ledger.accounts import Lot, spend_soonest_first
from loyalty.ledger.repository import AdjustmentRow, BalanceRow, LotRow

CHUNK = 5000
SAMPLE_MAX = 10
CHECK_NAMES = {
    "hash_chain": "each hash links its adjustment to the previous one (invariant 8)",
    "expirations": "each expiration takes what is left of its credit, never below zero, once",
    "lots": "the expiring lots and next expirations match a replay of the ledger",
}
_ADJUSTMENT_COLUMNS = ", ".join(AdjustmentRow._fields)


@dataclass(slots=True)
class Findings:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECK_NAMES, 0))
    samples: dict[str, list[str]] = field(default_factory=lambda: {n: [] for n in CHECK_NAMES})

    def add(self, check: str, what: str) -> None:
        self.counts[check] += 1
        if len(self.samples[check]) < SAMPLE_MAX:
            self.samples[check].append(what)


@dataclass(slots=True)
class _Replay:
    """One customer's ledger as replayed so far."""

    customer_id: str
    previous_hash: str | None = None
    balance: int = 0
    lots: list[Lot] = field(default_factory=list)  # soonest first
    chain_broken: bool = False


async def replay_all(conn: Connection) -> Findings:
    findings = Findings()
    now_ms = timestamps.now_ms()
    balances = await _balances(conn)
    stored_lots: dict[str, list[LotRow]] = {}
    for lot in await conn.fetch(
        f"SELECT {', '.join(LotRow._fields)} FROM loyalty_lots"
        " ORDER BY customer_id, expires_at_ms, adjustment_id"
    ):
        stored_lots.setdefault(lot[1], []).append(LotRow._make(lot))
    current: _Replay | None = None
    async for row in _adjustments_in_order(conn):
        if current is None or current.customer_id != row.customer_id:
            if current is not None:
                _finish(current, balances, stored_lots, findings, now_ms)
            current = _Replay(row.customer_id)
        _step(current, row, findings)
    if current is not None:
        _finish(current, balances, stored_lots, findings, now_ms)
    replayed = {r for r in balances if balances[r].last_seq > 0}
    for customer_id, lots in stored_lots.items():
        if customer_id not in replayed and lots:
            findings.add("lots", f"{customer_id} (lots without adjustments)")
    return findings


def _step(state: _Replay, row: AdjustmentRow, findings: Findings) -> None:
    metadata = None if row.metadata is None else msgspec.json.decode(row.metadata)
    fields = chain.row_fields(row, metadata)
    if not state.chain_broken and row.hash != chain.link(state.previous_hash, fields):
        findings.add(
            "hash_chain", f"customer {row.customer_id} adjustment {row.id} (seq {row.seq})"
        )
        state.chain_broken = True  # the first broken link is the one to name
    state.previous_hash = row.hash
    expired_lot = metadata.get("adjustment_id") if row.type == "expiration" and metadata else None
    # Lots due by this adjustment's time expired before it.
    while state.lots and state.lots[0].expires_at_ms <= row.created_at_ms:
        if state.lots[0].adjustment_id == expired_lot:
            break
        if state.balance > 0:
            findings.add(
                "expirations",
                f"customer {row.customer_id}: lot {state.lots[0].adjustment_id} expired"
                " without a record",
            )
        state.lots.pop(0)
    if row.type == "expiration":
        if not state.lots or state.lots[0].adjustment_id != expired_lot:
            findings.add("expirations", f"customer {row.customer_id} adjustment {row.id}")
        else:
            lot = state.lots.pop(0)
            if -row.delta_hundredths != min(lot.remaining, max(state.balance, 0)):
                findings.add("expirations", f"customer {row.customer_id} adjustment {row.id}")
    elif row.delta_hundredths > 0 and row.expires_at_ms is not None:
        state.lots.append(Lot(row.id, row.expires_at_ms, row.delta_hundredths))
        state.lots.sort(key=Lot.key)
    elif row.delta_hundredths < 0:
        spend_soonest_first(state.lots, -row.delta_hundredths)
    state.balance += row.delta_hundredths


def _finish(
    state: _Replay,
    balances: dict[str, BalanceRow],
    stored_lots: dict[str, list[LotRow]],
    findings: Findings,
    now_ms: int,
) -> None:
    balance = balances.get(state.customer_id)
    if balance is not None and balance.last_hash != state.previous_hash:
        findings.add("hash_chain", f"customer {state.customer_id} (balance row's last_hash)")
    replayed = [(lot.expires_at_ms, lot.adjustment_id, lot.remaining) for lot in state.lots]
    stored = [
        (lot.expires_at_ms, lot.adjustment_id, lot.remaining_hundredths)
        for lot in stored_lots.get(state.customer_id, [])
    ]
    # A lot that fell due while the balance was at or below zero may already be gone, without
    # a row (nothing was left to take), or still wait for the scheduler: either is right.
    if state.balance <= 0:
        replayed = [lot for lot in replayed if lot[0] > now_ms]
        stored = [lot for lot in stored if lot[0] > now_ms]
    if replayed != stored:
        findings.add("lots", f"{state.customer_id} (lots)")
        return
    if state.balance <= 0:
        return  # the next expiration may still name a lot that is gone in the replay
    soonest = replayed[0][0] if replayed else None
    points = sum(lot[2] for lot in replayed if lot[0] == soonest) if replayed else None
    if balance is not None and (
        balance.next_expiration_ms != soonest or balance.next_expiration_hundredths != points
    ):
        findings.add("lots", f"{state.customer_id} (next expiration)")


async def _balances(conn: Connection) -> dict[str, BalanceRow]:
    rows = await conn.fetch(f"SELECT {', '.join(BalanceRow._fields)} FROM loyalty_balances")
    return {row[0]: BalanceRow._make(row) for row in rows}


async def _adjustments_in_order(conn: Connection) -> AsyncIterator[AdjustmentRow]:
    """Every adjustment in (customer_id, seq) order, in chunks read by keyset."""
    after = ("", 0)
    while True:
        # A walk along the (customer_id, seq) index, whatever the database's collation.
        rows = await conn.fetch(
            f"SELECT {_ADJUSTMENT_COLUMNS} FROM loyalty_adjustments"
            " WHERE (customer_id, seq) > ($1, $2)"
            f" ORDER BY customer_id, seq LIMIT {CHUNK}",
            after[0],
            after[1],
        )
        if not rows:
            return
        for row in rows:
            yield AdjustmentRow._make(row)
        after = (rows[-1][1], rows[-1][2])
