"""Deals: the property and the seller a sequence writes to."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from followups.db.models import Deal
from followups.inputs import DealInput, check_external_id, check_id, require_owner, validate

__all__ = ["DealInput", "deal_id_by_external", "upsert_deal"]


def upsert_deal(session: Session, owner_id: int, deal: DealInput | dict[str, Any]) -> int:
    """Insert the deal, or refresh it when the owner already has one with that external id.

    The deal is validated here (an instance again too: `model_copy` does not validate), so
    nothing reaches the table that PostgreSQL or a provider would refuse later.
    """
    deal = validate(DealInput, deal, prefix="deal")
    require_owner(session, owner_id)
    values = deal.model_dump()
    statement = insert(Deal).values(owner_id=owner_id, **values)
    statement = statement.on_conflict_do_update(
        index_elements=["owner_id", "external_id"],
        set_={key: statement.excluded[key] for key in values if key != "external_id"},
    ).returning(Deal.id)
    return session.execute(statement).scalar_one()


def deal_id_by_external(session: Session, owner_id: int, external_id: str) -> int | None:
    owner_id = check_id(owner_id, "owner_id")
    external_id = check_external_id(external_id, "deal.external_id")
    return session.scalars(
        select(Deal.id).where(Deal.owner_id == owner_id, Deal.external_id == external_id)
    ).first()
