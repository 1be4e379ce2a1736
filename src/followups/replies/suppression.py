"""Opt-outs: a seller who texted STOP (or unsubscribed by email) gets no more of that channel.

The webhooks record OPTED_OUT events (content `channel` and `from` / `email`); a later SMS
START or UNSTOP (a PROVIDER_EVENT with status `opt_in`) lifts an SMS opt-out again.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from followups.db.models import EventType, FollowUpEvent


def _latest(session: Session, *conditions) -> int | None:
    return session.scalar(select(func.max(FollowUpEvent.id)).where(*conditions))


def sms_opted_out(session: Session, phone: str) -> bool:
    opted_out = _latest(
        session,
        FollowUpEvent.event_type == EventType.OPTED_OUT.value,
        FollowUpEvent.content["channel"].astext == "sms",
        FollowUpEvent.content["from"].astext == phone,
    )
    if opted_out is None:
        return False
    opted_in = _latest(
        session,
        FollowUpEvent.event_type == EventType.PROVIDER_EVENT.value,
        FollowUpEvent.status == "opt_in",
        FollowUpEvent.content["from"].astext == phone,
    )
    return opted_in is None or opted_in < opted_out


def email_opted_out(session: Session, email: str) -> bool:
    return (
        _latest(
            session,
            FollowUpEvent.event_type == EventType.OPTED_OUT.value,
            FollowUpEvent.content["channel"].astext == "email",
            func.lower(FollowUpEvent.content["email"].astext) == email.lower(),
        )
        is not None
    )
