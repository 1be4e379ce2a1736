"""Twilio webhooks: message status callbacks and inbound SMS (replies and STOP-style opt-outs).

Both are verified with X-Twilio-Signature over the public URL Twilio called (settings
`public_base_url` + path when set, else the request URL) and the sorted form parameters.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from followups.api.errors import error_responses
from followups.api.forms import FormError, media_type, parse_urlencoded
from followups.replies import InboundSms, Outcome, dedupe_key, receive_sms
from followups.api.schemas import WebhookResult
from followups.api.signatures import SignatureError, verify_twilio
from followups.db.events import record_event
from followups.db.models import EventType, FollowUpEvent
from followups.db.session import session_scope
from followups.settings import get_settings

log = logging.getLogger("followups.api.twilio")

router = APIRouter(prefix="/webhooks/twilio", tags=["webhooks"])

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
MAX_STORED_TEXT = 5000


def _form_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {"type": "object", "properties": properties, "required": required}
                }
            },
        },
        "parameters": [
            {
                "name": "X-Twilio-Signature",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "base64 HMAC-SHA1 of the URL and sorted parameters with the auth token",
            }
        ],
    }


def signed_url(request: Request) -> str:
    base = get_settings().public_base_url.strip()
    if not base:
        return str(request.url)
    query = request.url.query
    return base.rstrip("/") + request.url.path + (f"?{query}" if query else "")


async def verified_params(request: Request) -> dict[str, str]:
    """The form parameters of a correctly signed request; 403 (nothing stored) otherwise."""
    body = await request.body()
    try:
        if media_type(request.headers.get("content-type")) == "application/x-www-form-urlencoded":
            params = parse_urlencoded(body)
        elif not body:
            params = []
        else:
            raise SignatureError("Twilio signs form-encoded bodies only")
        verify_twilio(
            get_settings().twilio_auth_token.get_secret_value(),
            signed_url(request),
            params,
            request.headers.get("x-twilio-signature"),
        )
    except (SignatureError, FormError) as exc:
        log.warning("rejected Twilio webhook %s: %s", request.url.path, exc)
        raise HTTPException(status_code=403, detail="invalid or missing Twilio signature") from exc
    fields: dict[str, str] = {}
    for name, value in params:
        fields.setdefault(name, value)
    return fields


def _require(fields: dict[str, str], *names: str) -> str:
    for name in names:
        if fields.get(name, "").strip():
            return fields[name].strip()
    raise HTTPException(status_code=422, detail=f"missing form field {names[0]}")


# --- status callbacks ------------------------------------------------------------------------


def record_status(fields: dict[str, str]) -> Outcome:
    sid = _require(fields, "MessageSid", "SmsSid")[:200]
    status = _require(fields, "MessageStatus", "SmsStatus")
    error_code = fields.get("ErrorCode", "").strip() or None
    outcome = Outcome(received=1)
    with session_scope() as session:
        sent = session.execute(
            select(FollowUpEvent.enrollment_id, FollowUpEvent.step_index)
            .where(FollowUpEvent.provider_message_id == sid, FollowUpEvent.event_type == EventType.SMS_SENT.value)
            .limit(1)
        ).first()
        event_id = record_event(
            session,
            enrollment_id=sent.enrollment_id if sent else None,
            event_type=EventType.PROVIDER_EVENT,
            step_index=sent.step_index if sent else None,
            status=status[:32],
            content={
                "provider": "twilio",
                "event": status.lower(),
                "message_sid": sid,
                "error_code": error_code,
                "to": fields.get("To"),
                "from": fields.get("From"),
            },
            failure_reason=f"Twilio error {error_code}" if error_code else None,
            provider_message_id=sid,
            dedupe_key=dedupe_key("tw", sid, status),
        )
        outcome.count(event_id)
    return outcome


@router.post(
    "/status",
    response_model=WebhookResult,
    responses=error_responses(403, 413, 422, 503),
    openapi_extra=_form_body(
        {
            "MessageSid": {"type": "string"},
            "MessageStatus": {"type": "string"},
            "ErrorCode": {"type": "string"},
            "To": {"type": "string"},
            "From": {"type": "string"},
        },
        ["MessageSid", "MessageStatus"],
    ),
)
async def twilio_status(request: Request) -> WebhookResult:
    """Message status callback (queued, sent, delivered, undelivered, failed, with ErrorCode).
    Stored once per message and status."""
    fields = await verified_params(request)
    outcome = await run_in_threadpool(record_status, fields)
    return WebhookResult(**outcome.as_dict())


# --- inbound SMS -----------------------------------------------------------------------------


def record_inbound(fields: dict[str, str]) -> Outcome:
    phone = _require(fields, "From")
    to_number = _require(fields, "To")
    body = fields.get("Body", "")
    service = fields.get("MessagingServiceSid", "").strip()[:64] or None
    sid = fields.get("MessageSid") or fields.get("SmsSid")
    if not sid:
        sid = "h" + hashlib.sha256(f"{phone}\n{to_number}\n{body}".encode()).hexdigest()[:32]
    message = InboundSms(phone=phone, to_number=to_number, body=body, message_sid=sid[:200], messaging_service_sid=service)
    key = dedupe_key("tw", "in", sid[:200])
    return receive_sms(message, key, global_number=get_settings().twilio_from_number.strip() or None, max_text=MAX_STORED_TEXT)


@router.post(
    "/inbound",
    response_class=Response,
    responses={
        200: {"description": "Empty TwiML (no automatic answer)", "content": {"application/xml": {"schema": {"type": "string"}}}},
        **error_responses(403, 413, 422, 503),
    },
    openapi_extra=_form_body(
        {
            "MessageSid": {"type": "string"},
            "From": {"type": "string"},
            "To": {"type": "string"},
            "Body": {"type": "string"},
            "MessagingServiceSid": {"type": "string"},
        },
        ["MessageSid", "From", "To"],
    ),
)
async def twilio_inbound(request: Request) -> Response:
    """An SMS from a seller (`From`) to one of our numbers (`To`; `MessagingServiceSid` when the
    number belongs to a service). It concerns only the owners who send from that number (of
    those, the one who last texted the seller). Any text is a reply: REPLY_RECEIVED and their
    open enrollments for that phone stop. A revocation (a sentence that is exactly STOP, STOPALL,
    UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPT OUT, or a short phrase such as "stop texting me",
    "remove me", "do not contact"; any case and punctuation) is an OPTED_OUT: it blocks that
    phone for every number and Messaging Service of the owners it concerns (and the number for
    everyone sending from it) and stops those owners' open enrollments for that phone (the
    others' events carry no text). START or UNSTOP lifts the opt-out."""
    fields = await verified_params(request)
    await run_in_threadpool(record_inbound, fields)
    return Response(content=EMPTY_TWIML, media_type="application/xml")
