"""The check a sequence run makes when it starts and between steps: may it go on?

It applies the one reconciliation rule (`lifecycle.reconcile`) to the run's own state, so what
an operator did to this run in Prefect shows in the enrollment, and tells the flow what to do:
- the run was suspended in Prefect: the enrollment is PAUSED, and the flow stays suspended;
- the run starts while the enrollment is PAUSED: if its history shows a resume after the suspend,
  someone resumed it in Prefect, so it goes on; if not, a worker had claimed it before the pause
  suspended it (Prefect lets a claimed run start from Suspended), so the flow suspends itself
  again and sends nothing;
- the enrollment was paused through our API between steps: the flow suspends itself, so that
  resuming (from our API or the Prefect UI) restarts this very run;
- a run started by hand while the pending run has ended (an expired suspend, a deleted run)
  takes the enrollment over; beside a live pending run (a Retry of an earlier run in the UI,
  `prefect deployment run`), it ends at once, so an enrollment never has two live runs and
  nothing goes out before the pending run's time;
- a run of another database (two databases sharing one deployment name) is refused untouched.

Which run is the pending one: the run whose id the enrollment holds, or, while that id is being
written back after the commit that called for the run, the run created for the enrollment's
epoch (it then records its own id). A run of an older epoch is stale and ends at once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from followups import prefect_runs
from followups.db.models import EnrollmentStatus
from followups.db.session import session_scope
from followups.errors import BusyError, InvalidStateError, NotFoundError
from followups.lifecycle import effects, store
from followups.lifecycle.plan import EnrollmentPlan, load_plan
from followups.lifecycle.reconcile import look, reconcile


class Next(StrEnum):
    GO = "go"  # run the current step
    STOP = "stop"  # nothing to do: finished, or paused and another run holds it
    STAY_SUSPENDED = "stay-suspended"  # suspended in Prefect: end this attempt as suspended
    SUSPEND = "suspend"  # paused through our API: suspend this run until resumed
    SUPERSEDED = "superseded"  # started beside the enrollment's live pending run: it ends at once


@dataclass(frozen=True)
class Checkpoint:
    plan: EnrollmentPlan
    next: Next
    run_state: Any = None  # this run's Prefect state, for STAY_SUSPENDED


ATTEMPTS = 5


def checkpoint(enrollment_id: int, flow_run_id: uuid.UUID | None, *, starting: bool, run: Any = None) -> Checkpoint:
    """`run`: this run as Prefect's engine holds it, in the state the server has just accepted
    (Running, at the start), so the first look needs no read of its own; later looks read it."""
    starting_run_id = flow_run_id if starting else None
    known = run if run is not None and flow_run_id is not None and run.id == flow_run_id else None
    for _ in range(ATTEMPTS):
        # Prefect is read first, outside any transaction, and what it showed is used under the
        # row lock only if nothing moved in between. The order matters: the enrollment and its
        # effects' marker, then the runs. A pause or resume commits under the lock and changes the
        # run after, so a run read before that marker, or while an effect is on its way, may show
        # a suspend that a resume has since undone; such an effect shows in the marker or as
        # undelivered, and the rule is not applied on a stale read.
        try:
            with session_scope(read_only=True) as session:
                seen = load_plan(session, enrollment_id)
                marker = effects.marker(session, enrollment_id)
        except NotFoundError:
            _refuse_foreign(known or prefect_runs.read_run(flow_run_id), flow_run_id)
            raise
        run, known = known or prefect_runs.read_run(flow_run_id), None
        _refuse_foreign(run, flow_run_id)
        # The run created for the enrollment's epoch, started before its id was written back,
        # is the pending run: it records itself below.
        claims = (
            flow_run_id is not None and seen.prefect_flow_run_id is None and seen.epoch > 0
            and prefect_runs.epoch_of(run) == seen.epoch
        )
        sight = look(
            seen.status, flow_run_id if claims else seen.prefect_flow_run_id, epoch=seen.epoch, effects_marker=marker,
            run=run, starting_run_id=starting_run_id,
        )
        with session_scope() as session:
            plan = load_plan(session, enrollment_id, lock=True)
            if (plan.status, plan.prefect_flow_run_id, plan.epoch, effects.marker(session, enrollment_id)) != (
                seen.status, seen.prefect_flow_run_id, seen.epoch, marker
            ):
                continue
            effect_on_its_way = effects.undelivered(session, enrollment_id)
            is_pending_run = flow_run_id is not None and plan.prefect_flow_run_id == flow_run_id
            if flow_run_id is not None and plan.prefect_flow_run_id is None and plan.epoch > 0:
                if claims:
                    plan = store.record_run(session, plan, flow_run_id)
                    is_pending_run = True
                elif starting:
                    # The enrollment's next run is being created: this one is stale, or started by hand.
                    return Checkpoint(plan, Next.SUPERSEDED)
            # With an effect of ours on its way the run is about to change: what it shows now is
            # no operator's doing, so the rule is not applied.
            if not effect_on_its_way and is_pending_run and run is not None:
                plan = reconcile(session, plan, sight, starting_run_id=starting_run_id)
            elif not effect_on_its_way and starting and run is not None:
                # A run nobody scheduled for this enrollment (e.g. `prefect deployment run`): it
                # takes over when the pending run has ended or vanished, otherwise it only goes along.
                plan = reconcile(session, plan, sight, starting_run_id=flow_run_id)
                is_pending_run = plan.prefect_flow_run_id == flow_run_id
        return _next(plan, run, flow_run_id, is_pending_run, starting)
    raise BusyError(f"enrollment {enrollment_id} is changing too fast for its run to go on now; it will be retried")


def _next(plan: EnrollmentPlan, run: Any, flow_run_id: uuid.UUID | None, is_pending_run: bool, starting: bool) -> Checkpoint:
    if prefect_runs.is_suspended(run):
        return Checkpoint(plan, Next.STAY_SUSPENDED, run.state)
    if starting and plan.is_open and plan.prefect_flow_run_id not in (None, flow_run_id):
        return Checkpoint(plan, Next.SUPERSEDED)
    if plan.status == EnrollmentStatus.PAUSED and is_pending_run:
        return Checkpoint(plan, Next.SUSPEND)
    if plan.status != EnrollmentStatus.ACTIVE:
        return Checkpoint(plan, Next.STOP)
    return Checkpoint(plan, Next.GO)


def _refuse_foreign(run: Any, flow_run_id: uuid.UUID | None) -> None:
    """A run of another database (raising rolls back: nothing of this one is touched)."""
    if run is not None and not prefect_runs.from_this_database(run):
        raise InvalidStateError(
            f"flow run {flow_run_id} belongs to another followups database; give each database its own "
            "deployment name (FOLLOWUPS_DEPLOYMENT_NAME) when they share a Prefect server"
        )
