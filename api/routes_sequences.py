"""/api/sequences: the caller's sequence templates, and the original plan's PATCH pause/resume."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from followups import control, sequences
from followups.api.auth import CurrentUser
from followups.api.errors import error_responses
from followups.api.schemas import (
    DeleteResult,
    EnrollmentOut,
    EnrollmentSummary,
    SequenceAction,
    SequenceCreate,
    SequenceDetail,
    SequenceOut,
    SequencePage,
    SequenceUpdate,
)
from followups.db.models import OPEN_STATUSES, Deal, Enrollment, SequenceVersion
from followups.db.session import session_scope
from followups.errors import NotFoundError
from followups.inputs import Id

router = APIRouter(prefix="/api/sequences", tags=["sequences"])

SequenceId = Annotated[Id, Path(description="Sequence id")]
ACTIVE_ENROLLMENTS_SHOWN = 1000


def _open_enrollments(session: Session, sequence_id: int) -> list[EnrollmentSummary]:
    rows = session.execute(
        select(Enrollment, Deal.external_id, SequenceVersion.version)
        .join(Deal, Deal.id == Enrollment.deal_id)
        .join(SequenceVersion, SequenceVersion.id == Enrollment.sequence_version_id)
        .where(Enrollment.sequence_id == sequence_id, Enrollment.status.in_(sorted(OPEN_STATUSES)))
        .order_by(Enrollment.id.desc())
        .limit(ACTIVE_ENROLLMENTS_SHOWN)
    )
    return [
        EnrollmentSummary(
            id=enrollment.id,
            deal_external_id=external_id,
            status=enrollment.status,
            current_step=enrollment.current_step,
            sequence_version=version,
            next_due_at=enrollment.next_due_at,
            created_at=enrollment.created_at,
        )
        for enrollment, external_id, version in rows
    ]


def _detail(session: Session, info: sequences.SequenceInfo) -> SequenceDetail:
    return SequenceDetail(**info.as_dict(), active_enrollments=_open_enrollments(session, info.id))


@router.get("", response_model=SequencePage, responses=error_responses(401, 422, 503))
def list_sequences(
    user_id: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> SequencePage:
    """The caller's sequences, newest first."""
    with session_scope() as session:
        items = sequences.list_sequences(session, user_id, limit=limit, offset=offset)
        total = sequences.count_sequences(session, user_id)
        return SequencePage(
            items=[SequenceOut(**item.as_dict()) for item in items], total=total, limit=limit, offset=offset
        )


@router.post("", status_code=201, response_model=SequenceDetail, responses=error_responses(401, 413, 422, 503))
def create_sequence(body: SequenceCreate, user_id: CurrentUser) -> SequenceDetail:
    """Create a sequence template (version 1)."""
    with session_scope() as session:
        return _detail(session, sequences.create_sequence(session, user_id, body))


@router.get("/{sequence_id}", response_model=SequenceDetail, responses=error_responses(401, 404, 422, 503))
def get_sequence(sequence_id: SequenceId, user_id: CurrentUser) -> SequenceDetail:
    """One sequence with its open (ACTIVE or PAUSED) enrollments."""
    with session_scope() as session:
        return _detail(session, sequences.get_sequence(session, user_id, sequence_id))


@router.put("/{sequence_id}", response_model=SequenceDetail, responses=error_responses(401, 404, 413, 422, 503))
def update_sequence(sequence_id: SequenceId, body: SequenceUpdate, user_id: CurrentUser) -> SequenceDetail:
    """Edit a sequence. Changed `steps` create a new version; enrollments already running keep
    the version they started with. Fields left out keep their value."""
    with session_scope() as session:
        return _detail(session, sequences.update_sequence(session, user_id, sequence_id, body))


@router.delete("/{sequence_id}", response_model=DeleteResult, responses=error_responses(401, 404, 409, 422, 503))
def delete_sequence(
    sequence_id: SequenceId,
    user_id: CurrentUser,
    archive: Annotated[
        bool, Query(description="Archive instead of refusing when the sequence has open enrollments")
    ] = False,
) -> DeleteResult:
    """Delete a sequence.

    - A sequence with ACTIVE or PAUSED enrollments is refused with **409** unless `archive=true`:
      then it is archived (hidden from the API, no new enrollments) and its open enrollments run
      to the end on the version they pinned.
    - A sequence that was ever used is archived rather than removed (the append-only event log
      refers to it); `result` says which happened. A never-used sequence is deleted.
    """
    with session_scope() as session:
        result = sequences.delete_sequence(session, user_id, sequence_id, archive=archive)
        return DeleteResult(id=sequence_id, result=result)


@router.patch(
    "/{sequence_id}",
    response_model=EnrollmentOut,
    responses=error_responses(401, 404, 409, 413, 422, 503),
)
def act_on_enrollment(sequence_id: SequenceId, body: SequenceAction, user_id: CurrentUser) -> dict[str, Any]:
    """Pause or resume one enrollment of this sequence (the original plan's shape; the same as
    `POST /api/enrollments/{id}/pause|resume`). The enrollment must belong to this sequence
    **and** to the caller; otherwise 404."""
    with session_scope() as session:
        sequences.get_sequence(session, user_id, sequence_id)
        found = session.scalars(
            select(Enrollment.id)
            .join(Deal, Deal.id == Enrollment.deal_id)
            .where(
                Enrollment.id == body.enrollment_id,
                Enrollment.sequence_id == sequence_id,
                Deal.owner_id == user_id,
            )
        ).first()
    if found is None:
        raise NotFoundError("enrollment", body.enrollment_id)
    action = control.pause_enrollment if body.action == "pause" else control.resume_enrollment
    return action(body.enrollment_id, owner_id=user_id).as_dict()

