"""Analytics of one sequence, in total and per step, computed from the event log alone.

Counted (all versions of the sequence together):
- sent: EMAIL_SENT / SMS_SENT events;
- delivered, opened, bounced: messages (enrollment, step) with such a provider callback, once each (a
  callback stored before its send was committed is joined through the provider message id);
- replied, unsubscribed: enrollments with a REPLY_RECEIVED / OPTED_OUT, once each;
- stopped: STOPPED events by reason (offer_accepted, offer_rejected, deal_closed, replied,
  unsubscribed, or the stored text of older stops).

Per step, a reply, an opt-out or a stop counts for the last message the seller had been sent
before it (an opt-out that names its message, as a one-click link does, counts for that one);
those that came before any message are under `before_first_message`. Reading runs in a
read-only transaction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from followups.db.models import Sequence
from followups.db.session import session_scope
from followups.errors import NotFoundError
from followups.inputs import check_id
from followups.steps import load_stored_steps

# Provider callbacks, as stored in content->>'event' of PROVIDER_EVENT rows (SendGrid, Twilio).
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

_ATTRIBUTED = """
    WITH en AS (SELECT id FROM enrollments WHERE sequence_id = :sequence_id),
    ev AS (
        SELECT e.id, e.enrollment_id, e.step_index, e.event_type, e.content->>'event' AS provider_event,
               coalesce(e.content->>'reason_code', e.content->>'reason', 'unknown') AS reason
        FROM follow_up_events e JOIN en ON en.id = e.enrollment_id
        WHERE e.event_type IN ('EMAIL_SENT', 'SMS_SENT', 'PROVIDER_EVENT', 'REPLY_RECEIVED', 'OPTED_OUT', 'STOPPED')
        UNION ALL
        SELECT p.id, s.enrollment_id, s.step_index, p.event_type, p.content->>'event', NULL
        FROM follow_up_events s
        JOIN en ON en.id = s.enrollment_id
        JOIN follow_up_events p
          ON p.provider_message_id = s.provider_message_id
         AND p.event_type = 'PROVIDER_EVENT'
         AND p.enrollment_id IS NULL
        WHERE s.event_type IN ('EMAIL_SENT', 'SMS_SENT') AND s.provider_message_id IS NOT NULL
    ),
    attributed AS (
        SELECT ev.enrollment_id, ev.event_type, ev.provider_event, ev.reason,
               CASE WHEN ev.event_type IN ('EMAIL_SENT', 'SMS_SENT', 'PROVIDER_EVENT') THEN ev.step_index
                    WHEN ev.event_type = 'OPTED_OUT' THEN coalesce(ev.step_index, last_sent.step_index)
                    ELSE last_sent.step_index END AS step
        FROM ev
        LEFT JOIN LATERAL (
            SELECT s.step_index FROM follow_up_events s
            WHERE s.enrollment_id = ev.enrollment_id AND s.event_type IN ('EMAIL_SENT', 'SMS_SENT') AND s.id < ev.id
            ORDER BY s.id DESC LIMIT 1
        ) last_sent ON ev.event_type IN ('REPLY_RECEIVED', 'OPTED_OUT', 'STOPPED')
    )
