"""Effects on Prefect runs, committed with the change that calls for them and carried out after:
suspend, resume or cancel the pending run, and create the next one (`RunOrder`).

A pause, resume or cancel changes the enrollment's row and writes what its pending run must
become (suspended, resumed, cancelled) in the same transaction: the `run_effects` row of the
enrollment, where the latest effect replaces the earlier one. Prefect is called only after the
commit (`db.session.after_commit`), never while the row lock is held, so a slow or unreachable
Prefect API holds no database connection and no lock.

Delivery is idempotent: each effect reads the run and changes it only when it is not already
so. One dispatcher at a time delivers an enrollment's effects (a claim of a few seconds on its
row, taken and released in short transactions of their own), and it goes on until it has
delivered the latest one: a resume committed while the pause before it was being delivered is
never overtaken by that pause. What a crash or an unreachable Prefect left undelivered, the
sweep delivers later (`deliver_overdue`), and `followups doctor` reports.

While an enrollment has an undelivered effect its run is expected to disagree with it, so the
reconciliation rule leaves it alone (`undelivered`).
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from followups import prefect_runs
from followups.db.models import FINISHED_STATUSES, Deal, Enrollment, EnrollmentStatus, RunEffect
from followups.db.session import after_commit, session_scope
from followups.lifecycle.machine import EffectKind

log = logging.getLogger(__name__)

# A session whose effects its caller delivers itself, together (`deliver_many`): a set in
# `session.info[BATCH]` collects their enrollments.
BATCH = "effects.batch"

SHOW_THREADS = 4
READ = object()  # carry_out reads the run itself

# Longer than any one delivery (a read and a state change, each bounded by the client's timeout),
# so that two dispatchers never deliver one enrollment's effects at once.
CLAIM_SECONDS = 120


Kind = EffectKind


@dataclass(frozen=True)
class Effect:
    enrollment_id: int
    seq: int
    kind: Kind
    flow_run_id: uuid.UUID
    due_at: datetime | None


def record(session: Session, enrollment_id: int, kind: Kind, flow_run_id: uuid.UUID, *, due_at: datetime | None = None) -> None:
    """Write the effect in the caller's transaction, and deliver it once that commits."""
    values = {"kind": kind.value, "flow_run_id": flow_run_id, "due_at": due_at, "recorded_at": func.clock_timestamp(),
              "last_error": None}
    session.execute(
        insert(RunEffect)
        .values(enrollment_id=enrollment_id, seq=1, **values)
        .on_conflict_do_update(index_elements=[RunEffect.enrollment_id], set_={"seq": RunEffect.seq + 1, **values})
    )
    batch = session.info.get(BATCH)
    if batch is not None:  # the caller delivers them all at once (`deliver_many`)
        batch.add(enrollment_id)
    elif not session.info.get(("effects", enrollment_id)):
        session.info[("effects", enrollment_id)] = True
        after_commit(session, lambda: deliver(enrollment_id))


def marker(session: Session, enrollment_id: int) -> tuple[int, int] | None:
    """(written, delivered) counts of the enrollment's effects: a caller that reads the run outside
    the transaction takes this before the read and compares it under the lock, so that no effect
    was written or delivered in between (its read of the run would be stale)."""
    row = session.execute(select(RunEffect.seq, RunEffect.delivered_seq).where(RunEffect.enrollment_id == enrollment_id)).first()
    return (row.seq, row.delivered_seq) if row else None


def undelivered(session: Session, enrollment_id: int) -> bool:
    return bool(
        session.scalar(select(literal(True)).where(RunEffect.enrollment_id == enrollment_id, RunEffect.delivered_seq < RunEffect.seq))
    )


def _release(effect: Effect, error: str | None) -> bool:
    """Mark the effect delivered (or failed); True when a newer one was written meanwhile."""
    with session_scope() as session:
        if error is not None:
            session.execute(
                update(RunEffect).where(RunEffect.enrollment_id == effect.enrollment_id).values(claimed_until=None, last_error=error[:500])
            )
            return False
        return bool(
            session.scalar(
                update(RunEffect)
                .where(RunEffect.enrollment_id == effect.enrollment_id)
                .values(delivered_seq=func.greatest(RunEffect.delivered_seq, effect.seq), claimed_until=None, last_error=None)
                .returning(RunEffect.seq > RunEffect.delivered_seq)
            )
        )


def carry_out(effect: Effect, run: Any = READ) -> None:
    """Make the run what the effect says, if it is not already (idempotent). `run`: the run as
    just read, when the caller read it."""
    if run is READ:
        run = prefect_runs.read_run(effect.flow_run_id)
    if effect.kind is Kind.SUSPEND:
        if prefect_runs.is_live(run) and (not prefect_runs.is_suspended(run) or prefect_runs.resumes_in_place(run)):
            prefect_runs.suspend_run(run)
    elif effect.kind is Kind.RESUME:
        if prefect_runs.is_suspended(run):
            prefect_runs.resume_run(run, effect.due_at)
        elif prefect_runs.due_before(run, effect.due_at):
            # Resumed in Prefect, which makes it due now: due when what was left of its wait ends
            # (named plainly Scheduled: a second "Resuming" would trigger a sync run for nothing).
            prefect_runs.resume_run(run, effect.due_at, name="Scheduled")
    elif prefect_runs.is_live(run):
        prefect_runs.cancel_run(run)


