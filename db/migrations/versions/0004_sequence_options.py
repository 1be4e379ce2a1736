"""Per-sequence options (send window, holidays, what stops a sequence) on sequences and versions,
and per-owner daily caps for their sending identity.

The version carries its own copy: an enrollment pinned to a version keeps the options it
started with when the sequence is edited.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE sequences ADD COLUMN options jsonb NOT NULL DEFAULT '{}';
        ALTER TABLE sequence_versions ADD COLUMN options jsonb NOT NULL DEFAULT '{}';
        -- An owner's own daily caps for their sending identity (NULL: the global setting).
        ALTER TABLE users
            ADD COLUMN email_daily_cap integer CHECK (email_daily_cap >= 0),
            ADD COLUMN sms_daily_cap integer CHECK (sms_daily_cap >= 0);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE users DROP COLUMN email_daily_cap, DROP COLUMN sms_daily_cap;
        ALTER TABLE sequence_versions DROP COLUMN options;
        ALTER TABLE sequences DROP COLUMN options;
        """
    )
