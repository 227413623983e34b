"""Login throttling counters, and users that can be disabled.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Failed logins per key ("email:<lowercased email>" or "ip:<client address>") in a fixed
    # window. In the database, so every worker and instance sharing it enforces one limit.
    op.create_table(
        "login_failures",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("window_start_ms", sa.BigInteger, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
    )
    op.create_index("login_failures_window_start", "login_failures", ["window_start_ms"])
    # Set: the user cannot log in and its tokens are refused (NULL: an active user).
    op.add_column("users", sa.Column("disabled_at_ms", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("disabled_at_ms")
    op.drop_table("login_failures")
