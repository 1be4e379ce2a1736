"""The only code that writes an enrollment's state: status, current step, due time, pending run.

Every function takes the caller's session (its transaction) and an `EnrollmentPlan` loaded with
the row lock, checks the move against `transitions.TRANSITIONS`, and writes the change together
with its event, so both commit or neither does. What a move means for the pending Prefect run
(suspend, resume or cancel it) is recorded in the same transaction as an effect, and carried out
after the commit (`lifecycle.effects`): no call to Prefect is made under the row lock for it.
A new pending run (a wait's, a deferral's, a repair's) is created after the commit too
(`reschedule`): the transaction raises the enrollment's epoch and leaves its run id empty, and
`effects.deliver_run` creates the run for that epoch (its idempotency key) and writes its id back where
the epoch still matches. What a crash left undelivered, the sweep delivers. Only an enrollment's
very first run is made before its commit (`start`), so that an enroll with Prefect unreachable
stores nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Uuid, column, func, select, update, values
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from followups import prefect_runs
from followups.db.events import record_event
from followups.db.session import after_commit, session_scope
from followups.db.models import FINISHED_STATUSES, Enrollment, EnrollmentStatus, EventType, FollowUpEvent
from followups.errors import InvalidStateError
from followups.lifecycle import effects
from followups.lifecycle.enroll_rule import check_enrollable, race_lost
from followups.lifecycle.plan import EnrollmentPlan, load_plan
from followups.lifecycle.transitions import Actor, check
from followups.steps import WaitStep

log = logging.getLogger(__name__)

# Event written for each status a move lands in (a move within ACTIVE writes its own event).
STATUS_EVENTS = {
    EnrollmentStatus.PAUSED: EventType.PAUSED,
    EnrollmentStatus.ACTIVE: EventType.RESUMED,
    EnrollmentStatus.CANCELLED: EventType.CANCELLED,
    EnrollmentStatus.STOPPED: EventType.STOPPED,
    EnrollmentStatus.COMPLETED: EventType.COMPLETED,
    EnrollmentStatus.FAILED: EventType.FAILED,
}


def _write(session: Session, plan: EnrollmentPlan, **values: Any) -> EnrollmentPlan:
    session.execute(update(Enrollment).where(Enrollment.id == plan.enrollment_id).values(**values))
    fields = {"status": "status", "current_step": "current_step", "next_due_at": "next_due_at",
              "prefect_flow_run_id": "prefect_flow_run_id", "epoch": "epoch"}
    return dataclasses.replace(plan, **{fields[k]: v for k, v in values.items()})


def _step_of(plan: EnrollmentPlan) -> int | None:
    return plan.current_step if plan.current_step < len(plan.steps) else None


# -- enrolling ------------------------------------------------------------------------------


def create(
    session: Session, *, deal_id: int, sequence_id: int, sequence_version_id: int, content: dict[str, Any], again: bool = False
) -> Enrollment:
    """A new ACTIVE enrollment at step 0 with its ENROLLED event (no Prefect run yet), if the
    re-enrollment rule (`enroll_rule`, checked in this transaction) allows it."""
    check(None, None, EnrollmentStatus.ACTIVE, Actor.API)
    deal_ref = content.get("deal")
    previous = check_enrollable(session, deal_id, sequence_id, again=again, deal_ref=deal_ref)
    if previous is not None:
        content = {**content, "again": True, "previous_enrollment_id": previous}
    enrollment = Enrollment(
        deal_id=deal_id,
        sequence_id=sequence_id,
        sequence_version_id=sequence_version_id,
        status=EnrollmentStatus.ACTIVE.value,
        current_step=0,
        reply_token=secrets.token_urlsafe(18),
    )
    try:
        with session.begin_nested():
            session.add(enrollment)
            session.flush()
    except IntegrityError as exc:
        # The partial unique index allows one open enrollment per deal and sequence.
        raise race_lost(session, deal_id, sequence_id, deal_ref, exc)
    record_event(
        session,
        enrollment_id=enrollment.id,
        event_type=EventType.ENROLLED,
        content=content,
        dedupe_key=f"enrollment:{enrollment.id}:enrolled",
    )
    return enrollment


def start(session: Session, enrollment: Enrollment, *, due: datetime | None = None) -> uuid.UUID:
    """Give a new enrollment its first flow run (due now, or at `due`), epoch 1. Made before the
    commit: if Prefect refuses, nothing is stored; if the commit fails instead, the orphan run
    finds no enrollment and ends at once."""
    session.flush()
    plan = load_plan(session, enrollment.id, lock=True)
    check(plan.enrollment_id, plan.status, EnrollmentStatus.ACTIVE, Actor.API)
    with prefect_runs.allowed_in_transaction():
        run_id = prefect_runs.schedule_sequence_run(
            plan.enrollment_id, plan.deal_ref, plan.current_step, scheduled_time=due, epoch=1, message=_why_scheduled(plan, None)
        )
    _write(session, plan, next_due_at=due, prefect_flow_run_id=run_id, epoch=1)
    return run_id


NOT_READ: Any = object()  # `move`'s default: the caller did not read the pending run


def create_many(session: Session, rows: list[dict[str, Any]], *, due: datetime | None = None) -> dict[int, int]:
    """`create` for many deals at once (bulk import): one INSERT for the enrollments and one for
    their ENROLLED events. Each row has deal_id, sequence_id, sequence_version_id and content.
    A deal that already has an open enrollment in that sequence (the partial unique index) is
    left out instead of failing the batch. `due`: when their sequences start (None: now).
    Returns {deal_id: enrollment_id} of those created."""
    if not rows:
        return {}
    check(None, None, EnrollmentStatus.ACTIVE, Actor.API)
    values = [
        {"deal_id": row["deal_id"], "sequence_id": row["sequence_id"], "sequence_version_id": row["sequence_version_id"],
         "status": EnrollmentStatus.ACTIVE.value, "current_step": 0, "reply_token": secrets.token_urlsafe(18),
         "next_due_at": due}
        for row in rows
    ]
    statement = pg_insert(Enrollment).values(values).on_conflict_do_nothing().returning(Enrollment.id, Enrollment.deal_id)
    created = {deal_id: enrollment_id for enrollment_id, deal_id in session.execute(statement).all()}
    content = {row["deal_id"]: row["content"] for row in rows}
    events = [
        {"enrollment_id": enrollment_id, "event_type": EventType.ENROLLED.value, "status": "ok",
         "content": content[deal_id], "dedupe_key": f"enrollment:{enrollment_id}:enrolled"}
        for deal_id, enrollment_id in created.items()
    ]
    if events:
        session.execute(pg_insert(FollowUpEvent).values(events).on_conflict_do_nothing())
    return created


def set_first_runs(session: Session, runs: dict[int, uuid.UUID], *, due: datetime | None = None) -> int:
    """Store the first run of enrollments made by `create_many`, and when it is due, in one
    statement. Only where no run is stored yet: a run that already started may have moved the
    enrollment on to a newer pending run (a wait), which must not be overwritten. Returns how
    many rows changed."""
    if not runs:
        return 0
    pairs = values(column("id", BigInteger), column("run_id", Uuid), name="first_runs").data(list(runs.items()))
    statement = (
        update(Enrollment)
        .where(Enrollment.id == pairs.c.id, Enrollment.prefect_flow_run_id.is_(None))
        .values(prefect_flow_run_id=pairs.c.run_id, next_due_at=due, epoch=1)
    )
    return session.execute(statement).rowcount


# -- status changes -------------------------------------------------------------------------


def move(
    session: Session,
    plan: EnrollmentPlan,
    to: EnrollmentStatus,
    *,
    actor: Actor,
    event_type: EventType | None = None,
    follow_in_prefect: bool | None = None,
    run: Any = NOT_READ,
    **event: Any,
) -> EnrollmentPlan:
    """Change the status (checked against the table), record its event, and make the pending
    Prefect run agree when the change comes from the investor or the seller (or when
    `follow_in_prefect` says so: an operator's change made on another run). `run` is the pending
    run as the caller read it before taking the lock, if it did (None: it was deleted)."""
    check(plan.enrollment_id, plan.status, to, actor, change=True)
    content = {"source": actor.value, **event.pop("content", {})}
    values: dict[str, Any] = {"status": to.value}
    if to in FINISHED_STATUSES:
        values["next_due_at"] = None
    elif to == EnrollmentStatus.ACTIVE and plan.status == EnrollmentStatus.PAUSED.value:
        due = due_after_pause(session, plan)
        if due != plan.next_due_at:
            values["next_due_at"] = due
            content["due_at"] = due.isoformat()
    record_event(
        session,
        enrollment_id=plan.enrollment_id,
        event_type=event_type or STATUS_EVENTS[to],
        step_index=event.pop("step_index", _step_of(plan)),
        content=content,
        flow_run_id=event.pop("flow_run_id", plan.prefect_flow_run_id),
        **event,
    )
    moved = _write(session, plan, **values)
    # Prefect already shows an operator's change, and the flow's own run simply ends.
    if follow_in_prefect is None:
        follow_in_prefect = actor not in (Actor.PREFECT, Actor.FLOW)
    if follow_in_prefect:
        moved = _follow_in_prefect(session, plan, moved, to, run)
    return moved


def due_after_pause(session: Session, plan: EnrollmentPlan) -> datetime | None:
    """When a resumed enrollment's pending run is due: a pause keeps what was left of a WAIT, so a
    3-day wait paused for a day ends a day later. Any other due time is a moment, not a wait (a
    start time, a send window opening) and stays as it was, as does a wait that had ended when it
    was paused (the run is due at once)."""
    if plan.next_due_at is None or plan.finished_steps or not isinstance(plan.steps[plan.current_step], WaitStep):
        return plan.next_due_at
    paused_at, now = session.execute(
        select(func.max(FollowUpEvent.occurred_at), func.clock_timestamp()).where(
            FollowUpEvent.enrollment_id == plan.enrollment_id, FollowUpEvent.event_type == EventType.PAUSED.value
        )
    ).one()
    if paused_at is None or plan.next_due_at <= paused_at:
        return plan.next_due_at
    return plan.next_due_at + (now - paused_at)


def _follow_in_prefect(
    session: Session, before: EnrollmentPlan, after: EnrollmentPlan, to: EnrollmentStatus, run: Any
) -> EnrollmentPlan:
    run_id = before.prefect_flow_run_id
    if run_id is None:
        if to == EnrollmentStatus.ACTIVE and before.status == EnrollmentStatus.PAUSED.value and before.epoch > 0:
            # Paused while its next run was being created, which never was: go on in a new one.
            return reschedule(session, after, due=_not_past(after.next_due_at), actor=Actor.API)
        # Otherwise the run on its way is suspended or cancelled as it is delivered (`effects.deliver_run`).
        return after
    if to in FINISHED_STATUSES:
        effects.record(session, after.enrollment_id, effects.Kind.CANCEL, run_id)
    elif to == EnrollmentStatus.PAUSED:
        effects.record(session, after.enrollment_id, effects.Kind.SUSPEND, run_id)
    elif to == EnrollmentStatus.ACTIVE and before.status == EnrollmentStatus.PAUSED.value:
        if run is NOT_READ or (run is not None and run.id != run_id):
            run = prefect_runs.read_run(run_id)
        if prefect_runs.is_live(run):
            effects.record(session, after.enrollment_id, effects.Kind.RESUME, run_id, due_at=after.next_due_at)
        else:
            # The run ended or vanished while paused (e.g. a suspend that timed out): go on in a new one.
            return reschedule(session, after, due=_not_past(after.next_due_at), actor=Actor.API)
    return after


def _not_past(due: datetime | None) -> datetime | None:
    return due if due and due > datetime.now(UTC) else None


def complete(session: Session, plan: EnrollmentPlan, *, flow_run_id: uuid.UUID | None) -> EnrollmentPlan:
    return move(
        session, plan, EnrollmentStatus.COMPLETED, actor=Actor.FLOW, flow_run_id=flow_run_id,
        dedupe_key=f"enrollment:{plan.enrollment_id}:completed",
    )


def fail(session: Session, plan: EnrollmentPlan, step_index: int, reason: str, **details: Any) -> EnrollmentPlan:
    """STEP_FAILED and the enrollment FAILED, together."""
    record_event(
        session,
        enrollment_id=plan.enrollment_id,
        event_type=EventType.STEP_FAILED,
        step_index=step_index,
        status="failed",
        failure_reason=reason,
        **details,
    )
    return move(
        session, plan, EnrollmentStatus.FAILED, actor=Actor.FLOW, step_index=step_index,
        flow_run_id=details.get("flow_run_id"), failure_reason=reason,
    )


# -- moves within ACTIVE --------------------------------------------------------------------


def advance(
    session: Session, plan: EnrollmentPlan, step_index: int, *, event_type: EventType | None = None, **event: Any
) -> EnrollmentPlan:
    """Step `step_index` is done (sent, skipped, waited, outcome unknown): record that and move on."""
    check(plan.enrollment_id, plan.status, EnrollmentStatus.ACTIVE, Actor.FLOW)
    if plan.current_step != step_index:
        raise InvalidStateError(f"enrollment {plan.enrollment_id} is at step {plan.current_step}, not {step_index}")
    if event_type is not None:
        record_event(session, enrollment_id=plan.enrollment_id, event_type=event_type, step_index=step_index, **event)
    return _write(session, plan, current_step=step_index + 1, next_due_at=None)


def reschedule(
    session: Session,
    plan: EnrollmentPlan,
    *,
    due: datetime | None,
    actor: Actor,
    why: str | None = None,
    event_type: EventType | None = None,
    **event: Any,
) -> EnrollmentPlan:
    """The one way to give an enrollment its next pending run: raise its epoch, store the due
    time (None: now) with no run id yet, and record the event that explains it; the run of its
    current step for that epoch is created once this commits (`effects.deliver_run`). `why` ends the
    run's state message ("runs when …"), which names the enrollment and the step.

    The previous pending run, if any, is stale from the commit on: a run that starts finds its
    epoch is not the enrollment's and does nothing."""
    check(plan.enrollment_id, plan.status, EnrollmentStatus.ACTIVE, actor)
    if event_type is not None:
        record_event(session, enrollment_id=plan.enrollment_id, event_type=event_type, step_index=_step_of(plan), **event)
    epoch = plan.epoch + 1
    order = effects.RunOrder(plan.enrollment_id, epoch, plan.current_step, plan.deal_ref, due, _why_scheduled(plan, why))
    after_commit(session, lambda: effects.deliver_run(order))
    return _write(session, plan, next_due_at=due, prefect_flow_run_id=None, epoch=epoch)


def pending_run_id(enrollment_id: int) -> uuid.UUID | None:
    with session_scope(read_only=True) as session:
        return session.scalar(select(Enrollment.prefect_flow_run_id).where(Enrollment.id == enrollment_id))


def record_run(session: Session, plan: EnrollmentPlan, flow_run_id: uuid.UUID) -> EnrollmentPlan:
    """The pending run of the enrollment's epoch started before its id was written back: it
    records itself."""
    return _write(session, plan, prefect_flow_run_id=flow_run_id)


def record_delivered_run(session: Session, enrollment_id: int, epoch: int, flow_run_id: uuid.UUID) -> str | None:
    """A run created after commit, written back only where the enrollment is still at its epoch
    and has no run yet. Returns the enrollment's status then; None when it was not written."""
    return session.scalar(
        update(Enrollment)
        .where(Enrollment.id == enrollment_id, Enrollment.epoch == epoch, Enrollment.prefect_flow_run_id.is_(None))
        .values(prefect_flow_run_id=flow_run_id)
        .returning(Enrollment.status)
    )


def _why_scheduled(plan: EnrollmentPlan, why: str | None) -> str:
    """The scheduled run's state message: what an operator sees on its page in the Prefect UI."""
    if plan.finished_steps:
        what = "every step done"
    else:
        step = plan.steps[plan.current_step]
        what = f"step {plan.current_step} ({step.type})"
        why = why or ("the wait ends" if isinstance(step, WaitStep) else "its time comes")
    return f"enrollment {plan.enrollment_id}, {what}: runs when {why}" if why else f"enrollment {plan.enrollment_id}, {what}"


def resume_own_run(session: Session, plan: EnrollmentPlan, run: Any, *, content: dict[str, Any]) -> EnrollmentPlan:
    """An ACTIVE enrollment's run that suspended itself for a pause since undone: resumed in
    Prefect (keeping what is left of the wait), with a RECONCILED event saying so."""
    check(plan.enrollment_id, plan.status, EnrollmentStatus.ACTIVE, Actor.RECONCILER)
    record_event(
        session, enrollment_id=plan.enrollment_id, event_type=EventType.RECONCILED, step_index=_step_of(plan),
        content={"source": Actor.PREFECT.value, "action": "resume-run", **content}, flow_run_id=plan.prefect_flow_run_id,
    )
    effects.record(session, plan.enrollment_id, effects.Kind.RESUME, run.id, due_at=plan.next_due_at)
    return plan


def take_back(session: Session, plan: EnrollmentPlan, flow_run_id: uuid.UUID, *, content: dict[str, Any]) -> EnrollmentPlan:
    """The run that just handed the enrollment over is its pending run again; the run it had
    scheduled (not started: it is due later) is cancelled."""
    previous = plan.prefect_flow_run_id
    plan = adopt(session, plan, flow_run_id, content={"previous_run_id": str(previous), **content})
    if previous is not None:
        after_commit(session, lambda: effects.cancel_quietly(previous))
    return plan


def adopt(session: Session, plan: EnrollmentPlan, flow_run_id: uuid.UUID, *, content: dict[str, Any]) -> EnrollmentPlan:
    """A run started in Prefect carries the enrollment on, its pending run having ended."""
    check(plan.enrollment_id, plan.status, EnrollmentStatus.ACTIVE, Actor.RECONCILER)
    record_event(
        session, enrollment_id=plan.enrollment_id, event_type=EventType.RECONCILED, step_index=_step_of(plan),
        content={"source": Actor.PREFECT.value, **content}, flow_run_id=flow_run_id,
    )
    return _write(session, plan, prefect_flow_run_id=flow_run_id, epoch=plan.epoch + 1)
