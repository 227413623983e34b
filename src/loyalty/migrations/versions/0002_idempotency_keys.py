"""Idempotency keys: a retried adjustment replays its first response.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written in the same transaction as the adjustment it answers for: both or neither.
    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "key", name="idempotency_keys_user_key"),
    )
    op.create_index("idempotency_keys_created", "idempotency_keys", ["created_at_ms"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
