"""Enrolling a deal's seller in a sequence: the entry point that starts a sequence running."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from followups.db.events import record_event
from followups.db.models import Enrollment, EnrollmentStatus, EventType, Sequence
from followups.db.session import session_scope
from followups.deals import DealInput, upsert_deal
from followups.errors import InvalidStateError, NotFoundError
from followups.scheduling import schedule_sequence_run
from followups.sequences import latest_version_id
from followups.steps import invalid_input_from


@dataclass(frozen=True)
class EnrollmentRef:
    id: int
    deal_id: int
    deal_external_id: str
    sequence_id: int
    sequence_version: int
    status: str
    flow_run_id: uuid.UUID | None


def as_deal_input(deal: DealInput | dict[str, Any]) -> DealInput:
    if isinstance(deal, DealInput):
        return deal
    try:
        return DealInput.model_validate(deal)
    except ValidationError as exc:
        raise invalid_input_from(exc, prefix="deal") from exc


def _enabled_sequence(session: Session, owner_id: int, sequence_id: int) -> Sequence:
    sequence = session.scalars(
        select(Sequence).where(
            Sequence.id == sequence_id, Sequence.owner_id == owner_id, Sequence.archived_at.is_(None)
        )
    ).first()
    if sequence is None:
        raise NotFoundError("sequence", sequence_id)
    if not sequence.enabled:
        raise InvalidStateError(f"sequence {sequence_id} is disabled")
    return sequence


def create_enrollment(session: Session, owner_id: int, deal: DealInput, sequence_id: int) -> Enrollment:
    """Upsert the deal, pin the sequence's current version and write ENROLLED (no Prefect yet)."""
    _enabled_sequence(session, owner_id, sequence_id)
    deal_id = upsert_deal(session, owner_id, deal)
    version_id, version = latest_version_id(session, sequence_id)
    enrollment = Enrollment(
        deal_id=deal_id,
        sequence_id=sequence_id,
        sequence_version_id=version_id,
        status=EnrollmentStatus.ACTIVE.value,
        current_step=0,
        reply_token=secrets.token_urlsafe(18),
    )
    try:
        with session.begin_nested():
            session.add(enrollment)
            session.flush()
    except IntegrityError as exc:
        raise InvalidStateError(
            f"deal {deal.external_id} is already enrolled in sequence {sequence_id} (active or paused)"
        ) from exc
    record_event(
        session,
        enrollment_id=enrollment.id,
        event_type=EventType.ENROLLED,
        content={"sequence_id": sequence_id, "sequence_version": version, "deal": deal.external_id},
        dedupe_key=f"enrollment:{enrollment.id}:enrolled",
    )
    return enrollment


def start_enrollment(session: Session, enrollment: Enrollment, deal_external_id: str) -> uuid.UUID:
    """Create the first flow run (due now) and remember it on the enrollment."""
    flow_run_id = schedule_sequence_run(enrollment.id, deal_external_id, 0, scheduled_time=None)
    enrollment.prefect_flow_run_id = flow_run_id
    session.flush()
    return flow_run_id


def enroll_deal(owner_id: int, deal: DealInput | dict[str, Any], sequence_id: int) -> EnrollmentRef:
    """Enroll the deal's seller in `sequence_id` and start the sequence on Prefect.

    Raises NotFoundError (no such sequence for this owner), InvalidStateError (disabled
    sequence, or the deal already runs it) or InvalidInputError (bad deal fields).
    """
    deal_input = as_deal_input(deal)
    with session_scope() as session:
        enrollment = create_enrollment(session, owner_id, deal_input, sequence_id)
        # The run is created before the commit: if Prefect is unreachable nothing is stored;
        # if the commit failed instead, the orphan run finds no enrollment and ends at once.
        flow_run_id = start_enrollment(session, enrollment, deal_input.external_id)
        return EnrollmentRef(
            id=enrollment.id,
            deal_id=enrollment.deal_id,
            deal_external_id=deal_input.external_id,
            sequence_id=sequence_id,
            sequence_version=enrollment.sequence_version.version,
            status=enrollment.status,
            flow_run_id=flow_run_id,
        )
