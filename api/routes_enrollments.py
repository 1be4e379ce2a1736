"""/api/enrollments, /api/offers and /api/deals/{id}/events: enrolling deals and controlling
their sequences. Every call passes the caller as owner: another user's enrollment is a 404."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from followups import control
from followups.api.auth import CurrentUser
from followups.api.errors import error_responses
from followups.api.schemas import EnrollBody, EnrollmentOut, EnrollmentPageOut, EventOut, OfferOut, OfferRequest
from followups.inputs import EXTERNAL_ID_PATTERN, MAX_NAME, Id

router = APIRouter(tags=["enrollments"])

EnrollmentId = Annotated[Id, Path(description="Enrollment id")]
CONTROL_ERRORS = error_responses(401, 404, 409, 422, 503)


@router.post(
    "/api/enrollments",
    status_code=201,
    response_model=EnrollmentOut,
    responses=error_responses(401, 404, 409, 413, 422, 503),
)
def enroll(body: EnrollBody, user_id: CurrentUser) -> dict[str, Any]:
    """Enroll a deal's seller in one of the caller's sequences and start it, now or at `start_at`.
    The deal is created or refreshed by its `external_id`. 409 when the sequence is disabled, or
    when the deal was ever enrolled in it (`field` deal.external_id, with its `enrollment_id` and
    `enrollment_status`): `"again": true` enrolls it anew once its enrollments have all finished;
    an open one is never duplicated."""
    ref = control.enroll_deal(user_id, body.deal, body.sequence_id, start_at=body.start_at, again=body.again)
    return control.get_enrollment(ref.id, owner_id=user_id).as_dict()


@router.get("/api/enrollments", response_model=EnrollmentPageOut, responses=error_responses(401, 422, 503))
def list_enrollments(
    user_id: CurrentUser,
    status: Annotated[str | None, Query(description="ACTIVE, PAUSED, COMPLETED, FAILED, CANCELLED or STOPPED")] = None,
    sequence_id: Annotated[Id | None, Query(description="Only this sequence's enrollments")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[Id | None, Query(description="The `next_before` of the previous page")] = None,
) -> dict[str, Any]:
    """The caller's enrollments, newest first, a page at a time."""
    return control.list_enrollments(user_id, status=status, sequence_id=sequence_id, limit=limit, before=before).as_dict()


@router.get("/api/enrollments/{enrollment_id}", response_model=EnrollmentOut, responses=error_responses(401, 404, 422, 503))
def get_enrollment(enrollment_id: EnrollmentId, user_id: CurrentUser) -> dict[str, Any]:
    """Status, current step, next due time and the timeline of steps (done and planned)."""
    return control.get_enrollment(enrollment_id, owner_id=user_id).as_dict()


@router.post("/api/enrollments/{enrollment_id}/pause", response_model=EnrollmentOut, responses=CONTROL_ERRORS)
def pause(enrollment_id: EnrollmentId, user_id: CurrentUser) -> dict[str, Any]:
    """Pause an ACTIVE enrollment: nothing more is sent until it is resumed (409 otherwise)."""
    return control.pause_enrollment(enrollment_id, owner_id=user_id).as_dict()


@router.post("/api/enrollments/{enrollment_id}/resume", response_model=EnrollmentOut, responses=CONTROL_ERRORS)
def resume(enrollment_id: EnrollmentId, user_id: CurrentUser) -> dict[str, Any]:
    """Resume a PAUSED enrollment, keeping what is left of its wait (409 otherwise)."""
    return control.resume_enrollment(enrollment_id, owner_id=user_id).as_dict()


@router.post("/api/enrollments/{enrollment_id}/cancel", response_model=EnrollmentOut, responses=CONTROL_ERRORS)
def cancel(enrollment_id: EnrollmentId, user_id: CurrentUser) -> dict[str, Any]:
    """Cancel an open enrollment for good (409 when it has already ended)."""
    return control.cancel_enrollment(enrollment_id, owner_id=user_id).as_dict()


@router.get(
    "/api/enrollments/{enrollment_id}/events",
    response_model=list[EventOut],
    responses=error_responses(401, 404, 422, 503),
)
def enrollment_events(enrollment_id: EnrollmentId, user_id: CurrentUser) -> list[dict[str, Any]]:
    """The enrollment's event log, oldest first (sends, waits, controls, provider events, replies)."""
    return control.list_events(enrollment_id=enrollment_id, owner_id=user_id)


@router.get(
    "/api/deals/{deal_external_id}/events",
    response_model=list[EventOut],
    responses=error_responses(401, 404, 422, 503),
)
def deal_events(
    deal_external_id: Annotated[str, Path(min_length=1, max_length=MAX_NAME, pattern=EXTERNAL_ID_PATTERN)],
    user_id: CurrentUser,
) -> list[dict[str, Any]]:
    """The event log of every enrollment of one of the caller's deals, oldest first."""
    return control.list_events(deal_external_id=deal_external_id, owner_id=user_id)


@router.post(
    "/api/offers",
    status_code=201,
    response_model=OfferOut,
    responses={200: {"description": "This offer was recorded before", "model": OfferOut}}
    | error_responses(401, 404, 409, 413, 422, 503),
)
def offer_sent(body: OfferRequest, user_id: CurrentUser, response: Response) -> dict[str, Any]:
    """An offer went out: enroll the deal's seller in the given (or the caller's default)
    sequence. Idempotent on `offer_id`: a repeat answers 200 with the first result. A deal ever
    enrolled in the sequence is not enrolled again (`enrolled: false`, the `reason` names its
    enrollment and status) unless `"again": true` and its enrollments have all finished."""
    result = control.record_offer_sent(
        user_id, body.offer_id, body.deal, sequence_id=body.sequence_id, amount=body.amount, again=body.again
    )
    if not result.created:
        response.status_code = 200
    return result.as_dict()
