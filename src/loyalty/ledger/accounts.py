"""A customer's account while its balance row is locked: the balance, the tip of its ledger
and hash chain, its expiring lots and its pending sum, and the rules that change them
(SPEC sections 6 and 7). Pure: the batch reads and writes the rows around it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from loyalty.errors import InvariantViolation
from loyalty.ids import next_id_after
from loyalty.ledger import chain
from loyalty.ledger.repository import AdjustmentRow, BalanceRow, LotRow

EXPIRATION_REASON = "Points expired"
_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Lot:
    """What is left of a credit that expires."""

    adjustment_id: str
    expires_at_ms: int
    remaining: int

    def key(self) -> tuple[int, str]:
        return (self.expires_at_ms, self.adjustment_id)


def spend_soonest_first(lots: list[Lot], amount: int) -> None:
    """Takes `amount` from the lots (soonest first), dropping those it empties; what they
    cannot cover comes from points that never expire."""
    while amount > 0 and lots:
        lot = lots[0]
        used = min(lot.remaining, amount)
        lot.remaining -= used
        amount -= used
        if lot.remaining == 0:
            lots.pop(0)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is slower, and this is per row
class Entry:
    """What a new adjustment says; the account adds its place in the ledger."""

    type: str
    delta: int
    reason: str | None = None
    reference: str | None = None
    metadata: Mapping[str, str] | None = None
    expires_at_ms: int | None = None
    reverses: str | None = None
    pending_id: str | None = None
    created_by: str | None = None
    # Without expires_at, a credit expires this long after it is made (when set).
    expires_after_ms: int | None = None


@dataclass(slots=True)
class Account:
    customer_id: str
    balance: int
    seq: int
    last_id: str | None
    updated_at_ms: int | None
    last_hash: str | None
    pending: int
    next_expiration_ms: int | None
    next_expiration_points: int | None
    # Soonest first. Complete once loaded; before that, only the lots added in this batch.
    lots: list[Lot] = field(default_factory=list)
    lots_loaded: bool = False
    # Remaining points of each lot as read, to write back only what changed.
    lots_as_read: dict[str, int] = field(default_factory=dict)
    # References taken in this batch (reference → the id that took it).
    references: dict[str, str] = field(default_factory=dict)
    changed: bool = False
    # (pending, next expiration) as read: unchanged, only the tip needs writing.
    summary_as_read: tuple[int, int | None, int | None] = (0, None, None)

    @classmethod
    def from_row(cls, row: BalanceRow) -> Account:
        account = cls(
            row.customer_id,
            row.balance_hundredths,
            row.last_seq,
            row.last_adjustment_id,
            row.updated_at_ms,
            row.last_hash,
            row.pending_hundredths,
            row.next_expiration_ms,
            row.next_expiration_hundredths,
        )
        # No next expiration: no lots, nothing to read.
        account.lots_loaded = row.next_expiration_ms is None
        account.summary_as_read = account.summary()
        return account

    def summary(self) -> tuple[int, int | None, int | None]:
        return (self.pending, self.next_expiration_ms, self.next_expiration_points)

    def needs_lots(self, now_ms: int, debits: bool) -> bool:
        """Whether the lots must be read before this batch applies its commands."""
        if self.lots_loaded or self.next_expiration_ms is None:
            return False
        return debits or self.next_expiration_ms <= max(now_ms, self.updated_at_ms or 0)

    def load_lots(self, rows: list[LotRow]) -> None:
        self.lots = sorted(
            [Lot(row.adjustment_id, row.expires_at_ms, row.remaining_hundredths) for row in rows]
            + self.lots,
            key=Lot.key,
        )
        self.lots_as_read = {row.adjustment_id: row.remaining_hundredths for row in rows}
        self.lots_loaded = True

    def snapshot(self) -> Account:
        """A copy to restore if an atomic bulk fails part way."""
        return dataclasses.replace(
            self,
            lots=[dataclasses.replace(lot) for lot in self.lots],
            references=dict(self.references),
        )

    def restore(self, saved: Account) -> None:
        for name in Account.__slots__:
            setattr(self, name, getattr(saved, name))

    def row(self) -> BalanceRow:
        return BalanceRow(
            self.customer_id,
            self.balance,
            self.seq,
            self.last_id,
            self.updated_at_ms,
            self.last_hash,
            self.pending,
            self.next_expiration_ms,
            self.next_expiration_points,
        )

    def lot_changes(self) -> tuple[list[LotRow], list[LotRow], list[str]]:
        """(inserted, updated, deleted) lots since they were read."""
        inserted: list[LotRow] = []
        updated: list[LotRow] = []
        current = set()
        for lot in self.lots:
            current.add(lot.adjustment_id)
            row = LotRow(lot.adjustment_id, self.customer_id, lot.expires_at_ms, lot.remaining)
            before = self.lots_as_read.get(lot.adjustment_id)
            if before is None:
                inserted.append(row)
            elif before != lot.remaining:
                updated.append(row)
        deleted = [lot_id for lot_id in self.lots_as_read if lot_id not in current]
        return inserted, updated, deleted

    def expire_due(self, now_ms: int) -> list[AdjustmentRow]:
        """Records an expiration for each lot due at `now_ms`: what is left of it, never more
        than the balance, and nothing when that is zero."""
        # The time the customer's next adjustment will carry: a lot due by then is expired
        # before it, which is also the rule `loyalty verify` replays.
        now_ms = max(now_ms, self.updated_at_ms or 0)
        if self.next_expiration_ms is None or self.next_expiration_ms > now_ms:
            return []
        self._require_lots()
        recorded = []
        while self.lots and self.lots[0].expires_at_ms <= now_ms:
            lot = self.lots.pop(0)
            self.changed = True  # the lot is gone even when nothing is left to take
            taken = min(lot.remaining, max(self.balance, 0))
            if taken > 0:
                entry = Entry(
                    "expiration",
                    -taken,
                    EXPIRATION_REASON,
                    metadata={"adjustment_id": lot.adjustment_id},
                )
                recorded.append(self.record(entry, now_ms))
        self._refresh_next_expiration()
        return recorded

    def record(self, entry: Entry, now_ms: int) -> AdjustmentRow:
        """Appends an adjustment to the customer's ledger: its place (seq, id, created_at,
        hash) is taken here, while the row is locked. The caller checked the rules."""
        # Never before the previous adjustment, even if the clock stepped back.
        created_at_ms = max(now_ms, self.updated_at_ms or 0)
        adjustment_id = next_id_after("adj", created_at_ms, self.last_id)
        expires_at_ms = entry.expires_at_ms
        if expires_at_ms is None and entry.delta > 0 and entry.expires_after_ms is not None:
            expires_at_ms = created_at_ms + entry.expires_after_ms
        self.balance += entry.delta
        self.seq += 1
        metadata = None if entry.metadata is None else dict(entry.metadata)
        row = AdjustmentRow(
            adjustment_id,
            self.customer_id,
            self.seq,
            entry.delta,
            self.balance,
            entry.reason,
            created_at_ms,
            entry.created_by,
            entry.type,
            entry.reference,
            None if metadata is None else _encode(metadata).decode(),
            expires_at_ms,
            entry.reverses,
            entry.pending_id,
            None,
        )
        self.last_hash = chain.link(self.last_hash, chain.row_fields(row, metadata))
        self.last_id = adjustment_id
        self.updated_at_ms = created_at_ms
        self.changed = True
        if entry.reference is not None:
            self.references[entry.reference] = adjustment_id
        if entry.delta > 0 and expires_at_ms is not None:
            self._add_lot(Lot(adjustment_id, expires_at_ms, entry.delta))
        elif entry.delta < 0 and entry.type != "expiration":
            self._spend(-entry.delta)
        return row._replace(hash=self.last_hash)

    def _add_lot(self, lot: Lot) -> None:
        self.lots.append(lot)
        self.lots.sort(key=Lot.key)
        if self.lots_loaded:
            self._refresh_next_expiration()
        elif self.next_expiration_ms is None or lot.expires_at_ms < self.next_expiration_ms:
            self.next_expiration_ms, self.next_expiration_points = lot.expires_at_ms, lot.remaining
        elif lot.expires_at_ms == self.next_expiration_ms:
            self.next_expiration_points = (self.next_expiration_points or 0) + lot.remaining

    def _spend(self, amount: int) -> None:
        """A debit uses the points that expire soonest first, then those that never do."""
        if self.next_expiration_ms is None and not self.lots:
            return
        self._require_lots()
        spend_soonest_first(self.lots, amount)
        self._refresh_next_expiration()

    def _refresh_next_expiration(self) -> None:
        if not self.lots:
            self.next_expiration_ms = self.next_expiration_points = None
            return
        soonest = self.lots[0].expires_at_ms
        self.next_expiration_ms = soonest
        self.next_expiration_points = sum(
            lot.remaining for lot in self.lots if lot.expires_at_ms == soonest
        )

    def _require_lots(self) -> None:
        if not self.lots_loaded:
            raise InvariantViolation(f"the lots of {self.customer_id} were not read")
