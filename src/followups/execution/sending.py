"""Send one EMAIL / SMS step of one enrollment at most once.

At-most-once, enforced by the database:
- the enrollment row is locked (`SELECT ... FOR UPDATE`) for the whole step, so two runs of the
  same enrollment (a duplicated scheduled run, a re-run) execute its steps one at a time;
- the step is skipped when the enrollment has already moved past it (the sent event and the
  move are committed in one transaction, and a unique index allows one sent event per step);
- a STEP_ATTEMPT event is committed on its own *before* the provider call. An attempt found
  later with no outcome means a worker died between the call and the commit: the provider may
  have sent it, so the step is not sent again; STEP_OUTCOME_UNKNOWN records that.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from followups.db.events import record_event, step_events
from followups.db.models import SENT_EVENT_TYPES, EnrollmentStatus, EventType
from followups.db.session import session_scope
from followups.email_threads import EmailThread, reply_subject, thread_for
from followups.errors import InvalidStateError, OutcomeUnknownProviderError, ProviderError, TransientProviderError
from followups.inputs import SenderIdentity
from followups.lifecycle import store
from followups.lifecycle.plan import EnrollmentPlan, load_plan
from followups.providers import OutgoingEmail, OutgoingSms, Providers
from followups.replies.suppression import email_suppressed, sms_opted_out, sms_stop_covers_email
from followups.settings import Settings, get_settings
from followups.steps import SMS_MAX_CHARS, EmailStep, SmsStep, draw_variant, email_thread, with_variant
from followups.templating import TemplateRenderError, build_context, render
from followups.unsubscribe import with_unsubscribe
from followups.users import Sender, load_sender, resolve_sender

_providers: tuple[Settings, Providers] | None = None


def get_providers() -> Providers:
    """One provider facade (and so one pooled HTTP client) per process and settings."""
    global _providers
    settings = get_settings()
    if _providers is None or _providers[0] is not settings:
        _providers = (settings, Providers(settings))
    return _providers[1]


@dataclass(frozen=True)
class StepResult:
    outcome: str  # sent | already-done | not-active | skipped | outcome-unknown | failed
    provider_message_id: str | None = None
    detail: str = ""  # subject or first line of what was sent, or why it was not


def render_message(
    plan: EnrollmentPlan,
    step: EmailStep | SmsStep,
    step_index: int,
    settings: Settings,
    sender: Sender | None = None,
    thread: EmailThread | None = None,
):
    """The message for one step, from the owner's `sender` (the global settings' when None),
    an email with the Message-ID and reply headers of its `thread`; a step with variants sends
    the enrollment's (`draw_variant`)."""
    sender = sender or resolve_sender(SenderIdentity(), settings)
    step = with_variant(step, draw_variant(step, plan.reply_token, step_index))
    context = build_context(plan.deal, plan.seller)
    if isinstance(step, EmailStep):
        if not plan.seller.email:
            return None
        email = OutgoingEmail(
            to_email=plan.seller.email,
            to_name=plan.seller.name,
            subject=_email_subject(plan, step, step_index, context, thread),
            text=render(step.text, context) if step.text else None,
            html=render(step.html, context, html=True) if step.html else None,
            reply_to=f"reply+{plan.reply_token}@{settings.reply_domain}",
            custom_args={"enrollment_id": str(plan.enrollment_id), "step_index": str(step_index)},
            categories=("followups", f"sequence-{plan.sequence_id}"),
            from_email=sender.email_from,
            from_name=sender.email_from_name,
            headers=thread.headers() if thread else {},
        )
        return with_unsubscribe(
            email, owner_id=plan.owner_id, enrollment_id=plan.enrollment_id, step_index=step_index,
            reply_token=plan.reply_token, settings=settings,
        )
    if not plan.seller.phone:
        return None
    callback = f"{settings.public_base_url.rstrip('/')}/webhooks/twilio/status" if settings.public_base_url else None
    return OutgoingSms(
        to=plan.seller.phone,
        body=render(step.body, context, max_chars=SMS_MAX_CHARS),
        status_callback=callback,
        from_number=sender.sms_from,
        messaging_service_sid=sender.messaging_service_sid,
    )


def _email_subject(
    plan: EnrollmentPlan, step: EmailStep, step_index: int, context: dict[str, Any], thread: EmailThread | None
) -> str:
    if step.subject:
        return render(step.subject, context)
    if thread and thread.previous_subject:
        return reply_subject(thread.previous_subject)
    # Nothing sent before (skipped, suppressed): a new thread under the subject it would have had.
    # Validation makes the first EMAIL carry a subject, so there is always one.
    earlier = (
        with_variant(s, draw_variant(s, plan.reply_token, i)) for i, s in reversed(list(enumerate(plan.steps[:step_index])))
        if isinstance(s, EmailStep)
    )
    return render(next(s for s in earlier if s.subject).subject, context)


