"""Replies and opt-outs from any channel: record them once, then stop the enrollments.

The reply (REPLY_RECEIVED) or opt-out (OPTED_OUT) is the fact, recorded once per enrollment
under a dedupe key derived from the provider's message, even when the enrollment has already
ended (a late reply still counts in the stats). Stopping is a separate step done after that
commit, for the enrollments still open: `control.stop_enrollment` marks the enrollment STOPPED,
cancels its pending Prefect run and records STOPPED. A redelivered webhook finds the fact
already stored and the enrollment already stopped, so it changes nothing; one whose first
delivery failed half-way (say the Prefect API was down) finishes the stop.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from followups.db.events import record_event
from followups.db.models import Deal, Enrollment, EventType
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
    to_stop: list[tuple[int, EventType]] = field(default_factory=list)

    def count(self, event_id: int | None) -> None:
        if event_id is None:
            self.duplicates += 1
        else:
            self.stored += 1

    def as_dict(self) -> dict[str, int]:
        return {"received": self.received, "stored": self.stored, "duplicates": self.duplicates, "stopped": self.stopped}


def open_enrollment_ids(session: Session, enrollment_ids: list[int]) -> list[int]:
    if not enrollment_ids:
        return []
    return list(
        session.scalars(
            select(Enrollment.id).where(Enrollment.id.in_(enrollment_ids), Enrollment.status.in_(OPEN_STATUSES))
        )
    )


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


def record_for(
    session: Session,
    outcome: Outcome,
    enrollment_ids: list[int | None],
    *,
    event_type: EventType,
    key: str,
    content: dict[str, Any],
    step_index: int | None = None,
    provider_message_id: str | None = None,
) -> None:
    """Record the reply/opt-out once per enrollment (or once unmatched) and queue the stops."""
    for enrollment_id in enrollment_ids or [None]:
        event_id = record_event(
            session,
            enrollment_id=enrollment_id,
            event_type=event_type,
            step_index=step_index,
            status="received",
            content=content,
            provider_message_id=provider_message_id,
            dedupe_key=dedupe_key(key, enrollment_id if enrollment_id is not None else "unmatched"),
        )
        outcome.count(event_id)
        if enrollment_id is not None:
            outcome.to_stop.append((enrollment_id, event_type))


def stop_queued(outcome: Outcome, *, reason_by_type: dict[EventType, str], content: dict[str, Any]) -> None:
    """Stop the queued enrollments that are still open (after the facts were committed)."""
    from followups import control

    with session_scope() as session:
        still_open = set(open_enrollment_ids(session, sorted({eid for eid, _ in outcome.to_stop})))
    done: set[int] = set()
    for enrollment_id, event_type in outcome.to_stop:
        if enrollment_id not in still_open or enrollment_id in done:
            continue
        done.add(enrollment_id)
        reason = reason_by_type.get(event_type, "reply")
        if control.stop_enrollment(
            enrollment_id, reason=reason, event_type=EventType.STOPPED, content={"reason": reason, **content}
        ):
            outcome.stopped += 1
