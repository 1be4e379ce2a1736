"""An enrollment as the core sees it: status, position, pinned steps, pending run and the deal.

Loading never writes. With `owner_id`, ownership is checked with a plain read *before* any row
lock is taken, so another owner's enrollment answers "not found" as fast as a missing one and
never waits behind a step in flight.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from followups.db.models import OPEN_STATUSES, Deal, Enrollment, EnrollmentStatus, SequenceVersion, User
from followups.errors import NotFoundError
from followups.sequence_options import SequenceOptions, load_stored_options
from followups.steps import Step, load_stored_steps
from followups.templating import DealView, SellerView

MAX_ID = 2**63 - 1


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
    # The pinned version's options (send window, holidays, stop rules).
    options: SequenceOptions = field(default_factory=SequenceOptions)
    # The owner's zone: a message's zone when the deal and the phone number give none.
    owner_timezone: str | None = None
    # The pending run's epoch (see Enrollment.epoch).
    epoch: int = 0

    @property
    def finished_steps(self) -> bool:
        return self.current_step >= len(self.steps)

    def started_wait_due(self, started_due: datetime) -> datetime:
        """The due time of the current step's wait, started with `started_due`: later if a pause
        moved it on (the enrollment's due time then says so)."""
        if self.next_due_at is not None and self.next_due_at > started_due:
            return self.next_due_at
        return started_due

    @property
    def is_open(self) -> bool:
        return EnrollmentStatus(self.status) in OPEN_STATUSES


def _check_owner(session: Session, enrollment_id: int, owner_id: int) -> None:
    owner = session.scalar(
        select(Deal.owner_id).join(Enrollment, Enrollment.deal_id == Deal.id).where(Enrollment.id == enrollment_id)
    )
    if owner != owner_id:
        raise NotFoundError("enrollment", enrollment_id)


def load_plan(session: Session, enrollment_id: int, *, lock: bool = False, owner_id: int | None = None) -> EnrollmentPlan:
    if isinstance(enrollment_id, bool) or not isinstance(enrollment_id, int) or not 1 <= enrollment_id <= MAX_ID:
        raise NotFoundError("enrollment", enrollment_id)
    if owner_id is not None:
        _check_owner(session, enrollment_id, owner_id)
    statement = select(Enrollment).where(Enrollment.id == enrollment_id)
    if lock:
        # Serialises step execution, pause, resume and cancel of one enrollment. NO KEY UPDATE
        # (key_share) so that inserting events, whose foreign key takes KEY SHARE on this row,
        # from another connection while we hold it does not block.
        statement = statement.with_for_update(of=Enrollment, key_share=True)
    enrollment = session.scalars(statement.execution_options(populate_existing=True)).first()
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
        epoch=enrollment.epoch,
        sequence_id=enrollment.sequence_id,
        sequence_version=version.version,
        # Validated when the sequence was saved: stored steps are trusted, never re-rendered.
        steps=load_stored_steps(version.steps),
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
        options=load_stored_options(version.options),
        owner_timezone=session.scalar(select(User.timezone).where(User.id == deal.owner_id)),
    )
