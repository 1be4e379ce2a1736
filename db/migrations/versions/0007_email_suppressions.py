"""Bounced addresses are suppressed like unsubscribed ones: the per-send lookup's index covers both.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE INDEX ix_follow_up_events_email_suppressions ON follow_up_events (lower(content->>'email'))
            WHERE event_type IN ('OPTED_OUT', 'BOUNCED');
        DROP INDEX ix_follow_up_events_email_opt_outs;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        CREATE INDEX ix_follow_up_events_email_opt_outs ON follow_up_events (lower(content->>'email'))
            WHERE event_type = 'OPTED_OUT';
        DROP INDEX ix_follow_up_events_email_suppressions;
        """
    )
