"""Replies and opt-outs from any channel: recorded once, and they stop the enrollments.

For each enrollment a reply (REPLY_RECEIVED) or opt-out (OPTED_OUT) concerns:
- still open: `control.stop_enrollment` records the fact, marks it STOPPED (with a STOPPED
  event) and cancels its pending Prefect run, in one transaction;
- already ended: the fact alone is recorded (a late reply still counts in the stats).
The fact carries a dedupe key derived from the provider's message (also in its content), so a
redelivered webhook finds it and stores nothing: idempotent. If the first delivery failed
half-way (say the Prefect API was down), its transaction rolled back and the retry does it all.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from followups.db.events import record_event
from followups.db.models import Deal, Enrollment, EventType, FollowUpEvent
from followups.db.session import session_scope
from followups.sequences import OPEN_STATUSES

log = logging.getLogger("followups.api.replies")

# Twilio's opt-out keywords on long codes (the message is the keyword alone, any case).
OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP"})
MAX_DEDUPE_KEY = 300


def keyword(body: str | None) -> str:
    """The message as a keyword: trimmed, upper-cased, without trailing punctuation."""
    return (body or "").strip().rstrip(".!").strip().upper()


def is_opt_out(body: str | None) -> bool:
    return keyword(body) in OPT_OUT_KEYWORDS


def is_opt_in(body: str | None) -> bool:
    return keyword(body) in OPT_IN_KEYWORDS


def dedupe_key(*parts: object) -> str:
    """A dedupe key from parts; hashed when it would not fit the column."""
    key = ":".join(str(part) for part in parts)
    if len(key) <= MAX_DEDUPE_KEY:
        return key
    return f"{parts[0]}:h:{hashlib.sha256(key.encode()).hexdigest()}"


@dataclass
class Outcome:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    stopped: int = 0

    def count(self, event_id: int | None) -> None:
        if event_id is None:
            self.duplicates += 1
        else:
            self.stored += 1

    def as_dict(self) -> dict[str, int]:
        return {"received": self.received, "stored": self.stored, "duplicates": self.duplicates, "stopped": self.stopped}


def enrollments_for_phone(session: Session, phone: str) -> list[int]:
    """The seller's open enrollments (any owner: the sending number is shared), or else the
    most recent one, so a late reply still lands on the enrollment it answers."""
    base = select(Enrollment.id).join(Deal, Deal.id == Enrollment.deal_id).where(Deal.seller_phone == phone)
    open_ids = list(session.scalars(base.where(Enrollment.status.in_(OPEN_STATUSES)).order_by(Enrollment.id)))
    if open_ids:
        return open_ids
    latest = session.scalars(base.order_by(Enrollment.id.desc()).limit(1)).first()
    return [latest] if latest is not None else []


def open_enrollments_for_email(session: Session, email: str) -> list[int]:
    return list(
        session.scalars(
            select(Enrollment.id)
            .join(Deal, Deal.id == Enrollment.deal_id)
            .where(func.lower(Deal.seller_email) == email.strip().lower(), Enrollment.status.in_(OPEN_STATUSES))
            .order_by(Enrollment.id)
        )
    )


def _already_recorded(session: Session, enrollment_id: int, event_type: EventType, key: str) -> bool:
    return (
        session.scalar(
            select(FollowUpEvent.id)
            .where(
                FollowUpEvent.enrollment_id == enrollment_id,
                FollowUpEvent.event_type == event_type.value,
                or_(FollowUpEvent.dedupe_key == key, FollowUpEvent.content["dedupe_key"].astext == key),
            )
            .limit(1)
        )
        is not None
    )


def deliver(
    outcome: Outcome,
    enrollment_ids: list[int],
    *,
    event_type: EventType,
    key: str,
    reason: str,
    content: dict[str, Any],
    step_index: int | None = None,
    provider_message_id: str | None = None,
) -> None:
    """Record a reply/opt-out once for each enrollment (once unmatched when there is none) and
    stop the enrollments still open. Call it outside any transaction of the caller."""
    from followups import control

    targets: list[int | None] = list(dict.fromkeys(enrollment_ids)) or [None]
    for enrollment_id in targets:
        event_key = dedupe_key(key, enrollment_id if enrollment_id is not None else "unmatched")
        body = {**content, "dedupe_key": event_key}
        if enrollment_id is not None:
            with session_scope() as session:
                if _already_recorded(session, enrollment_id, event_type, event_key):
                    outcome.duplicates += 1
                    continue
            if control.stop_enrollment(enrollment_id, reason=reason, event_type=event_type, content=body):
                outcome.stored += 1
                outcome.stopped += 1
                continue
        with session_scope() as session:
            # Locks nothing; a concurrent stop of the same message wrote its fact before it
            # released the enrollment row, so re-check, then insert under the unique key.
            if enrollment_id is not None and _already_recorded(session, enrollment_id, event_type, event_key):
                outcome.duplicates += 1
                continue
            event_id = record_event(
                session,
                enrollment_id=enrollment_id,
                event_type=event_type,
                step_index=step_index,
                status="received",
                content=body,
                provider_message_id=provider_message_id,
                dedupe_key=event_key,
            )
            outcome.count(event_id)
