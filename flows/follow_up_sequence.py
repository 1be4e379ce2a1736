"""The `follow-up-sequence` flow: runs one enrollment from its current step.

Each EMAIL / SMS step is a task run. A WAIT records WAIT_STARTED with its due time, schedules
the deployment's next flow run for that time and ends: no process waits. The next run records
WAIT_COMPLETED and carries on. Where the sequence is comes from the database, never from
Prefect's task results, so a re-run, a resumed run or a duplicate run continues correctly.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.exceptions import Pause
from prefect.flow_runs import suspend_flow_run
from prefect.runtime import flow_run as runtime_flow_run
from sqlalchemy import func, select, update

from followups.db.events import first_event, record_event
from followups.db.models import Enrollment, EnrollmentStatus, EventType
from followups.db.session import session_scope
from followups.plan import EnrollmentPlan, load_plan
from followups.quiet_hours import next_allowed_time
from followups.scheduling import schedule_sequence_run
from followups.settings import get_settings
from followups.steps import EmailStep, WaitStep
from followups.tasks.send_step import configured_send_step

# A run that starts this close to its wait's due time (e.g. resumed a moment early) sleeps
# the rest instead of scheduling yet another run.
SHORT_WAIT_SECONDS = 5.0


def _current_flow_run_id() -> uuid.UUID | None:
    return uuid.UUID(str(runtime_flow_run.id)) if runtime_flow_run.id else None


def _read_own_run(flow_run_id: uuid.UUID | None):
    if flow_run_id is None:
        return None
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _transition(
    enrollment_id: int, from_status: EnrollmentStatus, to_status: EnrollmentStatus, event: EventType, flow_run_id
) -> None:
    """Move the enrollment between statuses once: a concurrent sync that got there first wins."""
    with session_scope() as session:
        moved = session.execute(
            update(Enrollment)
            .where(Enrollment.id == enrollment_id, Enrollment.status == from_status.value)
            .values(status=to_status.value)
        ).rowcount
        if moved:
            record_event(
                session, enrollment_id=enrollment_id, event_type=event, content={"source": "prefect"}, flow_run_id=flow_run_id
            )


def _honour_prefect_controls(plan: EnrollmentPlan, flow_run_id: uuid.UUID | None, *, starting: bool) -> EnrollmentPlan:
    """Make the enrollment agree with what was done to this run in Prefect (UI, CLI, API).

    - This run, the enrollment's pending one, starts while the enrollment is PAUSED: a
      suspended run only runs again when resumed, so someone resumed it in Prefect.
    - Suspended in Prefect while the enrollment is ACTIVE: someone paused it in Prefect.
    - Enrollment PAUSED while this run still runs: stop here, suspended, until resumed.
    """
    run = _read_own_run(flow_run_id)
    if run is None:
        return plan
    is_pending_run = plan.prefect_flow_run_id == flow_run_id
    if starting and plan.status == EnrollmentStatus.PAUSED and is_pending_run:
        _transition(plan.enrollment_id, EnrollmentStatus.PAUSED, EnrollmentStatus.ACTIVE, EventType.RESUMED, flow_run_id)
        with session_scope() as session:
            return load_plan(session, plan.enrollment_id)
    run_suspended = run.state is not None and run.state.is_paused()
    if run_suspended:
        _transition(plan.enrollment_id, EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED, EventType.PAUSED, flow_run_id)
        raise Pause(state=run.state)
    if plan.status == EnrollmentStatus.PAUSED and is_pending_run:
        # Paused through our API while this run was between steps: suspend ourselves so that
        # resuming (from our API or the Prefect UI) restarts this very run.
        suspend_flow_run(key=f"pause-{plan.current_step}-{time.time_ns()}")
    return plan


def _complete(enrollment_id: int, flow_run_id: uuid.UUID | None) -> None:
    with session_scope() as session:
        done = session.execute(
            update(Enrollment)
            .where(Enrollment.id == enrollment_id, Enrollment.status == EnrollmentStatus.ACTIVE.value)
            .values(status=EnrollmentStatus.COMPLETED.value, next_due_at=None)
        ).rowcount
        if done:
            record_event(
                session,
                enrollment_id=enrollment_id,
                event_type=EventType.COMPLETED,
                flow_run_id=flow_run_id,
                dedupe_key=f"enrollment:{enrollment_id}:completed",
            )


def _run_wait(plan: EnrollmentPlan, step_index: int, step: WaitStep, flow_run_id: uuid.UUID | None) -> str:
    """Start or finish the WAIT at `step_index`. Returns "continue", "deferred" or "stopped"."""
    enrollment_id = plan.enrollment_id
    with session_scope() as session:
        current = load_plan(session, enrollment_id, lock=True)
        if current.status != EnrollmentStatus.ACTIVE:
            return "stopped"
        if current.current_step != step_index:
            return "continue"
        started = first_event(session, enrollment_id, step_index, EventType.WAIT_STARTED)
        now = session.scalar(select(func.now()))
        if started is None:
            due = now + step.duration
            record_event(
                session,
                enrollment_id=enrollment_id,
                event_type=EventType.WAIT_STARTED,
                step_index=step_index,
                content={"due_at": due.isoformat(), "duration_seconds": step.duration.total_seconds()},
                flow_run_id=flow_run_id,
                dedupe_key=f"enrollment:{enrollment_id}:wait-started:{step_index}",
            )
            next_run = schedule_sequence_run(enrollment_id, plan.deal_ref, step_index, scheduled_time=due)
            session.execute(
                update(Enrollment)
                .where(Enrollment.id == enrollment_id)
                .values(next_due_at=due, prefect_flow_run_id=next_run)
            )
            return "deferred"
        due = datetime.fromisoformat(started.content["due_at"])
        remaining = (due - now).total_seconds()
        if remaining > SHORT_WAIT_SECONDS:
            # Started well before the due time (e.g. resumed from the Prefect UI, which
            # reschedules to "now"): the rest of the wait is another scheduled run.
            next_run = schedule_sequence_run(
                enrollment_id,
                plan.deal_ref,
                step_index,
                scheduled_time=due,
                key_suffix=f":after:{flow_run_id}",
            )
            session.execute(
                update(Enrollment).where(Enrollment.id == enrollment_id).values(prefect_flow_run_id=next_run)
            )
            return "deferred"
    if remaining > 0:
        time.sleep(remaining)
    with session_scope() as session:
        current = load_plan(session, enrollment_id, lock=True)
        if current.status != EnrollmentStatus.ACTIVE:
            return "stopped"
        if current.current_step == step_index:
            record_event(
                session,
                enrollment_id=enrollment_id,
                event_type=EventType.WAIT_COMPLETED,
                step_index=step_index,
                content={"due_at": due.isoformat()},
                flow_run_id=flow_run_id,
                dedupe_key=f"enrollment:{enrollment_id}:wait-completed:{step_index}",
            )
            session.execute(
                update(Enrollment)
                .where(Enrollment.id == enrollment_id)
                .values(current_step=step_index + 1, next_due_at=None)
            )
    return "continue"


def _defer_for_quiet_hours(plan: EnrollmentPlan, step_index: int, flow_run_id: uuid.UUID | None) -> bool:
    """Hold an SMS step until the seller's quiet hours end. True when deferred."""
    settings = get_settings()
    if not settings.quiet_hours_enabled:
        return False
    until = next_allowed_time(
        datetime.now(UTC), plan.seller.timezone, settings.quiet_hours_start, settings.quiet_hours_end
    )
    if until is None:
        return False
    with session_scope() as session:
        current = load_plan(session, plan.enrollment_id, lock=True)
        if current.status != EnrollmentStatus.ACTIVE or current.current_step != step_index:
            return False
        record_event(
            session,
            enrollment_id=plan.enrollment_id,
            event_type=EventType.STEP_DEFERRED,
            step_index=step_index,
            status="deferred",
            content={"until": until.isoformat(), "reason": f"quiet hours in {plan.seller.timezone}"},
            flow_run_id=flow_run_id,
            dedupe_key=f"enrollment:{plan.enrollment_id}:quiet:{step_index}:{until.isoformat()}",
        )
        next_run = schedule_sequence_run(
            plan.enrollment_id, plan.deal_ref, step_index, scheduled_time=until, key_suffix=f":quiet:{until.isoformat()}"
        )
        session.execute(
            update(Enrollment)
            .where(Enrollment.id == plan.enrollment_id)
            .values(next_due_at=until, prefect_flow_run_id=next_run)
        )
    return True


