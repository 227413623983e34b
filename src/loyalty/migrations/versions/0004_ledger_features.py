"""The ledger's features: adjustment types, references, metadata, expiration lots, reversal
links, pending points and the per-customer hash chain.

Existing adjustments become type 'adjustment' and get their hashes, computed in each
customer's order; the append-only trigger is lifted for that one update and put back.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

from loyalty.ledger import chain

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BACKFILL_CHUNK = 5000
_SQLITE_TRIGGERS = {
    event: f"""
    CREATE TRIGGER loyalty_adjustments_no_{event.lower()}
    BEFORE {event} ON loyalty_adjustments
    BEGIN
        SELECT RAISE(ABORT, 'loyalty_adjustments is append-only');
    END
    """
    for event in ("UPDATE", "DELETE")
}


def upgrade() -> None:
    with op.batch_alter_table("loyalty_adjustments") as batch:
        batch.add_column(sa.Column("type", sa.Text, nullable=False, server_default="adjustment"))
        batch.add_column(sa.Column("reference", sa.Text))
        batch.add_column(sa.Column("metadata", sa.Text))  # a JSON object, or NULL
        batch.add_column(sa.Column("expires_at_ms", sa.BigInteger))
        batch.add_column(sa.Column("reverses", sa.Text))
        batch.add_column(sa.Column("pending_id", sa.Text))
        batch.add_column(sa.Column("hash", sa.Text))
    # A reference names one thing per customer; an index walk answers "who used it".
    _partial_index(
        "loyalty_adjustments_customer_reference",
        "loyalty_adjustments",
        ["customer_id", "reference"],
        "reference IS NOT NULL",
        unique=True,
    )
    _partial_index(
        "loyalty_adjustments_reference",
        "loyalty_adjustments",
        ["reference", "id"],
        "reference IS NOT NULL",
    )
    _partial_index(
        "loyalty_adjustments_reverses", "loyalty_adjustments", ["reverses"], "reverses IS NOT NULL"
    )
    _partial_index(
        "loyalty_adjustments_type", "loyalty_adjustments", ["type", "id"], "type <> 'adjustment'"
    )
    # Point-in-time reads: the last adjustment at or before a time is one index walk, ties
    # within a millisecond broken by seq.
    op.create_index(
        "loyalty_adjustments_customer_created_seq",
        "loyalty_adjustments",
        ["customer_id", "created_at_ms", "seq"],
    )
    op.drop_index("loyalty_adjustments_customer_created", "loyalty_adjustments")

    with op.batch_alter_table("loyalty_balances") as batch:
        batch.add_column(
            sa.Column("pending_hundredths", sa.BigInteger, nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("last_hash", sa.Text))
        # The soonest unexpired lot, kept here so reads and writes need not look at lots.
        batch.add_column(sa.Column("next_expiration_ms", sa.BigInteger))
        batch.add_column(sa.Column("next_expiration_hundredths", sa.BigInteger))

    # What is left of each credit that expires; gone once spent or expired.
    op.create_table(
        "loyalty_lots",
        sa.Column("adjustment_id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
        sa.Column("remaining_hundredths", sa.BigInteger, nullable=False),
        sa.CheckConstraint("remaining_hundredths > 0", name="loyalty_lots_remaining_check"),
    )
    op.create_index(
        "loyalty_lots_customer_expires",
        "loyalty_lots",
        ["customer_id", "expires_at_ms", "adjustment_id"],
    )
    op.create_index("loyalty_lots_expires", "loyalty_lots", ["expires_at_ms"])

    op.create_table(
        "loyalty_pending",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("points_hundredths", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("reference", sa.Text),
        sa.Column("metadata", sa.Text),
        sa.Column("expires_at_ms", sa.BigInteger),
        sa.Column("release_at_ms", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("adjustment_id", sa.Text),
        sa.Column("created_by", sa.Text),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint("points_hundredths > 0", name="loyalty_pending_points_check"),
        sa.CheckConstraint(
            "status IN ('pending', 'released', 'voided')", name="loyalty_pending_status_check"
        ),
    )
    _partial_index(
        "loyalty_pending_customer_reference",
        "loyalty_pending",
        ["customer_id", "reference"],
        "reference IS NOT NULL",
        unique=True,
    )
    _partial_index(
        "loyalty_pending_reference", "loyalty_pending", ["reference"], "reference IS NOT NULL"
    )
    op.create_index("loyalty_pending_customer", "loyalty_pending", ["customer_id", "id"])
    _partial_index(
        "loyalty_pending_due", "loyalty_pending", ["release_at_ms"], "status = 'pending'"
    )
    _backfill_hashes()


def _partial_index(
    name: str, table: str, columns: list[str], where: str, unique: bool = False
) -> None:
    """An index of the rows `where` holds, on both databases."""
    condition = sa.text(where)
    op.create_index(
        name, table, columns, unique=unique, sqlite_where=condition, postgresql_where=condition
    )


def _backfill_hashes() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    if postgres:
        op.execute(
            "ALTER TABLE loyalty_adjustments DISABLE TRIGGER loyalty_adjustments_append_only"
        )
    else:
        for event in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER loyalty_adjustments_no_{event.lower()}")
    tips: dict[str, str] = {}
    updates: list[dict[str, Any]] = []
    for row in _adjustments_in_chain_order(bind):
        fields = chain.api_fields(
            id=row.id,
            customer_id=row.customer_id,
            type="adjustment",
            delta_hundredths=row.delta_hundredths,
            balance_after_hundredths=row.balance_after_hundredths,
            reason=row.reason,
            reference=None,
            metadata=None,
            expires_at_ms=None,
            reverses=None,
            pending_id=None,
            created_by=row.created_by,
            created_at_ms=row.created_at_ms,
        )
        tips[row.customer_id] = chain.link(tips.get(row.customer_id), fields)
        updates.append({"id": row.id, "hash": tips[row.customer_id]})
        if len(updates) >= _BACKFILL_CHUNK:
            _write_hashes(bind, updates)
            updates = []
    _write_hashes(bind, updates)
    if tips:
        bind.execute(
            sa.text("UPDATE loyalty_balances SET last_hash = :hash WHERE customer_id = :customer"),
            [{"hash": value, "customer": customer} for customer, value in tips.items()],
        )
    if postgres:
        op.execute("ALTER TABLE loyalty_adjustments ENABLE TRIGGER loyalty_adjustments_append_only")
    else:
        for trigger in _SQLITE_TRIGGERS.values():
            op.execute(trigger)


def _adjustments_in_chain_order(bind: sa.Connection) -> Iterator[Any]:
    """Every adjustment in (customer_id, seq) order, read in chunks by keyset."""
    after: tuple[str, int] = ("", 0)
    while True:
        rows = bind.execute(
            sa.text(
                "SELECT id, customer_id, seq, delta_hundredths, balance_after_hundredths,"
                " reason, created_by, created_at_ms FROM loyalty_adjustments"
                " WHERE customer_id > :customer OR (customer_id = :customer AND seq > :seq)"
                " ORDER BY customer_id, seq LIMIT :n"
            ),
            {"customer": after[0], "seq": after[1], "n": _BACKFILL_CHUNK},
        ).all()
        if not rows:
            return
        yield from rows
        after = (rows[-1].customer_id, rows[-1].seq)


def _write_hashes(bind: sa.Connection, updates: list[dict[str, Any]]) -> None:
    if updates:
        bind.execute(sa.text("UPDATE loyalty_adjustments SET hash = :hash WHERE id = :id"), updates)


def downgrade() -> None:
    op.drop_table("loyalty_pending")
    op.drop_table("loyalty_lots")
    with op.batch_alter_table("loyalty_balances") as batch:
        for name in ("next_expiration_hundredths", "next_expiration_ms", "last_hash"):
            batch.drop_column(name)
        batch.drop_column("pending_hundredths")
    op.create_index(
        "loyalty_adjustments_customer_created",
        "loyalty_adjustments",
        ["customer_id", "created_at_ms"],
    )
    for name in (
        "loyalty_adjustments_customer_created_seq",
        "loyalty_adjustments_type",
        "loyalty_adjustments_reverses",
        "loyalty_adjustments_reference",
        "loyalty_adjustments_customer_reference",
    ):
        op.drop_index(name, "loyalty_adjustments")
    with op.batch_alter_table("loyalty_adjustments") as batch:
        for name in ("hash", "pending_id", "reverses", "expires_at_ms", "metadata", "reference"):
            batch.drop_column(name)
        batch.drop_column("type")
