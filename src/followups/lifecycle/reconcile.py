"""The one rule for making an enrollment agree with its pending Prefect run.

Operators act on runs in the Prefect UI, CLI or API: they suspend, resume, cancel, delete and
start them. Whoever notices first applies the same rule: the sync flow (triggered by Prefect's
state events), the sequence flow when it starts or between steps, every control operation
before it acts, and the `reconcile-enrollments` sweep. The rule itself is the machine's
(`machine.judge`, applied by `machine.Observe`); this module reads what it needs of the run.

Prefect is never called under the enrollment's row lock: what the rule needs of the run (its
state, and the few facts only its history shows) is read first, outside any transaction, into a
`Sight`. Under the lock the sight is used only if the enrollment, its epoch and the effects on its
run are as they were when it was taken; otherwise the caller looks again (`under_lock`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from followups import prefect_runs, run_history
from followups.db.models import EnrollmentStatus, FollowUpEvent
from followups.db.session import session_scope
from followups.errors import BusyError, NotFoundError
from followups.lifecycle import effects, machine, store
from followups.lifecycle.plan import EnrollmentPlan, load_plan

T = TypeVar("T")


UNREAD: Any = object()  # `look`'s default: the run has not been read yet
LOOK_ATTEMPTS = 5


@dataclass(frozen=True)
class Sight:
    """What Prefect showed of an enrollment's pending run, read outside any transaction, and the
    enrollment as it was just before. Under the row lock it stands only while `holds`: an effect
    written or delivered since, or another status, run or epoch, makes it stale."""

    status: str
    pending_run_id: uuid.UUID | None
    epoch: int
    effects_marker: tuple[int, int] | None
    run: Any = None  # the pending run; None: there is none, or it was deleted
    resumed: bool = False
    cancelled: bool = False
    stopped_by_runner: bool = False

    def view(self, enrollment_id: int) -> machine.Run:
        return run_history.view(
            self.run, enrollment_id, resumed=self.resumed, cancel_requested=self.cancelled, stopped_by_runner=self.stopped_by_runner,
        )

    def holds(self, session: Session, plan: EnrollmentPlan) -> bool:
        return (plan.status, plan.prefect_flow_run_id, plan.epoch, effects.marker(session, plan.enrollment_id)) == (
            self.status, self.pending_run_id, self.epoch, self.effects_marker,
        )


def look(
    status: str,
    pending_run_id: uuid.UUID | None,
    *,
    epoch: int,
    effects_marker: tuple[int, int] | None,
    run: Any = UNREAD,
    starting_run_id: uuid.UUID | None = None,
) -> Sight:
    """Read from Prefect what the machine needs about an enrollment in `status` whose pending run
    is `pending_run_id`. Call it outside any transaction. `run`: the pending run if the caller
    has read it already (a run of another id is not taken for it)."""
    seen = {"status": status, "pending_run_id": pending_run_id, "epoch": epoch, "effects_marker": effects_marker}
    if pending_run_id is None or EnrollmentStatus(status) not in (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED):
        return Sight(**seen)
    if run is UNREAD or (run is not None and run.id != pending_run_id):
        run = prefect_runs.read_run(pending_run_id)
    starting_it = starting_run_id is not None and starting_run_id == pending_run_id
    # The history is read only where the current state cannot tell (see `run_history`): once per
    # run start, per crashed run and per run its runner stopped.
    return Sight(
        **seen,
        run=run,
        resumed=status == EnrollmentStatus.PAUSED and starting_it and run_history.resumed_since_suspend(pending_run_id),
        cancelled=status == EnrollmentStatus.ACTIVE
        and (starting_it or prefect_runs.state_type(run) in machine.KILLED_STATES)
        and run_history.cancel_requested(pending_run_id),
        stopped_by_runner=run_history.stopped_by_runner(run),
    )


def under_lock(
    enrollment_id: int,
    act: Callable[[Session, EnrollmentPlan, Sight], T],
    *,
    owner_id: int | None = None,
    doing: str = "act on",
) -> T:
    """`act(session, plan, sight)` with the enrollment's row lock held and a sight of its run that
    still stands, taken just before (so no call to Prefect is made under the lock). If the
    enrollment keeps changing between the look and the lock, BusyError."""
    for _ in range(LOOK_ATTEMPTS):
        with session_scope(read_only=True) as session:
            seen = load_plan(session, enrollment_id, owner_id=owner_id)
            marker = effects.marker(session, enrollment_id)
        sight = look(seen.status, seen.prefect_flow_run_id, epoch=seen.epoch, effects_marker=marker)
        with session_scope() as session:
            plan = load_plan(session, enrollment_id, lock=True)
            if sight.holds(session, plan):
                return act(session, plan, sight)
    raise BusyError(f"enrollment {enrollment_id} is changing too fast to {doing} it now; try again")


def reconcile(
    session: Session,
    plan: EnrollmentPlan,
    sight: Sight,
    *,
    starting_run_id: uuid.UUID | None = None,
) -> EnrollmentPlan:
    """Apply the machine's `Observe` to a plan loaded with the row lock, on what `sight` saw of its pending run
    (taken with the same `starting_run_id`, and checked with `Sight.holds`). Returns the plan as
    it is now. Makes no call to Prefect.

    An enrollment with an undelivered effect is left alone: its run is about to change, so what
    it shows now (a suspend that a committed resume will undo, say) is no operator's doing."""
    if not plan.is_open or plan.prefect_flow_run_id is None or sight.pending_run_id != plan.prefect_flow_run_id:
        return plan
    if effects.undelivered(session, plan.enrollment_id):
        return plan
    return store.observe(session, plan, sight.view(plan.enrollment_id), starting_run_id=starting_run_id)