def email_thread_of(
    session: Session, plan: EnrollmentPlan, step_index: int, sender: Sender, settings: Settings
) -> EmailThread:
    domain = settings.reply_domain.strip() or sender.email_from.rpartition("@")[2]
    reply = email_thread(plan.steps, step_index) == "reply"
    return thread_for(session, plan.enrollment_id, step_index, plan.reply_token, domain, reply=reply)


def message_content(message: OutgoingEmail | OutgoingSms) -> dict[str, Any]:
    """What the sent event records. An SMS's `from` (or its messaging service) is what inbound
    replies and opt-outs are routed and suppressed by; an email's Message-ID is what the next
    reply-threaded step and inbound replies find it by."""
    if isinstance(message, OutgoingEmail):
        content = {
            "channel": "email",
            "from": message.from_email,
            "to": message.to_email,
            "subject": message.subject,
            "text": message.text,
            "html": message.html,
            "reply_to": message.reply_to,
        }
        for name, key in (("Message-ID", "message_id"), ("In-Reply-To", "in_reply_to"), ("References", "references")):
            if message.headers.get(name):
                content[key] = message.headers[name]
        return content
    content = {"channel": "sms", "from": message.from_number, "to": message.to, "body": message.body}
    if message.messaging_service_sid:
        content["messaging_service_sid"] = message.messaging_service_sid
    return content


def _skip_reason(
    session: Session, plan: EnrollmentPlan, step: EmailStep | SmsStep, message: OutgoingEmail | OutgoingSms | None
) -> str | None:
    if message is None:
        return f"the seller has no {'email address' if isinstance(step, EmailStep) else 'phone number'}"
    # A STOP blocks every number of the owner it was meant for, and the number it was sent to.
    if isinstance(message, OutgoingSms) and sms_opted_out(
        session, message.to, message.from_number, messaging_service_sid=message.messaging_service_sid,
        owner_id=plan.owner_id,
    ):
        return "the seller opted out of SMS (STOP)"
    # An unsubscribe or a bounce concerns one owner's mail: that owner's, not everyone's.
    if isinstance(message, OutgoingEmail):
        suppressed = email_suppressed(session, message.to_email, plan.owner_id)
        if suppressed == EventType.BOUNCED:
            return "the seller's address bounced"
        if suppressed is not None:
            return "the seller unsubscribed from email"
        if get_settings().sms_stop_stops_email and sms_stop_covers_email(session, message.to_email, plan.owner_id):
            return "the seller opted out by SMS (STOP), which ends email too"
    return None


def _orphan_attempt(events: list) -> Any:
    """The attempt with no recorded outcome, if any (its sender died mid-send)."""
    concluded = {e.content.get("attempt_event_id") for e in events if e.event_type != EventType.STEP_ATTEMPT}
    for event in events:
        if event.event_type == EventType.STEP_ATTEMPT and event.id not in concluded:
            return event
    return None


def wait_for_provider_reset(enrollment_id: int, step_index: int) -> None:
    """A 429 names the time before which retrying is pointless: honour it before the next attempt."""
    with session_scope() as session:
        retries = [e for e in step_events(session, enrollment_id, step_index) if e.event_type == EventType.STEP_RETRY]
    if not retries or not retries[-1].content.get("not_before"):
        return
    not_before = datetime.fromisoformat(retries[-1].content["not_before"])
    remaining = (not_before - datetime.now(UTC)).total_seconds()
    if remaining > 0:
        time.sleep(remaining)


def _summary(message: OutgoingEmail | OutgoingSms) -> str:
    if isinstance(message, OutgoingEmail):
        return message.subject
    return message.body.splitlines()[0] if message.body else ""


