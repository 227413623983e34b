"""The account rules, without a database: lots spent soonest first, expirations that take
what is left and never go below zero, and an atomic bulk's undo."""

from __future__ import annotations

from loyalty.ledger.accounts import Account, Entry
from loyalty.ledger.repository import BalanceRow, LotRow

T0 = 1_800_000_000_000


def _account() -> Account:
    return Account.from_row(BalanceRow("cus_1", 0, 0, None, None, None, 0, None, None))


def _credit(account: Account, delta: int, expires_at_ms: int | None, at: int = T0) -> str:
    return account.record(Entry("adjustment", delta, expires_at_ms=expires_at_ms), at).id


def test_debits_spend_the_soonest_expiring_points_first() -> None:
    account = _account()
    late = _credit(account, 100, T0 + 2000)
    soon = _credit(account, 50, T0 + 1000)
    _credit(account, 30, None)
    account.record(Entry("adjustment", -70), T0)
    assert [(lot.adjustment_id, lot.remaining) for lot in account.lots] == [(late, 80)]
    assert soon not in {lot.adjustment_id for lot in account.lots}
    assert (account.next_expiration_ms, account.next_expiration_points) == (T0 + 2000, 80)


def test_an_expiration_takes_what_is_left_and_never_below_zero() -> None:
    account = _account()
    credit = _credit(account, 100, T0 + 1000)
    account.record(Entry("adjustment", -60), T0)
    rows = account.expire_due(T0 + 1000)
    assert [(row.type, row.delta_hundredths, row.balance_after_hundredths) for row in rows] == [
        ("expiration", -40, 0)
    ]
    assert rows[0].metadata == f'{{"adjustment_id":"{credit}"}}'
    assert account.expire_due(T0 + 5000) == []  # once


def test_nothing_expires_from_a_balance_at_or_below_zero() -> None:
    account = _account()
    _credit(account, 100, T0 + 1000)
    account.record(Entry("adjustment", -100), T0)  # spends the lot
    _credit(account, 10, T0 + 1000)
    account.record(Entry("adjustment", -30, created_by="u"), T0)  # negative balance allowed here
    assert account.balance == -20
    assert account.expire_due(T0 + 1000) == []
    assert account.lots == [] and account.next_expiration_ms is None


def test_a_snapshot_restores_the_account_whole() -> None:
    account = _account()
    _credit(account, 100, T0 + 1000)
    saved = account.snapshot()
    account.record(Entry("adjustment", -40, reference="r"), T0)
    account.restore(saved)
    assert (account.balance, account.seq, account.references) == (100, 1, {})
    assert [lot.remaining for lot in account.lots] == [100]


def test_lot_changes_name_what_to_write() -> None:
    row = BalanceRow("cus_1", 150, 2, None, T0, "h", 0, T0 + 1000, 100)
    account = Account.from_row(row)
    account.load_lots(
        [LotRow("adj_a", "cus_1", T0 + 1000, 100), LotRow("adj_b", "cus_1", T0 + 2000, 50)]
    )
    account.record(Entry("adjustment", -120), T0)
    new = _credit(account, 5, T0 + 3000)
    inserted, updated, deleted = account.lot_changes()
    assert [lot.adjustment_id for lot in inserted] == [new]
    assert [(lot.adjustment_id, lot.remaining_hundredths) for lot in updated] == [("adj_b", 30)]
    assert deleted == ["adj_a"]