def deliver(enrollment_id: int) -> bool:
    """Deliver the enrollment's latest effect, unless another dispatcher is at it. Returns False
    when Prefect could not be reached or refused (the effect stays for the sweep). Never raises
    for Prefect: the change it follows is committed, and stands."""
    delivered = False
    while True:
        claimed = _claim_many([enrollment_id])
        if not claimed:
            break
        effect = claimed[0]
        try:
            carry_out(effect)
        except Exception as exc:  # noqa: BLE001 - unreachable or refusing: redelivered by the sweep
            log.warning("could not %s flow run %s of enrollment %s yet: %s", effect.kind, effect.flow_run_id, enrollment_id, exc)
            _release(effect, f"{type(exc).__name__}: {exc}")
            return False
        delivered = True
        if not _release(effect, None):
            break
    if delivered:
        _show_in_prefect(enrollment_id)
    return True


def _claim_many(enrollment_ids: list[int]) -> list[Effect]:
    with session_scope() as session:
        rows = session.execute(
            update(RunEffect)
            .where(
                RunEffect.enrollment_id.in_(enrollment_ids),
                RunEffect.delivered_seq < RunEffect.seq,
                or_(RunEffect.claimed_until.is_(None), RunEffect.claimed_until < func.now()),
            )
            .values(claimed_until=func.now() + timedelta(seconds=CLAIM_SECONDS), attempts=RunEffect.attempts + 1)
            .returning(RunEffect.enrollment_id, RunEffect.seq, RunEffect.kind, RunEffect.flow_run_id, RunEffect.due_at)
        ).all()
    return [Effect(row.enrollment_id, row.seq, Kind(row.kind), row.flow_run_id, row.due_at) for row in rows]


def deliver_many(enrollment_ids: list[int]) -> None:
    """`deliver` for many enrollments with a few requests: one read of their runs, and one
    state change per 50 runs for suspends of runs that wait and for cancels; the rest (a
    running run to suspend, a resume with what is left of its wait) one at a time. Whatever
    fails stays for the sweep, as with `deliver`."""
    from prefect.states import Cancelled, Scheduled, Suspended

    claimed = _claim_many(sorted(set(enrollment_ids)))
    if not claimed:
        return
    runs = prefect_runs.read_runs([effect.flow_run_id for effect in claimed])
    # Effects that one state carries out for many runs at once; the rest one at a time.
    groups: dict[Any, list[Effect]] = {}
    one_by_one: list[Effect] = []
    now = datetime.now(UTC)
    for effect in claimed:
        run = runs.get(effect.flow_run_id)
        if effect.kind is Kind.SUSPEND and prefect_runs.state_type(run) in ("SCHEDULED", "PENDING"):
            groups.setdefault(Kind.SUSPEND, []).append(effect)
        elif effect.kind is Kind.CANCEL and prefect_runs.is_live(run):
            groups.setdefault(Kind.CANCEL, []).append(effect)
        elif (effect.kind is Kind.RESUME and prefect_runs.is_suspended(run) and not prefect_runs.resumes_in_place(run)
              and effect.due_at is not None and effect.due_at > now):
            groups.setdefault(effect.due_at, []).append(effect)  # as `resume_run` does, per due time
        else:
            one_by_one.append(effect)
    errors: dict[int, str] = {}
    for key, group in groups.items():
        if key is Kind.SUSPEND:
            state = Suspended(pause_key=f"followups-{uuid.uuid4().hex[:8]}")
        elif key is Kind.CANCEL:
            state = Cancelled(message="follow-up sequence cancelled")
        else:
            state = Scheduled(scheduled_time=key, name="Resuming")
        try:
            accepted = prefect_runs.set_states([effect.flow_run_id for effect in group], state)
        except Exception as exc:  # noqa: BLE001 - tried one at a time below
            log.warning("bulk state change of %s runs failed: %s", len(group), exc)
            accepted = set()
        one_by_one += [effect for effect in group if effect.flow_run_id not in accepted]
    for effect in one_by_one:
        try:
            carry_out(effect, runs.get(effect.flow_run_id))
        except Exception as exc:  # noqa: BLE001 - unreachable or refusing: redelivered by the sweep
            errors[effect.enrollment_id] = f"{type(exc).__name__}: {exc}"
    for effect in claimed:
        if _release(effect, errors.get(effect.enrollment_id)):
            deliver(effect.enrollment_id)  # a newer effect was written meanwhile
    shown = [effect.enrollment_id for effect in claimed if effect.enrollment_id not in errors]
    # Each timeline is a few reads and a request, mostly waiting: a few at a time.
    with ThreadPoolExecutor(max_workers=SHOW_THREADS, thread_name_prefix="followups-timelines") as pool:
        context = contextvars.copy_context()  # this caller's Prefect settings
        list(pool.map(lambda enrollment_id: context.copy().run(_show_in_prefect, enrollment_id), shown))


