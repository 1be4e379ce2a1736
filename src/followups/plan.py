"""An enrollment as the flow and its tasks see it: status, position, pinned steps and the deal."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from followups.db.models import Deal, Enrollment, SequenceVersion
from followups.errors import NotFoundError
from followups.steps import Step, parse_steps
from followups.templating import DealView, SellerView


@dataclass(frozen=True)
class EnrollmentPlan:
    enrollment_id: int
    status: str
    current_step: int
    next_due_at: datetime | None
    prefect_flow_run_id: uuid.UUID | None
    sequence_id: int
    sequence_version: int
    steps: list[Step]
    deal_id: int
    owner_id: int
    deal_ref: str  # the deal's external id: what people recognise in names and tags
    deal: DealView
    seller: SellerView
    reply_token: str

    @property
    def finished_steps(self) -> bool:
        return self.current_step >= len(self.steps)


def load_plan(session: Session, enrollment_id: int, *, lock: bool = False) -> EnrollmentPlan:
    statement = select(Enrollment).where(Enrollment.id == enrollment_id)
    if lock:
        # Serialises step execution, pause, resume and cancel of one enrollment. NO KEY UPDATE
        # (key_share) so that inserting events, whose foreign key takes KEY SHARE on this row,
        # from another connection while we hold it does not block.
        statement = statement.with_for_update(of=Enrollment, key_share=True)
    enrollment = session.scalars(statement).first()
    if enrollment is None:
        raise NotFoundError("enrollment", enrollment_id)
    deal = session.get(Deal, enrollment.deal_id)
    version = session.get(SequenceVersion, enrollment.sequence_version_id)
    assert deal is not None and version is not None  # foreign keys guarantee both
    return EnrollmentPlan(
        enrollment_id=enrollment.id,
        status=enrollment.status,
        current_step=enrollment.current_step,
        next_due_at=enrollment.next_due_at,
        prefect_flow_run_id=enrollment.prefect_flow_run_id,
        sequence_id=enrollment.sequence_id,
        sequence_version=version.version,
        steps=parse_steps(version.steps),
        deal_id=deal.id,
        owner_id=deal.owner_id,
        deal_ref=deal.external_id,
        deal=DealView(
            external_id=deal.external_id,
            property_address=deal.property_address,
            offer_amount=deal.offer_amount,
            context=deal.context or {},
        ),
        seller=SellerView(
            name=deal.seller_name,
            email=deal.seller_email,
            phone=deal.seller_phone,
            timezone=deal.seller_timezone,
        ),
        reply_token=enrollment.reply_token,
    )
