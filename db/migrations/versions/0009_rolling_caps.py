"""Rolling send caps: a slot per send in its identity's 24 h and hourly windows (counted in
PostgreSQL, not in a Prefect limit per UTC day), and the owners' own hourly caps.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "send_slots",
        sa.Column("enrollment_id", sa.BigInteger, sa.ForeignKey("enrollments.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("step_index", sa.Integer, primary_key=True),
        sa.Column("identity", sa.String(320), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_send_slots_identity_taken_at", "send_slots", ["identity", "taken_at"])
    op.execute(
        """
        ALTER TABLE users
            ADD COLUMN email_hourly_cap integer CHECK (email_hourly_cap >= 0),
            ADD COLUMN sms_hourly_cap integer CHECK (sms_hourly_cap >= 0)
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN email_hourly_cap, DROP COLUMN sms_hourly_cap")
    op.drop_index("ix_send_slots_identity_taken_at", table_name="send_slots")
    op.drop_table("send_slots")