"""

# GROUPING(step) = 1 marks the row over all steps; step NULL otherwise is "before the first message".
COUNTS = text(
    _ATTRIBUTED
    + """
    SELECT GROUPING(step) AS total, step,
           count(*) FILTER (WHERE event_type IN ('EMAIL_SENT', 'SMS_SENT')) AS sent,
           count(DISTINCT enrollment_id::text || ':' || coalesce(step, -1)::text)
               FILTER (WHERE event_type = 'PROVIDER_EVENT' AND provider_event = ANY(:delivered)) AS delivered,
           count(DISTINCT enrollment_id::text || ':' || coalesce(step, -1)::text)
               FILTER (WHERE event_type = 'PROVIDER_EVENT' AND provider_event = ANY(:opened)) AS opened,
           count(DISTINCT enrollment_id::text || ':' || coalesce(step, -1)::text)
               FILTER (WHERE event_type = 'PROVIDER_EVENT' AND provider_event = ANY(:bounced)) AS bounced,
           count(DISTINCT enrollment_id) FILTER (WHERE event_type = 'REPLY_RECEIVED') AS replied,
           count(DISTINCT enrollment_id) FILTER (WHERE event_type = 'OPTED_OUT') AS unsubscribed
    FROM attributed
    GROUP BY GROUPING SETS ((step), ())
    """
)

STOPS = text(
    _ATTRIBUTED
    + """
    SELECT GROUPING(step) AS total, step, reason, count(*) AS stops
    FROM attributed
    WHERE event_type = 'STOPPED'
    GROUP BY GROUPING SETS ((step, reason), (reason))
    """
)


@dataclass
class Counts:
    sent: int = 0
    delivered: int = 0
    opened: int = 0
    bounced: int = 0
    replied: int = 0
    unsubscribed: int = 0
    stopped: dict[str, int] = field(default_factory=dict)  # reason -> stops


@dataclass
class StepCounts(Counts):
    step_index: int = 0
    type: str | None = None  # the step's type in the sequence's current version


@dataclass
class SequenceAnalytics:
    sequence_id: int
    totals: Counts
    steps: list[StepCounts]
    before_first_message: Counts

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _counts(row: Any) -> dict[str, Any]:
    return {"sent": row.sent, "delivered": row.delivered, "opened": row.opened, "bounced": row.bounced,
            "replied": row.replied, "unsubscribed": row.unsubscribed}


def sequence_analytics(owner_id: int, sequence_id: int) -> SequenceAnalytics:
    """The analytics of one of the owner's sequences (archived ones too: their history stays).
    Another owner's sequence is a NotFoundError, like a missing one."""
    check_id(owner_id, "owner_id")
    check_id(sequence_id, "sequence_id")
    with session_scope(read_only=True) as session:
        return _analytics(session, owner_id, sequence_id)


def sequence_stats(owner_id: int, sequence_id: int) -> dict[str, int]:
    """The sequence's enrollments by status, and the totals of its analytics."""
    check_id(owner_id, "owner_id")
    check_id(sequence_id, "sequence_id")
    with session_scope(read_only=True) as session:
        totals = _analytics(session, owner_id, sequence_id).totals
        enrollments = session.execute(ENROLLMENT_COUNTS, {"sequence_id": sequence_id}).mappings().one()
    events = {k: v for k, v in asdict(totals).items() if k != "stopped"}  # `stopped` here: STOPPED enrollments
    return {"sequence_id": sequence_id, **events, **enrollments}


def _analytics(session: Session, owner_id: int, sequence_id: int) -> SequenceAnalytics:
    params = {"sequence_id": sequence_id, "delivered": list(DELIVERED), "opened": list(OPENED), "bounced": list(BOUNCED)}
    sequence = session.scalars(select(Sequence).where(Sequence.id == sequence_id, Sequence.owner_id == owner_id)).first()
    if sequence is None:
        raise NotFoundError("sequence", sequence_id)
    types = [str(step.type) for step in load_stored_steps(sequence.steps)]
    counts = session.execute(COUNTS, params).all()
    stops = session.execute(STOPS, params).all()
    totals, before, by_step = Counts(), Counts(), {}
    for row in counts:
        if row.total:
            totals = Counts(**_counts(row))
        elif row.step is None:
            before = Counts(**_counts(row))
        else:
            by_step[row.step] = Counts(**_counts(row))
    for row in sorted(stops, key=lambda r: r.reason):
        if row.total:
            target = totals
        elif row.step is None:
            target = before
        else:
            target = by_step.setdefault(row.step, Counts())
        target.stopped[row.reason] = row.stops
    last = max([len(types) - 1, *by_step]) if (types or by_step) else -1
    steps = [
        StepCounts(step_index=i, type=types[i] if i < len(types) else None, **asdict(by_step.get(i, Counts())))
        for i in range(last + 1)
    ]
    return SequenceAnalytics(sequence_id=sequence_id, totals=totals, steps=steps, before_first_message=before)
