"""The one rule for making an enrollment agree with its pending Prefect run.

Operators act on runs in the Prefect UI, CLI or API: they suspend, resume, cancel and delete
them. Whoever notices first applies the same rule: the sync flow (triggered by Prefect's state
events), the sequence flow when it starts or between steps, and every control operation before
it acts. `decide` is pure; `reconcile` applies its decision through `lifecycle.store`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from followups import prefect_runs
from followups.db.models import EnrollmentStatus, EventType
from followups.lifecycle import store
from followups.lifecycle.plan import EnrollmentPlan, load_plan
from followups.lifecycle.transitions import Actor


class Action(StrEnum):
    NONE = "none"
    PAUSE = "pause"  # suspended in Prefect: the enrollment is PAUSED
    RESUME = "resume"  # resumed in Prefect: the enrollment is ACTIVE again
    CANCEL = "cancel"  # cancelled in Prefect: the enrollment is CANCELLED
    RESCHEDULE = "reschedule"  # the pending run is gone or ended: a new one at the due time


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str = ""


NOTHING = Decision(Action.NONE)
NOT_STARTED = {"SCHEDULED", "PENDING"}
CANCELLED_STATES = {"CANCELLED", "CANCELLING"}


def decide(
    status: str,
    pending_run_id: uuid.UUID | None,
    run_state: str | None,
    *,
    starting_run_id: uuid.UUID | None = None,
) -> Decision:
    """What the enrollment must do about its pending run's state.

    `run_state` is the pending run's state type (None: deleted in Prefect). An enrollment with
    no pending run at all has nothing to agree with. `starting_run_id` is set by a flow run that
    is starting now: a suspended run only starts again when someone resumed it.
    """
    if pending_run_id is None:
        return NOTHING
    if status == EnrollmentStatus.ACTIVE:
        if run_state is None:
            return Decision(Action.RESCHEDULE, "the pending run is missing (deleted in Prefect)")
        if run_state == "PAUSED":
            return Decision(Action.PAUSE, "the pending run was suspended in Prefect")
        if run_state in CANCELLED_STATES:
            return Decision(Action.CANCEL, "the pending run was cancelled in Prefect")
        if run_state in {"COMPLETED", "FAILED", "CRASHED"}:
            return Decision(Action.RESCHEDULE, f"the pending run ended {run_state} without finishing its step")
        return NOTHING
    if status == EnrollmentStatus.PAUSED:
        if starting_run_id is not None and starting_run_id == pending_run_id:
            return Decision(Action.RESUME, "the suspended run was resumed in Prefect")
        if run_state in NOT_STARTED:
            # Our pause keeps the run Suspended; Scheduled again means someone resumed it.
            return Decision(Action.RESUME, "the suspended run was resumed in Prefect")
        if run_state in CANCELLED_STATES:
            return Decision(Action.CANCEL, "the suspended run was cancelled in Prefect")
        # RUNNING: the step in flight when the pause came finishes, then the flow suspends itself.
        # Gone or ended (e.g. an expired suspend): stays PAUSED; resuming starts a new run.
        return NOTHING
    return NOTHING


def reconcile(
    session: Session, plan: EnrollmentPlan, *, run: Any = None, read: bool = True, starting_run_id: uuid.UUID | None = None
) -> EnrollmentPlan:
    """Apply `decide` to a plan loaded with the row lock. Returns the plan as it is now."""
    if not plan.is_open or plan.prefect_flow_run_id is None:
        return plan
    if read:
        run = prefect_runs.read_run(plan.prefect_flow_run_id)
    decision = decide(plan.status, plan.prefect_flow_run_id, prefect_runs.state_type(run), starting_run_id=starting_run_id)
    content = {"reason": decision.why, "run_state": prefect_runs.state_type(run)}
    if decision.action is Action.PAUSE:
        return store.move(session, plan, EnrollmentStatus.PAUSED, actor=Actor.PREFECT, content=content)
    if decision.action is Action.RESUME:
        return store.move(session, plan, EnrollmentStatus.ACTIVE, actor=Actor.PREFECT, content=content)
    if decision.action is Action.CANCEL:
        return store.move(session, plan, EnrollmentStatus.CANCELLED, actor=Actor.PREFECT, content=content)
    if decision.action is Action.RESCHEDULE:
        due = plan.next_due_at if plan.next_due_at and plan.next_due_at > datetime.now(UTC) else None
        return store.reschedule(
            session, plan, due=due, actor=Actor.RECONCILER, key=f"reconciled:{uuid.uuid4().hex[:8]}",
            event_type=EventType.RECONCILED,
            content={**content, "previous_run_id": str(plan.prefect_flow_run_id) if plan.prefect_flow_run_id else None},
        )
    return plan


def reconcile_enrollment(session: Session, enrollment_id: int) -> EnrollmentPlan:
    return reconcile(session, load_plan(session, enrollment_id, lock=True))
