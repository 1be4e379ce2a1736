"""What pause, resume and cancel do to an enrollment's pending Prefect flow run.

Facts this relies on (Prefect 3.9): `suspend_flow_run` refuses a run that is still Scheduled,
so a scheduled run is suspended by forcing a Suspended state (no worker picks it up, it never
expires); `resume_flow_run` reschedules to *now*, so the original due time is restored after.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.flow_runs import resume_flow_run, suspend_flow_run
from prefect.states import Cancelled, Scheduled, Suspended

NOT_STARTED = {StateType.SCHEDULED, StateType.PENDING}


def read_run(flow_run_id: uuid.UUID | None) -> FlowRun | None:
    if flow_run_id is None:
        return None
    with get_client(sync_client=True) as client:
        try:
            return client.read_flow_run(flow_run_id)
        except Exception as exc:  # a run deleted from Prefect: treat as gone
            if "404" in str(exc) or "not found" in str(exc).lower():
                return None
            raise


def is_suspended(run: FlowRun | None) -> bool:
    return bool(run and run.state and run.state.is_paused())


def is_live(run: FlowRun | None) -> bool:
    """Scheduled, pending, running or suspended: a run that may still do something."""
    return bool(run and run.state and not run.state.is_final())


def suspend_run(run: FlowRun) -> None:
    state_type = run.state.type if run.state else None
    if state_type in NOT_STARTED:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Suspended(pause_key=f"followups-{uuid.uuid4().hex[:8]}"), force=True)
    elif state_type == StateType.RUNNING:
        # The step in flight finishes; the flow stops at the next step boundary.
        suspend_flow_run(flow_run_id=run.id)


def resume_run(run: FlowRun, due: datetime | None) -> None:
    """Resume a suspended run, keeping what is left of its wait."""
    resume_flow_run(run.id)
    if due is not None and due > datetime.now(UTC):
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(run.id)
            if current.state and current.state.type == StateType.SCHEDULED:
                client.set_flow_run_state(run.id, Scheduled(scheduled_time=due, name="Resuming"), force=True)


def cancel_run(run: FlowRun) -> None:
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Cancelled(message="follow-up sequence cancelled"), force=True)
