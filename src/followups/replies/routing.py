"""Whose enrollments a seller's message concerns.

An inbound SMS is addressed to a pair: the seller's phone (`From`) and one of our numbers
(`To`, and the Messaging Service it belongs to when Twilio names one). It concerns the owners
who send from that number: an owner whose own `sms_from` is `To` or whose Messaging Service is
the one named, and, when `To` is the global number, every owner without a number or service of
its own. Several owners can share a number (the global one): then the text goes to the owner who
last texted that seller from it (the conversation the seller answers), or to all of them when
none has yet. Nobody else ever sees it.

Email replies are matched by their per-enrollment reply address, or by the Message-ID of ours
they answer (`enrollments_for_message_ids`); email opt-outs from the event
webhook stay with the owner of the message (`open_enrollments_for_email`). A reply also reaches
the same deal's other open enrollments whose sequence stops on a reply from the seller's other
channel (`other_channel_enrollments`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import and_, false, func, or_, select
from sqlalchemy.orm import Session

from followups.db.models import OPEN_STATUSES, Deal, Enrollment, EventType, FollowUpEvent, SequenceVersion, User

_OPEN = sorted(OPEN_STATUSES)


@dataclass(frozen=True)
class SmsRoute:
    """Where an inbound SMS goes. `addressed` get its text (open enrollments, else the most
    recent one); `bystanders` are the open enrollments of the other owners on that number,
    which an opt-out stops too (the carrier blocks the pair for everyone on it)."""

    addressed: list[int] = field(default_factory=list)
    bystanders: list[int] = field(default_factory=list)


def _sends_from(to_number: str, messaging_service_sid: str | None, global_number: str | None):
    """Owners (a condition on User) who send from `to_number` / the Messaging Service."""
    own_number = User.sms_from == to_number
    through_service = User.messaging_service_sid == messaging_service_sid if messaging_service_sid else false()
    on_global = (
        and_(User.sms_from.is_(None), User.messaging_service_sid.is_(None))
        if global_number and to_number == global_number
        else false()
    )
    return or_(own_number, through_service, on_global)


def _sent_from(to_number: str, messaging_service_sid: str | None, global_number: str | None):
    """SMS_SENT events (a condition on FollowUpEvent) sent from that number / service."""
    sent_from = FollowUpEvent.content["from"].astext
    service = FollowUpEvent.content["messaging_service_sid"].astext
    matches = [sent_from == to_number]
    if messaging_service_sid:
        matches.append(service == messaging_service_sid)
    if global_number and to_number == global_number:
        # Sent before senders were per owner: the global number, recorded without a `from`.
        matches.append(and_(sent_from.is_(None), service.is_(None)))
    return or_(*matches)


def _enrollments(session: Session, phone: str, owners, *, open_only: bool) -> list[int]:
    """The seller's open enrollments with these owners, or else (unless `open_only`) the most
    recent one, so a late reply still lands on the enrollment it answers."""
    base = (
        select(Enrollment.id)
        .join(Deal, Deal.id == Enrollment.deal_id)
        .join(User, User.id == Deal.owner_id)
        .where(Deal.seller_phone == phone, owners)
    )
    open_ids = list(session.scalars(base.where(Enrollment.status.in_(_OPEN)).order_by(Enrollment.id)))
    if open_ids or open_only:
        return open_ids
    latest = session.scalars(base.order_by(Enrollment.id.desc()).limit(1)).first()
    return [latest] if latest is not None else []


def conversation_owner(
    session: Session, phone: str, to_number: str, messaging_service_sid: str | None = None, global_number: str | None = None
) -> int | None:
    """The owner on that number who last texted `phone` from it, if any."""
    return session.scalar(
        select(Deal.owner_id)
        .select_from(FollowUpEvent)
        .join(Enrollment, Enrollment.id == FollowUpEvent.enrollment_id)
        .join(Deal, Deal.id == Enrollment.deal_id)
        .join(User, User.id == Deal.owner_id)
        .where(
            Deal.seller_phone == phone,
            _sends_from(to_number, messaging_service_sid, global_number),
            FollowUpEvent.event_type == EventType.SMS_SENT.value,
            FollowUpEvent.content["to"].astext == phone,
            _sent_from(to_number, messaging_service_sid, global_number),
        )
        .order_by(FollowUpEvent.id.desc())
        .limit(1)
    )


def route_inbound_sms(
    session: Session, phone: str, to_number: str, messaging_service_sid: str | None = None, global_number: str | None = None
) -> SmsRoute:
    """The enrollments an SMS from `phone` to our `to_number` concerns (see the module doc)."""
    on_number = _sends_from(to_number, messaging_service_sid, global_number)
    addressed: list[int] = []
    owner = conversation_owner(session, phone, to_number, messaging_service_sid, global_number)
    if owner is not None:
        addressed = _enrollments(session, phone, and_(on_number, User.id == owner), open_only=False)
    if not addressed:  # nobody texted first (or the deal's phone changed since): all of them
        addressed = _enrollments(session, phone, on_number, open_only=False)
    others = _enrollments(session, phone, on_number, open_only=True)
    return SmsRoute(addressed=addressed, bystanders=[e for e in others if e not in addressed])


def owners_of_number(
    session: Session, phone: str, to_number: str, messaging_service_sid: str | None, global_number: str | None,
    enrollment_ids: list[int],
) -> list[int]:
    """The owners an SMS opt-out to `to_number` is meant for: those of the enrollments it is
    routed to, those who texted `phone` from that number or service (even if they send from
    another one now), and those whose own number or service it is."""
    routed = select(Deal.owner_id).join(Enrollment, Enrollment.deal_id == Deal.id).where(Enrollment.id.in_(enrollment_ids))
    texted = (
        select(Deal.owner_id)
        .select_from(FollowUpEvent)
        .join(Enrollment, Enrollment.id == FollowUpEvent.enrollment_id)
        .join(Deal, Deal.id == Enrollment.deal_id)
        .where(
            Deal.seller_phone == phone,
            FollowUpEvent.event_type == EventType.SMS_SENT.value,
            FollowUpEvent.content["to"].astext == phone,
            _sent_from(to_number, messaging_service_sid, global_number),
        )
    )
    # The global number is nobody's own: its owners are covered by the number's block.
    own = select(User.id).where(_sends_from(to_number, messaging_service_sid, None))
    return sorted(set(session.scalars(routed.union(texted, own))))


def open_enrollments_of_owners(session: Session, owners: list[int], phone: str, *, email_too: bool) -> list[int]:
    """The owners' open enrollments of the seller with this phone and, with `email_too`, of the
    sellers with the same email address."""
    of_seller = Deal.seller_phone == phone
    if email_too:
        emails = select(func.lower(Deal.seller_email)).where(
            Deal.owner_id.in_(owners), Deal.seller_phone == phone, Deal.seller_email.is_not(None)
        )
        of_seller = or_(of_seller, func.lower(Deal.seller_email).in_(emails))
    return list(
        session.scalars(
            select(Enrollment.id)
            .join(Deal, Deal.id == Enrollment.deal_id)
            .where(Deal.owner_id.in_(owners), of_seller, Enrollment.status.in_(_OPEN))
            .order_by(Enrollment.id)
        )
    )


def enrollments_for_phone(
    session: Session, phone: str, to_number: str, messaging_service_sid: str | None = None, global_number: str | None = None
) -> list[int]:
    """The enrollments whose text an SMS from `phone` to `to_number` goes to."""
    return route_inbound_sms(session, phone, to_number, messaging_service_sid, global_number).addressed


def open_enrollments_for_email(session: Session, email: str, owner_id: int) -> list[int]:
    """The owner's open enrollments of the seller with this address."""
    return list(
        session.scalars(
            select(Enrollment.id)
            .join(Deal, Deal.id == Enrollment.deal_id)
            .where(
                Deal.owner_id == owner_id,
                func.lower(Deal.seller_email) == email.strip().lower(),
                Enrollment.status.in_(_OPEN),
            )
            .order_by(Enrollment.id)
        )
    )


