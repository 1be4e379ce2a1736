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
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from followups import control
from followups.db.events import record_event
from followups.db.models import Deal, Enrollment, EventType
from followups.db.session import session_scope
from followups.sequences import OPEN_STATUSES

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
    targets: list[int | None] = list(dict.fromkeys(enrollment_ids)) or [None]
    for enrollment_id in targets:
        event_key = dedupe_key(key, enrollment_id if enrollment_id is not None else "unmatched")
        if enrollment_id is not None and control.stop_enrollment(
            enrollment_id,
            reason=reason,
            event_type=event_type,
            content=content,
            dedupe_key=event_key,
            step_index=step_index,
            provider_message_id=provider_message_id,
        ):
            outcome.stored += 1
            outcome.stopped += 1
            continue
        # Not open any more (or a repeat): still keep the fact once; the unique key drops repeats.
        with session_scope() as session:
            event_id = record_event(
                session,
                enrollment_id=enrollment_id,
                event_type=event_type,
                step_index=step_index,
                status="received",
                content=content,
                provider_message_id=provider_message_id,
                dedupe_key=event_key,
            )
            outcome.count(event_id)
