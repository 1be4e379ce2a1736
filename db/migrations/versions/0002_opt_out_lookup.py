"""Index the few opt-out facts so every send can check them cheaply.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE INDEX ix_follow_up_events_sms_opt_outs ON follow_up_events ((content->>'from'), id)
            WHERE event_type IN ('OPTED_OUT', 'PROVIDER_EVENT') AND content->>'from' IS NOT NULL;
        CREATE INDEX ix_follow_up_events_email_opt_outs ON follow_up_events (lower(content->>'email'))
            WHERE event_type = 'OPTED_OUT';
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_follow_up_events_sms_opt_outs; DROP INDEX ix_follow_up_events_email_opt_outs;")
