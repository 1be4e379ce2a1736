"""An inbound SMS, verified by the webhook, turned into facts on the enrollments it concerns.

- a reply: REPLY_RECEIVED with its text on the addressed enrollments only (`routing`);
- STOP and the like: OPTED_OUT with the text on the addressed enrollments, and, since the
  carrier now blocks the pair for everyone sending from that number, OPTED_OUT without the text
  (channel, from, to, keyword) on the other owners' open enrollments for that phone;
- START / UNSTOP: a PROVIDER_EVENT `opt_in` that lifts the pair again (`suppression`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from followups.db.events import record_event
from followups.db.models import EventType
from followups.db.session import session_scope
from followups.replies.delivery import Outcome, deliver
from followups.replies.keywords import is_opt_in, is_opt_out, keyword
from followups.replies.routing import route_inbound_sms


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
    with session_scope() as session:
        route = route_inbound_sms(session, message.phone, message.to_number, message.messaging_service_sid, global_number)
        if is_opt_in(message.body):
            # START/UNSTOP: Twilio lifts its own block; nothing to stop. Keep the fact.
            event_id = record_event(
                session,
                enrollment_id=route.addressed[-1] if route.addressed else None,
                event_type=EventType.PROVIDER_EVENT,
                status="opt_in",
                content={"provider": "twilio", "event": "opt_in", **content},
                provider_message_id=message.message_sid,
                dedupe_key=key,
            )
            outcome.count(event_id)
            return outcome
    sid = message.message_sid
    if not is_opt_out(message.body):
        deliver(
            outcome, route.addressed, event_type=EventType.REPLY_RECEIVED, key=key,
            reason="the seller replied by SMS", content=content, provider_message_id=sid, channel="sms",
        )
        return outcome
    word = keyword(message.body)
    if route.addressed or not route.bystanders:
        deliver(
            outcome, route.addressed, event_type=EventType.OPTED_OUT, key=key,
            reason="the seller opted out by SMS", content={**content, "keyword": word}, provider_message_id=sid,
        )
    if route.bystanders:
        # Other owners learn that the pair is blocked, not what was written nor which message.
        deliver(
            outcome, route.bystanders, event_type=EventType.OPTED_OUT, key=key,
            reason="the seller opted out of SMS from this number", content={**_pair(message), "keyword": word},
        )
    return outcome
