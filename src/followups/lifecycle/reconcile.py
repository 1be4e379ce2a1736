"""The one rule for making an enrollment agree with its pending Prefect run.

Operators act on runs in the Prefect UI, CLI or API: they suspend, resume, cancel, delete and
start them. Whoever notices first applies the same rule: the sync flow (triggered by Prefect's
state events), the sequence flow when it starts or between steps, every control operation
before it acts, and the `reconcile-enrollments` sweep. `decide` is pure; `reconcile` applies
its decision through `lifecycle.store`.

Prefect is never called under the enrollment's row lock: what the rule needs of the run (its
state, and the few facts only its history shows) is read first, outside any transaction, into a
`Sight`. Under the lock the sight is used only if the enrollment, its epoch and the effects on its
run are as they were when it was taken; otherwise the caller looks again (`under_lock`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Callable, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from followups import prefect_runs, run_history
from followups.db.models import EnrollmentStatus, EventType, FollowUpEvent
from followups.db.session import session_scope
from followups.errors import BusyError, NotFoundError
from followups.lifecycle import effects, store
from followups.lifecycle.plan import EnrollmentPlan, load_plan
from followups.lifecycle.transitions import Actor

T = TypeVar("T")


class Action(StrEnum):
    NONE = "none"
    PAUSE = "pause"  # suspended in Prefect: the enrollment is PAUSED
    RESUME = "resume"  # resumed in Prefect: the enrollment is ACTIVE again
    RESUME_RUN = "resume-run"  # the run suspended itself for a pause a resume then undid: resume it
    CANCEL = "cancel"  # cancelled in Prefect: the enrollment is CANCELLED
    RESCHEDULE = "reschedule"  # the pending run is gone, ended or not ours: a new one at the due time
    SCHEDULE = "schedule"  # an ACTIVE enrollment never got its first run (its enroller died in between)
    ADOPT = "adopt"  # the pending run is gone or ended and an operator started a new run: it continues


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str = ""


NOTHING = Decision(Action.NONE)
NOT_STARTED = {"SCHEDULED", "PENDING"}
# How long an ACTIVE enrollment may sit without a pending run before the sweep schedules one:
# enrolling commits the row, then creates its first run, seconds apart.
UNSCHEDULED_GRACE_SECONDS = 300
CANCELLED_STATES = {"CANCELLED", "CANCELLING"}
ENDED_STATES = {"COMPLETED", "FAILED", "CRASHED"}
KILLED_STATES = {"FAILED", "CRASHED"}  # how a run whose process was killed for a cancel may end
REPAIR_BACKOFF_SECONDS = 30  # the second repair of one step waits 30 s, the third 60 s, ...
MAX_REPAIR_BACKOFF = 3600


def decide(
    status: str,
    pending_run_id: uuid.UUID | None,
    run_state: str | None,
    *,
    starting_run_id: uuid.UUID | None = None,
    run_is_ours: bool = True,
    suspend_expired: bool = False,
    stopped_by_runner: bool = False,
    resumed_in_prefect: bool = False,
    suspended_itself: bool = False,
    cancel_requested: bool = False,
    unscheduled_for: float | None = None,
    unscheduled_grace: float = UNSCHEDULED_GRACE_SECONDS,
) -> Decision:
    """What the enrollment must do about its pending run's state.

    `run_state` is the pending run's state type (None: deleted in Prefect). An enrollment with
    no pending run at all has nothing to agree with. `starting_run_id` is set by a flow run that
    is starting now. `run_is_ours` is False when the pending run is another enrollment's or
    another database's. `suspend_expired` says the run failed because a suspend with a timeout
    (the Prefect UI's Pause dialog always sets one) ran out: the operator meant a pause.
    `stopped_by_runner` says the run was Cancelled by its runner shutting down, which nobody
    asked for: it is repaired like a crashed run. `resumed_in_prefect` (read only for a PAUSED
    enrollment's starting pending run) says the run's history shows a resume after its suspend;
    without one, the run was claimed by a worker before the suspend landed and must not go on.
    `suspended_itself` says the suspended run was suspended by its own flow, which does so only
    for an enrollment it found PAUSED: if the enrollment is ACTIVE now, a resume came in between
    (finding the run still running, so nothing to resume) and the run must be resumed, not the
    enrollment paused.
    `cancel_requested` (read only for an ACTIVE enrollment's pending run that is starting or ended
    Crashed or Failed) says an operator cancelled the run since it was last scheduled: a runner
    that had claimed it started it anyway, or its process, killed for the cancel, reported a crash.
    `unscheduled_for` is how long (seconds) an enrollment without a pending run has been so.
    """
    if pending_run_id is None and status == EnrollmentStatus.ACTIVE and (unscheduled_for or 0) > unscheduled_grace:
        return Decision(Action.SCHEDULE, "the enrollment never got its first run")
    if pending_run_id is None or status not in (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED):
        return NOTHING
    gone = run_state is None or run_state in ENDED_STATES or stopped_by_runner or not run_is_ours
    if starting_run_id is not None and starting_run_id != pending_run_id:
        # Someone started a fresh run (e.g. `prefect deployment run`): it carries the enrollment
        # on when the pending run cannot; otherwise the pending run keeps it.
        if gone:
            return Decision(Action.ADOPT, "a new run was started in Prefect and the pending run had ended")
        starting_run_id = None
    if status == EnrollmentStatus.ACTIVE:
        if cancel_requested and starting_run_id is not None:
            return Decision(Action.CANCEL, "the run was cancelled in Prefect before it started")
        if cancel_requested and run_state in KILLED_STATES:
            return Decision(Action.CANCEL, f"the run was cancelled in Prefect and its process ended {run_state}")
        if not run_is_ours:
            return Decision(Action.RESCHEDULE, "the pending run belongs to another enrollment or database")
        if run_state is None:
            return Decision(Action.RESCHEDULE, "the pending run is missing (deleted in Prefect)")
        if run_state == "PAUSED":
            if suspended_itself:
                return Decision(Action.RESUME_RUN, "the run suspended itself for a pause that a resume has since undone")
            return Decision(Action.PAUSE, "the pending run was suspended in Prefect")
        if suspend_expired:
            return Decision(Action.PAUSE, "the pending run was suspended in Prefect and its suspend expired")
        if stopped_by_runner:
            return Decision(Action.RESCHEDULE, "the pending run was stopped by its runner shutting down")
        if run_state in CANCELLED_STATES:
            return Decision(Action.CANCEL, "the pending run was cancelled in Prefect")
        if run_state in ENDED_STATES:
            return Decision(Action.RESCHEDULE, f"the pending run ended {run_state} without finishing its step")
        return NOTHING
    if starting_run_id is not None:
        if resumed_in_prefect:
            return Decision(Action.RESUME, "the suspended run was resumed in Prefect")
        # A worker claimed the run before the pause suspended it, and Prefect lets a claimed run
        # start from Suspended: nobody resumed it, so the flow suspends itself again.
        return NOTHING
    if stopped_by_runner:
        return NOTHING  # like an ended run: stays PAUSED; resuming starts a new run
    if run_state in NOT_STARTED and run_is_ours:
        # Our pause keeps the run Suspended; Scheduled again means someone resumed it.
        return Decision(Action.RESUME, "the suspended run was resumed in Prefect")
    if run_state in CANCELLED_STATES:
        return Decision(Action.CANCEL, "the suspended run was cancelled in Prefect")
    # RUNNING: the step in flight when the pause came finishes, then the flow suspends itself.
    # Gone or ended (e.g. an expired suspend): stays PAUSED; resuming starts a new run.
    return NOTHING


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
    """Read from Prefect what `decide` needs about an enrollment in `status` whose pending run
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
        and (starting_it or prefect_runs.state_type(run) in KILLED_STATES)
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
    """Apply `decide` to a plan loaded with the row lock, on what `sight` saw of its pending run
    (taken with the same `starting_run_id`, and checked with `Sight.holds`). Returns the plan as
    it is now. Makes no call to Prefect.

    An enrollment with an undelivered effect is left alone: its run is about to change, so what
    it shows now (a suspend that a committed resume will undo, say) is no operator's doing."""
    if not plan.is_open or plan.prefect_flow_run_id is None or sight.pending_run_id != plan.prefect_flow_run_id:
        return plan
    if effects.undelivered(session, plan.enrollment_id):
        return plan
    run = sight.run
    decision = decide(
        plan.status,
        plan.prefect_flow_run_id,
        prefect_runs.state_type(run),
        starting_run_id=starting_run_id,
        run_is_ours=run is None or prefect_runs.belongs_here(run, plan.enrollment_id),
        suspend_expired=prefect_runs.suspend_expired(run),
        stopped_by_runner=sight.stopped_by_runner,
        resumed_in_prefect=sight.resumed,
        suspended_itself=prefect_runs.suspended_itself(run),
        cancel_requested=sight.cancelled,
    )
    if decision.action is Action.RESUME_RUN:
        return store.resume_own_run(session, plan, run, content={"reason": decision.why, "run_state": "PAUSED"})
    plan = apply(session, plan, decision, run_state=prefect_runs.state_type(run), starting_run_id=starting_run_id)
    if plan.status == EnrollmentStatus.PAUSED and prefect_runs.resumes_in_place(run):
        # Paused without a reschedule: Prefect's Resume would leave it Running with no process
        # behind it. Suspended instead, its Resume reschedules it and reaches us as a resume.
        effects.record(session, plan.enrollment_id, effects.Kind.SUSPEND, run.id)
    return plan


def apply(
    session: Session,
    plan: EnrollmentPlan,
    decision: Decision,
    *,
    run_state: str | None,
    starting_run_id: uuid.UUID | None = None,
) -> EnrollmentPlan:
    content = {"reason": decision.why, "run_state": run_state}
    if decision.action is Action.PAUSE:
        return store.move(session, plan, EnrollmentStatus.PAUSED, actor=Actor.PREFECT, content=content)
    if decision.action is Action.RESUME:
        moved = store.move(session, plan, EnrollmentStatus.ACTIVE, actor=Actor.PREFECT, content=content)
        if run_state in NOT_STARTED and moved.next_due_at and moved.next_due_at > datetime.now(UTC):
            # Prefect's Resume makes the run due now; what was left of the wait is kept instead.
            effects.record(session, moved.enrollment_id, effects.Kind.RESUME, moved.prefect_flow_run_id, due_at=moved.next_due_at)
        return moved
    if decision.action is Action.CANCEL:
        return store.move(session, plan, EnrollmentStatus.CANCELLED, actor=Actor.PREFECT, content=content)
    previous = {"previous_run_id": str(plan.prefect_flow_run_id) if plan.prefect_flow_run_id else None}
    if decision.action is Action.ADOPT:
        assert starting_run_id is not None
        if plan.status == EnrollmentStatus.PAUSED:
            plan = store.move(session, plan, EnrollmentStatus.ACTIVE, actor=Actor.PREFECT, content=content)
        return store.adopt(session, plan, starting_run_id, content={**content, **previous})
    if decision.action is Action.SCHEDULE:
        # The key of a first run: if the enroller did create it before dying, this finds that run
        # rather than making a second one.
        return store.reschedule(
            session, plan, due=plan.next_due_at, actor=Actor.RECONCILER, event_type=EventType.RECONCILED,
            why=f"due (repaired: {decision.why})",
            content={**content, "previous_run_id": None},
        )
    if decision.action is Action.RESCHEDULE:
        due = plan.next_due_at if plan.next_due_at and plan.next_due_at > datetime.now(UTC) else None
        repairs = _repairs_of_step(session, plan)
        if repairs:
            # A run that keeps failing (a bug, the database down) is not replaced in a tight loop.
            backoff = datetime.now(UTC) + timedelta(seconds=min(REPAIR_BACKOFF_SECONDS * 2 ** (repairs - 1), MAX_REPAIR_BACKOFF))
            due = max(due, backoff) if due else backoff
        return store.reschedule(
            session, plan, due=due, actor=Actor.RECONCILER, why=f"due (repaired: {decision.why})",
            event_type=EventType.RECONCILED, content={**content, **previous},
        )
    return plan


def _repairs_of_step(session: Session, plan: EnrollmentPlan) -> int:
    return session.scalar(
        select(func.count()).select_from(FollowUpEvent).where(
            FollowUpEvent.enrollment_id == plan.enrollment_id,
            FollowUpEvent.step_index == (plan.current_step if not plan.finished_steps else None),
            FollowUpEvent.event_type == EventType.RECONCILED.value,
        )
    ) or 0


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
        if prefect_runs.is_suspended(run):
            plan = store.take_back(session, plan, run.id, content=content)
            return store.move(session, plan, EnrollmentStatus.PAUSED, actor=Actor.PREFECT, content=content)
        return store.move(session, plan, EnrollmentStatus.PAUSED, actor=Actor.PREFECT, follow_in_prefect=True, content=content)


def reconcile_enrollment(enrollment_id: int) -> EnrollmentPlan:
    """The rule applied to one enrollment, in a transaction of its own."""
    return under_lock(enrollment_id, reconcile)


_UNRECORDED = {
    Action.PAUSE: "PAUSED in Prefect (its run was suspended there); not recorded yet",
    Action.RESUME: "ACTIVE in Prefect (its run was resumed there); not recorded yet",
    Action.CANCEL: "CANCELLED in Prefect (its run was cancelled there); not recorded yet",
    Action.RESUME_RUN: "its run suspended itself for a pause since undone; it is being resumed",
    Action.RESCHEDULE: "its pending run cannot go on ({state}); a new one is being scheduled",
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
    decision = decide(
        plan.status, plan.prefect_flow_run_id, prefect_runs.state_type(run),
        run_is_ours=run is None or prefect_runs.belongs_here(run, plan.enrollment_id),
        suspend_expired=prefect_runs.suspend_expired(run),
        stopped_by_runner=run_history.stopped_by_runner(run),
        suspended_itself=prefect_runs.suspended_itself(run),
    )
    sentence = _UNRECORDED.get(decision.action)
    return state, sentence.format(state=state or "deleted") if sentence else None