@flow(name="follow-up-sequence", log_prints=True, persist_result=False)
def follow_up_sequence(enrollment_id: int) -> str:
    """Run enrollment `enrollment_id` from its current step until it ends or waits."""
    logger = get_run_logger()
    flow_run_id = _current_flow_run_id()
    starting = True
    while True:
        with session_scope() as session:
            plan = load_plan(session, enrollment_id)
        plan = _honour_prefect_controls(plan, flow_run_id, starting=starting)
        starting = False
        if plan.status != EnrollmentStatus.ACTIVE:
            # Paused (and this is not its pending run), or finished: another run owns it, or nobody.
            logger.info("Enrollment %s is %s: nothing to do", enrollment_id, plan.status)
            return plan.status
        if plan.finished_steps:
            _complete(enrollment_id, flow_run_id)
            logger.info("Enrollment %s completed", enrollment_id)
            return EnrollmentStatus.COMPLETED.value
        index = plan.current_step
        step = plan.steps[index]
        if isinstance(step, WaitStep):
            outcome = _run_wait(plan, index, step, flow_run_id)
            if outcome == "deferred":
                logger.info("Enrollment %s waits (step %s); the next run is scheduled", enrollment_id, index)
                return "WAITING"
            continue
        channel = "email" if isinstance(step, EmailStep) else "sms"
        if channel == "sms" and _defer_for_quiet_hours(plan, index, flow_run_id):
            logger.info("Enrollment %s: SMS step %s waits for the seller's quiet hours to end", enrollment_id, index)
            return "WAITING"
        configured_send_step(enrollment_id, index, channel, plan.deal_ref)(enrollment_id, index, channel, plan.deal_ref)
