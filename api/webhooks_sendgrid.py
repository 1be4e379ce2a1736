"""SendGrid webhooks: the signed event webhook and inbound parse (email replies).

Events are verified (ECDSA over timestamp + raw body, timestamp within
`webhook_max_age_seconds`), stored once each (dedupe on sg_message_id + event + timestamp) and
matched to the step through our custom_args (`enrollment_id`, `step_index`) or, failing that,
the X-Message-Id prefix of sg_message_id. Unsubscribes and spam reports opt the seller out of
the mail of the owner whose message it was (and of nobody else's).

Inbound parse is not signed: a reply is matched by its unguessable per-enrollment address
`reply+<token>@<reply_domain>`, or by one of our unguessable Message-IDs in its In-Reply-To or
References (`followups.email_threads`); mail that matches no enrollment is accepted and dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from followups.api.errors import ErrorBody, error_responses
from followups.api.forms import FormError, media_type, parse_form
from followups.email_threads import referenced_ids
from followups.replies import (
    Outcome,
    deliver,
    dedupe_key,
    enrollments_for_message_ids,
    is_opt_out,
    open_enrollments_for_email,
    other_channel_enrollments,
    owner_of_enrollment,
)
from followups.api.schemas import WebhookResult
from followups.api.signatures import SignatureError, verify_sendgrid
from followups.db.events import record_event
from followups.db.models import Deal, Enrollment, EventType, FollowUpEvent
from followups.db.session import session_scope
from followups.settings import get_settings

log = logging.getLogger("followups.api.sendgrid")

router = APIRouter(prefix="/webhooks/sendgrid", tags=["webhooks"])

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
OPT_OUT_EVENTS = {"unsubscribe", "group_unsubscribe", "spamreport"}
# A drop for one of these reasons means SendGrid itself suppresses the address (it bounced, or
# reported spam, before): the sequence stops as for a bounce.
BOUNCED_DROPS = ("bounced address", "invalid", "spam reporting address")
MAX_EVENTS = 5000
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MAX_STORED_TEXT = 20_000
MAX_ID = 2**63 - 1
MAX_STEP = 2**31 - 1  # an INTEGER column


def _small_int(value: Any, limit: int = MAX_ID) -> int | None:
    text = str(value).strip() if value is not None else ""
    if re.fullmatch(r"[0-9]{1,18}", text):  # ASCII only: str.isdigit() accepts "²", int() does not
        number = int(text)
        return number if number <= limit else None
    return None


# --- event webhook ---------------------------------------------------------------------------


def _match(session: Session, item: dict[str, Any], x_message_id: str | None) -> tuple[int | None, int | None]:
    """(enrollment id, step index) of the email an event is about, or (None, None)."""
    enrollment_id = _small_int(item.get("enrollment_id"))
    step_index = _small_int(item.get("step_index"), MAX_STEP)
    if enrollment_id is not None and session.get(Enrollment, enrollment_id) is None:
        enrollment_id = None
    if (enrollment_id is None or step_index is None) and x_message_id:
        sent = session.execute(
            select(FollowUpEvent.enrollment_id, FollowUpEvent.step_index)
            .where(
                FollowUpEvent.provider_message_id == x_message_id,
                FollowUpEvent.event_type == EventType.EMAIL_SENT.value,
            )
            .limit(1)
        ).first()
        if sent is not None:
            return sent.enrollment_id, sent.step_index
    if enrollment_id is None:
        return None, None
    return enrollment_id, step_index


def _event_key(item: dict[str, Any], event: str) -> str:
    sg_message_id = str(item.get("sg_message_id") or "")
    if sg_message_id:
        return dedupe_key("sg", sg_message_id, event, item.get("timestamp"))
    if item.get("sg_event_id"):
        return dedupe_key("sg", "event", item["sg_event_id"])
    digest = hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()
    return dedupe_key("sg", "h", digest)


def _bounced(session: Session, item: dict[str, Any], event: str, enrollment_id: int) -> bool:
    """A hard bounce, a block, a drop of a suppressed address, or the last of too many deferrals
    in a row: no more mail to this address from the owner."""
    if event == "bounce":  # "type": "bounce" or "blocked"; both mean the mail was refused
        return True
    if event == "dropped":
        return str(item.get("reason") or "").strip().lower().startswith(BOUNCED_DROPS)
    if event != "deferred":
        return False
    limit = get_settings().sendgrid_soft_bounce_limit
    latest = session.scalars(
        select(FollowUpEvent.status)
        .where(
            FollowUpEvent.enrollment_id == enrollment_id,
            FollowUpEvent.event_type == EventType.PROVIDER_EVENT.value,
            FollowUpEvent.status.in_(("deferred", "delivered")),
        )
        .order_by(FollowUpEvent.id.desc())
        .limit(limit)
    ).all()
    return len(latest) == limit and all(status == "deferred" for status in latest)


def record_events(events: list[Any]) -> Outcome:
    outcome = Outcome(received=len(events))
    opt_outs: list[tuple[list[int], str, dict[str, Any], EventType]] = []
    with session_scope() as session:
        for item in events:
            if not isinstance(item, dict):
                continue
            event = str(item.get("event") or "unknown")[:64]
            sg_message_id = str(item.get("sg_message_id") or "")
            x_message_id = sg_message_id.split(".", 1)[0][:200] or None
            enrollment_id, step_index = _match(session, item, x_message_id)
            key = _event_key(item, event)
            event_id = record_event(
                session,
                enrollment_id=enrollment_id,
                event_type=EventType.PROVIDER_EVENT,
                step_index=step_index,
                status=event[:32],
                content={
                    "provider": "sendgrid",
                    "event": event,
                    "email": item.get("email"),
                    "timestamp": item.get("timestamp"),
                    "sg_message_id": sg_message_id or None,
                    "payload": item,
                },
                failure_reason=str(item["reason"])[:2000] if item.get("reason") else None,
                provider_message_id=x_message_id,
                dedupe_key=key,
            )
            outcome.count(event_id)
            if enrollment_id is None:
                # One we cannot match to a message of ours stays a provider event. A repeat is
                # acted on again (idempotently): the first delivery may have died before it was.
                continue
            fact = EventType.OPTED_OUT if event in OPT_OUT_EVENTS else None
            if fact is None and _bounced(session, item, event, enrollment_id):
                fact = EventType.BOUNCED
            if fact is not None:
                # It concerns this owner's mail: it stops and suppresses only theirs.
                targets = [enrollment_id]
                email = item.get("email")
                owner_id = owner_of_enrollment(session, enrollment_id)
                if isinstance(email, str) and email.strip() and owner_id is not None:
                    targets += open_enrollments_for_email(session, email, owner_id)
                content = {"channel": "email", "provider_event": event, "email": email, "sg_message_id": sg_message_id or None}
                if fact is EventType.BOUNCED:
                    content["reason"] = str(item.get("reason") or item.get("response") or "")[:500] or None
                kind = "optout" if fact is EventType.OPTED_OUT else "bounced"
                opt_outs.append((targets, dedupe_key("sg", kind, key), content, fact))
    # The provider events are committed; now the opt-outs and bounces (each its own transaction).
    for targets, key, content, fact in opt_outs:
        facts = Outcome()
        deliver(facts, targets, event_type=fact, key=key, reason=f"email {content['provider_event']}", content=content)
        outcome.stopped += facts.stopped
    return outcome


@router.post(
    "/events",
    response_model=WebhookResult,
    responses=error_responses(403, 413, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}},
        },
        "parameters": [
            {"name": SIGNATURE_HEADER, "in": "header", "required": False, "schema": {"type": "string"}},
            {"name": TIMESTAMP_HEADER, "in": "header", "required": False, "schema": {"type": "string"}},
        ],
    },
)
async def sendgrid_events(request: Request) -> WebhookResult:
    """SendGrid event webhook (delivered, open, bounce, dropped, unsubscribe, ...): signed with
    ECDSA; a bad, missing or stale (over 5 minutes) signature is a 403 and nothing is stored."""
    body = await request.body()
    settings = get_settings()
    try:
        verify_sendgrid(
            body,
            request.headers.get(SIGNATURE_HEADER),
            request.headers.get(TIMESTAMP_HEADER),
            public_key=settings.sendgrid_webhook_public_key.get_secret_value().strip(),
            max_age_seconds=settings.webhook_max_age_seconds,
        )
    except SignatureError as exc:
        log.warning("rejected SendGrid event webhook: %s", exc)
        raise HTTPException(status_code=403, detail="invalid or missing SendGrid signature") from exc
    try:
        events = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply to parse
        raise HTTPException(status_code=422, detail="the body is not JSON") from exc
    if not isinstance(events, list) or len(events) > MAX_EVENTS:
        raise HTTPException(status_code=422, detail=f"expected a JSON array of at most {MAX_EVENTS} events")
    outcome = await run_in_threadpool(record_events, events)
    return WebhookResult(**outcome.as_dict())


# --- inbound parse ---------------------------------------------------------------------------


def reply_tokens(fields: dict[str, str], reply_domain: str) -> list[str]:
    """Tokens of every reply+<token>@<reply_domain> address the mail was sent to."""
    pattern = re.compile(r"reply\+([A-Za-z0-9_\-]{8,64})@" + re.escape(reply_domain) + r"(?![A-Za-z0-9\-]|\.[A-Za-z0-9])", re.IGNORECASE)
    sources = [fields.get("to", ""), fields.get("cc", "")]
    try:
        envelope = json.loads(fields.get("envelope") or "{}")
    except (ValueError, RecursionError):
        envelope = {}
    if isinstance(envelope, dict):
        to = envelope.get("to")
        sources.extend(str(address) for address in (to if isinstance(to, list) else [to]) if address)
    tokens: list[str] = []
    for source in sources:
        for token in pattern.findall(source or ""):
            if token not in tokens:
                tokens.append(token)
    return tokens


def _message_key(fields: dict[str, str]) -> str:
    # No lazy group before trailing blanks: that backtracks quadratically on a long blank run.
    match = re.search(r"^message-id:\s*(\S[^\n]*)", fields.get("headers", ""), re.IGNORECASE | re.MULTILINE)
    source = match.group(1).rstrip() if match else "\n".join(fields.get(k, "") for k in ("from", "to", "subject", "text"))
    return hashlib.sha256(source.encode("utf-8", errors="replace")).hexdigest()[:40]


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def record_inbound_email(fields: dict[str, str]) -> Outcome:
    outcome = Outcome(received=1)
    tokens = reply_tokens(fields, get_settings().reply_domain)
    # A reply sent to our From address rather than the reply address still names our Message-ID.
    message_ids = referenced_ids(fields.get("headers", ""))
    if not tokens and not message_ids:
        return outcome
    with session_scope() as session:
        by_token = session.scalars(select(Enrollment.id).where(Enrollment.reply_token.in_(tokens))) if tokens else []
        enrollment_ids = sorted({*by_token, *enrollments_for_message_ids(session, message_ids)})
    if not enrollment_ids:
        return outcome  # unsigned endpoint: store nothing for addresses we never handed out
    text = fields.get("text", "")
    content = {
        "channel": "email",
        "from": fields.get("from"),
        "to": fields.get("to"),
        "subject": fields.get("subject", "")[:1000],
        "text": text[:MAX_STORED_TEXT],
        "spam_score": fields.get("spam_score"),
    }
    opted_out = is_opt_out(fields.get("subject")) or is_opt_out(_first_line(text))
    key = dedupe_key("sg", "in", _message_key(fields))
    if opted_out:
        _opt_out(outcome, enrollment_ids, key, content)
        return outcome
    deliver(
        outcome,
        enrollment_ids,
        event_type=EventType.REPLY_RECEIVED,
        key=key,
        reason="the seller replied by email",
        content=content,
        channel="email",
    )
    # The same deal's SMS-only sequences that stop on a reply from the other channel.
    with session_scope(read_only=True) as session:
        others = other_channel_enrollments(session, enrollment_ids, "email")
    if others:
        deliver(outcome, others, event_type=EventType.REPLY_RECEIVED, key=key,
                reason="the seller replied by email", content=content, channel="email")
    return outcome


def _opt_out(outcome: Outcome, enrollment_ids: list[int], key: str, content: dict[str, Any]) -> None:
    """An "unsubscribe" mail to a reply address (the List-Unsubscribe mailto): it opts the
    address those enrollments mail out of that owner's mail, like a one-click unsubscribe, so
    the OPTED_OUT fact names the address (`suppression.email_opted_out`) and the owner's other
    open enrollments for it stop too."""
    groups: dict[tuple[int, str], list[int]] = {}
    with session_scope(read_only=True) as session:
        rows = session.execute(
            select(Enrollment.id, Deal.owner_id, Deal.seller_email)
            .join(Deal, Deal.id == Enrollment.deal_id)
            .where(Enrollment.id.in_(enrollment_ids))
            .order_by(Enrollment.id)
        ).all()
        for row in rows:
            groups.setdefault((row.owner_id, (row.seller_email or "").strip().lower()), []).append(row.id)
        for (owner_id, email), targets in groups.items():
            if email:
                targets += open_enrollments_for_email(session, email, owner_id)
    for (_, email), targets in groups.items():
        deliver(outcome, targets, event_type=EventType.OPTED_OUT, key=key, reason="the seller opted out by email",
                content={**content, "email": email or None}, channel="email")


@router.post(
    "/inbound",
    response_model=WebhookResult,
    responses=error_responses(413, 503)
    | {
        415: {"description": "Not a form body", "model": ErrorBody},
        422: {"description": "A form without any field", "model": ErrorBody},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "to": {"type": "string"},
                            "from": {"type": "string"},
                            "subject": {"type": "string"},
                            "text": {"type": "string"},
                            "headers": {"type": "string"},
                            "envelope": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def sendgrid_inbound(request: Request) -> WebhookResult:
    """SendGrid Inbound Parse: an email reply, matched by its `reply+<token>@` address (in `to`,
    `cc` or the envelope) or by our Message-ID in its In-Reply-To / References. A match records
    REPLY_RECEIVED (OPTED_OUT when the subject or first line is an opt-out keyword) and stops the
    enrollment; anything else is accepted and dropped (a non-2xx answer would make SendGrid retry
    for days)."""
    body = await request.body()
    content_type = request.headers.get("content-type")
    if media_type(content_type) not in FORM_TYPES:
        raise HTTPException(status_code=415, detail="expected multipart/form-data")
    try:
        fields = parse_form(body, content_type)
    except FormError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    outcome = await run_in_threadpool(record_inbound_email, fields)
    return WebhookResult(**outcome.as_dict())
