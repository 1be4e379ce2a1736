"""Holding a message step back: outside its send window, in SMS quiet hours, on a skipped
holiday, outside a state texting law's hours or over its texts-per-24-h cap, or over a send
cap. The step is never dropped: the enrollment gets a scheduled run for the next allowed moment
(through `lifecycle.store`) and a STEP_DEFERRED event saying why and until when. No process
waits.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from followups.db.models import Deal, Enrollment, EnrollmentStatus, EventType, FollowUpEvent
from followups.db.session import session_scope
from followups.errors import InvalidStateError
from followups.execution.waiting import SHORT_WAIT_SECONDS
from followups.lifecycle import store
from followups.lifecycle.plan import EnrollmentPlan, load_plan
from followups.lifecycle.transitions import Actor
from followups.scheduling.planning import Recipient, quiet_hours_of, step_time
from followups.settings import get_settings


def _utc_now() -> datetime:
    return datetime.now(UTC)


# What time it is for the send rules and the caps' day. Tests set it to run "tomorrow" without
# waiting for it.
clock: Callable[[], datetime] = _utc_now


@dataclass(frozen=True)
class Deferral:
    until: datetime
    reason: str  # due time | window | quiet hours | holiday | state law | send time | cap | no allowed time
    detail: str
    skipped: bool = False  # never allowed: the step was skipped, and the sequence goes on


_DAY = timedelta(hours=24)


@dataclass(frozen=True)
class TextHistory:
    """What the state texting laws need from the database for one SMS send."""

    property_state: str | None
    sent: tuple[datetime, ...]  # the owner's texts to this number in the last 24 h, oldest first


def text_history(plan: EnrollmentPlan, channel: str, now: datetime) -> TextHistory | None:
    """The deal's property state and the owner's SMS to the seller's number, in every sequence,
    over the 24 h before `now`; None when no state law can apply (not an SMS, laws off)."""
    if channel != "sms" or not plan.seller.phone or not get_settings().state_laws_enabled:
        return None
    with session_scope(read_only=True) as session:
        state = session.scalar(select(Deal.property_state).where(Deal.id == plan.deal_id))
        sent = session.scalars(
            select(FollowUpEvent.occurred_at)
            .join(Enrollment, Enrollment.id == FollowUpEvent.enrollment_id)
            .join(Deal, Deal.id == Enrollment.deal_id)
            .where(
                Deal.owner_id == plan.owner_id, Deal.seller_phone == plan.seller.phone,
                FollowUpEvent.event_type == EventType.SMS_SENT,
                FollowUpEvent.occurred_at > now - _DAY, FollowUpEvent.occurred_at <= now,
            )
            .order_by(FollowUpEvent.occurred_at)
        ).all()
    return TextHistory(state, tuple(sent))


def outside_rules(plan: EnrollmentPlan, channel: str, now: datetime, history: TextHistory | None = None) -> Deferral | None:
    """Why the step may not go out at `now`, and until when; None when it may. With `history`,
    the property's state law applies too, and a state's cap on texts per 24 h."""
    settings = get_settings()
    recipient = Recipient.of(plan.seller, plan.owner_timezone, history.property_state if history else None)
    moment, capped = now, None
    while True:
        planned = step_time(
            plan.steps, plan.current_step, moment, plan.options, recipient, quiet_hours_of(settings),
            state_laws=settings.state_laws_enabled,
        )
        at = planned.send_at or moment
        law = recipient.text_cap(at) if history else None
        recent = [sent for sent in history.sent if sent > at - _DAY] if history and law else []
        if law is None or law.cap is None or len(recent) < law.cap:
            break
        # At the cap: wait until enough of those texts are 24 h old, then for the hours again.
        moment, capped = recent[len(recent) - law.cap] + _DAY, law
    if capped is not None:
        return Deferral(at, "state law", f"{capped.describe_cap()}; deferred until {at.isoformat()}")
    if planned.reason is None or planned.send_at is None:
        return None
    return Deferral(planned.send_at, planned.reason, planned.detail)


# Prefect's runners and workers start a run up to 10 s (their prefetch) before it is due.
EARLY_START_SECONDS = 15


def not_due(plan: EnrollmentPlan, flow_run_id: uuid.UUID | None, now: datetime) -> Deferral | None:
    """The pending run started well before the enrollment's due time (its start time, a send
    window's opening, a cap's next slot): Prefect's Resume reschedules a run for now, whatever it
    was waiting for. It goes back to waiting for that time."""
    due = plan.next_due_at
    if due is None or flow_run_id is None or flow_run_id != plan.prefect_flow_run_id:
        return None
    if (due - now).total_seconds() <= EARLY_START_SECONDS:
        return None
    return Deferral(due, "due time", f"resumed before its due time; runs at {due.isoformat()}")


def over_cap(plan: EnrollmentPlan, step_index: int, channel: str, now: datetime) -> Deferral | None:
    """Take the step's place in every cap the send counts against; refused, until when."""
    settings = get_settings()
    if not settings.caps_enabled:
        return None
    from followups.identity import database_id
    from followups.limits import owner_caps, step_limits, take_slot
    from followups.users import load_sender

    with session_scope(read_only=True) as session:
        sender = load_sender(session, plan.owner_id, settings)
        caps = owner_caps(session, plan.owner_id, channel)
    limits = step_limits(channel, sender, settings, database_id(), caps=caps)

    def take(moment: datetime):
        return take_slot(
            limits, moment, enrollment_id=plan.enrollment_id, step_index=step_index,
            wait_seconds=settings.cap_wait_seconds, strict=settings.caps_strict,
        )

    decision = take(now)
    if not decision.granted and decision.until is not None and (decision.until - now).total_seconds() <= EARLY_START_SECONDS:
        # The slot frees in a moment, or this run started a moment before the one promised to
        # it: a run scheduled for then would be this very run. Wait it out instead.
        time.sleep(max(0.0, (decision.until - now).total_seconds()))
        decision = take(max(clock(), decision.until))
    if decision.granted:
        return None
    assert decision.until is not None
    until = decision.until.astimezone(UTC)
    return Deferral(until, "cap", f"{decision.detail}; deferred until {until.isoformat()}")


