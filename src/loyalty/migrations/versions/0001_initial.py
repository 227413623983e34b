"""The initial schema: users, service settings, customers, balances and the ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("email", sa.Text, nullable=False),
        # The email lower-cased: uniqueness is case-insensitive.
        sa.Column("email_key", sa.Text, nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("first_name", sa.Text),
        sa.Column("last_name", sa.Text),
        sa.Column("scopes", sa.Text, nullable=False),  # space-separated
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "service_settings",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "customers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("email_key", sa.Text, nullable=False, unique=True),
        sa.Column("first_name", sa.Text),
        sa.Column("last_name", sa.Text),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("customers_created_at", "customers", ["created_at_ms", "id"])
    # One row per customer: the balance and the tip of its ledger, locked by every adjustment.
    op.create_table(
        "loyalty_balances",
        sa.Column("customer_id", sa.Text, sa.ForeignKey("customers.id"), primary_key=True),
        sa.Column("balance_hundredths", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("last_adjustment_id", sa.Text),
        sa.Column("updated_at_ms", sa.BigInteger),
        sa.CheckConstraint("last_seq >= 0", name="loyalty_balances_last_seq_check"),
    )
    # Append-only: rows are inserted, never changed or deleted (triggers below).
    op.create_table(
        "loyalty_adjustments",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("delta_hundredths", sa.BigInteger, nullable=False),
        sa.Column("balance_after_hundredths", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.Text),
        sa.UniqueConstraint("customer_id", "seq", name="loyalty_adjustments_customer_seq"),
        sa.CheckConstraint("delta_hundredths <> 0", name="loyalty_adjustments_delta_check"),
        sa.CheckConstraint("seq >= 1", name="loyalty_adjustments_seq_check"),
    )
    op.create_index(
        "loyalty_adjustments_customer_created",
        "loyalty_adjustments",
        ["customer_id", "created_at_ms"],
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION loyalty_adjustments_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION 'loyalty_adjustments is append-only';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            """
            CREATE TRIGGER loyalty_adjustments_append_only
            BEFORE UPDATE OR DELETE ON loyalty_adjustments
            FOR EACH ROW EXECUTE FUNCTION loyalty_adjustments_append_only()
            """
        )
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"""
                CREATE TRIGGER loyalty_adjustments_no_{event.lower()}
                BEFORE {event} ON loyalty_adjustments
                BEGIN
                    SELECT RAISE(ABORT, 'loyalty_adjustments is append-only');
                END
                """
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER loyalty_adjustments_append_only ON loyalty_adjustments")
        op.execute("DROP FUNCTION loyalty_adjustments_append_only()")
    op.drop_table("loyalty_adjustments")
    op.drop_table("loyalty_balances")
    op.drop_table("customers")
    op.drop_table("service_settings")
    op.drop_table("users")