def execute_send_step(
    enrollment_id: int,
    step_index: int,
    *,
    attempt: int = 1,
    max_attempts: int = 1,
    providers: Providers | None = None,
    flow_run_id: uuid.UUID | None = None,
    task_run_id: uuid.UUID | None = None,
) -> StepResult:
    """Send step `step_index` of the enrollment unless it already was. Pure of Prefect."""
    settings = get_settings()
    providers = providers or get_providers()
    ids = {"flow_run_id": flow_run_id, "task_run_id": task_run_id}
    error: ProviderError | None = None
    with session_scope() as session:
        plan = load_plan(session, enrollment_id, lock=True)
        if plan.status != EnrollmentStatus.ACTIVE:
            return StepResult("not-active")
        if plan.current_step > step_index:
            return StepResult("already-done")
        if plan.current_step < step_index:
            raise InvalidStateError(f"enrollment {enrollment_id} is at step {plan.current_step}, not {step_index}")
        step = plan.steps[step_index]
        if not isinstance(step, EmailStep | SmsStep):
            raise InvalidStateError(f"step {step_index} of enrollment {enrollment_id} is not a send step")

        chosen = draw_variant(step, plan.reply_token, step_index)
        # Every event of the attempt names the variant, so analytics can split outcomes by it.
        tag = {"variant": chosen.name} if chosen is not None else {}
        events = step_events(session, enrollment_id, step_index)
        if any(e.event_type in SENT_EVENT_TYPES for e in events):
            store.advance(session, plan, step_index)
            return StepResult("already-done")
        orphan = _orphan_attempt(events)
        if orphan is not None:
            store.advance(
                session, plan, step_index,
                event_type=EventType.STEP_OUTCOME_UNKNOWN,
                status="unknown",
                failure_reason="a worker stopped between the provider call and recording its result; "
                "not sent again to avoid a duplicate",
                content={"attempt_event_id": orphan.id, **tag},
                **ids,
            )
            return StepResult("outcome-unknown")

        try:
            sender = load_sender(session, plan.owner_id, settings)
            thread = email_thread_of(session, plan, step_index, sender, settings) if isinstance(step, EmailStep) else None
            message = render_message(plan, step, step_index, settings, sender, thread)
        except TemplateRenderError as exc:
            store.fail(session, plan, step_index, f"template: {exc}", content=tag, **ids)
            return StepResult("failed", detail=str(exc))
        skip_reason = _skip_reason(session, plan, step, message)
        if skip_reason:
            store.advance(
                session, plan, step_index,
                event_type=EventType.STEP_SKIPPED, status="skipped", failure_reason=skip_reason, **ids,
            )
            return StepResult("skipped", detail=skip_reason)

        # Committed on its own connection, before the call: the trace a crash leaves behind.
        with session_scope() as attempt_session:
            attempt_event_id = record_event(
                attempt_session,
                enrollment_id=enrollment_id,
                event_type=EventType.STEP_ATTEMPT,
                step_index=step_index,
                status="sending",
                attempt=attempt,
                content={"channel": "email" if isinstance(step, EmailStep) else "sms", **tag},
                **ids,
            )

        try:
            receipt = providers.send_email(message) if isinstance(message, OutgoingEmail) else providers.send_sms(message)
        except ProviderError as exc:
            error = exc
            outcome = {"attempt_event_id": attempt_event_id, "status_code": exc.status_code, "code": exc.code, **tag}
            last_attempt = attempt >= max_attempts
            if isinstance(exc, OutcomeUnknownProviderError):
                # The same as a worker dying after the call: perhaps sent, so never sent again.
                store.advance(
                    session, plan, step_index,
                    event_type=EventType.STEP_OUTCOME_UNKNOWN, status="unknown", attempt=attempt,
                    failure_reason=f"{exc.describe()}; not sent again to avoid a duplicate",
                    content=outcome, **ids,
                )
                return StepResult("outcome-unknown", detail=exc.describe())
            if isinstance(exc, TransientProviderError) and not last_attempt:
                if exc.retry_after:
                    outcome["not_before"] = (datetime.now(UTC) + timedelta(seconds=exc.retry_after)).isoformat()
                record_event(
                    session,
                    enrollment_id=enrollment_id,
                    event_type=EventType.STEP_RETRY,
                    step_index=step_index,
                    status="retrying",
                    attempt=attempt,
                    failure_reason=exc.describe(),
                    content=outcome,
                    **ids,
                )
            else:
                why = exc.describe() if not last_attempt else f"gave up after {attempt} attempts: {exc.describe()}"
                store.fail(session, plan, step_index, why, attempt=attempt, content=outcome, **ids)
        else:
            store.advance(
                session, plan, step_index,
                event_type=EventType.EMAIL_SENT if isinstance(message, OutgoingEmail) else EventType.SMS_SENT,
                status="sent",
                attempt=attempt,
                provider_message_id=receipt.message_id,
                content={
                    **message_content(message), "provider": receipt.provider, "attempt_event_id": attempt_event_id, **tag,
                },
                **ids,
            )
            return StepResult("sent", receipt.message_id, _summary(message))

    # Raised after the transaction committed the retry/failure event.
    assert error is not None
    raise error
