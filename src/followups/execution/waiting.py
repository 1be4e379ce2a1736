"""WAIT steps: a wait never holds a process.

A WAIT records WAIT_STARTED with its due time (a calendar duration, or business days in the
recipient's zone) and gives the enrollment its next pending run, scheduled for that time; the
run that starts then records WAIT_COMPLETED and carries on. Message steps held back by a send
window, quiet hours or a cap are deferred the same way (`execution.deferral`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from followups.db.events import first_event
from followups.db.models import EnrollmentStatus, EventType
from followups.db.session import session_scope
from followups.lifecycle import store
from followups.lifecycle.plan import EnrollmentPlan, load_plan
from followups.lifecycle.transitions import Actor
from followups.scheduling.planning import Recipient, quiet_hours_of, step_time
from followups.settings import get_settings
from followups.steps import WaitStep

# A run that starts this close to its wait's due time (e.g. resumed a moment early) sleeps
# the rest instead of scheduling yet another run.
SHORT_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class WaitOutcome:
    outcome: str  # continue | deferred | stopped
    due: datetime | None = None
    next_run_id: uuid.UUID | None = None


def wait_end(plan: EnrollmentPlan, step_index: int, now: datetime) -> datetime:
    """When the WAIT at `step_index`, started at `now`, ends: the preview's computation."""
    recipient = Recipient.of(plan.seller, plan.owner_timezone)
    return step_time(plan.steps, step_index, now, plan.options, recipient, quiet_hours_of(get_settings())).due_at


def run_wait(enrollment_id: int, step_index: int, step: WaitStep, flow_run_id: uuid.UUID | None) -> WaitOutcome:
    """Start or finish the WAIT at `step_index`."""
    with session_scope() as session:
        plan = load_plan(session, enrollment_id, lock=True)
        if plan.status != EnrollmentStatus.ACTIVE:
            return WaitOutcome("stopped")
        if plan.current_step != step_index:
            return WaitOutcome("continue")
        started = first_event(session, enrollment_id, step_index, EventType.WAIT_STARTED)
        now = session.scalar(select(func.now()))
        if started is None:
            due = wait_end(plan, step_index, now)
            store.reschedule(
                session, plan, due=due, actor=Actor.FLOW,
                event_type=EventType.WAIT_STARTED,
                content={"due_at": due.isoformat(), "duration_seconds": (due - now).total_seconds()},
                flow_run_id=flow_run_id,
                dedupe_key=f"enrollment:{enrollment_id}:wait-started:{step_index}",
            )
            remaining = None
        else:
            due = plan.started_wait_due(datetime.fromisoformat(started.content["due_at"]))
            remaining = (due - now).total_seconds()
            if remaining > SHORT_WAIT_SECONDS:
                # Started well before the due time (e.g. resumed from the Prefect UI, which
                # reschedules to "now"): the rest of the wait is another scheduled run.
                store.reschedule(session, plan, due=due, actor=Actor.FLOW)
                remaining = None
    if remaining is None:
        # The next run is created once the transaction above commits: its id is known now.
        return WaitOutcome("deferred", due, store.pending_run_id(enrollment_id))
    if remaining > 0:
        time.sleep(remaining)
    with session_scope() as session:
        plan = load_plan(session, enrollment_id, lock=True)
        if plan.status != EnrollmentStatus.ACTIVE:
            return WaitOutcome("stopped")
        if plan.current_step == step_index:
            store.advance(
                session, plan, step_index,
                event_type=EventType.WAIT_COMPLETED,
                content={"due_at": due.isoformat()},
                flow_run_id=flow_run_id,
                dedupe_key=f"enrollment:{enrollment_id}:wait-completed:{step_index}",
            )
    return WaitOutcome("continue", due)
