"""Opt-outs: a seller who texted STOP (or unsubscribed by email) gets no more of that channel.

SMS: a STOP blocks one pair, (seller phone, our number), as the carrier does: OPTED_OUT events
carry content `channel` "sms", `from` (the seller) and `to` (our number, plus
`messaging_service_sid` when the number belongs to a Messaging Service). A later START or
UNSTOP to the same number (a PROVIDER_EVENT with status `opt_in`) lifts it. Facts recorded
before each owner had a number carry no `to`: they count for every number.

Email: an unsubscribe or spam report answers one owner's mail, so it suppresses the address for
that owner only (the owner of the enrollment the OPTED_OUT event is recorded on). So does a
bounce, a block, or soft bounces without end (BOUNCED): mailbox providers judge the sender that
keeps mailing a dead address, and the sender is that owner's identity.
"""

from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from followups.db.models import Deal, Enrollment, EventType, FollowUpEvent


def _latest(session: Session, *conditions) -> int | None:
    return session.scalar(select(func.max(FollowUpEvent.id)).where(*conditions))


def _our_sender(from_number: str | None, messaging_service_sid: str | None):
    """Events about the number (or Messaging Service) we would send from."""
    to = FollowUpEvent.content["to"].astext
    matches = [to.is_(None)]
    if from_number:
        matches.append(to == from_number)
    if messaging_service_sid:
        matches.append(FollowUpEvent.content["messaging_service_sid"].astext == messaging_service_sid)
    return or_(*matches)


def sms_opted_out(session: Session, phone: str, from_number: str | None, *, messaging_service_sid: str | None = None) -> bool:
    """Whether `phone` texted STOP to `from_number` (or to a number of the Messaging Service)
    and has not texted START since."""
    # Both reads use ix_follow_up_events_sms_opt_outs (content->>'from', id): a phone has few events.
    sender = _our_sender(from_number, messaging_service_sid)
    opted_out = _latest(
        session,
        FollowUpEvent.event_type == EventType.OPTED_OUT.value,
        FollowUpEvent.content["channel"].astext == "sms",
        FollowUpEvent.content["from"].astext == phone,
        sender,
    )
    if opted_out is None:
        return False
    opted_in = _latest(
        session,
        FollowUpEvent.event_type == EventType.PROVIDER_EVENT.value,
        FollowUpEvent.status == "opt_in",
        FollowUpEvent.content["from"].astext == phone,
        sender,
    )
    return opted_in is None or opted_in < opted_out


SUPPRESSING = (EventType.OPTED_OUT.value, EventType.BOUNCED.value)


def email_suppressed(session: Session, email: str, owner_id: int) -> str | None:
    """Why this owner may not mail `email` any more (OPTED_OUT: it unsubscribed or reported
    spam; BOUNCED), or None."""
    return session.scalar(
        select(FollowUpEvent.event_type)
        .join(Enrollment, Enrollment.id == FollowUpEvent.enrollment_id)
        .join(Deal, Deal.id == Enrollment.deal_id)
        .where(
            FollowUpEvent.event_type.in_(SUPPRESSING),
            FollowUpEvent.content["channel"].astext == "email",
            func.lower(FollowUpEvent.content["email"].astext) == email.lower(),
            Deal.owner_id == owner_id,
        )
        .order_by(FollowUpEvent.id)
        .limit(1)
    )


def email_opted_out(session: Session, email: str, owner_id: int) -> bool:
    """Whether `email` unsubscribed from (or reported as spam) mail of this owner."""
    return email_suppressed(session, email, owner_id) == EventType.OPTED_OUT.value
