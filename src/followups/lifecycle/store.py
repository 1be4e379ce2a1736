"""The only code that writes an enrollment's state: the gateway between the pure machine
(`lifecycle.machine`) and PostgreSQL.

Every change loads the machine's state from a plan taken with the row lock (`state_of`), applies
one command, and writes the outcome in the caller's transaction (`commit`): the row, its events,
and its effects, so all commit or none does. Effects reach Prefect only after the commit
(`lifecycle.effects`): a suspend, resume or cancel of the pending run, a new pending run for the
new epoch (created and written back where the epoch still matches), a stale run dropped. What a
crash left undelivered, the sweep delivers. Only an enrollment's very first run is made before
its commit (`start`), so that an enroll with Prefect unreachable stores nothing.
"""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Uuid, column, func, select, update, values
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from followups import prefect_runs, run_history
from followups.db.events import record_event
from followups.db.session import after_commit, session_scope
from followups.db.models import Enrollment, EnrollmentStatus, EventType, FollowUpEvent
from followups.lifecycle import effects, machine
from followups.lifecycle.enroll_rule import check_enrollable, race_lost
from followups.lifecycle.plan import EnrollmentPlan, load_plan
from followups.lifecycle.transitions import Actor, check

STATUS_EVENTS = machine.STATUS_EVENTS


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
            plan.enrollment_id, plan.deal_ref, plan.current_step, scheduled_time=due, epoch=1,
            message=machine.why_scheduled(state_of(session, plan)[0], None),
        )
    session.execute(update(Enrollment).where(Enrollment.id == plan.enrollment_id).values(next_due_at=due, prefect_flow_run_id=run_id, epoch=1))
    return run_id


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


# -- the gateway: every change goes through the machine -----------------------------------------


def state_of(session: Session, plan: EnrollmentPlan, *, history: bool = False) -> tuple[machine.State, datetime]:
    """The machine's view of a plan loaded with the row lock, and the database's clock. With
    `history`, the two facts of the event log a resume or a repair needs."""
    paused_at, repairs, now = None, 0, None
    if history:
        step = plan.current_step if not plan.finished_steps else None
        paused_at, repairs, now = session.execute(
            select(
                func.max(FollowUpEvent.occurred_at).filter(FollowUpEvent.event_type == EventType.PAUSED.value),
                func.count().filter(FollowUpEvent.event_type == EventType.RECONCILED.value, FollowUpEvent.step_index == step),
                func.clock_timestamp(),
            ).where(FollowUpEvent.enrollment_id == plan.enrollment_id)
        ).one()
    state = machine.State(
        enrollment_id=plan.enrollment_id, status=EnrollmentStatus(plan.status), step=plan.current_step,
        step_types=tuple(step.type for step in plan.steps), due_at=plan.next_due_at, run_id=plan.prefect_flow_run_id,
        epoch=plan.epoch, paused_at=paused_at, repairs=repairs or 0,
    )
    return state, now or datetime.now(UTC)


def commit(session: Session, plan: EnrollmentPlan, outcome: machine.Outcome) -> EnrollmentPlan:
    """Write what the machine decided, in the caller's transaction: the row, its events, and its
    effects (carried out once the transaction commits)."""
    for event in outcome.events:
        record_event(
            session, enrollment_id=plan.enrollment_id, event_type=event.type, step_index=event.step_index,
            content=event.content, flow_run_id=event.flow_run_id, **event.extra,
        )
    new = outcome.state
    values = {
        column: value
        for column, value, old in (
            ("status", new.status.value, plan.status), ("current_step", new.step, plan.current_step),
            ("next_due_at", new.due_at, plan.next_due_at), ("prefect_flow_run_id", new.run_id, plan.prefect_flow_run_id),
            ("epoch", new.epoch, plan.epoch),
        )
        if value != old
    }
    if values:
        session.execute(update(Enrollment).where(Enrollment.id == plan.enrollment_id).values(**values))
        plan = dataclasses.replace(plan, **values)
    for effect in outcome.effects:
        if isinstance(effect, machine.RunEffect):
            effects.record(session, plan.enrollment_id, effect.kind, effect.run_id, due_at=effect.due_at)
        elif isinstance(effect, machine.CreateRun):
            order = effects.RunOrder(plan.enrollment_id, effect.epoch, effect.step, plan.deal_ref, effect.due, effect.message)
            after_commit(session, lambda order=order: effects.deliver_run(order))
        else:
            after_commit(session, lambda run_id=effect.run_id: effects.cancel_quietly(run_id))
    return plan


def _do(session: Session, plan: EnrollmentPlan, command: machine.Command) -> EnrollmentPlan:
    return commit(session, plan, machine.apply(state_of(session, plan)[0], command))


