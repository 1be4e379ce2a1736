"""Replies and opt-outs from any channel: recorded once, and they stop the enrollments.

For each enrollment a reply (REPLY_RECEIVED) or opt-out (OPTED_OUT) concerns:
- still open: the fact is recorded and the enrollment moves to STOPPED (with a STOPPED event,
  its pending Prefect run cancelled), in one transaction;
- already ended: the fact alone is recorded (a late reply still counts in the stats).
An opt-out always stops. A reply stops an enrollment whose sequence sends on the channel the
reply came by; a reply on the seller's other channel (an SMS answering an email-only sequence,
an email answering an SMS-only one) is recorded, and stops it only when the sequence says
`stop_on_other_channel_reply` (`followups.stop_rules`).
The fact carries a dedupe key derived from the provider's message, so a redelivered webhook
finds it and stores nothing: idempotent. If the first delivery failed half-way (say the Prefect
API was down), its transaction rolled back and the retry does it all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from followups.db.events import record_event
from followups.db.models import EnrollmentStatus, EventType
from followups.db.session import session_scope
from followups.errors import NotFoundError
from followups.lifecycle import store
from followups.lifecycle.plan import EnrollmentPlan, load_plan
from followups.lifecycle.transitions import Actor
from followups.stop_rules import reply_stops, rules_from_options

MAX_DEDUPE_KEY = 300


def dedupe_key(*parts: object) -> str:
    """A dedupe key from parts; hashed when it would not fit the column."""
    key = ":".join(str(part) for part in parts)
    if len(key) <= MAX_DEDUPE_KEY:
        return key
    return f"{parts[0]}:h:{hashlib.sha256(key.encode()).hexdigest()}"


@dataclass(frozen=True)
class SellerFact:
    """Something the seller did that stops a sequence, as the webhooks hand it to the core."""

    event_type: EventType  # REPLY_RECEIVED, OPTED_OUT or BOUNCED
    key: str  # identifies the provider's message: the same message twice is one fact
    reason: str  # why the sequence stops, as the STOPPED event says
    content: dict[str, Any] = field(default_factory=dict)
    step_index: int | None = None
    provider_message_id: str | None = None
    channel: str | None = None  # "email" | "sms": what the seller wrote through


# What the STOPPED event's `reason_code` says (analytics count stops by it).
REASON_CODES = {EventType.REPLY_RECEIVED: "replied", EventType.OPTED_OUT: "unsubscribed", EventType.BOUNCED: "bounced"}


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


def stop_enrollment(enrollment_id: int, fact: SellerFact, event_key: str) -> bool:
    """Record the fact on an open enrollment and stop it. False (nothing recorded) when it is
    not open or this very fact was recorded before."""
    with session_scope() as session:
        try:
            plan = load_plan(session, enrollment_id, lock=True)
        except NotFoundError:
            return False
        if not plan.is_open or not _stops(plan, fact):
            return False
        if _record_fact(session, enrollment_id, fact, event_key) is None:
            return False
        code = REASON_CODES.get(fact.event_type, fact.event_type.value.lower())
        store.move(session, plan, EnrollmentStatus.STOPPED, actor=Actor.SELLER, content={"reason": fact.reason, "reason_code": code})
        return True


def _stops(plan: EnrollmentPlan, fact: SellerFact) -> bool:
    if fact.event_type != EventType.REPLY_RECEIVED or fact.channel is None:
        return True
    return reply_stops(rules_from_options(plan.options), plan.steps, fact.channel)


def _record_fact(session: Session, enrollment_id: int | None, fact: SellerFact, event_key: str) -> int | None:
    return record_event(
        session,
        enrollment_id=enrollment_id,
        event_type=fact.event_type,
        step_index=fact.step_index,
        status="received",
        content=fact.content,
        provider_message_id=fact.provider_message_id,
        dedupe_key=event_key,
    )


def _record_only(outcome: Outcome, enrollment_id: int | None, fact: SellerFact, event_key: str) -> None:
    with session_scope() as session:
        outcome.count(_record_fact(session, enrollment_id, fact, event_key))


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
    channel: str | None = None,
) -> None:
    """Record a reply/opt-out once for each enrollment (once unmatched when there is none) and
    stop the enrollments still open. Call it outside any transaction of the caller; each
    enrollment is its own transaction."""
    fact = SellerFact(event_type, key, reason, content, step_index, provider_message_id, channel)
    targets: list[int | None] = list(dict.fromkeys(enrollment_ids)) or [None]
    for enrollment_id in targets:
        event_key = dedupe_key(key, enrollment_id if enrollment_id is not None else "unmatched")
        if enrollment_id is not None and stop_enrollment(enrollment_id, fact, event_key):
            outcome.stored += 1
            outcome.stopped += 1
            continue
        # Not open any more (or a repeat): still keep the fact once; the unique key drops repeats.
        _record_only(outcome, enrollment_id, fact, event_key)