def enrollments_for_message_ids(session: Session, message_ids: list[str]) -> list[int]:
    """The enrollments that sent these Message-IDs (`email_threads.referenced_ids`). Only ids
    recorded on this database's sent emails match: another database's, or a forged one, do not."""
    from followups.email_threads import parse_id

    named = [(value, parse_id(value)) for value in message_ids]
    matches = [
        and_(
            FollowUpEvent.enrollment_id == ids[0],
            FollowUpEvent.step_index == ids[1],
            FollowUpEvent.content["message_id"].astext == value,
        )
        for value, ids in named
        if ids is not None
    ]
    if not matches:
        return []
    return list(
        session.scalars(
            select(FollowUpEvent.enrollment_id)
            .where(FollowUpEvent.event_type == EventType.EMAIL_SENT.value, or_(*matches))
            .distinct()
            .order_by(FollowUpEvent.enrollment_id)
        )
    )


def owner_of_enrollment(session: Session, enrollment_id: int) -> int | None:
    return session.scalar(
        select(Deal.owner_id).join(Enrollment, Enrollment.deal_id == Deal.id).where(Enrollment.id == enrollment_id)
    )


def other_channel_enrollments(session: Session, enrollment_ids: list[int], channel: str) -> list[int]:
    """The open enrollments of the same deals, besides these, that a reply by `channel` stops
    only as "a reply from the seller's other channel": their sequence never sends on `channel`
    and says `stop_on_other_channel_reply`."""
    from followups.sequence_options import load_stored_options
    from followups.steps import load_stored_steps
    from followups.stop_rules import channels, rules_from_options

    if not enrollment_ids:
        return []
    deals = select(Enrollment.deal_id).where(Enrollment.id.in_(enrollment_ids))
    rows = session.execute(
        select(Enrollment.id, SequenceVersion.steps, SequenceVersion.options)
        .join(SequenceVersion, SequenceVersion.id == Enrollment.sequence_version_id)
        .where(Enrollment.deal_id.in_(deals), Enrollment.status.in_(_OPEN), Enrollment.id.not_in(enrollment_ids))
        .order_by(Enrollment.id)
    ).all()
    return [
        row.id for row in rows
        if channel not in channels(load_stored_steps(row.steps))
        and rules_from_options(load_stored_options(row.options)).stop_on_other_channel_reply
    ]