NOT_READ: Any = object()  # `move`'s default: the caller did not read the pending run


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
    """Change the status (`machine.Move`). `run` is the pending run as the caller read it before
    taking the lock, if it did (None: it was deleted); a resume that must reach Prefect needs it."""
    resuming = to == EnrollmentStatus.ACTIVE and plan.status == EnrollmentStatus.PAUSED.value
    follows = follow_in_prefect if follow_in_prefect is not None else actor not in (Actor.PREFECT, Actor.FLOW)
    seen = None
    if resuming and follows and plan.prefect_flow_run_id is not None:
        if run is NOT_READ or (run is not None and run.id != plan.prefect_flow_run_id):
            run = prefect_runs.read_run(plan.prefect_flow_run_id)
        seen = run_history.view(run, plan.enrollment_id)
    state, now = state_of(session, plan, history=resuming)
    command = machine.Move(
        to, actor, now, content=event.pop("content", {}), event_type=event_type, follow=follow_in_prefect, run=seen, extra=event,
    )
    return commit(session, plan, machine.apply(state, command))


def complete(session: Session, plan: EnrollmentPlan, *, flow_run_id: uuid.UUID | None) -> EnrollmentPlan:
    return move(
        session, plan, EnrollmentStatus.COMPLETED, actor=Actor.FLOW, flow_run_id=flow_run_id,
        dedupe_key=f"enrollment:{plan.enrollment_id}:completed",
    )


def fail(session: Session, plan: EnrollmentPlan, step_index: int, reason: str, **details: Any) -> EnrollmentPlan:
    """STEP_FAILED and the enrollment FAILED, together."""
    return _do(session, plan, machine.Fail(step_index, reason, datetime.now(UTC), details))


def advance(
    session: Session, plan: EnrollmentPlan, step_index: int, *, event_type: EventType | None = None, **event: Any
) -> EnrollmentPlan:
    """Step `step_index` is done (sent, skipped, waited, outcome unknown): record that and move on."""
    recorded = None
    if event_type is not None:
        recorded = machine.Event(event_type, step_index, event.pop("content", None) or {}, event.pop("flow_run_id", None), event)
    return _do(session, plan, machine.Advance(step_index, recorded))


def reschedule(
    session: Session,
    plan: EnrollmentPlan,
    *,
    due: datetime | None,
    actor: Actor,
    why: str | None = None,
    event_type: EventType | None = None,
    content: dict[str, Any] | None = None,
    **event: Any,
) -> EnrollmentPlan:
    """The one way to give an enrollment its next pending run (`machine.Reschedule`): its epoch
    rises, its due time (None: now) is stored with no run id yet, and the run of its current
    step for that epoch is created once this commits (`effects.deliver_run`). `why` ends the
    run's state message ("runs when …"). The previous pending run is stale from the commit on."""
    return _do(session, plan, machine.Reschedule(due, actor, why, event_type, content or {}, event))


def observe(
    session: Session, plan: EnrollmentPlan, run: machine.Run, *, starting_run_id: uuid.UUID | None = None
) -> EnrollmentPlan:
    """What Prefect showed of the pending run (`machine.Observe`), read before the lock."""
    state, now = state_of(session, plan, history=True)
    return commit(session, plan, machine.apply(state, machine.Observe(run, now, starting_run_id)))


def hand_back(session: Session, plan: EnrollmentPlan, run_id: uuid.UUID, *, suspended: bool, content: dict[str, Any]) -> EnrollmentPlan:
    """An operator suspended run `run_id` as it handed the enrollment over to its next run: the
    enrollment is PAUSED. A run still suspended is the pending run again (the one it handed over
    to is dropped); one that ended anyway leaves its successor to be suspended."""
    state, now = state_of(session, plan)
    outcome = machine.Outcome(state)
    if suspended:
        outcome = outcome.then(machine.Adopt(run_id, {"previous_run_id": str(plan.prefect_flow_run_id), **content}, take_back=True))
    outcome = outcome.then(machine.Move(EnrollmentStatus.PAUSED, Actor.PREFECT, now, content=content, follow=not suspended))
    return commit(session, plan, outcome)


def record_run(session: Session, plan: EnrollmentPlan, flow_run_id: uuid.UUID) -> EnrollmentPlan:
    return _do(session, plan, machine.RecordRun(flow_run_id))


def pending_run_id(enrollment_id: int) -> uuid.UUID | None:
    with session_scope(read_only=True) as session:
        return session.scalar(select(Enrollment.prefect_flow_run_id).where(Enrollment.id == enrollment_id))


def record_delivered_run(session: Session, enrollment_id: int, epoch: int, flow_run_id: uuid.UUID) -> str | None:
    """A run created after commit, written back only where the enrollment is still at its epoch
    and has no run yet. Returns the enrollment's status then; None when it was not written."""
    return session.scalar(
        update(Enrollment)
        .where(Enrollment.id == enrollment_id, Enrollment.epoch == epoch, Enrollment.prefect_flow_run_id.is_(None))
        .values(prefect_flow_run_id=flow_run_id)
        .returning(Enrollment.status)
    )
