"""Integrations: secret API keys, the events outbox and its consumers, webhook endpoints and
their deliveries, and customers' metadata, phone and company name.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("metadata", sa.Text))  # a JSON object, or NULL
        batch.add_column(sa.Column("phone", sa.Text))
        batch.add_column(sa.Column("company_name", sa.Text))

    # Secret keys: only a hash of the token is kept; `redacted` is what lists show of it.
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("token_hash", sa.Text, nullable=False, unique=True),
        sa.Column("redacted", sa.Text, nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),  # space-separated
        sa.Column("created_by", sa.Text, nullable=False),  # the user; the key dies with it
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("last_used_at_ms", sa.BigInteger),
        sa.Column("revoked_at_ms", sa.BigInteger),
    )
    op.create_index("api_keys_created_by", "api_keys", ["created_by"])

    # The outbox: one row per committed change, written in the change's transaction.
    # `position` is taken from loyalty_event_sequence at the end of that transaction, whose
    # row lock is held until COMMIT, so positions follow commit order with no gaps a reader
    # could skip over.
    op.create_table(
        "loyalty_events",
        sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("type", sa.Text, nullable=False),
        # The id of what changed: the adjustment, the pending points or the customer.
        sa.Column("subject_id", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        # The JSON object of the change; NULL for an adjustment's event, whose data is the
        # adjustment's row (append-only), read beside it.
        sa.Column("data", sa.Text),
    )
    op.create_table(
        "loyalty_event_sequence",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_position", sa.BigInteger, nullable=False),
        # When the outbox began: changes made before it have no events (verify knows).
        sa.Column("started_at_ms", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO loyalty_event_sequence (id, last_position, started_at_ms)"
        f" VALUES (1, 0, {time.time_ns() // 1_000_000})"
    )
    # Who reads the outbox in the background (the NATS publisher, the webhook dispatcher):
    # how far each has got, and which worker holds its lease now.
    op.create_table(
        "loyalty_event_consumers",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.Text),
        sa.Column("lease_until_ms", sa.BigInteger, nullable=False),
    )

    op.create_table(
        "webhooks",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("event_types", sa.Text),  # space-separated; NULL: every type
        sa.Column("description", sa.Text),
        sa.Column("secret", sa.Text, nullable=False),  # whsec_…, needed to sign
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created_by", sa.Text),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        # The last event position handed to this endpoint: it gets the events after its creation.
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("webhook_id", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("event_position", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),  # pending, delivered, failed
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("response_status", sa.Integer),
        sa.Column("next_attempt_at_ms", sa.BigInteger),
        sa.Column("lease_until_ms", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("webhook_deliveries_webhook", "webhook_deliveries", ["webhook_id", "id"])
    op.create_index(
        "webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at_ms"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
    op.drop_table("loyalty_event_consumers")
    op.drop_table("loyalty_event_sequence")
    op.drop_table("loyalty_events")
    op.drop_table("api_keys")
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("company_name")
        batch.drop_column("phone")
        batch.drop_column("metadata")