def defer(plan: EnrollmentPlan, step_index: int, deferral: Deferral, flow_run_id: uuid.UUID | None) -> bool:
    """Schedule the step's run for `deferral.until` with its STEP_DEFERRED event. False when the
    enrollment moved on meanwhile (paused, stopped, another run sent the step)."""
    until = deferral.until
    with session_scope() as session:
        current = load_plan(session, plan.enrollment_id, lock=True)
        if current.status != EnrollmentStatus.ACTIVE or current.current_step != step_index:
            return False
        tag = deferral.reason.replace(" ", "-")
        store.reschedule(
            session, current, due=until, actor=Actor.FLOW, why=_why(deferral),
            event_type=EventType.STEP_DEFERRED,
            status="deferred",
            content={"until": until.isoformat(), "reason": deferral.reason, "detail": deferral.detail},
            flow_run_id=flow_run_id,
            dedupe_key=f"enrollment:{plan.enrollment_id}:{tag}:{step_index}:{until.isoformat()}",
        )
    return True


def _skip(plan: EnrollmentPlan, step_index: int, reason: str, flow_run_id: uuid.UUID | None) -> Deferral:
    with session_scope() as session:
        current = load_plan(session, plan.enrollment_id, lock=True)
        if current.status == EnrollmentStatus.ACTIVE and current.current_step == step_index:
            store.advance(
                session, current, step_index, event_type=EventType.STEP_SKIPPED, status="skipped",
                failure_reason=reason[:2000], flow_run_id=flow_run_id,
            )
    return Deferral(clock(), "no allowed time", reason, skipped=True)


def _why(deferral: Deferral) -> str:
    return {
        "due time": "its due time comes",
        "window": "the send window opens",
        "quiet hours": "the seller's quiet hours end",
        "holiday": "the holiday is over",
        "cap": "the send cap allows it",
        "state law": "the state's texting law allows it",
        "send time": "the step's send time comes",
    }.get(deferral.reason, deferral.reason)


def hold_if_needed(plan: EnrollmentPlan, step_index: int, channel: str, flow_run_id: uuid.UUID | None) -> Deferral | None:
    """Defer the message step when it may not go out now; None means: send it now. (A deferral
    is returned even when the enrollment moved on meanwhile: this run sends nothing either way.)"""
    now = clock()
    history = text_history(plan, channel, now)
    try:
        deferral = not_due(plan, flow_run_id, now) or outside_rules(plan, channel, now, history)
    except InvalidStateError as exc:
        # No moment is allowed at all (e.g. a toll-free number: every zone from Guam to Samoa,
        # and a business-hours window). Failing would only repeat; the step is not sent.
        return _skip(plan, step_index, str(exc), flow_run_id)
    if deferral is not None and (deferral.until - now).total_seconds() <= SHORT_WAIT_SECONDS:
        # A deferred run may start a moment early (Prefect rounds its delay to the second): a
        # run scheduled for the same instant would be this very run, and nothing would hold the
        # step. Wait the moment out instead.
        time.sleep(max(0.0, (deferral.until - now).total_seconds()))
        now = clock()
        deferral = outside_rules(plan, channel, now, history)
    if deferral is None and _reachable(plan, channel):
        deferral = over_cap(plan, step_index, channel, now)
    if deferral is not None:
        defer(plan, step_index, deferral, flow_run_id)
    return deferral


def _reachable(plan: EnrollmentPlan, channel: str) -> bool:
    # A step with nowhere to go is skipped by the send itself: it must not use up a cap slot.
    return bool(plan.seller.email if channel == "email" else plan.seller.phone)
