"""GET /api/sequences/{id}/stats: per-sequence analytics from enrollments and the event log.

Two aggregate queries: enrollment counts by status, and event counts. Provider events are
counted once per message (an email opened five times counts as one open); replies and
opt-outs once per enrollment.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from followups.api.auth import CurrentUser
from followups.api.errors import error_responses
from followups.api.schemas import MAX_ID, SequenceStats
from followups.db.models import Sequence
from followups.db.session import session_scope
from followups.errors import NotFoundError

router = APIRouter(prefix="/api/sequences", tags=["sequences"])

# What each provider reports, normalised into content->>'event' of PROVIDER_EVENT rows.
DELIVERED = ("delivered",)
OPENED = ("open",)
BOUNCED = ("bounce", "dropped", "undelivered", "failed")

ENROLLMENT_COUNTS = text(
    """
    SELECT count(*) AS enrolled,
           count(*) FILTER (WHERE status = 'ACTIVE') AS active,
           count(*) FILTER (WHERE status = 'PAUSED') AS paused,
           count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
           count(*) FILTER (WHERE status = 'STOPPED') AS stopped,
           count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled,
           count(*) FILTER (WHERE status = 'FAILED') AS failed
    FROM enrollments
    WHERE sequence_id = :sequence_id
    """
)

# A message is (enrollment, step). Provider events normally carry both; a status callback that
# arrived before its send was committed is stored unmatched and joined through the message id.
EVENT_COUNTS = text(
    """
    WITH seq_events AS (
        SELECT e.enrollment_id, e.step_index, e.event_type, e.content->>'event' AS provider_event
        FROM follow_up_events e
        JOIN enrollments en ON en.id = e.enrollment_id
        WHERE en.sequence_id = :sequence_id
        UNION ALL
        SELECT s.enrollment_id, s.step_index, p.event_type, p.content->>'event'
        FROM follow_up_events s
        JOIN enrollments en ON en.id = s.enrollment_id
        JOIN follow_up_events p
          ON p.provider_message_id = s.provider_message_id
         AND p.event_type = 'PROVIDER_EVENT'
         AND p.enrollment_id IS NULL
        WHERE en.sequence_id = :sequence_id
          AND s.event_type IN ('EMAIL_SENT', 'SMS_SENT')
          AND s.provider_message_id IS NOT NULL
    )
    SELECT count(*) FILTER (WHERE event_type IN ('EMAIL_SENT', 'SMS_SENT')) AS sent,
           count(DISTINCT enrollment_id::text || ':' || coalesce(step_index, -1)::text)
               FILTER (WHERE event_type = 'PROVIDER_EVENT' AND provider_event = ANY(:delivered)) AS delivered,
           count(DISTINCT enrollment_id::text || ':' || coalesce(step_index, -1)::text)
               FILTER (WHERE event_type = 'PROVIDER_EVENT' AND provider_event = ANY(:opened)) AS opened,
           count(DISTINCT enrollment_id::text || ':' || coalesce(step_index, -1)::text)
               FILTER (WHERE event_type = 'PROVIDER_EVENT' AND provider_event = ANY(:bounced)) AS bounced,
           count(DISTINCT enrollment_id) FILTER (WHERE event_type = 'REPLY_RECEIVED') AS replied,
           count(DISTINCT enrollment_id) FILTER (WHERE event_type = 'OPTED_OUT') AS unsubscribed
    FROM seq_events
    """
)


def sequence_stats(session: Session, owner_id: int, sequence_id: int) -> SequenceStats:
    """Stats of one of the owner's sequences (archived ones too: their history stays)."""
    owned = session.scalar(select(Sequence.id).where(Sequence.id == sequence_id, Sequence.owner_id == owner_id))
    if owned is None:
        raise NotFoundError("sequence", sequence_id)
    enrollments = session.execute(ENROLLMENT_COUNTS, {"sequence_id": sequence_id}).mappings().one()
    events = session.execute(
        EVENT_COUNTS,
        {"sequence_id": sequence_id, "delivered": list(DELIVERED), "opened": list(OPENED), "bounced": list(BOUNCED)},
    ).mappings().one()
    return SequenceStats(sequence_id=sequence_id, **enrollments, **events)


@router.get("/{sequence_id}/stats", response_model=SequenceStats, responses=error_responses(401, 404, 422, 503))
def get_stats(
    sequence_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Sequence id")], user_id: CurrentUser
) -> SequenceStats:
    """Enrolled, active, completed, sent, delivered, opened, bounced, replied and unsubscribed
    counts of one sequence (all its versions)."""
    with session_scope() as session:
        return sequence_stats(session, user_id, sequence_id)
