"""This database's identity, and a sending identity per owner.

- `installation`: one row, a random id made when the schema is created. Everything that leaves
  the database (Prefect idempotency keys, tags, events) carries it, so two followups databases
  on one Prefect server never take each other's runs.
- `offer_inbox`: offers announced through a `deal.offer.sent` event wait here; the event carries
  only the row's id, so no seller details reach Prefect.
- `users`: the owner's own from address and SMS number (or Twilio Messaging Service); empty
  means the global settings.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE installation (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            singleton boolean NOT NULL DEFAULT true UNIQUE CHECK (singleton),
            created_at timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO installation DEFAULT VALUES;

        ALTER TABLE users
            ADD COLUMN email_from varchar(320),
            ADD COLUMN email_from_name varchar(200),
            ADD COLUMN sms_from varchar(32),
            ADD COLUMN messaging_service_sid varchar(64);
        CREATE INDEX ix_users_sms_from ON users (sms_from) WHERE sms_from IS NOT NULL;
        -- An offer announced through a Prefect event: the event carries only this row's id, so
        -- the seller's details never become an event payload or a flow-run parameter.
        CREATE TABLE offer_inbox (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            owner_id bigint NOT NULL REFERENCES users(id),
            payload jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );

        -- Replies are routed by the seller's phone.
        CREATE INDEX ix_deals_seller_phone ON deals (seller_phone) WHERE seller_phone IS NOT NULL;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX ix_deals_seller_phone;
        DROP INDEX ix_users_sms_from;
        ALTER TABLE users DROP COLUMN email_from, DROP COLUMN email_from_name, DROP COLUMN sms_from,
            DROP COLUMN messaging_service_sid;
        DROP TABLE offer_inbox;
        DROP TABLE installation;
        """
    )
