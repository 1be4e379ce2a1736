"""What the enrollment machine sees of a run (`view`), and what only the run's state history
shows: the only reads of it.

Each costs one `GET /flow_run_states/` and is made only where the current state cannot tell,
because Prefect lets a run leave a state that mattered: a Cancelled run may go to Running (a
runner's earlier claim), a Suspended one to Running or Completed. Each lives here with its
reason, and is read outside any transaction, before the row lock (`reconcile.look`).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from followups import prefect_runs
from followups.lifecycle.machine import Run
from followups.prefect_private import RUNNER_SHUTDOWN_MESSAGE
from followups.prefect_runs import read_states, suspended_by_its_flow

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun


def cancel_requested(flow_run_id: uuid.UUID) -> bool:
    """Whether an operator cancelled the run since it was last scheduled, whatever its state says
    now. A runner claims runs up to 10 s before they are due and starts them without looking
    again, and Prefect lets a Cancelled run go to Running (its rerun); a run killed for a cancel
    may report Crashed before its runner reports Cancelled. A runner's own shutdown cancel does
    not count; a retry or resume in Prefect (Scheduled again) starts the count afresh."""
    since_scheduled: list[Any] = []
    for past in read_states(flow_run_id):
        since_scheduled = [] if past.is_scheduled() else [*since_scheduled, past]
    return any(
        past.is_cancelling() or (past.is_cancelled() and past.message != RUNNER_SHUTDOWN_MESSAGE)
        for past in since_scheduled
    )


def stopped_by_runner(run: FlowRun | None) -> bool:
    """The run was Cancelled by its runner shutting down, not by anyone asking: an operator's
    cancel (UI, `prefect flow-run cancel`) goes through Cancelling first; the runner's own
    shutdown sets Cancelled straight from Running. The history is read only for a run whose
    state carries the runner's message."""
    state = run.state if run is not None else None
    if not (state and state.is_cancelled() and state.message == RUNNER_SHUTDOWN_MESSAGE):
        return False
    since_running: list[Any] = []
    for past in read_states(run.id):
        since_running = [] if past.is_running() else [*since_running, past]
    return not any(past.is_cancelling() for past in since_running)


def resumed_since_suspend(flow_run_id: uuid.UUID) -> bool:
    """Whether someone resumed the run after its last suspend. Every resume (Prefect's Resume,
    `resume_flow_run`, `resume_run`) puts a suspended run back in the queue as Scheduled
    ("Resuming"); a worker that claimed the run before the suspend landed moves it from
    Suspended straight to Running, which Prefect allows."""
    after_pause: list[Any] = []
    paused = False
    for past in read_states(flow_run_id):
        if past.is_paused():
            paused, after_pause = True, []
        else:
            after_pause.append(past)
    return paused and any(past.is_scheduled() for past in after_pause)


def suspended_in_its_last_stretch(flow_run_id: uuid.UUID) -> bool:
    """Whether an operator suspended the run after it last started, and nobody resumed it since,
    whatever its state says now: a run suspended in its last moments still ends Completed, since
    Prefect lets a final state leave Suspended. Its own flow's suspends do not count."""
    suspended = False
    for past in read_states(flow_run_id):
        if past.is_running() or past.is_scheduled():
            suspended = False
        elif past.is_paused():
            suspended = not suspended_by_its_flow(past)
    return suspended


def view(run: FlowRun | None, enrollment_id: int, db_tag: str | None = None, **history: bool) -> Run:
    """What the enrollment machine needs of a run as Prefect shows it now; `history`: the facts
    only its state history shows (below), where the caller read them."""
    return Run(
        state=prefect_runs.state_type(run),
        ours=run is None or prefect_runs.belongs_here(run, enrollment_id, db_tag),
        suspend_expired=prefect_runs.suspend_expired(run),
        suspended_itself=prefect_runs.suspended_itself(run),
        resumes_in_place=prefect_runs.resumes_in_place(run),
        **history,
    )
