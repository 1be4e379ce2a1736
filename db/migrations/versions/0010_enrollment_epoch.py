"""The enrollment's epoch: a number that goes up each time the enrollment gets a new pending run.
Every run the product creates carries it (a parameter and its idempotency key), so a run whose
epoch is not the enrollment's is known to be stale, and a run is created after the commit that
calls for it, its id written back where the epoch still matches.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing enrollments count their current run as epoch 1, as a new enrollment's first run is.
    op.add_column("enrollments", sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"))
    op.execute("UPDATE enrollments SET epoch = 1 WHERE prefect_flow_run_id IS NOT NULL")
    # The sweep's look for runs scheduled after a commit but never created.
    op.create_index(
        "ix_enrollments_undelivered_runs", "enrollments", ["updated_at"],
        postgresql_where=sa.text("prefect_flow_run_id IS NULL AND epoch > 0 AND status = 'ACTIVE'"),
    )


def downgrade() -> None:
    op.drop_index("ix_enrollments_undelivered_runs", table_name="enrollments")
    op.drop_column("enrollments", "epoch")
