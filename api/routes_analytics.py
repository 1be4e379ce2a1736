"""GET /api/sequences/{id}/analytics: sent, delivered, bounced, replied, unsubscribed and stops
by reason, in total and per step, from the event log (`followups.analytics`). Read-only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from followups.analytics import sequence_analytics
from followups.api.auth import CurrentUser
from followups.api.errors import error_responses
from followups.inputs import MAX_ID

router = APIRouter(prefix="/api/sequences", tags=["sequences"])


class CountsOut(BaseModel):
    sent: int
    delivered: int = Field(description="Messages with a delivered callback (once per message)")
    opened: int = Field(description="Emails opened at least once (once per message)")
    bounced: int = Field(description="Messages bounced, dropped, undelivered or failed (once per message)")
    replied: int = Field(description="Enrollments with a reply")
    unsubscribed: int = Field(description="Enrollments with an opt-out (unsubscribe, spam report, STOP)")
    stopped: dict[str, int] = Field(description="Stops by reason: offer_accepted, offer_rejected, deal_closed, replied, unsubscribed, …")


class StepCountsOut(CountsOut):
    step_index: int
    type: str | None = Field(description="EMAIL, WAIT or SMS in the sequence's current version")


class AnalyticsOut(BaseModel):
    sequence_id: int
    totals: CountsOut
    steps: list[StepCountsOut] = Field(description="Replies, opt-outs and stops count for the last message sent before them")
    before_first_message: CountsOut


@router.get("/{sequence_id}/analytics", response_model=AnalyticsOut, responses=error_responses(401, 404, 422, 503))
def get_analytics(
    sequence_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Sequence id")], user_id: CurrentUser
) -> AnalyticsOut:
    """Per-sequence and per-step analytics of one of the caller's sequences (all its versions)."""
    return AnalyticsOut.model_validate(sequence_analytics(user_id, sequence_id).as_dict())
