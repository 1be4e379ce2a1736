"""The deal's property_state (its texting law applies), and an index for the texts-per-24-h
count by owner and phone that state laws need at every SMS send.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deals", sa.Column("property_state", sa.String(2), nullable=True))
    op.create_index(
        "ix_deals_owner_seller_phone", "deals", ["owner_id", "seller_phone"], postgresql_where=sa.text("seller_phone IS NOT NULL")
    )


def downgrade() -> None:
    op.drop_index("ix_deals_owner_seller_phone", table_name="deals")
    op.drop_column("deals", "property_state")
