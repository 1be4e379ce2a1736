"""GET /api/sequences/{id}/stats: a sequence's enrollments by status and its message counts, from
the event log (`followups.analytics`). Read-only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from followups.analytics import sequence_stats
from followups.api.auth import CurrentUser
from followups.api.errors import error_responses
from followups.api.schemas import MAX_ID, SequenceStats

router = APIRouter(prefix="/api/sequences", tags=["sequences"])


@router.get("/{sequence_id}/stats", response_model=SequenceStats, responses=error_responses(401, 404, 422, 503))
def get_stats(
    sequence_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Sequence id")], user_id: CurrentUser
) -> SequenceStats:
    """Enrolled, active, completed, sent, delivered, opened, clicked, bounced, replied,
    unsubscribed, failed and outcome-unknown counts of one sequence (all its versions), with the
    delivery, open, click, reply, bounce and unsubscribe rates. Per step and variant: /analytics."""
    return SequenceStats(**sequence_stats(user_id, sequence_id))
