"""An inbound SMS, verified by the webhook, turned into facts on the enrollments it concerns.

- a reply: REPLY_RECEIVED with its text on the addressed enrollments only (`routing`);
- STOP and other revocations (`keywords.sms_revocation`): OPTED_OUT with the text, the source
  and the owners it blocks (`routing.owners_of_number`) on the addressed enrollments, and OPTED_OUT
  without the text (channel, from, to, keyword) on every other open enrollment it stops: the
  other owners' on that number (the carrier blocks it for everyone sending from it) and those
  owners' enrollments for that phone on their other numbers (and, with `sms_stop_stops_email`,
  for the seller's email address);
- START / UNSTOP: a PROVIDER_EVENT `opt_in` that lifts the block again for the same owners and
  that number (`suppression`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from followups.db.events import record_event
from followups.db.models import EventType
from followups.db.session import session_scope
from followups.replies.delivery import Outcome, deliver
from followups.replies.keywords import is_opt_in, sms_revocation
from followups.replies.routing import open_enrollments_of_owners, owners_of_number, route_inbound_sms
from followups.settings import get_settings


@dataclass(frozen=True)
class InboundSms:
    phone: str  # the seller: Twilio's From
    to_number: str  # ours: Twilio's To
    body: str
    message_sid: str
    messaging_service_sid: str | None = None


def _pair(message: InboundSms) -> dict[str, Any]:
    pair: dict[str, Any] = {"channel": "sms", "from": message.phone, "to": message.to_number}
    if message.messaging_service_sid:
        pair["messaging_service_sid"] = message.messaging_service_sid
    return pair


def receive_sms(message: InboundSms, key: str, *, global_number: str | None, max_text: int) -> Outcome:
    """Record the message once (`key` identifies it) and stop what it stops. Call it outside any
    transaction: each enrollment is stopped in its own."""
    outcome = Outcome(received=1)
    content = {**_pair(message), "body": message.body[:max_text], "message_sid": message.message_sid}
    revocation = sms_revocation(message.body)
    email_too = get_settings().sms_stop_stops_email
    with session_scope() as session:
        route = route_inbound_sms(session, message.phone, message.to_number, message.messaging_service_sid, global_number)
        owners: list[int] = []
        if revocation or is_opt_in(message.body):
            owners = owners_of_number(
                session, message.phone, message.to_number, message.messaging_service_sid, global_number, route.addressed
            )
        if is_opt_in(message.body):
            # START/UNSTOP: Twilio lifts its own block; nothing to stop. Keep the fact.
            event_id = record_event(
                session,
                enrollment_id=route.addressed[-1] if route.addressed else None,
                event_type=EventType.PROVIDER_EVENT,
                status="opt_in",
                content={"provider": "twilio", "event": "opt_in", **content, "owners": owners},
                provider_message_id=message.message_sid,
                dedupe_key=key,
            )
            outcome.count(event_id)
            return outcome
        others = open_enrollments_of_owners(session, owners, message.phone, email_too=email_too) if owners else []
    sid = message.message_sid
    if not revocation:
        deliver(
            outcome, route.addressed, event_type=EventType.REPLY_RECEIVED, key=key,
            reason="the seller replied by SMS", content=content, provider_message_id=sid, channel="sms",
        )
        return outcome
    if route.addressed or not route.bystanders:
        # The fact that blocks: its source (the seller's text to our number) and whom it blocks.
        fact = {**content, "keyword": revocation, "source": "inbound_sms", "owners": owners}
        deliver(
            outcome, route.addressed, event_type=EventType.OPTED_OUT, key=key,
            reason="the seller opted out by SMS", content=fact, provider_message_id=sid,
        )
    rest = [e for e in route.bystanders + others if e not in route.addressed]
    if rest:
        # Other owners and other numbers learn of the opt-out, not what was written nor which message.
        deliver(
            outcome, rest, event_type=EventType.OPTED_OUT, key=key,
            reason="the seller opted out of SMS (to this number or this owner)", content={**_pair(message), "keyword": revocation},
        )
    return outcome