def _show_in_prefect(enrollment_id: int) -> None:
    """The enrollment's timeline artifact in the Prefect UI, brought up to date: a pause, resume
    or cancel made outside a run would leave it saying what the last run saw."""
    from followups.flows.story import publish_timeline

    try:
        publish_timeline(enrollment_id, in_a_run=False)
    except Exception as exc:  # noqa: BLE001 - a picture for the operator; the change stands
        log.warning("could not update the timeline artifact of enrollment %s: %s", enrollment_id, exc)


def overdue(session: Session, older_than: float) -> list[tuple[int, datetime, str | None]]:
    """(enrollment, recorded at, last error) of effects undelivered for longer than `older_than` s."""
    rows = session.execute(
        select(RunEffect.enrollment_id, RunEffect.recorded_at, RunEffect.last_error)
        .where(RunEffect.delivered_seq < RunEffect.seq, RunEffect.recorded_at < func.now() - timedelta(seconds=older_than))
        .order_by(RunEffect.recorded_at)
    ).all()
    return [tuple(row) for row in rows]


def deliver_overdue(older_than: float) -> tuple[int, int]:
    """Deliver every effect left undelivered for longer than `older_than` s: (delivered, failed)."""
    with session_scope(read_only=True) as session:
        ids = [row[0] for row in overdue(session, older_than)]
    delivered = sum(deliver(enrollment_id) for enrollment_id in ids)
    return delivered, len(ids) - delivered


# -- creating the next pending run -------------------------------------------------------------


@dataclass(frozen=True)
class RunOrder:
    """A pending run to create: what `reschedule` committed, or what the sweep reads back."""

    enrollment_id: int
    epoch: int
    step_index: int
    deal_ref: str
    due: datetime | None
    message: str | None = None


def deliver_run(order: RunOrder) -> uuid.UUID | None:
    """Create the run an order calls for (idempotent: the epoch is in its key) and write its id
    back where the enrollment is still at that epoch. A pause or an end committed meanwhile is
    carried to the run as an effect; a run no longer wanted (the epoch moved on) is cancelled.
    Returns its id; None when Prefect could not be reached (the sweep delivers it later)."""
    try:
        run_id = prefect_runs.schedule_sequence_run(
            order.enrollment_id, order.deal_ref, order.step_index, scheduled_time=order.due, epoch=order.epoch,
            message=order.message,
        )
    except Exception as exc:  # noqa: BLE001 - the change is committed; the sweep creates the run
        log.warning("could not create the next run of enrollment %s yet (epoch %s): %s", order.enrollment_id, order.epoch, exc)
        return None
    from followups.lifecycle import store  # store records effects: imported here, not at the top

    with session_scope() as session:
        status = store.record_delivered_run(session, order.enrollment_id, order.epoch, run_id)
        if status is None:
            current = session.execute(
                select(Enrollment.epoch, Enrollment.prefect_flow_run_id).where(Enrollment.id == order.enrollment_id)
            ).first()
            # Already recorded (by the run itself, starting) or no longer wanted.
            stale = current is None or (current.epoch, current.prefect_flow_run_id) != (order.epoch, run_id)
        else:
            stale = False
            if status == EnrollmentStatus.PAUSED.value:
                record(session, order.enrollment_id, Kind.SUSPEND, run_id)
            elif EnrollmentStatus(status) in FINISHED_STATUSES:
                record(session, order.enrollment_id, Kind.CANCEL, run_id)
    if stale:
        cancel_quietly(run_id)
    return run_id


def cancel_quietly(flow_run_id: uuid.UUID) -> None:
    """Cancel a run nobody counts on any more, if Prefect answers: should it start anyway, it
    finds its epoch is not the enrollment's and does nothing."""
    try:
        run = prefect_runs.read_run(flow_run_id)
        if prefect_runs.is_live(run):
            prefect_runs.cancel_run(run)
    except Exception as exc:  # noqa: BLE001 - Prefect down or refusing: the run is stale regardless
        log.warning("could not cancel flow run %s: %s", flow_run_id, exc)


def undelivered_runs(session: Session, older_than: float) -> list[RunOrder]:
    """ACTIVE enrollments whose pending run was committed longer than `older_than` s ago and not
    created (a crash or an unreachable Prefect after the commit)."""
    rows = session.execute(
        select(Enrollment.id, Enrollment.epoch, Enrollment.current_step, Enrollment.next_due_at, Deal.external_id)
        .join(Deal, Deal.id == Enrollment.deal_id)
        .where(
            Enrollment.status == EnrollmentStatus.ACTIVE.value, Enrollment.prefect_flow_run_id.is_(None), Enrollment.epoch > 0,
            Enrollment.updated_at < func.now() - timedelta(seconds=older_than),
        )
        .order_by(Enrollment.id)
    ).all()
    return [RunOrder(row.id, row.epoch, row.current_step, row.external_id, row.next_due_at, "runs when due (delivered late)") for row in rows]
