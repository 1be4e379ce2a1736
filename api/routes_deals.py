"""POST /api/deals/{deal_external_id}/deal-events: the investor reports that an offer was
accepted or rejected, or the deal closed; the deal's follow-ups stop (`followups.deal_events`).

A resource of its own, next to (not on) `GET /api/deals/{id}/events`, which is the follow-up
event log: what is posted here is a fact about the deal, not a row of that log."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from followups.api.auth import CurrentUser
from followups.api.errors import error_responses
from followups.deal_events import record_deal_event
from followups.inputs import EXTERNAL_ID_PATTERN, MAX_NAME

router = APIRouter(tags=["deals"])


class DealEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["offer_accepted", "offer_rejected", "deal_closed"] = Field(
        description="What happened to the deal; each sequence's `stop_on` option says which of these stop it"
    )


class DealEventOut(BaseModel):
    deal_external_id: str
    event: str
    stopped: list[int] = Field(description="Enrollments this event stopped (their pending runs are cancelled)")
    kept: list[int] = Field(description="Open enrollments whose sequence does not stop on this event")


@router.post(
    "/api/deals/{deal_external_id}/deal-events",
    response_model=DealEventOut,
    responses=error_responses(401, 404, 413, 422, 503),
)
def post_deal_event(
    deal_external_id: Annotated[str, Path(min_length=1, max_length=MAX_NAME, pattern=EXTERNAL_ID_PATTERN)],
    body: DealEventIn,
    user_id: CurrentUser,
) -> DealEventOut:
    """An offer on one of the caller's deals was accepted or rejected, or the deal closed: stop
    the deal's open enrollments (STOPPED, reason = the event). Idempotent: a repeat stops
    nothing more. Another user's deal is a 404."""
    return DealEventOut(**record_deal_event(user_id, deal_external_id, body.type).as_dict())
