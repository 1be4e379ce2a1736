"""Opt-outs: a seller who texted STOP (or unsubscribed by email) gets no more of that channel.

SMS: a STOP (or another revocation, `keywords.sms_revocation`) blocks the seller's phone for
every number and Messaging Service of the owners it is meant for (`routing.owners_of_number`),
every sequence and purpose alike (the FCC's revoke-all rule, applied ahead of 2027-01-31). Their
OPTED_OUT events carry content `channel` "sms", `from` (the seller), `to` (our number, plus
`messaging_service_sid` when it belongs to a Messaging Service) and `owners`. The number itself
stays blocked for everyone sending from it too, as the carrier blocks it (a shared number: every
owner on it). A later START or UNSTOP (a PROVIDER_EVENT with status `opt_in`) lifts the block of
the owners it reaches and of the number it was sent to. Facts recorded before each owner had a
number carry no `to`: they count for every number; facts recorded before `owners` count for the
owner of the enrollment they are on. With `sms_stop_stops_email` the owner's block also suppresses its mail to the
addresses of that seller's deals.

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


def _blocked(session: Session, phone: str, scope) -> bool:
    # Both reads use ix_follow_up_events_sms_opt_outs (content->>'from', id): a phone has few events.
    opted_out = _latest(
        session,
        FollowUpEvent.event_type == EventType.OPTED_OUT.value,
        FollowUpEvent.content["channel"].astext == "sms",
        FollowUpEvent.content["from"].astext == phone,
        scope,
    )
    if opted_out is None:
        return False
    opted_in = _latest(
        session,
        FollowUpEvent.event_type == EventType.PROVIDER_EVENT.value,
        FollowUpEvent.status == "opt_in",
        FollowUpEvent.content["from"].astext == phone,
        scope,
    )
    return opted_in is None or opted_in < opted_out


def _of_owner(owner_id: int):
    # Facts recorded before `owners` existed count for the owner of the enrollment they are on.
    owners_enrollments = select(Enrollment.id).join(Deal, Deal.id == Enrollment.deal_id).where(Deal.owner_id == owner_id)
    return or_(FollowUpEvent.content["owners"].contains([owner_id]), FollowUpEvent.enrollment_id.in_(owners_enrollments))


def sms_opted_out(
    session: Session, phone: str, from_number: str | None, *, messaging_service_sid: str | None = None,
    owner_id: int | None = None,
) -> bool:
    """Whether `phone` revoked SMS from `owner_id` (from any of its numbers), or texted STOP to
    `from_number` (or to a number of the Messaging Service), and has not texted START since."""
    if owner_id is not None and _blocked(session, phone, _of_owner(owner_id)):
        return True
    return _blocked(session, phone, _our_sender(from_number, messaging_service_sid))


def sms_stop_covers_email(session: Session, email: str, owner_id: int) -> bool:
    """Whether the seller of a deal of this owner with this address revoked the owner's SMS
    (what `sms_stop_stops_email` extends to email)."""
    phones = session.scalars(
        select(Deal.seller_phone).distinct().where(
            Deal.owner_id == owner_id, func.lower(Deal.seller_email) == email.lower(), Deal.seller_phone.is_not(None)
        )
    ).all()
    return any(_blocked(session, phone, _of_owner(owner_id)) for phone in phones)


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
