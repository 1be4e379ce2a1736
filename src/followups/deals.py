"""Deals: the property and the seller a sequence writes to."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from followups.db.models import Deal


class DealInput(BaseModel):
    """A deal as the investor's app describes it; `external_id` is the app's own id."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    external_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:\-]+$")
    property_address: str = Field(min_length=1, max_length=500)
    seller_name: str = Field(min_length=1, max_length=200)
    seller_email: EmailStr | None = None
    seller_phone: str | None = Field(default=None, pattern=r"^\+[1-9]\d{6,14}$")
    seller_timezone: str = "UTC"
    offer_amount: Decimal | None = Field(default=None, ge=0, max_digits=14, decimal_places=2)
    context: dict[str, Any] = Field(default_factory=dict)

    @field_validator("seller_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _reachable(self) -> DealInput:
        if not (self.seller_email or self.seller_phone):
            raise ValueError("a seller needs an email address or a phone number")
        return self


def upsert_deal(session: Session, owner_id: int, deal: DealInput) -> int:
    """Insert the deal, or refresh it when the owner already has one with that external id."""
    values = deal.model_dump()
    values["seller_email"] = str(deal.seller_email) if deal.seller_email else None
    statement = insert(Deal).values(owner_id=owner_id, **values)
    statement = statement.on_conflict_do_update(
        index_elements=["owner_id", "external_id"],
        set_={key: statement.excluded[key] for key in values if key != "external_id"},
    ).returning(Deal.id)
    return session.execute(statement).scalar_one()


def deal_id_by_external(session: Session, owner_id: int, external_id: str) -> int | None:
    return session.scalars(
        select(Deal.id).where(Deal.owner_id == owner_id, Deal.external_id == external_id)
    ).first()
