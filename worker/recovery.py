"""Runs a dead fast worker left behind: found, marked Crashed and rescheduled.

A run left Pending/Running by a fast worker on this host whose process is gone (pid + process
start time) is marked Crashed, its unfinished task runs too, and rescheduled (`AwaitingRetry`,
due now), so any worker runs it again. The flow resumes from the database, and the step
task's attempt record turns a send that was in flight into `STEP_OUTCOME_UNKNOWN` instead of a
second send. A run claimed on another host is left to that host's next worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import tempfile
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import AwaitingRetry, Crashed

from followups.worker.executing import RunCounts
from followups.worker.identity import WorkerIdentity

logger = logging.getLogger("followups.fast_worker")


def recover_orphans(
    client: SyncPrefectClient,
    me: WorkerIdentity,
    deployment_ids: Collection[uuid.UUID],
    in_flight: Collection[uuid.UUID],
    counts: RunCounts,
) -> None:
    # One recovery at a time per Prefect API on this host; workers of other APIs do not wait.
    api = hashlib.sha256(str(client.api_url).encode()).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"followups-fast-worker-recover-{api}.lock"
    with open(lock_path, "a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another worker on this host is recovering right now
        try:
            _recover_locked(client, me, deployment_ids, in_flight, counts)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _recover_locked(
    client: SyncPrefectClient,
    me: WorkerIdentity,
    deployment_ids: Collection[uuid.UUID],
    in_flight: Collection[uuid.UUID],
    counts: RunCounts,
) -> None:
    candidates = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=list(deployment_ids)),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])),
        ),
        limit=200,
    )
    for flow_run in candidates:
        if flow_run.id in in_flight:
            continue
        claimer = claimer_of(client, flow_run)
        if claimer is None or claimer.token == me.token:
            continue
        if claimer.is_alive_here() is not False:
            continue  # alive, or on another host (its own restart recovers it)
        current = client.read_flow_run(flow_run.id)
        if current.state is None or current.state.type not in (StateType.PENDING, StateType.RUNNING):
            continue
        _reschedule(client, current, claimer, me)
        counts.add("recovered")


def claimer_of(client: SyncPrefectClient, flow_run: FlowRun) -> WorkerIdentity | None:
    """The fast worker whose claim (latest Pending state) the run is under, if any."""
    if flow_run.state is not None and flow_run.state.is_pending():
        return WorkerIdentity.parse(flow_run.state.message)
    states = client.read_flow_run_states(flow_run.id)
    for state in sorted(states, key=lambda s: s.timestamp, reverse=True):
        if state.type == StateType.PENDING:
            return WorkerIdentity.parse(state.message)
    return None


def _reschedule(client: SyncPrefectClient, flow_run: FlowRun, claimer: WorkerIdentity, me: WorkerIdentity) -> None:
    why = f"fast worker pid {claimer.pid} on {claimer.host} exited while running this flow run"
    logger.warning("Recovering flow run %s: %s", flow_run.id, why)
    for task_run in client.read_task_runs(
        task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run.id]))
    ):
        if task_run.state is not None and not task_run.state.is_final():
            with contextlib.suppress(Exception):
                client.set_task_run_state(task_run.id, Crashed(message=why), force=True)
    client.set_flow_run_state(flow_run.id, Crashed(message=why), force=True)
    client.set_flow_run_state(
        flow_run.id,
        AwaitingRetry(
            scheduled_time=datetime.now(UTC) - timedelta(seconds=1),
            message=f"Rescheduled by fast worker {me.token} after a crash",
        ),
        force=True,
    )