def reconcile_handover(run: Any) -> EnrollmentPlan | None:
    """A run that is no longer its enrollment's pending run changed in Prefect. One case matters:
    an operator suspended it in its last moments, after its last check, as it scheduled the next
    run (a WAIT's) and ended. The operator meant the enrollment, so it is PAUSED:
    - if the run is still suspended (Prefect's engine stops a run it sees suspended), it becomes
      the pending run again and the run it scheduled is cancelled, so resuming it goes on;
    - if it ended Completed (Prefect lets a final state leave Suspended), the run it scheduled is
      suspended, as a pause through our API does.
    It applies only while nothing happened since: the enrollment's latest event is that run's.
    The run's history is read before the row lock is taken, and only for a run in one of those
    two states."""
    if not prefect_runs.from_this_database(run):
        return None
    suspended_late = (prefect_runs.is_suspended(run) or prefect_runs.state_type(run) == "COMPLETED") and (
        run_history.suspended_in_its_last_stretch(run.id)
    )
    with session_scope() as session:
        try:  # load_plan refuses an id that is no enrollment's, whatever its type
            plan = load_plan(session, (run.parameters or {}).get("enrollment_id"), lock=True)
        except NotFoundError:
            return None
        if plan.status != EnrollmentStatus.ACTIVE or plan.prefect_flow_run_id in (None, run.id):
            return plan
        latest_run = session.scalar(
            select(FollowUpEvent.flow_run_id).where(FollowUpEvent.enrollment_id == plan.enrollment_id).order_by(FollowUpEvent.id.desc()).limit(1)
        )
        if latest_run != run.id or not suspended_late:
            return plan
        why = "the run was suspended in Prefect as it handed over to its next run"
        content = {"reason": why, "run_state": prefect_runs.state_type(run), "suspended_run_id": str(run.id)}
        return store.hand_back(session, plan, run.id, suspended=prefect_runs.is_suspended(run), content=content)


def reconcile_enrollment(enrollment_id: int) -> EnrollmentPlan:
    """The rule applied to one enrollment, in a transaction of its own."""
    return under_lock(enrollment_id, reconcile)


_UNRECORDED = {
    "pause": "PAUSED in Prefect (its run was suspended there); not recorded yet",
    "resume": "ACTIVE in Prefect (its run was resumed there); not recorded yet",
    "cancel": "CANCELLED in Prefect (its run was cancelled there); not recorded yet",
    "resume-run": "its run suspended itself for a pause since undone; it is being resumed",
    "reschedule": "its pending run cannot go on ({state}); a new one is being scheduled",
}


def in_prefect(plan: EnrollmentPlan, effect_marker: tuple[int, int] | None) -> tuple[str | None, str | None]:
    """(the pending run's state name, what Prefect shows that the enrollment does not record yet),
    read outside any transaction and never written: the sync trigger or the sweep records it.
    `effect_marker` is `effects.marker`, read with the plan."""
    if not plan.is_open or plan.prefect_flow_run_id is None:
        return None, None
    try:
        run = prefect_runs.read_run(plan.prefect_flow_run_id)
    except Exception:  # noqa: BLE001 - a read for display: the enrollment's own state still stands
        return None, "Prefect could not be reached to compare the run"
    state = run.state.name if run is not None and run.state else None
    if effect_marker is not None and effect_marker[1] < effect_marker[0]:
        return state, "a suspend, resume or cancel of its run is on its way to Prefect"
    seen = run_history.view(run, plan.enrollment_id, stopped_by_runner=run_history.stopped_by_runner(run))
    action, _ = machine.judge(plan.status, plan.prefect_flow_run_id, seen)
    sentence = _UNRECORDED.get(action)
    return state, sentence.format(state=state or "deleted") if sentence else None
