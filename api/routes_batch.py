"""POST /api/enrollments/batch: enroll up to 1,000 deals of the caller in one sequence.
POST /api/enrollments/bulk/{action}: pause, resume or cancel many of the caller's enrollments.

The request as a whole is refused only when it cannot be done at all (too many items: 413;
another owner's or a missing sequence: 404; a disabled one: 409; a body that is not an object
with a list: 422). Otherwise it answers 207 with one entry per item, in order: `ok` (enrolled,
its first run scheduled), `exists` (the deal already has an enrollment in that sequence, open
or finished, so a retried request enrolls nothing twice; `"again": true` enrolls anew a deal
whose enrollments have all finished) or `error` (the field inside the item, and why; nothing of
that item was stored).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from followups import control
from followups.api.auth import CurrentUser
from followups.api.errors import error_responses
from followups.bulk import MAX_BATCH
from followups.bulk_controls import MAX_DEALS
from followups.inputs import AGAIN_HELP, Id

router = APIRouter(tags=["enrollments"])


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sequence_id: Id
    # Items are validated one by one by the core, so a bad one gets its own answer.
    items: list[Any] = Field(description=f"Deals (as in POST /api/enrollments), at most {MAX_BATCH}")
    start_at: AwareDatetime | None = Field(
        None, description="When the sequences start (ISO 8601 with its UTC offset, up to a year ahead); default: now",
    )
    again: bool = Field(False, description=AGAIN_HELP)


class BatchItemOut(BaseModel):
    index: int
    status: Literal["ok", "exists", "error"]
    deal: str | None = Field(description="The deal's external id, when it could be read")
    enrollment_id: int | None
    flow_run_id: str | None
    field: str | None = Field(description="For errors: the dotted path inside the item, e.g. seller_phone")
    message: str
    enrollment_status: str | None = Field(None, description="ok: ACTIVE; exists: the status of the enrollment the deal has")
    previous_enrollment_id: int | None = Field(
        None, description="ok with `again`: the finished enrollment of the deal that this new one follows",
    )


class BatchOut(BaseModel):
    sequence_id: int
    counts: dict[str, int] = Field(description="Items per status")
    items: list[BatchItemOut]


@router.post(
    "/api/enrollments/batch",
    status_code=207,
    response_model=BatchOut,
    responses={207: {"description": "One answer per item"}} | error_responses(401, 404, 409, 413, 422, 503),
)
def enroll_batch(body: BatchRequest, user_id: CurrentUser) -> dict[str, Any]:
    """Enroll many deals in one of the caller's sequences and start each one; one answer per item.
    Idempotent on each deal's `external_id`: a deal ever enrolled in the sequence answers `exists`
    unless `"again": true` and its enrollments have all finished."""
    if len(body.items) > MAX_BATCH:
        raise HTTPException(status_code=413, detail=f"at most {MAX_BATCH} items per batch, got {len(body.items)}")
    results = control.enroll_deals(user_id, body.items, body.sequence_id, start_at=body.start_at, again=body.again)
    counts = {"ok": 0, "exists": 0, "error": 0}
    for result in results:
        counts[result.status] += 1
    return {"sequence_id": body.sequence_id, "counts": counts, "items": [result.as_dict() for result in results]}


class BulkControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sequence_id: Id | None = Field(None, description="Every open enrollment of this sequence")
    deals: list[str] | None = Field(None, description=f"Every open enrollment of these deals (external ids, at most {MAX_DEALS})")
    all: bool = Field(False, description="Every open enrollment of the caller")


class ControlAnswerOut(BaseModel):
    deal: str
    enrollment_id: int | None
    outcome: Literal["done", "unchanged", "error"]
    status: str | None = Field(description="The enrollment's status afterwards")
    message: str | None


class BulkControlOut(BaseModel):
    action: str
    counts: dict[str, int] = Field(description="Answers per outcome")
    answers: list[ControlAnswerOut]


@router.post(
    "/api/enrollments/bulk/{action}",
    response_model=BulkControlOut,
    responses=error_responses(401, 404, 422, 503),
)
def control_many(action: Literal["pause", "resume", "cancel"], body: BulkControlRequest, user_id: CurrentUser) -> dict[str, Any]:
    """Pause, resume or cancel every open enrollment of one of the caller's sequences, of some of
    their deals, or all of them (exactly one of `sequence_id`, `deals`, `all`). Idempotent: one
    answer per enrollment, `unchanged` where it already was so."""
    result = control.control_many(action, user_id, sequence_id=body.sequence_id, deals=body.deals, every=body.all)
    return result.as_dict()


@router.api_route("/api/enrollments/batch", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def batch_other_methods() -> None:
    # Without this, GET /api/enrollments/batch would reach /api/enrollments/{enrollment_id} and
    # answer 422 ("batch" is not an id) instead of 405.
    raise HTTPException(status_code=405, detail="Method Not Allowed", headers={"Allow": "POST"})
