"""Reading an enrollment: its status and a timeline of steps, done and planned. Never writes."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from followups.db.models import OPEN_STATUSES, EnrollmentStatus, EventType, FollowUpEvent
from followups.lifecycle.plan import EnrollmentPlan
from followups.scheduling.planning import Recipient, quiet_hours_of, step_time, wait_due, wait_zone
from followups.settings import get_settings
from followups.steps import EmailStep, WaitStep
from followups.templating import TemplateRenderError, build_context, render

OUTCOME_STATES = {
    EventType.EMAIL_SENT: "done", EventType.SMS_SENT: "done", EventType.WAIT_COMPLETED: "done",
    EventType.STEP_SKIPPED: "skipped", EventType.STEP_FAILED: "failed", EventType.STEP_OUTCOME_UNKNOWN: "unknown",
}


@dataclass(frozen=True)
class TimelineStep:
    index: int
    type: str
    state: str  # done | skipped | failed | unknown | waiting | pending
    at: datetime | None  # when it happened, or when it is planned
    provider_message_id: str | None = None
    # A planned send moved by the send window, quiet hours, a holiday, a state law or the
    # step's own send time: which one.
    deferred_by: str | None = None
    # The email's subject or the SMS text, rendered for this deal as it goes (or went) out.
    message: str | None = None


@dataclass(frozen=True)
class EnrollmentDetails:
    id: int
    deal_id: int
    deal_external_id: str
    sequence_id: int
    sequence_version: int
    status: str
    current_step: int
    next_due_at: datetime | None
    flow_run_id: uuid.UUID | None
    timeline: list[TimelineStep] = field(default_factory=list)
    # What Prefect holds right now (`get_enrollment` only): the pending run's state name, and a
    # sentence when it shows a change the enrollment has not recorded yet.
    run_state: str | None = None
    in_prefect: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["flow_run_id"] = str(self.flow_run_id) if self.flow_run_id else None
        data["next_due_at"] = self.next_due_at.isoformat() if self.next_due_at else None
        for step in data["timeline"]:
            step["at"] = step["at"].isoformat() if step["at"] else None
        return data


def timeline(session: Session, plan: EnrollmentPlan) -> list[TimelineStep]:
    events = session.scalars(
        select(FollowUpEvent).where(FollowUpEvent.enrollment_id == plan.enrollment_id).order_by(FollowUpEvent.id)
    ).all()
    by_step: dict[int, list[FollowUpEvent]] = {}
    for event in events:
        if event.step_index is not None:
            by_step.setdefault(event.step_index, []).append(event)
    steps: list[TimelineStep] = []
    recipient = Recipient.of(plan.seller, plan.owner_timezone)
    settings = get_settings()
    quiet = quiet_hours_of(settings)
    now = datetime.now(UTC)
    clock = max(plan.next_due_at, now) if plan.next_due_at else now
    open_status = EnrollmentStatus(plan.status) in OPEN_STATUSES
    for index, step in enumerate(plan.steps):
        step_events = by_step.get(index, [])
        finished = next((e for e in reversed(step_events) if e.event_type in OUTCOME_STATES), None)
        if finished is not None:
            steps.append(
                TimelineStep(
                    index, step.type, OUTCOME_STATES[EventType(finished.event_type)], finished.occurred_at,
                    finished.provider_message_id,
                    # what went out, as recorded when it was sent
                    message=(finished.content or {}).get("subject") or (finished.content or {}).get("body"),
                )
            )
            continue
        if isinstance(step, WaitStep):
            started = next((e for e in step_events if e.event_type == EventType.WAIT_STARTED), None)
            if started is not None:
                due = datetime.fromisoformat(started.content["due_at"])
                if index == plan.current_step:
                    due = plan.started_wait_due(due)
                clock = max(due, now)
                steps.append(TimelineStep(index, step.type, "waiting" if open_status else "pending", due))
            else:
                clock = wait_due(clock, step, plan.options, wait_zone(plan.steps, index, recipient))
                steps.append(TimelineStep(index, step.type, "pending", clock if open_status else None))
        else:
            # The same computation the flow makes when the step falls due (caps aside: they can
            # only make it later).
            planned = step_time(plan.steps, index, clock, plan.options, recipient, quiet)
            clock = (planned.send_at or clock).astimezone(UTC)
            # A step the flow already held back shows why (its latest STEP_DEFERRED): from its new
            # due time the rules alone would no longer say.
            held = next((e for e in reversed(step_events) if e.event_type == EventType.STEP_DEFERRED), None)
            reason = (held.content or {}).get("reason") if held is not None and open_status else None
            steps.append(TimelineStep(index, step.type, "pending", clock if open_status else None, deferred_by=reason or planned.reason))
    return [item if item.message else replace(item, message=_message(plan, plan.steps[item.index])) for item in steps]


def _message(plan: EnrollmentPlan, step: Any) -> str | None:
    """What the step says to this seller: the subject of an email, the text of an SMS."""
    if isinstance(step, WaitStep):
        return None
    try:
        context = build_context(plan.deal, plan.seller)
        if isinstance(step, EmailStep):
            return render(step.subject, context)
        return render(step.body, context, max_chars=1600)
    except TemplateRenderError as exc:  # e.g. a value of this deal pushes it over a limit
        return f"(cannot render: {exc})"


def details(session: Session, plan: EnrollmentPlan) -> EnrollmentDetails:
    return EnrollmentDetails(
        id=plan.enrollment_id,
        deal_id=plan.deal_id,
        deal_external_id=plan.deal_ref,
        sequence_id=plan.sequence_id,
        sequence_version=plan.sequence_version,
        status=plan.status,
        current_step=plan.current_step,
        next_due_at=plan.next_due_at,
        flow_run_id=plan.prefect_flow_run_id,
        timeline=timeline(session, plan),
    )
