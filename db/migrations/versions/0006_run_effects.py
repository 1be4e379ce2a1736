"""What Prefect must do to an enrollment's pending run, committed with the change that calls for it.

One row per enrollment: the latest effect (suspend, resume or cancel the pending run) wins, since
only the latest says what the run should look like. `seq` counts effects written, and
`delivered_seq` the latest one Prefect has carried out; a row with `delivered_seq < seq` is
undelivered. `claimed_until` lets one dispatcher at a time deliver an enrollment's effects,
without holding a transaction or a row lock across the call to Prefect.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE run_effects (
            enrollment_id bigint PRIMARY KEY REFERENCES enrollments (id),
            seq bigint NOT NULL DEFAULT 0,
            delivered_seq bigint NOT NULL DEFAULT 0,
            kind varchar(16) NOT NULL CHECK (kind IN ('suspend', 'resume', 'cancel')),
            flow_run_id uuid NOT NULL,
            due_at timestamptz,
            recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            claimed_until timestamptz,
            attempts integer NOT NULL DEFAULT 0,
            last_error text
        );
        -- The sweep and `followups doctor` look for undelivered effects only.
        CREATE INDEX run_effects_undelivered ON run_effects (recorded_at) WHERE delivered_seq < seq;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE run_effects")
