"""GET /api/sequences/{id}/analytics: sent, delivered, opened, clicked, bounced, replied,
unsubscribed, failed, outcome-unknown, their rates and stops by reason, in total, per step and
per variant of an A/B step, from the event log (`followups.analytics`). Read-only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from followups.analytics import sequence_analytics
from followups.api.auth import CurrentUser
from followups.api.errors import error_responses
from followups.api.schemas import RatesOut
from followups.inputs import MAX_ID

router = APIRouter(prefix="/api/sequences", tags=["sequences"])


class CountsOut(BaseModel):
    sent: int
    delivered: int = Field(description="Messages with a delivered callback (once per message)")
    opened: int = Field(description="Emails opened at least once (once per message)")
    clicked: int = Field(description="Emails with a link clicked at least once (once per message)")
    bounced: int = Field(description="Messages bounced, dropped, undelivered or failed (once per message)")
    replied: int = Field(description="Enrollments with a reply")
    unsubscribed: int = Field(description="Enrollments with an opt-out (unsubscribe, spam report, STOP)")
    failed: int = Field(description="Message steps that failed (not sent)")
    outcome_unknown: int = Field(description="Message steps whose send was interrupted: perhaps sent, never resent")
    stopped: dict[str, int] = Field(description="Stops by reason: offer_accepted, offer_rejected, deal_closed, replied, unsubscribed, …")
    rates: RatesOut


class VariantCountsOut(CountsOut):
    name: str
    weight: int | None = Field(description="Its weight in the current version; null for a variant only earlier versions had")


class StepCountsOut(CountsOut):
    step_index: int
    type: str | None = Field(description="EMAIL, WAIT or SMS in the sequence's current version")
    variants: list[VariantCountsOut] = Field(
        default_factory=list, description="An A/B step's counts per variant (the one each enrollment was sent)"
    )


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
